"""Model calls as child runs: the trace tree of a search, its token counts against the run's
ledger, the graph's metadata, and LangSmith's tracer format, all offline."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.langchain import LangChainTracer
from langchain_core.tracers.schemas import Run

import langchain_tts.tracing as tracing
from langchain_tts.core.errors import BackendError
from langchain_tts.core.types import Trajectory
from langchain_tts.graph import create_tts_graph
from langchain_tts.testing import FakePolicy, FakePRM

QUESTION = "Start with 3. Add 4. Multiply by 2."
STEPS = 3  # the fake policy's solutions: two steps, then the boxed answer


def step_fn(p: Trajectory, i: int) -> str:
    if len(p.steps) < STEPS - 1:
        return f"step {len(p.steps) + 1}, sample {i}: some reasoning here"
    return f"so the answer is \\boxed{{{14 + i % 2}}}"


def models() -> tuple[FakePolicy, FakePRM]:
    return FakePolicy(step_fn), FakePRM(lambda t: [0.5 + 0.1 * (len(t.steps) % 3)] * len(t.steps))


class Recorder(BaseTracer):
    """Keeps every finished root run (with its child runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.roots: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.roots.append(run)


def walk(run: Run) -> list[Run]:
    return [run, *(r for c in run.child_runs for r in walk(c))]


def check_beam_search_trace(root: Run, out: dict) -> None:
    usage = out["usage"]
    assert root.name == "tts_beam_search" and root.run_type == "chain"
    assert root.metadata["tts_strategy"] == "beam_search"
    assert root.metadata["tts_knobs"]["n"] == 4 and root.metadata["tts_knobs"]["beam_width"] == 2
    assert {"tts", "tts:beam_search"} <= set(root.tags)
    nodes = [c.name for c in root.child_runs]
    assert nodes == ["prepare", *["step"] * STEPS, "finalize"]
    policy_runs, prm_runs = [], []
    for node in root.child_runs:
        kids = node.child_runs
        if node.name == "step":  # one policy and one PRM call per search step, in order
            assert [(k.run_type, k.name) for k in kids] == [
                ("llm", "fake-policy"),
                ("chain", "fake-prm"),
            ]
            policy_runs.append(kids[0])
            prm_runs.append(kids[1])
        elif node.name == "prepare":
            assert kids == []
    assert len(policy_runs) == usage.policy_calls == STEPS
    assert len(prm_runs) == usage.prm_calls == STEPS
    # the calls' token counts are the ledger's
    tok = [r.outputs["llm_output"]["token_usage"] for r in policy_runs]
    prompt = usage.policy_prompt_tokens + usage.policy_cached_tokens  # OpenAI's: with cached
    assert sum(t["prompt_tokens"] for t in tok) == prompt
    assert sum(t["cached_tokens"] for t in tok) == usage.policy_cached_tokens
    assert sum(t["completion_tokens"] for t in tok) == usage.policy_generated_tokens
    assert sum(t["total_tokens"] for t in tok) == prompt + usage.policy_generated_tokens
    assert sum(r.outputs["llm_output"]["flops"] for r in policy_runs) == usage.policy_flops
    assert sum(r.outputs["tokens"] for r in prm_runs) == usage.prm_tokens
    assert sum(r.outputs["flops"] for r in prm_runs) == usage.prm_flops
    assert all(r.outputs["scored"] == r.inputs["trajectories"] for r in prm_runs)
    assert prm_runs[0].outputs["min_score"] <= prm_runs[0].outputs["max_score"]
    first = policy_runs[0]
    assert "tts:policy" in first.tags and first.extra["invocation_params"]["n"] == 4
    assert first.inputs["prompts"][0].startswith("1 prefixes x 4 samples")
    assert QUESTION in first.inputs["prompts"][0]
    # children inherit the graph's metadata
    assert first.metadata["tts_strategy"] == "beam_search"
    # what is known at the end: a tts_summary run under finalize
    (summary,) = root.child_runs[-1].child_runs
    assert summary.name == "tts_summary"
    assert (
        summary.outputs["stop_reason"] == out["stop_reason"] == summary.metadata["tts_stop_reason"]
    )
    assert summary.outputs["flops"] == usage.flops == summary.metadata["tts_flops"]
    assert summary.outputs["tokens"] == usage.tokens
    assert summary.outputs["answer"] == out["answer"]
    assert summary.outputs["knobs"]["n"] == 4


def test_trace_of_a_beam_search_sync():
    policy, prm = models()
    g = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    rec = Recorder()
    out = g.invoke({"question": QUESTION}, {"callbacks": [rec]})
    (root,) = rec.roots
    check_beam_search_trace(root, out)


async def test_trace_of_a_beam_search_async_with_call_time_knobs():
    policy, prm = models()
    g = create_tts_graph(policy, prm, "beam_search", {"n": 8, "beam_width": 2})
    rec = Recorder()
    out = await g.ainvoke({"question": QUESTION}, {"callbacks": [rec]}, context={"n": 4})
    (root,) = rec.roots
    # the compiled knobs are the graph's metadata; the summary has the run's own
    assert root.metadata["tts_knobs"]["n"] == 8
    root.metadata["tts_knobs"]["n"] = 4
    check_beam_search_trace(root, out)


def test_big_batches_are_summarized():
    policy, prm = models()
    g = create_tts_graph(policy, prm, "best_of_n", {"n": 256})
    rec = Recorder()
    g.invoke({"question": "x" * 5000}, {"callbacks": [rec]})
    runs = walk(rec.roots[0])
    (llm,) = [r for r in runs if r.run_type == "llm"]
    prompt = llm.inputs["prompts"][0]
    assert len(prompt) < 2 * tracing.MAX_CHARS + 200  # one prefix, its 5000 chars clipped
    assert "chars ..." in prompt
    gens = llm.outputs["generations"][0]
    assert len(gens) <= tracing.MAX_SHOWN
    assert llm.outputs["llm_output"]["samples"] == 256
    (prm_run,) = [r for r in runs if r.name == "fake-prm"]
    assert prm_run.inputs["trajectories"] == 256
    assert len(prm_run.inputs["shown"]) == tracing.MAX_SHOWN


def test_prefix_summary_counts_what_it_does_not_show():
    prefixes = [Trajectory(question=f"q{i}", steps=["a"]) for i in range(10)]
    text = tracing._prompt_summary(prefixes, 3)
    assert text.startswith("10 prefixes x 3 samples")
    assert text.count("--- prefix") == tracing.MAX_SHOWN
    assert "6 more prefixes not shown" in text


class Errors(BaseCallbackHandler):
    def __init__(self) -> None:
        self.llm_errors: list[BaseException] = []
        self.chain_errors: list[str] = []

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.llm_errors.append(error)


def test_a_failing_call_is_an_errored_run():
    def broken(p: Trajectory, i: int) -> str:
        raise RuntimeError("backend down")

    g = create_tts_graph(FakePolicy(broken), models()[1], "beam_search", {"n": 4, "beam_width": 2})
    rec, errs = Recorder(), Errors()
    with pytest.raises(BackendError, match="backend down"):
        g.invoke({"question": QUESTION}, {"callbacks": [rec, errs]})
    assert len(errs.llm_errors) == 1 and "backend down" in str(errs.llm_errors[0])
    (llm,) = [r for r in walk(rec.roots[0]) if r.run_type == "llm"]
    assert "backend down" in llm.error


def test_a_failing_prm_is_an_errored_run():
    def broken(t: Trajectory) -> list[float]:
        raise RuntimeError("prm down")

    g = create_tts_graph(models()[0], FakePRM(broken), "beam_search", {"n": 4, "beam_width": 2})
    rec = Recorder()
    with pytest.raises(BackendError, match="prm down"):
        g.invoke({"question": QUESTION}, {"callbacks": [rec]})
    (prm_run,) = [r for r in walk(rec.roots[0]) if r.name == "fake-prm"]
    assert "prm down" in prm_run.error


def test_without_handlers_no_run_is_built(monkeypatch: pytest.MonkeyPatch):
    def fail(*a: Any, **k: Any) -> None:
        raise AssertionError("a run was started without a handler")

    monkeypatch.setattr(tracing, "_traced_policy", fail)
    monkeypatch.setattr(tracing, "_traced_prm", fail)
    monkeypatch.setattr(tracing, "trace_event", fail)
    policy, prm = models()
    g = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    assert g.invoke({"question": QUESTION})["answer"] in ("14", "15")
    assert asyncio.run(g.ainvoke({"question": QUESTION}))["answer"] in ("14", "15")


async def test_stream_events_show_the_model_calls():
    policy, prm = models()
    g = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    events = [e async for e in g.astream_events({"question": QUESTION}, version="v2")]
    kinds = [(e["event"], e["name"]) for e in events]
    assert kinds.count(("on_llm_end", "fake-policy")) == STEPS
    assert kinds.count(("on_chain_end", "fake-prm")) == STEPS
    assert ("on_chain_end", "tts_summary") in kinds


def test_messages_stream_mode_is_not_flooded_by_policy_calls():
    policy, prm = models()
    g = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    chunks = list(g.stream({"messages": [("human", QUESTION)]}, stream_mode="messages"))
    # only the answer streams as a message, not the samples of each policy call
    assert [meta["langgraph_node"] for _, meta in chunks] == ["finalize"]
    assert chunks[0][0].content.endswith("\\boxed{14}")


class FakeLangSmith:
    """What ``LangChainTracer`` sends to LangSmith, recorded instead of sent."""

    def __init__(self) -> None:
        self.created: dict[UUID, dict] = {}
        self.updated: dict[UUID, dict] = {}

    def create_run(self, **kwargs: Any) -> None:
        self.created[kwargs["id"]] = kwargs

    def update_run(self, run_id: UUID, **kwargs: Any) -> None:
        self.updated[run_id] = kwargs

    def flush(self) -> None:
        pass


def test_langsmith_tracer_gets_the_model_calls_offline():
    client = FakeLangSmith()
    tracer = LangChainTracer(client=client, project_name="tts-tests")  # type: ignore[arg-type]
    policy, prm = models()
    g = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    out = g.invoke({"question": QUESTION}, {"callbacks": [tracer]})
    tracer.wait_for_futures()
    runs = {k: {**v, **client.updated.get(k, {})} for k, v in client.created.items()}
    by_name: dict[str, list[dict]] = {}
    for r in runs.values():
        by_name.setdefault(r["name"], []).append(r)
    (root,) = by_name["tts_beam_search"]
    assert root["extra"]["metadata"]["tts_strategy"] == "beam_search"
    llms = by_name["fake-policy"]
    assert len(llms) == STEPS and all(r["run_type"] == "llm" for r in llms)
    steps = {r["id"] for r in by_name["step"]}
    assert all(r["parent_run_id"] in steps for r in llms + by_name["fake-prm"])
    assert all(r["dotted_order"].startswith(root["dotted_order"]) for r in llms)
    completion = sum(r["outputs"]["llm_output"]["token_usage"]["completion_tokens"] for r in llms)
    assert completion == out["usage"].policy_generated_tokens
    assert all(r["session_name"] == "tts-tests" for r in runs.values())
    (summary,) = by_name["tts_summary"]
    assert summary["extra"]["metadata"]["tts_stop_reason"] == out["stop_reason"]


def test_router_trace_has_difficulty_route_and_the_probe_calls():
    from langchain_tts.routing import create_router_graph

    policy, prm = models()
    rec = Recorder()
    out = create_router_graph(policy, prm).invoke({"question": QUESTION}, {"callbacks": [rec]})
    runs = walk(rec.roots[0])
    (estimate,) = [r for r in runs if r.name == "estimate"]
    kinds = [k.name for k in estimate.child_runs]
    assert kinds.count("fake-policy") >= 1 and "tts_route" in kinds  # the probe's calls
    (route,) = [r for r in runs if r.name == "tts_route"]
    assert route.metadata["tts_difficulty_bin"] == out["difficulty"].bin == route.outputs["bin"]
    assert route.metadata["tts_route"] == out["route"].strategy


def test_the_router_graph_run_carries_its_metadata_and_tags():
    from langchain_core.tracers.base import BaseTracer

    from langchain_tts.routing.router import create_router_graph

    class Runs(BaseTracer):
        def __init__(self):
            super().__init__()
            self.runs = []

        def _persist_run(self, run):
            self.runs.append(run)

    tracer = Runs()
    policy = FakePolicy(lambda p, i: "1+1=2\n\n\\boxed{2}")
    graph = create_router_graph(policy, FakePRM(lambda t: [0.9] * len(t.steps)))
    graph.invoke({"question": "Start with 1. Add 1."}, {"callbacks": [tracer]})
    (top,) = tracer.runs
    assert top.extra["metadata"]["tts_strategy"] == "router"
    assert "tts:router" in top.tags


@pytest.mark.slow
def test_trace_of_a_beam_search_on_the_embedded_models():
    """One policy and one PRM child run per search step; their token counts (computed and
    cached) add up to the ledger's."""
    from langchain_tts import load_default

    policy, prm = load_default()
    g = create_tts_graph(policy, prm, "beam_search", {"n": 8, "beam_width": 4, "seed": 0})
    rec = Recorder()
    out = g.invoke({"question": "Start with 14. Add 9. Multiply by 3."}, {"callbacks": [rec]})
    (root,) = rec.roots
    usage = out["usage"]
    steps = [n for n in root.child_runs if n.name == "step"]
    assert steps and out["answer"] == "69"
    pol, prms = [], []
    for node in steps:
        kinds = [k.run_type for k in node.child_runs]
        assert kinds == ["llm", "chain"] * (len(kinds) // 2) and kinds
        pol += [k for k in node.child_runs if k.run_type == "llm"]
        prms += [k for k in node.child_runs if k.run_type == "chain"]
    assert len(pol) == usage.policy_calls and len(prms) == usage.prm_calls
    tok = [r.outputs["llm_output"]["token_usage"] for r in pol]
    assert sum(t["prompt_tokens"] - t["cached_tokens"] for t in tok) == usage.policy_prompt_tokens
    assert sum(t["completion_tokens"] for t in tok) == usage.policy_generated_tokens
    assert sum(r.outputs["tokens"] for r in prms) == usage.prm_tokens
    assert sum(r.outputs["flops"] for r in prms) + sum(
        r.outputs["llm_output"]["flops"] for r in pol
    ) == pytest.approx(usage.flops)


@pytest.mark.parametrize("hook", ["on_llm_start", "on_llm_end", "on_chain_start", "on_chain_end"])
def test_a_handlers_own_error_is_not_blamed_on_the_model(hook: str):
    """A handler with ``raise_error=True`` that fails around a policy or PRM call: the run
    fails with the handler's error, not a BackendError naming a model that did nothing
    wrong (``on_chain_*`` fire for the graph's nodes too: the same error either way)."""

    class Strict(BaseCallbackHandler):
        raise_error = True

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("bug in my handler")

    handler = Strict()
    setattr(handler, hook, fail)
    policy = FakePolicy(lambda p, i: "\\boxed{7}" if p.steps else "3+4=7")
    graph = create_tts_graph(policy, FakePRM(lambda t: [0.5] * len(t.steps)), "beam_search",
                             {"n": 4, "beam_width": 2})  # fmt: skip
    with pytest.raises(RuntimeError, match="bug in my handler") as info:
        graph.invoke({"question": "Start with 3. Add 4."}, {"callbacks": [handler]})
    assert not isinstance(info.value, BackendError)


def test_a_policy_or_prm_invoked_directly_is_a_run_of_its_own():
    """As any runnable: the call's callbacks, run_name and tags apply (they were dropped:
    a handler saw nothing, and astream_events yielded nothing)."""

    class Seen(BaseCallbackHandler):
        def __init__(self) -> None:
            self.runs: list[tuple[str, list[str]]] = []

        def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
            self.runs.append((kwargs.get("name"), kwargs.get("tags") or []))

    policy = FakePolicy(lambda p, i: "3+4=7")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    seen = Seen()
    config = {"callbacks": [seen], "run_name": "my_policy", "tags": ["mine"]}
    assert policy.invoke({"question": "q"}, config)[0].text == "3+4=7"
    assert prm.invoke({"question": "q", "steps": ["a"]}, {"callbacks": [seen]}) == [0.5]
    assert seen.runs == [("my_policy", ["mine"]), ("fake-prm", [])]

    async def events() -> list[str]:
        return [e["event"] async for e in policy.astream_events({"question": "q"}, version="v2")]

    assert asyncio.run(events())  # a start and an end
