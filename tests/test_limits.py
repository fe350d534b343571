"""The served app's limits and context checks: absurd knobs, over-long questions, big batches,
too many runs at once and malformed bodies are refused with a 4xx that names the limit,
before any model call; the same inputs are typed errors from the Python API."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

pytest.importorskip("langserve")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from langchain_tts.backends.hf import context_length_of  # noqa: E402
from langchain_tts.core.config import SamplingParams, StrategyConfig  # noqa: E402
from langchain_tts.core.errors import ConfigError, InputError  # noqa: E402
from langchain_tts.core.types import Step, Trajectory  # noqa: E402
from langchain_tts.graph import create_tts_graph  # noqa: E402
from langchain_tts.limits import LimitError, ServeLimits, check_knobs  # noqa: E402
from langchain_tts.policies.base import PolicyResult  # noqa: E402
from langchain_tts.policies.openai import OpenAIPolicy  # noqa: E402
from langchain_tts.serve import create_app  # noqa: E402
from langchain_tts.strategies.core import check_context, question_of  # noqa: E402
from langchain_tts.testing import FakePolicy, FakePRM  # noqa: E402
from tests.test_serve import QUESTION, OraclePolicy, ThreadServer, requires_weights  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
USER = [{"role": "user", "content": QUESTION}]


def prm() -> FakePRM:
    return FakePRM(lambda t: [0.9] * len(t.steps))


@pytest.fixture(scope="module")
def served() -> tuple[TestClient, OraclePolicy]:
    policy = OraclePolicy()
    policy.context_length = 512
    app = create_app(policy, prm(), ["best_of_n", "beam_search", "mcts", "revision", "router"])
    return TestClient(app), policy


def post(client: TestClient, path: str, body: object) -> httpx.Response:
    """``body`` as JSON with non-ASCII escaped (lone surrogates travel as ``\\ud800``)."""
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, content=raw, headers={"content-type": "application/json"})


def invoke(strategy: str, configurable: dict, question: str = QUESTION) -> dict:
    return {"input": {"question": question}, "config": {"configurable": configurable}}


# -- knob maxima and the allow-list ----------------------------------------------------------
ABSURD = {
    "best_of_n n": ("best_of_n", {"n": 100_000}, "maxima.n"),
    "beam n and width": ("beam_search", {"n": 10**6, "beam_width": 10**6}, "maxima."),
    "mcts expand_k": ("mcts", {"expand_k": 10**5}, "maxima.expand_k"),
    "mcts simulations": ("mcts", {"simulations": 10**6}, "maxima.simulations"),
    "revisions": ("revision", {"revisions": 10**6}, "maxima.revisions"),
    "over the context": ("best_of_n", {"max_total_tokens": 100_000}, "maxima.max_total_tokens"),
    "router budget": ("router", {"max_tokens": 1e15}, "maxima.max_tokens"),
    "huge budget": ("best_of_n", {"max_tokens": 1e300}, "maxima.max_tokens"),
    "huge FLOPs budget": ("best_of_n", {"max_flops": 1e300}, "maxima.max_flops"),
    "mcts parallel": ("mcts", {"parallel": 10**5}, "maxima.parallel"),
    "mcts width and tries": ("mcts", {"width": 10**5, "tries": 10**6}, "maxima."),
    "a 3 MB template": (
        "revision",
        {"revision_template": "{question}{attempt}" + "x" * 3_000_000},
        "limit for /tts/revision: at most 4096",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(ABSURD))
@pytest.mark.parametrize("endpoint", ["invoke", "stream", "batch"])
def test_absurd_knobs_are_400_naming_the_limit_before_any_call(served, case: str, endpoint: str):
    client, policy = served
    strategy, conf, limit = ABSURD[case]
    before = len(policy.calls)
    body: dict = invoke(strategy, conf)
    if endpoint == "batch":
        body = {"inputs": [body["input"]], "config": body["config"]}
    r = post(client, f"/tts/{strategy}/{endpoint}", body)
    assert r.status_code == 400, r.text
    assert limit in r.json()["detail"] and "over this server's limit" in r.json()["detail"]
    assert len(policy.calls) == before


def test_values_within_the_maxima_run(served):
    client, _ = served
    r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"n": 256}))
    assert r.status_code == 200, r.text
    assert r.json()["output"]["answer"] == "14"


def test_the_openai_route_has_the_same_maxima(served):
    client, policy = served
    before = len(policy.calls)
    r = post(client, "/v1/chat/completions", {"model": "best_of_n?n=1000", "messages": USER})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "limit_exceeded" and err["param"] == "n" and "n <= 256" in err["message"]
    r = post(
        client, "/v1/chat/completions", {"model": "mcts", "messages": USER, "tts": {"expand_k": 99}}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "expand_k"
    assert len(policy.calls) == before


def test_only_allowed_knobs_may_be_set():
    client = TestClient(
        create_app(OraclePolicy(), prm(), ["best_of_n"], limits=ServeLimits(allow=["n"]))
    )
    ok = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"n": 2}))
    assert ok.status_code == 200, ok.text
    r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"temperature": 0.1}))
    assert r.status_code == 400 and "'allow'" in r.json()["detail"]
    assert "temperature" in r.json()["detail"]
    # the route's own default sent back explicitly is no override
    same = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"temperature": 0.7}))
    assert same.status_code == 200
    r = post(client, "/v1/chat/completions", {"model": "best_of_n", "messages": USER, "seed": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_config_schema_shows_the_maxima(served):
    client, _ = served
    schema = client.get("/tts/beam_search/config_schema").json()
    (knobs,) = schema["$defs"].values()
    props = knobs["properties"]
    assert props["n"]["maximum"] == 256 and props["beam_width"]["maximum"] == 64
    assert props["max_total_tokens"]["maximum"] == 512  # the policy's context
    assert "maximum" not in props["temperature"] or props["temperature"]["maximum"] == 5.0


# -- default budget --------------------------------------------------------------------------
def test_a_run_without_a_budget_gets_the_servers_default():
    # 100 tokens cannot pay one call's worst case (n x max_step_tokens): the default budget
    # is in force when the refusal names it; a client's own budget replaces it
    limits = ServeLimits(default_max_tokens=100)
    client = TestClient(create_app(OraclePolicy(), prm(), ["best_of_n"], limits=limits))
    r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"n": 2}))
    assert r.status_code == 400 and "max_tokens=100 " in r.json()["detail"], r.text
    r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"n": 2, "max_tokens": 1e6}))
    assert r.status_code == 200, r.text
    r = post(client, "/v1/chat/completions", {"model": "best_of_n?n=2", "messages": USER})
    assert r.status_code == 400 and "max_tokens=100 " in r.json()["error"]["message"]


def test_a_clients_flops_budget_keeps_the_servers_token_default():
    """The defaults apply per kind: ``max_flops=1e17`` sent alone does not lift the
    server's default token budget (it used to: any budget counted as the client's own)."""
    limits = ServeLimits(default_max_tokens=100)
    client = TestClient(create_app(OraclePolicy(), prm(), ["best_of_n"], limits=limits))
    r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"n": 2, "max_flops": 1e17}))
    assert r.status_code == 400 and "max_tokens=100 " in r.json()["detail"], r.text
    body = {"model": "best_of_n?n=2", "messages": USER, "tts": {"max_flops": 1e17}}
    r = post(client, "/v1/chat/completions", body)
    assert r.status_code == 400 and "max_tokens=100 " in r.json()["error"]["message"]


def test_a_nan_knob_is_called_no_number(served):
    client, _ = served
    r = post(client, "/tts/best_of_n/invoke", '{"input": {"question": "Start with 3."}, '
             '"config": {"configurable": {"max_tokens": NaN}}}')  # fmt: skip
    assert r.status_code == 400 and "max_tokens must be a number" in r.json()["detail"], r.text
    r = post(client, "/v1/chat/completions", {"model": "best_of_n?n=nan", "messages": USER})
    assert r.status_code == 400 and "n must be a number" in r.json()["error"]["message"]


@pytest.mark.parametrize("knob", ["n", "temperature", "max_tokens"])
def test_a_bool_for_a_numeric_knob_is_a_400_at_the_top_of_configurable(served, knob: str):
    """LangServe's copy of the knobs schema turned ``true`` into 1 before the route's own
    check saw it: ``{"n": true}`` ran one sample with a 200."""
    client, policy = served
    before = len(policy.calls)
    r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {knob: True}))
    assert r.status_code == 400 and f"{knob} must be a number, got True" in r.json()["detail"]
    assert len(policy.calls) == before


def test_a_servable_graph_with_limits_refuses_absurd_knobs_itself():
    """For deployments that call the graph directly (``langgraph.json``): context and
    configurable, at the top and under the graph's name, before any model call; a run with
    no budget gets the default one, and a run within the maxima runs."""
    from langchain_tts.serve import servable_graph, servable_router

    policy = OraclePolicy()
    limits = ServeLimits(default_max_tokens=5e5)
    graph = servable_graph(policy, prm(), "best_of_n", {"n": 2}, limits=limits)
    q = {"question": QUESTION}
    for kwargs in (
        {"context": {"n": 10**9}},
        {"config": {"configurable": {"n": 10**9}}},
        {"config": {"configurable": {"tts_best_of_n": {"n": 10**9}}}},
        {"context": {"max_flops": 1e300}},
    ):
        with pytest.raises(ConfigError, match=r"over this server's limit for best_of_n"):
            graph.invoke(q, **kwargs)
    assert not policy.calls
    out = graph.invoke(q, context={"n": 256})
    assert out["answer"] == "14" and out["usage"].policy_calls >= 1
    cfg = graph.get_context_jsonschema()["properties"]
    assert cfg["max_tokens"]["default"] == 5e5  # the default budget, shown as the knob's
    router = servable_router(policy, prm(), limits=limits)
    with pytest.raises(ConfigError, match=r"maxima\.max_tokens"):
        router.invoke(q, context={"max_tokens": 1e300})
    assert router.get_context_jsonschema()["properties"]["max_tokens"]["default"] == 5e5
    plain = servable_graph(policy, prm(), "best_of_n", {"n": 2})  # no limits: the library
    assert plain.invoke(q, context={"n": 300})["answer"] == "14"


def test_create_tts_graph_and_the_router_take_limits_for_an_app_of_ones_own():
    """``limits=`` on the builders themselves (what ``servable_*`` pass on): refusals name
    the limit before any call, a run's own knob check runs first, and the limits' type is
    checked when the graph is built."""
    from langchain_tts import create_router_graph

    policy = OraclePolicy()
    limits = ServeLimits(maxima={"n": 4}, default_max_tokens=5e5)
    graph = create_tts_graph(policy, prm(), "best_of_n", {"n": 2}, limits=limits)
    with pytest.raises(LimitError, match=r"n=5 is over this server's limit for best_of_n: n <= 4"):
        graph.invoke({"question": QUESTION}, context={"n": 5})
    assert not policy.calls
    assert graph.invoke({"question": QUESTION}, context={"n": 4})["answer"] == "14"
    assert graph.get_context_jsonschema()["properties"]["max_tokens"]["default"] == 5e5
    # an explicit budget of the app's own stays; only a missing one gets the default
    own = create_tts_graph(policy, prm(), "best_of_n", {"max_tokens": 900}, limits=limits)
    assert own.get_context_jsonschema()["properties"]["max_tokens"]["default"] == 900
    seen: list[dict] = []
    router = create_router_graph(policy, prm(), limits=limits, knob_check=seen.append)
    with pytest.raises(LimitError, match=r"maxima\.max_tokens"):
        router.invoke({"question": QUESTION}, context={"max_tokens": 1e300})
    assert seen == [{"max_tokens": 1e300}]
    with pytest.raises(ConfigError, match="limits must be a ServeLimits, got dict"):
        create_tts_graph(policy, prm(), "best_of_n", limits={"maxima": {"n": 4}})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limits must be a ServeLimits, got dict"):
        create_router_graph(policy, prm(), limits={})  # type: ignore[arg-type]


# -- /batch size and admission ---------------------------------------------------------------
def test_a_batch_over_the_cap_is_413_before_any_call():
    policy = OraclePolicy()
    limits = ServeLimits(max_batch=4, max_in_flight=8)
    client = TestClient(create_app(policy, prm(), ["best_of_n"], limits=limits))
    body = {"inputs": [{"question": QUESTION}] * 5, "config": {"configurable": {"n": 2}}}
    r = post(client, "/tts/best_of_n/batch", body)
    assert r.status_code == 413 and r.json()["limit"] == "max_batch"
    assert "max_batch=4" in r.json()["detail"] and policy.calls == []
    body["inputs"] = body["inputs"][:4]
    assert post(client, "/tts/best_of_n/batch", body).status_code == 200


class GatedPolicy(OraclePolicy):
    """The oracle, held at its first call until ``gate`` is set (runs stay in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self.entered.release()
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return await super()._agenerate(prefixes, n, params)


def test_runs_past_max_in_flight_get_429_with_retry_after():
    policy = GatedPolicy()
    limits = ServeLimits(max_in_flight=2, max_batch=2, retry_after=3)
    app = create_app(policy, prm(), ["best_of_n"], limits=limits)
    body = invoke("best_of_n", {"n": 1})
    with ThreadServer(app) as s:
        results: list[int] = []
        held = [
            threading.Thread(
                target=lambda: results.append(
                    httpx.post(f"{s.url}/tts/best_of_n/invoke", json=body, timeout=30).status_code
                )
            )
            for _ in range(2)
        ]
        for t in held:
            t.start()
        for _ in held:  # both runs are inside the model: every slot is taken
            assert policy.entered.acquire(timeout=20)
        calls = len(policy.calls)
        r = httpx.post(f"{s.url}/tts/best_of_n/invoke", json=body, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["limit"] == "max_in_flight"
        r = httpx.post(
            f"{s.url}/tts/best_of_n/batch",
            json={"inputs": [body["input"]], "config": body["config"]},
            timeout=30,
        )
        assert r.status_code == 429
        r = httpx.post(
            f"{s.url}/v1/chat/completions", json={"model": "best_of_n", "messages": USER}
        )
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert httpx.get(f"{s.url}/health").status_code == 200  # not a run: always answered
        assert app.state.runs.rejected == 3
        assert len(policy.calls) == calls
        policy.gate.set()
        for t in held:
            t.join(timeout=30)
        assert results == [200, 200]
        deadline = time.monotonic() + 5  # the slot is freed just after the last byte is sent
        while app.state.runs.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.runs.in_flight == 0
        r = httpx.post(f"{s.url}/tts/best_of_n/invoke", json=body, timeout=30)
        assert r.status_code == 200


# -- client mistakes are 4xx, not 500 / 502 --------------------------------------------------
def test_deeply_nested_json_is_4xx(served):
    client, _ = served
    for path in ("/tts/best_of_n/invoke", "/tts/best_of_n/batch", "/tts/best_of_n/stream"):
        r = post(client, path, "[" * 100_000)
        assert r.status_code == 422 and "nested too deeply" in r.json()["detail"], path
    r = post(client, "/v1/chat/completions", "[" * 100_000)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]


def test_a_text_block_that_is_no_text_is_422(served):
    client, _ = served
    msgs = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    r = post(client, "/tts/best_of_n/invoke", {"input": {"messages": msgs}})
    assert r.status_code == 422 and "has a int where text belongs" in r.text
    r = post(client, "/tts/best_of_n/stream", {"input": {"messages": msgs}})
    assert r.status_code == 422


def test_langgraph_internal_keys_in_configurable_are_400(served):
    client, policy = served
    before = len(policy.calls)
    for key in ("__pregel_runtime", "__pregel_checkpointer", "__anything"):
        r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {key: 1}))
        assert r.status_code == 400 and key in r.json()["detail"]
    assert len(policy.calls) == before


def test_a_lone_surrogate_is_4xx_not_502(served):
    client, _ = served
    r = post(client, "/tts/best_of_n/invoke", {"input": {"question": "\ud800 Start with 3."}})
    assert r.status_code == 422 and "lone surrogate" in r.text
    r = post(
        client,
        "/v1/chat/completions",
        {"model": "best_of_n", "messages": [{"role": "user", "content": "Start \udfff"}]},
    )
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": "\ud800"},
        {"role": "user", "content": "Start with 1.", "name": "\udc00"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok \ud800"}]},
    ],
)
def test_a_lone_surrogate_anywhere_in_the_messages_is_4xx_before_the_run(served, message):
    """The reply (LangServe's) or the traces carry every message back: a lone surrogate in
    one that is not the question used to run the whole search, then fail as a 500."""
    client, policy = served
    before = len(policy.calls)
    msgs = [message, *USER] if message["role"] == "assistant" else [message]
    r = post(client, "/tts/best_of_n/invoke", {"input": {"messages": msgs}})
    assert r.status_code == 422 and "not valid Unicode" in r.text, r.text
    r = post(client, "/v1/chat/completions", {"model": "best_of_n", "messages": msgs})
    assert r.status_code == 400 and "not valid Unicode" in r.json()["error"]["message"], r.text
    assert len(policy.calls) == before


def test_malformed_tool_calls_are_4xx_not_500(served):
    client, policy = served
    before = len(policy.calls)
    bad = {"role": "assistant", "content": "x", "tool_calls": "zz"}
    r = post(client, "/tts/best_of_n/invoke", {"input": {"messages": [bad, *USER]}})
    assert r.status_code == 422 and "messages[0] is not a chat message" in r.text, r.text
    ai = {"type": "ai", "content": "x", "tool_calls": "zz"}
    r = post(client, "/tts/best_of_n/invoke", {"input": {"messages": [ai, *USER]}})
    assert r.status_code == 422, r.text
    r = post(client, "/v1/chat/completions", {"model": "best_of_n", "messages": [bad, *USER]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert len(policy.calls) == before


def test_an_error_that_echoes_a_lone_surrogate_still_renders(served):
    client, _ = served
    body = {"model": "best_of_n", "messages": USER, "tts": {"\ud800": 1}}
    r = post(client, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_knob", r.text
    r = post(client, "/v1/chat/completions", {"model": "best_of_n?\ud800=1", "messages": USER})
    assert r.status_code == 400, r.text


def test_openai_body_errors_and_flags_are_in_openai_form(served):
    client, _ = served
    r = client.post("/v1/chat/completions", content=b'{"model": "\xff"}')
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"], r.text
    body = {"model": "best_of_n", "messages": USER, "stream": "no"}
    r = post(client, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream", r.text
    body = {"model": "best_of_n", "messages": USER, "stream_options": {"include_usage": "yes"}}
    r = post(client, "/v1/chat/completions", body)
    assert r.json()["error"]["param"] == "stream_options.include_usage"


def test_openai_sampling_fields_the_router_lacks_name_the_clients_field(served):
    client, _ = served
    for field, value in (("max_tokens", 100), ("temperature", 0.5)):
        r = post(
            client, "/v1/chat/completions", {"model": "router", "messages": USER, field: value}
        )
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == field, r.text
        assert f"{field} does not apply to model 'router'" in err["message"]


def test_openai_max_tokens_below_the_step_cap_runs(served):
    """OpenAI's ``max_tokens`` sets ``max_total_tokens``; below the route's per-step cap
    (2048 by default) the step cap follows it, instead of an error about a knob the client
    never sent."""
    client, _ = served
    for field in ("max_tokens", "max_completion_tokens"):
        body = {"model": "best_of_n?n=2", "messages": USER, field: 256}
        r = post(client, "/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        assert r.json()["tts"]["knobs"] == {"n": 2, "max_total_tokens": 256}
    r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"max_total_tokens": 256}))
    assert r.status_code == 200, r.text


def test_an_out_of_range_seed_is_4xx_not_502(served):
    client, _ = served
    r = post(client, "/tts/best_of_n/invoke", invoke("best_of_n", {"seed": 10**30}))
    assert 400 <= r.status_code < 500 and "seed" in r.text
    r = post(client, "/v1/chat/completions", {"model": "best_of_n", "messages": USER, "seed": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_the_python_api_raises_typed_errors_for_the_same_inputs():
    graph = create_tts_graph(FakePolicy(answer_one), prm(), "best_of_n", {"n": 2})
    with pytest.raises(InputError, match="lone surrogate"):
        graph.invoke({"question": "\ud800"})
    msgs = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    with pytest.raises(InputError, match="where text belongs"):
        graph.invoke({"messages": msgs})
    with pytest.raises(ConfigError, match="seed"):
        graph.invoke({"question": "What is 3 + 4?"}, {"configurable": {"seed": 10**30}})
    with pytest.raises(ValueError, match="seed"):
        StrategyConfig(seed=-5)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=2**64)


# -- context lengths -------------------------------------------------------------------------
def answer_one(p: Trajectory, i: int) -> Step:
    return Step(text="\\boxed{1}", tokens=3, finish_reason="eos")


class CountingPolicy(FakePolicy):
    """A fake policy with a 64-token context and no tokenizer."""

    context_length = 64

    def __init__(self) -> None:
        super().__init__(answer_one)


@pytest.mark.parametrize("strategy", ["cot", "best_of_n", "beam_search", "mcts"])
def test_a_question_too_long_for_the_context_is_an_input_error_before_any_call(strategy: str):
    policy = CountingPolicy()
    graph = create_tts_graph(policy, prm(), strategy)
    # no tokenizer: a low estimate of 4 bytes a token, so 400 characters are 100 tokens
    with pytest.raises(InputError, match="context is 64 tokens") as e:
        graph.invoke({"question": "x" * 400})
    assert "Shorten the question" in str(e.value)
    assert policy.calls == []
    graph.invoke({"question": "x" * 100})  # 25 tokens + room for a step: runs
    assert policy.calls


def test_the_prm_context_is_checked_too():
    short_prm = prm()
    short_prm.context_length = 16
    with pytest.raises(InputError, match="for the PRM"):
        check_context("y" * 100, FakePolicy(answer_one), short_prm)
    check_context("y" * 100, FakePolicy(answer_one), prm())  # unknown context: not checked


def test_over_http_an_over_long_question_is_422_before_any_call():
    policy = OraclePolicy()
    policy.context_length = 64
    client = TestClient(create_app(policy, prm(), ["best_of_n", "router"]))
    long = {"question": QUESTION * 20}
    for route in ("best_of_n", "router"):
        for endpoint in ("invoke", "stream", "stream_events"):
            r = post(client, f"/tts/{route}/{endpoint}", {"input": long})
            assert r.status_code == 422, (endpoint, r.text)
            assert "too long for the policy" in r.json()["detail"]
    r = post(client, "/tts/best_of_n/batch", {"inputs": [{"question": QUESTION}, long]})
    assert r.status_code == 422 and "context is 64 tokens" in r.json()["detail"]
    msgs = [{"role": "user", "content": QUESTION * 20}]
    for stream in (False, True):
        body = {"model": "best_of_n", "messages": msgs, "stream": stream}
        r = post(client, "/v1/chat/completions", body)
        assert r.status_code == 400 and "context is 64 tokens" in r.json()["error"]["message"]
    assert policy.calls == []


@requires_weights
def test_the_embedded_models_know_their_512_positions():
    from langchain_tts.models import load_default

    policy, verifier = load_default()
    assert policy.context_length == 512 and verifier.context_length == 512
    graph = create_tts_graph(policy, verifier, "cot")
    with pytest.raises(InputError, match="context is 512 tokens"):
        graph.invoke({"question": "Start with 3. Add 4." * 40})  # 800 characters
    question = "Start with 3." + " Add 4." * 60  # 433 characters: fits
    assert question_of({"question": question}) == question
    check_context(question, policy, verifier)


def test_backends_read_the_context_from_their_config():
    class Config:
        max_position_embeddings = 4096

    class GPT2:
        n_positions = 1024

    assert context_length_of(Config()) == 4096 and context_length_of(GPT2()) == 1024
    assert context_length_of(None) is None
    p = OpenAIPolicy("http://127.0.0.1:9/v1", "m", chat_template="none", context_length=8192)
    assert p.context_length == 8192
    assert OpenAIPolicy("http://127.0.0.1:9/v1", "m", chat_template="none").context_length is None
    with pytest.raises(ConfigError, match="context_length"):
        OpenAIPolicy("http://127.0.0.1:9/v1", "m", chat_template="none", context_length=0)


# -- the limits themselves -------------------------------------------------------------------
def test_limits_files_json_and_toml(tmp_path: Path):
    j = tmp_path / "limits.json"
    j.write_text(json.dumps({"maxima": {"n": 32, "simulations": None}, "max_in_flight": 8}))
    lim = ServeLimits.from_file(j, max_batch=4)
    assert lim.maxima["n"] == 32 and lim.maxima["simulations"] is None
    assert lim.maxima["beam_width"] == 64  # the defaults stay under the file's
    assert (lim.max_in_flight, lim.max_batch) == (8, 4)
    t = tmp_path / "limits.toml"
    t.write_text('allow = ["n", "seed"]\ndefault_max_tokens = 5e5\n[maxima]\nn = 16\n')
    lim = ServeLimits.from_file(t)
    assert lim.allow == ["n", "seed"] and lim.default_max_tokens == 5e5 and lim.maxima["n"] == 16
    with pytest.raises(ConfigError, match="did you mean 'beam_width'"):
        ServeLimits.build({"maxima": {"beamwidth": 4}})
    with pytest.raises(ConfigError, match="max_batch"):
        ServeLimits.build({"max_batch": 100, "max_in_flight": 10})
    with pytest.raises(ConfigError, match="cannot read"):
        ServeLimits.from_file(tmp_path / "missing.toml")


def test_check_knobs_reads_numbers_and_numeric_strings():
    lim = ServeLimits()
    check_knobs(lim, {"n": 256, "temperature": 0.1, "final": "best_leaf"}, route="r")
    with pytest.raises(ConfigError, match="maxima.n"):
        check_knobs(lim, {"n": "257"}, route="r")
    with pytest.raises(ConfigError, match="maxima.n"):
        check_knobs(lim, {"n": 10**400}, route="r")


def test_tts_serve_flags_build_the_limits(tmp_path: Path):
    from langchain_tts.cli import _serve_limits

    f = tmp_path / "l.toml"
    f.write_text("max_in_flight = 8\n[maxima]\nn = 32\n")
    lim = _serve_limits(f, ["beam_width=8", "budget=none"], ["n"], max_batch=2)
    assert lim.maxima["n"] == 32 and lim.maxima["beam_width"] == 8
    assert lim.maxima["budget"] is None and lim.allow == ["n"]
    assert (lim.max_batch, lim.max_in_flight) == (2, 8)
    with pytest.raises(ConfigError, match="KNOB=MAX"):
        _serve_limits(None, ["n"], [])


def test_prefix_steps_are_checked_before_any_call():
    policy = CountingPolicy()
    graph = create_tts_graph(policy, prm(), "beam_search")
    bad: list[tuple[object, str]] = [
        ("Start with 3.", "must be a list of step strings"),
        ([3], r"prefix_steps\[0\] must be a non-empty string"),
        (["ok", "  "], r"prefix_steps\[1\] must be a non-empty string"),
        (["s"] * 1000, "the limit is 256"),
        (["x" * 60] * 4, "too long for the policy"),  # with the question: over 64 tokens
        (["ok", "a\ud800"], r"prefix_steps\[1\] holds a lone surrogate"),
    ]
    for steps, match in bad:
        with pytest.raises(InputError, match=match):
            graph.invoke({"question": "What is 3 + 4?", "prefix_steps": steps})
    assert policy.calls == []
    out = graph.invoke({"question": "What is 3 + 4?", "prefix_steps": ["3+4=7"]})
    assert out["candidates"][0].steps[0] == "3+4=7"


def test_over_http_bad_prefix_steps_are_422(served):
    client, _ = served
    body = {"input": {"question": QUESTION, "prefix_steps": [""]}}
    r = post(client, "/tts/best_of_n/invoke", body)
    assert r.status_code == 422 and "prefix_steps[0]" in r.text
    r = post(client, "/tts/best_of_n/invoke", {"input": {"question": QUESTION, "prefix_steps": 7}})
    assert r.status_code == 422
    r = post(client, "/tts/router/invoke", {"input": {"question": QUESTION, "prefix_steps": ["a"]}})
    assert r.status_code == 422 and "router does not take prefix_steps" in r.text
    ok = {"input": {"question": QUESTION, "prefix_steps": ["Start with 3."]}}
    r = post(client, "/tts/best_of_n/invoke", ok)
    assert r.status_code == 200, r.text
    assert r.json()["output"]["candidates"][0]["steps"][0] == "Start with 3."


def test_router_prefix_knobs_are_checked_before_any_call(served):
    client, policy = served
    before = len(policy.calls)
    for conf in ({"prefix_threshold": 5}, {"prefix_threshold": -1}, {"reuse_prefix": "maybe"}):
        r = post(client, "/tts/router/invoke", invoke("router", conf))
        assert 400 <= r.status_code < 500, (conf, r.text)
        assert next(iter(conf)) in r.text
    assert len(policy.calls) == before
    r = post(client, "/tts/router/invoke", invoke("router", {"prefix_threshold": 0.9}))
    assert r.status_code == 200, r.text


BIG_INT = "1" * 4301  # past Python's digit limit for int(): json.loads raises ValueError


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": ["user"], "content": QUESTION}]}, "messages[0]"),
        ({"messages": [{"role": {"a": 1}, "content": QUESTION}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [QUESTION]}]}, "messages[0].content[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "system", "content": ""}] * 1000 + USER}, "messages"),
        ({"n": True}, "n"),
        ({"stop": ["="]}, "stop"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_openai_requests_it_cannot_honour_are_400_naming_the_field(served, body, param):
    """A client's mistake, or a field whose effect the strategies cannot give (a stop string,
    logprobs, JSON mode, a forced tool call), is a 400 naming it before any model call: a 200
    that ignored it, dropped a content part, or a 500 would mislead the client."""
    client, policy = served
    before = len(policy.calls)
    r = post(client, "/v1/chat/completions", {"model": "best_of_n", "messages": USER, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert len(policy.calls) == before


def test_openai_fields_at_their_defaults_and_text_parts_are_taken(served):
    """What clients send by default (a null stop, logprobs false, tool_choice auto, a text
    response format) runs; text parts are one question, joined by newlines."""
    client, policy = served
    parts = [{"type": "text", "text": "Start with 3. Add 4."}, {"type": "text", "text": "Add 1."}]
    body = {
        "model": "best_of_n?n=1",
        "messages": [{"role": "user", "content": parts}],
        "stop": None,
        "logprobs": False,
        "tool_choice": "auto",
        "response_format": {"type": "text"},
        "frequency_penalty": 0,
    }
    r = post(client, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["tts"]["answer"] == "8"


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/tts/best_of_n/invoke"])
def test_a_body_the_json_parser_refuses_is_4xx_not_500(served, route):
    """An integer past Python's digit limit, or a UTF-16 body (json.loads would take it; the
    routes read UTF-8 only), is the client's mistake."""
    client, _ = served
    raw = '{"model": "best_of_n", "messages": [], "x": ' + BIG_INT + "}"
    r = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and "digits" in r.text, r.text
    utf16 = json.dumps({"model": "best_of_n", "messages": USER}).encode("utf-16")
    r = client.post(route, content=utf16, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text


def test_max_completion_tokens_wins_over_the_deprecated_max_tokens(served):
    client, _ = served
    body = {"model": "best_of_n?n=1", "messages": USER, "max_tokens": 100}
    r = post(client, "/v1/chat/completions", {**body, "max_completion_tokens": 200})
    assert r.status_code == 200 and r.json()["tts"]["knobs"]["max_total_tokens"] == 200, r.text


def test_token_cap_defaults_over_the_context_are_lowered_to_it():
    """The config's own 8192 / 2048 token caps are over a 512-token model's limit: the
    served graph's defaults are the limit, so a client lowering a cap is not refused while
    sending the old default back passed."""
    policy = FakePolicy(lambda t, i: Step(text="1", tokens=1))
    limits = ServeLimits().for_context(512)
    graph = create_tts_graph(policy, prm(), "best_of_n", {"n": 2}, limits=limits)
    knobs = graph.context_schema()
    assert (knobs.max_total_tokens, knobs.max_step_tokens) == (512, 512)
    graph.invoke({"question": QUESTION}, {"configurable": {"max_total_tokens": 256}})
    for sent in (1024, 8192):  # the old default too
        with pytest.raises(LimitError, match="max_total_tokens"):
            graph.invoke({"question": QUESTION}, {"configurable": {"max_total_tokens": sent}})
