"""The OpenAI-compatible endpoint of ``tts serve`` with real clients on 127.0.0.1: the official
``openai`` client (sync, async, streaming), LangChain's ``ChatOpenAI``, a LangGraph agent on
``ChatOpenAI``, and OpenAI-style errors. Most tests serve an oracle policy (exact and fast);
one runs beam search on the embedded models."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator, Sequence

import pytest

pytest.importorskip("langserve")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
langchain_openai = pytest.importorskip("langchain_openai")

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from served import ThreadServer  # noqa: E402

from langchain_tts.core.config import SamplingParams  # noqa: E402
from langchain_tts.core.types import Step, Trajectory, Usage  # noqa: E402
from langchain_tts.eval.synthetic import make_split, parse_question  # noqa: E402
from langchain_tts.models import WEIGHTS_DIR  # noqa: E402
from langchain_tts.policies.base import PolicyResult, StepPolicy  # noqa: E402
from langchain_tts.serve import create_app  # noqa: E402
from langchain_tts.testing import FakePolicy, FakePRM  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
QUESTION = "Start with 3. Add 4. Multiply by 2."
HAS_WEIGHTS = (WEIGHTS_DIR / "prm" / "model.safetensors").exists()


class OraclePolicy(StepPolicy):
    """Writes the gold solution of a synthetic question: the next step, or all the rest."""

    name = "oracle"
    num_parameters = 1000

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        rows, gen = [], 0
        for p in prefixes:
            prob = parse_question(p.question)
            assert prob is not None, p.question
            rest = prob.gold_steps[len(p.steps) :]
            text = rest[0] if params.stop_at_step else "\n\n".join(rest)
            reason = "step" if params.stop_at_step else "eos"
            step = Step(text=text, tokens=len(text), finish_reason=reason)
            rows.append([step] * n)
            gen += n * len(text)
        usage = Usage(
            policy_calls=1, policy_prompt_tokens=10 * len(prefixes), policy_generated_tokens=gen
        )
        return PolicyResult(steps=rows, usage=usage)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    app = create_app(OraclePolicy(), FakePRM(lambda t: [0.9] * len(t.steps)), budget=16)
    with ThreadServer(app) as s:
        yield s


def client(server: ThreadServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


USER = [{"role": "user", "content": QUESTION}]


def test_models_lists_the_served_strategies(server: ThreadServer):
    ids = {m.id for m in client(server).models.list()}
    assert {"beam_search", "best_of_n", "cot", "mcts"} <= ids


def test_chat_completion_answers_with_usage_and_ledger(server: ThreadServer):
    r = client(server).chat.completions.create(
        model="beam_search?n=4&beam_width=2",
        messages=[{"role": "system", "content": "Be brief."}, *USER],
        extra_body={"tts": {"max_steps": 10}},
    )
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content.endswith("\\boxed{14}")
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "beam_search?n=4&beam_width=2"
    ledger = r.usage.model_extra["tts"]
    assert r.usage.completion_tokens == ledger["policy_generated_tokens"] > 0
    assert r.usage.prompt_tokens == ledger["policy_prompt_tokens"] > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert ledger["policy_calls"] == ledger["prm_calls"] == 3 and ledger["flops"] > 0
    ext = r.model_extra["tts"]
    assert ext["answer"] == "14" and ext["stop_reason"]
    assert ext["knobs"] == {"n": 4, "beam_width": 2, "max_steps": 10}


def test_openai_sampling_fields_set_the_knobs(server: ThreadServer):
    r = client(server).chat.completions.create(
        model="best_of_n", messages=USER, temperature=0.2, seed=3, max_completion_tokens=4096
    )
    assert r.model_extra["tts"]["knobs"] == {
        "temperature": 0.2,
        "seed": 3,
        "max_total_tokens": 4096,
    }


async def test_async_client(server: ThreadServer):
    c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    r = await c.chat.completions.create(model="best_of_n?n=4", messages=USER)
    assert r.choices[0].message.content.endswith("\\boxed{14}")
    stream = await c.chat.completions.create(model="cot", messages=USER, stream=True)
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text.endswith("\\boxed{14}")


def test_streaming_deltas_then_usage(server: ThreadServer):
    c = client(server)
    full = c.chat.completions.create(model="beam_search?n=4", messages=USER)
    chunks = list(
        c.chat.completions.create(
            model="beam_search?n=4",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for d in deltas if d) >= 3  # a delta per step of the solution
    assert "".join(d or "" for d in deltas) == full.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_stream_progress_comments_and_done(server: ThreadServer):
    body = {"model": "beam_search?n=4", "messages": USER, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    progress = [json.loads(line.removeprefix(": tts ")) for line in lines if line.startswith(":")]
    assert [p["node"] for p in progress] == ["prepare", "step", "step", "step", "finalize"]
    assert progress[1]["step"] == 1 and progress[-2]["step"] == 3
    assert lines[-1] == "data: [DONE]"


BAD = {
    "unknown model": ({"model": "beam_serch", "messages": USER}, 404, "model", "did you mean"),
    "unknown knob": ({"model": "beam_search?beamwidth=2", "messages": USER}, 400, "beamwidth", ""),
    "bad knob value": ({"model": "beam_search?n=many", "messages": USER}, 400, "n", "integer"),
    "bad knob combination": (
        {"model": "beam_search", "messages": USER, "tts": {"n": 5, "beam_width": 2}},
        400,
        None,
        "",
    ),
    "empty messages": ({"model": "cot", "messages": []}, 400, "messages", "non-empty"),
    "no user message": (
        {"model": "cot", "messages": [{"role": "system", "content": "hi"}]},
        400,
        "messages",
        "no user message",
    ),
    "bad role": ({"model": "cot", "messages": [{"role": "robot", "content": "x"}]}, 400, None, ""),
    "several choices": ({"model": "cot", "messages": USER, "n": 2}, 400, "n", ""),
    "tts not an object": ({"model": "cot", "messages": USER, "tts": [1]}, 400, "tts", ""),
    "a bool for a number": (
        {"model": "best_of_n", "messages": USER, "tts": {"n": True}},
        400,
        None,
        "n must be a number, got True",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_openai_errors(server: ThreadServer, case: str):
    body, status, param, text = BAD[case]
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    assert text in err["message"]


def test_bad_requests_raise_in_the_openai_client(server: ThreadServer):
    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="nope", messages=USER)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="beam_search?n=0", messages=USER)


def test_body_limits(server: ThreadServer):
    url = f"{server.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{" + b" " * (5 * 1024 * 1024) + b"}", timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(url, content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    long_q = [{"role": "user", "content": "Add 1. " * 20_000}]
    r = httpx.post(url, json={"model": "cot", "messages": long_q}, timeout=30)
    assert r.status_code == 400 and "limit" in r.json()["error"]["message"]


def test_a_failing_backend_is_a_502_in_openai_form():
    def broken(p: Trajectory, i: int) -> str:
        raise RuntimeError("GPU fell off")

    app = create_app(FakePolicy(broken), FakePRM(lambda t: [0.5] * len(t.steps)), ["best_of_n"])
    with ThreadServer(app) as s:
        r = httpx.post(
            f"{s.url}/v1/chat/completions", json={"model": "best_of_n", "messages": USER}
        )
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "backend_error"
        assert "GPU fell off" in r.json()["error"]["message"]
        body = {"model": "best_of_n", "messages": USER, "stream": True}
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        assert "GPU fell off" in json.loads(lines[-2].removeprefix("data: "))["error"]["message"]
        assert lines[-1] == "data: [DONE]"


def chat_model(server: ThreadServer, model: str = "beam_search?n=4"):
    return langchain_openai.ChatOpenAI(
        base_url=f"{server.url}/v1", api_key="unused", model=model, max_retries=0
    )


def test_chat_openai_sync_and_streaming(server: ThreadServer):
    llm = chat_model(server)
    msg = llm.invoke([HumanMessage(content=QUESTION)])
    assert isinstance(msg, AIMessage) and msg.content.endswith("\\boxed{14}")
    assert msg.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream(QUESTION))
    assert len(chunks) >= 3
    assert "".join(c.content for c in chunks) == msg.content


async def test_chat_openai_async(server: ThreadServer):
    llm = chat_model(server, "best_of_n?n=4")
    msg = await llm.ainvoke(QUESTION)
    assert msg.content.endswith("\\boxed{14}")
    text = "".join([c.content async for c in llm.astream(QUESTION)])
    assert text == msg.content


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_langgraph_agent_on_chat_openai(server: ThreadServer):
    from langgraph.prebuilt import create_react_agent

    agent = create_react_agent(chat_model(server), tools=[])
    out = agent.invoke({"messages": [("human", QUESTION)]})
    assert isinstance(out["messages"][-1], AIMessage)
    assert out["messages"][-1].content.endswith("\\boxed{14}")


@pytest.mark.skipif(not HAS_WEIGHTS, reason="embedded weights not built yet")
def test_openai_client_gets_the_right_answer_on_the_embedded_models():
    from langchain_tts.graph import create_tts_graph
    from langchain_tts.models import load_default_policy, load_default_prm
    from langchain_tts.serve import default_configs

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    policy, prm = load_default_policy(), load_default_prm()
    cfg = {**default_configs(16)["beam_search"], "seed": 0}
    local = create_tts_graph(policy, prm, "beam_search", cfg)
    # a question the embedded models answer right with this seed
    prob = next(
        p
        for p in make_split("test", 20)
        if local.invoke({"question": p.question})["answer"] == p.answer
    )
    app = create_app(policy, prm, ["beam_search"], budget=16)
    with ThreadServer(app) as s:
        r = client(s).chat.completions.create(
            model="beam_search", messages=[{"role": "user", "content": prob.question}], seed=0
        )
    assert r.model_extra["tts"]["answer"] == prob.answer
    assert f"\\boxed{{{prob.answer}}}" in r.choices[0].message.content
    assert r.usage.completion_tokens > 0
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.skipif(not HAS_WEIGHTS, reason="embedded weights not built yet")
@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_cut_by_max_tokens_finishes_with_length(stream: bool):
    """OpenAI clients tell a cut reply by ``finish_reason == "length"``: a solution that
    ``max_tokens`` ended before its answer is one, streaming or not."""
    from langchain_tts.models import load_default_policy, load_default_prm

    policy, prm = load_default_policy(), load_default_prm()
    app = create_app(policy, prm, ["cot"])
    messages = [{"role": "user", "content": "Start with 3. Add 4. Multiply by 2."}]
    with ThreadServer(app) as s:
        for max_tokens, finish in ((5, "length"), (None, "stop")):
            kw = {} if max_tokens is None else {"max_tokens": max_tokens}
            if stream:
                chunks = list(
                    client(s).chat.completions.create(
                        model="cot", messages=messages, stream=True, **kw
                    )
                )
                got = [c.choices[0].finish_reason for c in chunks if c.choices]
                assert got[-1] == finish and got[:-1] == [None] * (len(got) - 1)
            else:
                r = client(s).chat.completions.create(model="cot", messages=messages, **kw)
                assert r.choices[0].finish_reason == finish, r.choices[0].message.content


class SlowPolicy(StepPolicy):
    """Never finishes a solution; each call takes a while (a search to walk away from)."""

    name = "slow"
    num_parameters = 1000

    def __init__(self) -> None:
        self.calls = 0

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self.calls += 1
        await asyncio.sleep(0.1)
        return PolicyResult(steps=[[Step(text="more", tokens=1)] * n for _ in prefixes])


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_cancels_its_search(stream: bool):
    policy = SlowPolicy()
    app = create_app(policy, FakePRM(lambda t: [0.5] * len(t.steps)), ["beam_search"])
    body = {"model": "beam_search?n=4&max_steps=40", "messages": USER, "stream": stream}
    with ThreadServer(app) as s:
        url = f"{s.url}/v1/chat/completions"
        if stream:  # read the first progress comments, then hang up
            with httpx.stream("POST", url, json=body, timeout=10) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data:")
                next(lines)
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=body, timeout=0.5)
        time.sleep(1.0)  # the server notices the client is gone
        calls = policy.calls
        time.sleep(0.6)
        assert policy.calls == calls < 40  # the search stopped when the client left


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_leaves_no_thread_in_the_database(tmp_path, stream: bool):
    """The stateless route deletes each request's thread, also when its client left mid-run:
    the run is stopped before the delete, so none of its checkpoint writes land after it."""
    import sqlite3

    db = tmp_path / "ck.db"
    policy = SlowPolicy()
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    app = create_app(policy, prm, ["beam_search"], checkpointer=str(db))
    body = {"model": "beam_search?n=4&max_steps=40", "messages": USER, "stream": stream}
    with ThreadServer(app) as s:
        url = f"{s.url}/v1/chat/completions"
        for _ in range(2):
            if stream:
                with httpx.stream("POST", url, json=body, timeout=10) as r:
                    lines = r.iter_lines()
                    for _ in range(3):
                        next(lines)
            else:
                with pytest.raises(httpx.ReadTimeout):
                    httpx.post(url, json=body, timeout=0.5)
        time.sleep(1.5)  # the server notices the clients are gone
        with sqlite3.connect(db) as con:
            left = con.execute("SELECT DISTINCT thread_id FROM checkpoints").fetchall()
        assert left == []
