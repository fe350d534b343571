"""Reliability: concurrent serving, failing and hanging backends, bad PRM output, fuzzed
input, cancellation. Loopback only (ASGI in process, HTTP on 127.0.0.1); every test is
bounded by a timeout of a few seconds, so a hang fails instead of blocking the suite.

Complements test_serve.py (bad HTTP input for beam search), test_beam_search.py (NaN PRM
scores and bad questions for beam search) and test_openai_policy.py (HTTP retries): here
across strategies, through the graphs, and under concurrency and cancellation.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest
from langgraph.errors import InvalidUpdateError

from langchain_tts import BackendError, PRMOutputError, create_tts_graph
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import InputError
from langchain_tts.core.types import Trajectory, check_scores
from langchain_tts.eval.runner import budget_config
from langchain_tts.policies.base import PolicyResult
from langchain_tts.policies.openai import OpenAIPolicy
from langchain_tts.strategies.core import MAX_QUESTION_CHARS
from langchain_tts.strategies.selection import select_answer
from langchain_tts.testing import FakeOpenAIServer, FakePolicy, FakePRM

LIMIT = 10.0  # seconds: no test here may take longer
SEARCHES = ["beam_search", "dvts", "mcts"]
ALL = ["cot", "best_of_n", "majority_vote", "weighted_vote", *SEARCHES, "revision", "hybrid"]


class AnswerPolicy(FakePolicy):
    """Question ``q<k>``: ``depth - 1`` thinking steps, then ``\\boxed{k}``; asked for a
    whole solution (best-of-N, voting, revision), it writes all of it at once."""

    def __init__(self, depth: int = 2):
        super().__init__(self.step)
        self.depth = depth
        self.whole = False

    def step(self, p: Trajectory, i: int) -> str:
        answer = f"\\boxed{{{p.question.strip()[1:]}}}"
        if self.whole:
            return "\n\n".join([*(f"think {k}.{i}" for k in range(self.depth - 1)), answer])
        return answer if len(p.steps) >= self.depth - 1 else f"think {len(p.steps)}.{i}"

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self.whole = not params.stop_at_step
        return await super()._agenerate(prefixes, n, params)


def flat_prm(value: float = 0.5) -> FakePRM:
    return FakePRM(lambda t: [value] * len(t.steps))


def graph_for(strategy: str, policy: Any = None, prm: Any = None) -> Any:
    cfg = budget_config(strategy, 4)
    if strategy == "mcts":
        cfg["parallel"] = 1  # one simulation per search step: 4 steps to fail or hang in
    return create_tts_graph(policy or AnswerPolicy(), prm or flat_prm(), strategy, cfg)


async def bounded(coro: Any, limit: float = LIMIT) -> Any:
    return await asyncio.wait_for(coro, limit)


def other_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def settle() -> set[asyncio.Task]:
    """Tasks still pending once the loop had a few turns to finish cancelled work."""
    for _ in range(20):
        if not other_tasks():
            break
        await asyncio.sleep(0.01)
    return other_tasks()


# -- serving under concurrency -----------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
async def test_50_concurrent_requests_to_the_served_app_all_succeed():
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("langserve")
    from langchain_tts.serve import create_app

    policy, prm = AnswerPolicy(), flat_prm(0.7)
    app = create_app(policy, prm, ["beam_search", "best_of_n", "mcts"], budget=4)
    routes = ["beam_search", "best_of_n", "mcts"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tts", timeout=LIMIT) as c:

        async def ask(i: int) -> tuple[int, Any]:
            body = {"input": {"question": f"q{i}"}, "config": {"configurable": {"seed": i}}}
            r = await c.post(f"/tts/{routes[i % 3]}/invoke", json=body)
            return r.status_code, r.json()

        results = await bounded(asyncio.gather(*(ask(i) for i in range(50))))
    errors = [(i, s, b) for i, (s, b) in enumerate(results) if s != 200]
    assert not errors, errors[:3]
    # Every answer belongs to its own request: no state leaks between concurrent runs.
    assert [b["output"]["answer"] for _, b in results] == [str(i) for i in range(50)]
    assert sum(b["output"]["usage"]["policy_calls"] for _, b in results) == len(policy.calls)


# -- failing backends -----------------------------------------------------------------------
class FailingPolicy(AnswerPolicy):
    """Answers ``ok_calls`` calls, then raises ``error`` (a backend dying mid-search)."""

    def __init__(self, ok_calls: int, error: BaseException):
        super().__init__(depth=6)
        self.ok_calls, self.error = ok_calls, error

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        if len(self.calls) >= self.ok_calls:
            raise self.error
        return await super()._agenerate(prefixes, n, params)


@pytest.mark.parametrize("strategy", SEARCHES)
async def test_policy_raising_mid_search_is_a_backend_error_with_progress(strategy: str):
    policy = FailingPolicy(3, RuntimeError("GPU fell off the bus"))
    graph = graph_for(strategy, policy)
    with pytest.raises(BackendError, match="fake-policy failed.*RuntimeError: GPU fell off") as e:
        await bounded(graph.ainvoke({"question": "q5"}))
    err = e.value
    assert isinstance(err.__cause__, RuntimeError)  # the original error is chained
    progress = err.progress
    assert progress is not None and progress["question"] == "q5"
    assert progress["step"] == 3  # three search steps / simulations completed
    assert progress["usage"].policy_calls == 3 and progress["usage"].prm_calls == 3
    if strategy == "mcts":
        tree = progress["tree"]  # one finished rollout per simulation, its steps all nodes
        assert tree[0].visits == 3 and sum(n.finished for n in tree) == 3
    else:
        beams = progress["active"] if strategy == "beam_search" else progress["subtrees"]
        assert beams and all(len(t.step_scores) == len(t.steps) == 3 for t in beams)
        # The best partial solution so far can still be chosen.
        assert select_answer(beams)[0] is not None


async def test_prm_raising_is_a_backend_error_and_typed_errors_pass_unchanged():
    class BrokenPRM(FakePRM):
        async def _ascore(self, trajectories: Sequence[Trajectory]) -> Any:
            raise ConnectionResetError("PRM server closed the connection")

    graph = graph_for("beam_search", prm=BrokenPRM(lambda t: []))
    with pytest.raises(BackendError, match="fake-prm failed while scoring .*ConnectionReset"):
        await bounded(graph.ainvoke({"question": "q1"}))
    # A backend's own BackendError keeps its message and ``partial``; progress is added.
    own = BackendError("vllm: POST /v1/completions failed: HTTP 503", partial={"attempts": 4})
    graph = graph_for("beam_search", FailingPolicy(2, own))
    with pytest.raises(BackendError) as e:
        await bounded(graph.ainvoke({"question": "q1"}))
    assert e.value is own and own.partial == {"attempts": 4} and own.progress["step"] == 2


def test_sync_invoke_reports_the_same_backend_error():
    graph = graph_for("beam_search", FailingPolicy(1, OSError("disk full")))
    with pytest.raises(BackendError, match="OSError: disk full") as e:
        graph.invoke({"question": "q1"})
    assert e.value.progress["step"] == 1


async def test_http_policy_timing_out_mid_search_fails_fast_with_partial_results():
    def stall_at_depth_2(path: str, body: dict) -> tuple | None:
        if any(p.count("\n\n") >= 3 for p in body.get("prompt", [])):  # question + 2 steps
            time.sleep(1.5)  # longer than the client's timeout
        return None

    with FakeOpenAIServer(stall_at_depth_2, finish_depth=6) as server:
        policy = OpenAIPolicy(
            server.url, "fake", chat_template="none", timeout=0.3, max_retries=1, backoff=0.01
        )
        graph = create_tts_graph(policy, flat_prm(), "beam_search", {"n": 4, "beam_width": 2})
        t0 = time.perf_counter()
        with pytest.raises(BackendError, match="timed out") as e:
            await bounded(graph.ainvoke({"question": "q3"}))
        assert time.perf_counter() - t0 < 3.0  # (retries + 1) x timeout, never a hang
        assert e.value.partial["attempts"] == 2 and e.value.partial["status"] is None
        assert e.value.progress["step"] == 2 and len(e.value.progress["active"]) == 2
        await policy.aclose()


# -- bad PRM output -------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["best_of_n", "weighted_vote", "dvts", "mcts", "hybrid"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1.0000001, -1e-9])
async def test_prm_nan_inf_or_out_of_range_is_a_prm_output_error(strategy: str, bad: float):
    prm = FakePRM(lambda t: [0.5] * (len(t.steps) - 1) + [bad])
    with pytest.raises(PRMOutputError, match="finite probabilities in \\[0, 1\\]"):
        await bounded(graph_for(strategy, prm=prm).ainvoke({"question": "q2"}))


def _reference_ok(row: list) -> bool:
    """The per-score rule of check_scores, written out."""
    return all(isinstance(s, (int, float)) and not math.isnan(s) and 0.0 <= s <= 1.0 for s in row)


def test_check_scores_fast_path_agrees_with_the_per_score_rule():
    class Sub(float):  # float subclasses (numpy.float64 is one) take the slow path
        pass

    specials: list[Any] = [math.nan, math.inf, -math.inf, -0.0, 1.0, 0, 1, True, False, 2, -1]
    specials += [Sub(0.5), Sub(math.nan), "0.5", None, 1e-300, 1 - 1e-16, 1 + 1e-15]
    rng = random.Random(0)
    rows: list[list[Any]] = [[]]
    for _ in range(2000):
        row = [rng.random() for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.6:
            row[rng.randrange(len(row))] = rng.choice(specials)
        rows.append(row)
    for row in rows:
        try:
            check_scores([row], [len(row)], "prm")
            ok = True
        except PRMOutputError:
            ok = False
        assert ok == _reference_ok(row), row


# -- fuzzed input ---------------------------------------------------------------------------
BAD_INPUTS: dict[str, tuple[Any, str]] = {
    "empty question": ({"question": ""}, "empty"),
    "blank question": ({"question": " \n\t "}, "empty"),
    "1 MB question": ({"question": "Add 1. " * 150_000}, f"limit is {MAX_QUESTION_CHARS}"),
    "int question": ({"question": 7}, "must be a string, got int"),
    "None question": ({"question": None}, "no question"),
    "list question": ({"question": ["q1"]}, "must be a string, got list"),
    "bytes question": ({"question": b"q1"}, "must be a string, got bytes"),
    "no question": ({}, "no question"),
    "messages without a human one": ({"messages": [("ai", "hi")]}, "no question"),
    "messages not messages": ({"messages": [1, 2]}, "messages must be chat messages"),
    "messages None": ({"messages": None}, "messages must be a list"),
    "messages an int": ({"messages": 3}, "messages must be a list"),
    # no tokenizer or HTTP backend can take it: the client's mistake, not a backend failure
    "lone surrogate": ({"question": "q7 \ud800 \udfff"}, "lone surrogate"),
    "text block not text": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "where text belongs",
    ),
}


@pytest.mark.parametrize("strategy", ["cot", "beam_search", "mcts", "revision"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_is_a_clear_input_error(strategy: str, case: str):
    value, needle = BAD_INPUTS[case]
    policy = AnswerPolicy()
    with pytest.raises(InputError, match=needle):
        await bounded(graph_for(strategy, policy).ainvoke(value))
    assert policy.calls == []  # rejected before any model call


@pytest.mark.parametrize("value", [5, "What is 3 + 4?", ["q1"], 2.5])
def test_input_that_is_not_a_dict_is_a_typed_langgraph_error(value: Any):
    with pytest.raises(InvalidUpdateError, match="Expected dict"):
        graph_for("beam_search").invoke(value)


ODD_QUESTIONS = {
    "unicode": "q7 — Combien font 3 + 4 ? 🤔 ∑ 你好 مرحبا",
    "control characters": "q7\x00\x01\x1b[31m\r\n\t\x7f\u200b\ufeff",
    "at the size limit": "q7 " + "x" * (MAX_QUESTION_CHARS - 3),
    "chat content blocks": None,
}


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("case", list(ODD_QUESTIONS))
async def test_odd_but_valid_questions_run_and_round_trip(strategy: str, case: str):
    question = ODD_QUESTIONS[case]
    if question is None:
        content = [{"type": "text", "text": "q7 "}, {"type": "text", "text": "(blocks)"}]
        inp: dict = {"messages": [{"role": "user", "content": content}]}
        question = "q7 (blocks)"
    else:
        inp = {"question": question}
    out = await bounded(graph_for(strategy).ainvoke(inp))
    assert out["question"] == question.strip()
    assert out["answer"] is not None and out["candidates"]


@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"input": {"question": None}}, 422, "no question"),
        ({"input": {"question": ["q1"]}}, 422, "valid string"),
        ({"input": None}, 422, "valid dictionary"),
        ({"input": {"question": "q7 — 🤔 \x00\x1b"}}, 200, '"answer":"7'),
        (b"{not json", 422, "Invalid JSON"),
        (b"\xff\xfe binary", 422, "not valid UTF-8"),
        (b'{"input": {"question": "q\xe9"}}', 422, "Invalid JSON"),
        ({"input": {"messages": [1, 2]}}, 422, "messages[0] is not a chat message"),
        ({"input": {"messages": [None]}}, 422, "messages[0] is not a chat message"),
        ({"input": {"messages": [{"content": "q3"}]}}, 422, "'role' and 'content'"),
        # the forms the graph itself accepts are accepted over HTTP too
        ({"input": {"messages": [{"role": "user", "content": "q3"}]}}, 200, '"answer":"3'),
        ({"input": {"messages": [["human", "q4"]]}}, 200, '"answer":"4'),
        ({"input": {"messages": ["q5"]}}, 200, '"answer":"5'),
        ({"input": {"messages": [{"type": "human", "content": "q6"}]}}, 200, '"answer":"6'),
    ],
)
async def test_fuzzed_http_bodies_are_answered_4xx_or_200(body: Any, status: int, needle: str):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("langserve")
    from langchain_tts.serve import create_app

    app = create_app(AnswerPolicy(), flat_prm(), ["beam_search"], budget=4)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tts", timeout=LIMIT
    ) as c:
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            r = await bounded(c.post("/tts/beam_search/invoke", content=body, headers=headers))
        else:
            r = await bounded(c.post("/tts/beam_search/invoke", json=body))
    assert r.status_code == status, r.text[:300]
    assert needle in r.text


@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
@pytest.mark.parametrize("endpoint", ["invoke", "batch"])
async def test_backend_error_in_a_served_graph_is_a_502_with_its_message(endpoint: str):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("langserve")
    from langchain_tts.serve import create_app

    policy = FailingPolicy(1, RuntimeError("GPU fell off the bus"))
    app = create_app(policy, flat_prm(), ["beam_search"], budget=4)
    body: dict = {"input": {"question": "q7"}}
    if endpoint == "batch":
        body = {"inputs": [{"question": "q7"}]}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tts", timeout=LIMIT
    ) as c:
        r = await bounded(c.post(f"/tts/beam_search/{endpoint}", json=body))
    assert r.status_code == 502, r.text[:300]
    assert r.json()["error"] == "BackendError"
    assert "RuntimeError: GPU fell off the bus" in r.json()["detail"]


# -- cancellation -----------------------------------------------------------------------------
class HangingPolicy(AnswerPolicy):
    """Hangs (forever) on the call numbered ``hang_at``; works otherwise."""

    def __init__(self, hang_at: int):
        super().__init__()
        self.hang_at = hang_at
        self.cancelled = 0

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        if len(self.calls) == self.hang_at:
            self.calls.append((0, 0, params))  # the next run does not hang
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return await super()._agenerate(prefixes, n, params)


@pytest.mark.parametrize(("strategy", "hang_at"), [("beam_search", 1), ("mcts", 2), ("cot", 0)])
async def test_cancelled_run_leaves_no_pending_tasks_and_the_graph_still_works(
    strategy: str, hang_at: int
):
    policy = HangingPolicy(hang_at)
    graph = graph_for(strategy, policy)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(graph.ainvoke({"question": "q4"}), 1.0)
    assert policy.cancelled == 1  # the cancellation reached the backend call
    assert not await settle()
    out = await bounded(graph.ainvoke({"question": "q4"}))
    assert out["answer"] == "4"


async def test_cancelled_http_run_releases_connections():
    with FakeOpenAIServer(finish_depth=3, delay=3.0) as server:
        policy = OpenAIPolicy(server.url, "fake", chat_template="none", timeout=5, max_retries=0)
        graph = create_tts_graph(policy, flat_prm(), "beam_search", {"n": 4, "beam_width": 2})
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(graph.ainvoke({"question": "q7"}), 1.0)
        assert not await settle()
        server.delay = 0.0
        out = await bounded(graph.ainvoke({"question": "q7"}))  # the pool still serves
        assert out["answer"] == "7"
        await policy.aclose()


async def test_cancelled_run_on_a_local_model_releases_the_lock_and_coalescer(tiny_policy_dir):
    pytest.importorskip("torch")
    from langchain_tts.policies.hf import HFPolicy

    policy = HFPolicy.from_pretrained(tiny_policy_dir)
    generate = policy._coalescer.fn
    slow = {"on": True}

    def slow_generate(items: list, key: Any) -> list:
        if slow["on"]:
            time.sleep(1.0)  # the model is busy when the caller gives up
        return generate(items, key)

    policy._coalescer.fn = slow_generate
    cfg = {"n": 2, "beam_width": 2, "max_steps": 2, "max_step_tokens": 4, "temperature": 0.0}
    graph = create_tts_graph(policy, flat_prm(), "beam_search", cfg)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(graph.ainvoke({"question": "Start with 3."}), 0.5)
    assert not await settle()  # the worker thread may still run; no asyncio task waits on it
    assert await asyncio.to_thread(policy._lock.acquire, True, 5.0)  # released when done
    policy._lock.release()
    assert policy._coalescer._pending == []
    slow["on"] = False
    out = await bounded(graph.ainvoke({"question": "Start with 3."}))
    assert out["candidates"] and out["usage"].policy_calls >= 1


# -- the sync bridge inside a running event loop (Jupyter) -----------------------------------
async def test_a_sync_invoke_inside_a_running_loop_keeps_the_callers_context():
    """``graph.invoke`` inside a running loop (a Jupyter cell) runs on a thread of its own:
    the caller's context (callbacks, tracing) goes with it, so every model call is traced."""
    from langchain_core.callbacks import BaseCallbackHandler

    from langchain_tts import create_tts_graph
    from langchain_tts.testing import FakePolicy, FakePRM

    class Seen(BaseCallbackHandler):
        def __init__(self) -> None:
            self.runs: list[str] = []

        def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
            self.runs.append("model")

    graph = create_tts_graph(
        FakePolicy(lambda p, i: "\\boxed{7}" if p.steps else "3+4=7"),
        FakePRM(lambda t: [0.9] * len(t.steps)),
        "beam_search",
        {"n": 2, "beam_width": 1},
    )
    seen = Seen()
    out = graph.invoke({"question": "Start with 3. Add 4."}, {"callbacks": [seen]})
    assert out["answer"] == "7" and len(seen.runs) == out["usage"].policy_calls > 0


def test_ctrl_c_in_a_running_loop_cancels_the_sync_call():
    """Ctrl-C (a real SIGINT) while ``run_sync`` waits inside a running loop cancels the
    coroutine at once; it used to run to its end, the interrupt held until then. In a
    subprocess of its own: the signal goes to its main thread."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import asyncio, signal, threading, time
        from langchain_tts.backends.sync import run_sync

        ended = threading.Event()

        async def long_call():
            try:
                await asyncio.sleep(30)
            finally:
                ended.set()

        async def cell():  # a Jupyter cell: sync code on a running loop
            main = threading.main_thread().ident
            threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()
            t0 = time.monotonic()
            try:
                run_sync(long_call())
            except KeyboardInterrupt:
                print("interrupted", round(time.monotonic() - t0, 1), ended.wait(5))

        # as Jupyter runs a cell: Python's own SIGINT handler (asyncio.run has its own)
        asyncio.new_event_loop().run_until_complete(cell())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    words = out.stdout.split()
    assert words[:1] == ["interrupted"] and float(words[1]) < 5 and words[2] == "True", (
        out.stdout + out.stderr
    )
