"""The LangServe app over real HTTP on 127.0.0.1: RemoteRunnable invoke/batch/stream, knobs
and thread ids through ``configurable``, and bad requests answered 4xx (never 500).

Most tests serve an oracle policy (it writes the gold solution of synthetic questions) so
they are fast and exact; one runs ``tts serve`` on the embedded models.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

pytest.importorskip("langserve")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langserve import RemoteRunnable  # noqa: E402
from served import ThreadServer, start_tts_serve  # noqa: E402

from langchain_tts.core.config import SamplingParams  # noqa: E402
from langchain_tts.core.errors import ConfigError, InputError  # noqa: E402
from langchain_tts.core.types import Step, Trajectory, Usage  # noqa: E402
from langchain_tts.eval.synthetic import make_split, parse_question  # noqa: E402
from langchain_tts.models import WEIGHTS_DIR  # noqa: E402
from langchain_tts.policies.base import PolicyResult, StepPolicy  # noqa: E402
from langchain_tts.serve import create_app  # noqa: E402
from langchain_tts.testing import FakePRM  # noqa: E402

# LangServe 0.3.3 reads model_fields off instances (pydantic 2.11+ deprecates it).
pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
HAS_WEIGHTS = (WEIGHTS_DIR / "prm" / "model.safetensors").exists()
requires_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="embedded weights not built yet")
QUESTION = "Start with 3. Add 4. Multiply by 2."


class OraclePolicy(StepPolicy):
    """Writes the gold solution of a synthetic question: the next step, or all the rest."""

    name = "oracle"
    num_parameters = 1000

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self.calls.append((len(prefixes), n))
        rows = []
        for p in prefixes:
            prob = parse_question(p.question)
            if prob is None:
                raise InputError(f"not an arithmetic chain: {p.question[:40]!r}")
            rest = prob.gold_steps[len(p.steps) :]
            if params.stop_at_step:
                step = Step(text=rest[0], tokens=len(rest[0]))
            else:
                text = "\n\n".join(rest)
                step = Step(text=text, tokens=len(text), finish_reason="eos")
            rows.append([step] * n)
        return PolicyResult(steps=rows, usage=Usage(policy_calls=1))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve") / "checkpoints.db"


@pytest.fixture(scope="module")
def server(db: Path) -> Iterator[ThreadServer]:
    prm = FakePRM(lambda t: [0.9] * len(t.steps))
    app = create_app(OraclePolicy(), prm, budget=16, checkpointer=db)
    with ThreadServer(app) as s:
        yield s


def remote(server: ThreadServer, strategy: str = "beam_search") -> RemoteRunnable:
    return RemoteRunnable(f"{server.url}/tts/{strategy}/", timeout=60)


def test_health_lists_every_strategy(server: ThreadServer):
    h = httpx.get(f"{server.url}/health", timeout=10).json()
    assert h["status"] == "ok"
    assert {"cot", "beam_search", "best_of_n", "dvts", "mcts"} <= set(h["strategies"])
    assert h["checkpointer"] == "AsyncSqliteSaver"


def test_remote_invoke_with_knobs(server: ThreadServer):
    out = remote(server).invoke({"question": QUESTION}, {"configurable": {"n": 4}})
    assert out["answer"] == "14"
    assert out["solution"].endswith("\\boxed{14}")
    assert len(out["candidates"]) == 4  # n=4 reached the graph (the served default is 16)
    assert out["usage"]["policy_calls"] == out["usage"]["prm_calls"] == 3


def test_remote_batch_and_per_item_configs(server: ThreadServer):
    probs = make_split("test", 3)
    r = remote(server)
    outs = r.batch([{"question": p.question} for p in probs], {"configurable": {"n": 8}})
    assert [o["answer"] for o in outs] == [p.answer for p in probs]
    assert all(len(o["candidates"]) == 8 for o in outs)
    outs = r.batch(
        [{"question": QUESTION}] * 2, [{"configurable": {"n": 4}}, {"configurable": {"n": 8}}]
    )
    assert [len(o["candidates"]) for o in outs] == [4, 8]


def test_remote_stream_shows_each_search_step(server: ThreadServer):
    chunks = list(remote(server).stream({"question": QUESTION}, {"configurable": {"n": 4}}))
    nodes = [next(iter(c)) for c in chunks]
    assert nodes[0] == "prepare" and nodes[-1] == "finalize"
    assert nodes.count("step") == 3  # two operations + the boxed answer
    assert chunks[-1]["finalize"]["answer"] == "14"


async def test_remote_async_and_chat_messages(server: ThreadServer):
    r = remote(server, "cot")
    out = await r.ainvoke({"messages": [HumanMessage(content=QUESTION)]})
    assert out["answer"] == "14"
    assert isinstance(out["messages"][-1], AIMessage)
    assert "\\boxed{14}" in out["messages"][-1].content
    chunks = [c async for c in r.astream({"question": QUESTION})]
    assert chunks[-1]["finalize"]["answer"] == "14"


async def test_remote_stream_events(server: ThreadServer):
    r = remote(server, "best_of_n")
    kinds = [
        e["event"]
        async for e in r.astream_events(
            {"question": QUESTION}, {"configurable": {"n": 4}}, version="v2"
        )
    ]
    assert kinds[0] == "on_chain_start" and kinds[-1] == "on_chain_end"


def test_without_a_prm_only_prm_free_strategies_are_served():
    app = create_app(OraclePolicy(), None)
    assert {"cot", "majority_vote"} <= set(app.state.graphs)
    assert "beam_search" not in app.state.graphs
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_app(OraclePolicy(), None, ["beam_search"])


def test_thread_id_reaches_the_checkpointer(server: ThreadServer, db: Path):
    r = remote(server)
    r.invoke({"question": QUESTION}, {"configurable": {"n": 4, "thread_id": "t-42"}})
    r.invoke({"question": QUESTION}, {"configurable": {"n": 4}})
    with sqlite3.connect(db) as conn:
        threads = {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    assert "t-42" in threads
    assert len(threads) >= 2  # requests without a thread_id got a fresh one each


@pytest.mark.parametrize(
    ("thread_id", "needle"),
    [
        ([1, 2], "thread_id must be text"),
        ({"a": 1}, "thread_id must be text"),
        (True, "thread_id must be text"),
        ("a\u0000b", "NUL"),
        ("x" * 2000, "at most 1024"),
    ],
)
def test_a_thread_id_that_is_no_text_is_422(server: ThreadServer, thread_id, needle: str):
    """A list used to be stored as its ``str()``, so ``"[1, 2]"`` continued its thread; a
    NUL or a lone surrogate was a 500 from the database."""
    body = {"input": {"question": QUESTION}, "config": {"configurable": {"thread_id": thread_id}}}
    r = httpx.post(f"{server.url}/tts/cot/invoke", json=body, timeout=30)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text
    raw = '{"input": {"question": "Start with 3."}, "config": {"configurable": {"thread_id": "\\ud800"}}}'
    r = httpx.post(f"{server.url}/tts/cot/invoke", content=raw, timeout=30)
    assert r.status_code == 422 and "not valid Unicode" in r.json()["detail"], r.text
    ok = {"input": {"question": QUESTION}, "config": {"configurable": {"thread_id": 7}}}
    assert httpx.post(f"{server.url}/tts/cot/invoke", json=ok, timeout=30).status_code == 200


def test_openai_requests_leave_no_thread_behind(server: ThreadServer, db: Path):
    """The OpenAI route is stateless: each request ran on a thread of its own that nobody
    could address again, and its checkpoints stayed in the database for ever."""
    body = {"model": "beam_search?n=4", "messages": [{"role": "user", "content": QUESTION}]}
    url = f"{server.url}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=60).status_code == 200
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM checkpoints WHERE thread_id LIKE 'openai-%'")
        assert rows.fetchone()[0] == 0


BAD_INPUTS = {
    "missing question": ({}, "no question"),
    "wrong type": ({"question": 5}, "valid string"),
    "empty": ({"question": "   "}, "empty"),
    "1 MB question": ({"question": "Add 1. " * 150_000}, "limit is"),
    "unknown key": ({"question": "q", "foo": 1}, "Extra inputs"),
    "not an object": ("Start with 3.", "valid dictionary"),
}


@pytest.mark.parametrize("endpoint", ["invoke", "batch", "stream"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_4xx_with_a_clear_message(server: ThreadServer, endpoint: str, case: str):
    value, needle = BAD_INPUTS[case]
    body = {"inputs": [value]} if endpoint == "batch" else {"input": value}
    r = httpx.post(f"{server.url}/tts/beam_search/{endpoint}", json=body, timeout=30)
    assert 400 <= r.status_code < 500, r.text[:300]
    assert needle in r.text


BAD_CONFIGS = {
    "wrong type": ({"n": "lots"}, 422, "valid integer"),
    "n not a multiple of beam_width": ({"n": 5}, 400, "multiple of beam_width"),
    "out of range": ({"temperature": -1.0}, 400, "temperature"),
    "misspelled knob": ({"beamwidth": 2}, 400, "did you mean 'beam_width'"),
    "unknown knob under the graph's name": (
        {"tts_beam_search": {"bogus": 1}},
        400,
        "valid knobs: ['aggregation', 'beam_width'",
    ),
}


@pytest.mark.parametrize("endpoint", ["invoke", "batch", "stream"])
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_knobs_are_4xx_before_the_run(server: ThreadServer, endpoint: str, case: str):
    conf, status, needle = BAD_CONFIGS[case]
    body: dict = {"config": {"configurable": conf}}
    body.update({"inputs": [{"question": QUESTION}]} if endpoint == "batch" else {})
    body.update({"input": {"question": QUESTION}} if endpoint != "batch" else {})
    r = httpx.post(f"{server.url}/tts/beam_search/{endpoint}", json=body, timeout=30)
    assert r.status_code == status, r.text[:300]
    assert needle in r.text


def test_a_misspelled_knob_names_the_valid_ones(server: ThreadServer):
    r = httpx.post(
        f"{server.url}/tts/beam_search/invoke",
        json={"input": {"question": QUESTION}, "config": {"configurable": {"beamwidth": 2}}},
        timeout=30,
    )
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "'beamwidth'" in detail and "did you mean 'beam_width'" in detail
    assert "'n'" in detail and "'temperature'" in detail  # the valid knobs
    r = httpx.post(
        f"{server.url}/tts/router/invoke",
        json={"input": {"question": QUESTION}, "config": {"configurable": {"reuseprobe": 0}}},
        timeout=30,
    )
    assert r.status_code == 400 and "did you mean 'reuse_probe'" in r.text


def test_router_route(server: ThreadServer):
    assert "router" in httpx.get(f"{server.url}/health", timeout=10).json()["strategies"]
    router = remote(server, "router")
    out = router.invoke({"question": QUESTION})
    assert out["answer"] == "14" and out["route"]["reason"] == "reuse_probe"
    assert out["difficulty"]["bin"] == "easy"
    out = router.invoke({"question": QUESTION}, {"configurable": {"reuse_probe": False}})
    assert out["answer"] == "14" and out["route"]["node"] == "easy_best_of_n"
    schema = httpx.get(f"{server.url}/tts/router/config_schema", timeout=10).json()
    assert "reuse_threshold" in json.dumps(schema)


@pytest.mark.parametrize("route", ["beam_search", "router"])
def test_three_turns_on_one_thread_answer_each_turn(
    server: ThreadServer, route: str, caplog: pytest.LogCaptureFixture
):
    r = remote(server, route)
    rc = {"configurable": {"thread_id": f"chat-{route}"}}
    problems = make_split("test", 6)[3:]  # three different answers
    for k, p in enumerate(problems):
        out = r.invoke({"messages": [("human", p.question)]}, rc)
        assert out["question"] == p.question and out["answer"] == p.answer
        assert len(out["messages"]) == 2 * (k + 1)  # the thread's chat: every turn
        assert out["messages"][-1].content == out["solution"]
    # the saver knows the router's types: none blocked or "unregistered"
    assert "unregistered type" not in caplog.text and "Blocked deser" not in caplog.text


def test_errors_raised_inside_the_graph_are_mapped_not_500(server: ThreadServer):
    # The oracle raises InputError on a non-arithmetic question, inside the graph run.
    r = httpx.post(
        f"{server.url}/tts/beam_search/invoke",
        json={"input": {"question": "What is the capital of France?"}},
        timeout=30,
    )
    assert r.status_code == 422 and "not an arithmetic chain" in r.text


def test_oversized_body_is_413(server: ThreadServer):
    r = httpx.post(
        f"{server.url}/tts/cot/invoke",
        content=b'{"input": {"question": "' + b"x" * (5 * 1024 * 1024) + b'"}}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413


def greedy_right(n: int) -> list:
    """``n`` questions (different answers) that a greedy CoT on the embedded policy solves."""
    from langchain_tts.graph import create_tts_graph
    from langchain_tts.models import load_default_policy
    from langchain_tts.strategies import get_strategy

    cot = create_tts_graph(
        load_default_policy(), None, "cot", get_strategy("cot").budget_config(16)
    )
    out: list = []
    for p in make_split("test", 40):
        if all(p.answer != q.answer for q in out):
            if cot.invoke({"question": p.question})["answer"] == p.answer:
                out.append(p)
        if len(out) == n:
            return out
    raise AssertionError(f"fewer than {n} questions a greedy CoT gets right")


@pytest.mark.slow
@requires_weights
def test_tts_serve_command_on_the_embedded_models(tmp_path: Path):
    proc, url = start_tts_serve(
        tmp_path,
        *("--strategy", "beam_search", "--strategy", "cot", "--strategy", "router"),
        *("--checkpoint-db", str(tmp_path / "threads.db"), "--log-level", "warning"),
    )
    try:
        easy = next(p for p in make_split("test", 8) if p.difficulty == 1)
        beam = RemoteRunnable(f"{url}/tts/beam_search/", timeout=120)
        knobs = {"configurable": {"n": 4, "seed": 0}}
        out = beam.invoke({"question": easy.question}, knobs)
        assert out["answer"] == easy.answer
        assert len(out["candidates"]) == 4
        steps = list(beam.stream({"question": easy.question}, knobs))
        assert "finalize" in steps[-1]
        cot = RemoteRunnable(f"{url}/tts/cot/", timeout=120)
        assert cot.invoke({"question": easy.question})["answer"] == easy.answer
        # three turns on one thread: each answers its own question (the served cot is greedy)
        rc = {"configurable": {"thread_id": "chat-1"}}
        for k, p in enumerate(greedy_right(3)):
            out = cot.invoke({"messages": [("human", p.question)]}, rc)
            assert out["question"] == p.question and out["answer"] == p.answer
            assert len(out["messages"]) == 2 * k + 2
        router = RemoteRunnable(f"{url}/tts/router/", timeout=120)
        out = router.invoke({"question": easy.question}, {"configurable": {"thread_id": "r"}})
        assert out["question"] == easy.question and out["route"]["bin"] is not None
        # the router calibrated for the embedded models (embedded_router_kwargs)
        assert out["difficulty"]["method"] == "verifier"
        # a strategy route continues from the steps the verifier accepted, over HTTP too
        hard = next(p for p in make_split("test", 64) if p.difficulty == 8)
        out = router.invoke({"question": hard.question}, {"configurable": {"reuse_probe": False}})
        assert out["route"]["node"] != "finalize" and isinstance(out["route"]["prefix_steps"], list)
        # a client's per-run budget of about 3x what the router spends on average is taken
        capped = router.invoke({"question": hard.question}, {"configurable": {"max_flops": 1.2e9}})
        used = capped["usage"]["policy_flops"] + capped["usage"]["prm_flops"]
        assert capped["answer"] is not None and 0 < used <= 1.2e9
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
