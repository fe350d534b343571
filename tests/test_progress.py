"""Per-step progress events: one ``tts_step`` per search step and a ``tts_done``, on
LangGraph's custom stream (standalone, from a parent with ``subgraphs=True``, with and
without ``output_key``) and as LangChain custom events (``astream_events``, LangServe);
nothing is built when nobody listens. And the chat reply: named, with token usage."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import START, MessagesState, StateGraph

from langchain_tts.graph import create_tts_graph
from langchain_tts.strategies import progress
from langchain_tts.testing import FakePolicy, FakePRM
from tests.test_turns import CONFIGS, TURNS, adder, prefer_right

STEP_KEYS = {
    "event",
    "graph",
    "strategy",
    "node",
    "step",
    "beams",
    "candidates",
    "finished",
    "usage",
}
LOOPING = ["beam_search", "dvts", "mcts", "revision", "hybrid"]


def graph_of(strategy: str, **kw: Any):
    return create_tts_graph(
        FakePolicy(adder), FakePRM(prefer_right), strategy, CONFIGS[strategy], **kw
    )


def check_events(events: list[dict], strategy: str, graph: str) -> None:
    steps = [e for e in events if e["event"] == progress.STEP_EVENT]
    done = [e for e in events if e["event"] == progress.DONE_EVENT]
    assert steps and len(done) == 1 and events[-1] is done[0]
    json.dumps(events)  # plain JSON, as a server sends it
    for e in steps:
        assert set(e) == STEP_KEYS
        assert e["graph"] == graph and e["strategy"] == strategy
        assert len(e["beams"]) <= progress.TOP_BEAMS and e["candidates"] >= len(e["beams"])
        assert e["usage"]["policy_calls"] + e["usage"]["prm_calls"] >= 1
        for b in e["beams"]:
            assert set(b) == {"score", "steps", "finished", "text"}
            assert len(b["text"]) <= progress.TEXT_CHARS
    scores = [b["score"] for b in steps[-1]["beams"] if b["score"] is not None]
    assert scores == sorted(scores, reverse=True)
    total = sum(e["usage"]["policy_calls"] for e in steps)
    assert done[0]["usage"]["policy_calls"] == total  # each step's own usage, summed
    assert done[0]["strategy"] == strategy and done[0]["stop_reason"]


@pytest.mark.parametrize("strategy", LOOPING)
def test_standalone_custom_stream_has_each_step(strategy: str):
    g = graph_of(strategy)
    events = list(g.stream({"question": TURNS[0]}, stream_mode="custom"))
    check_events(events, strategy, f"tts_{strategy}")
    steps = [e["step"] for e in events if e["event"] == progress.STEP_EVENT]
    assert steps == list(range(1, len(steps) + 1))
    assert events[-1]["answer"] == "11" or strategy in ("revision", "hybrid")


def test_best_of_n_sends_its_samples_and_their_scores():
    g = graph_of("best_of_n")
    events = list(g.stream({"question": TURNS[0]}, stream_mode="custom"))
    check_events(events, "best_of_n", "tts_best_of_n")
    sample, scored = events[0], events[1]
    assert (sample["node"], scored["node"]) == ("sample", "score")
    assert all(b["score"] is None for b in sample["beams"])
    assert all(b["score"] is not None for b in scored["beams"])


@pytest.mark.parametrize("strategy", ["majority_vote", "weighted_vote"])
def test_early_stop_votes_send_each_round(strategy: str):
    """Rounds of samples are best-of-N's one search step: each round is a ``tts_step``
    (step 1) as it comes, with that round's usage; the samples so far, scored where the
    vote weighs them."""
    cfg = {"n": 8, "round_size": 2, "early_stop": True, "stop_confidence": 1.0}
    g = create_tts_graph(FakePolicy(adder), FakePRM(prefer_right), strategy, cfg)
    events = list(g.stream({"question": TURNS[0]}, stream_mode="custom"))
    check_events(events, strategy, f"tts_{strategy}")
    rounds = [e for e in events if e["event"] == progress.STEP_EVENT]
    assert len(rounds) >= 2 and {(e["node"], e["step"]) for e in rounds} == {("sample", 1)}
    assert [e["candidates"] for e in rounds] == [2 * (i + 1) for i in range(len(rounds))]
    scored = [b["score"] is not None for e in rounds for b in e["beams"]]
    assert all(scored) if strategy == "weighted_vote" else not any(scored)


def test_mcts_beams_are_the_tree_leaves():
    events = list(graph_of("mcts").stream({"question": TURNS[0]}, stream_mode="custom"))
    first = events[0]
    assert first["candidates"] == 1 + CONFIGS["mcts"]["parallel"]  # the root, its new child
    assert all(b["steps"] >= 1 for b in first["beams"])  # the new leaf and its rollout


@pytest.mark.parametrize("output_key", [None, "tts"])
def test_a_parent_with_subgraphs_sees_the_events(output_key: str | None):
    tts = graph_of("beam_search", name="searcher", output_key=output_key)

    class Parent(MessagesState, total=False):
        tts: dict

    builder = StateGraph(Parent)
    builder.add_node("searcher", tts)
    builder.add_edge(START, "searcher")
    parent = builder.compile()
    custom, updates = [], []
    for ns, mode, chunk in parent.stream(
        {"messages": [("human", TURNS[1])]}, stream_mode=["updates", "custom"], subgraphs=True
    ):
        (custom if mode == "custom" else updates).append((ns, chunk))
    assert custom and all(ns and ns[0].startswith("searcher:") for ns, _ in custom)
    check_events([c for _, c in custom], "beam_search", "searcher")
    assert custom[-1][1]["answer"] == "56"


async def test_astream_events_shows_them_as_custom_events():
    g = graph_of("beam_search")
    events = [
        e
        async for e in g.astream_events({"question": TURNS[0]}, version="v2")
        if e["event"] == "on_custom_event"
    ]
    assert {e["name"] for e in events} == {progress.STEP_EVENT, progress.DONE_EVENT}
    check_events([e["data"] for e in events], "beam_search", "tts_beam_search")


def test_nothing_is_built_when_nobody_listens(monkeypatch: pytest.MonkeyPatch):
    def boom(*a: Any, **k: Any) -> dict:
        raise AssertionError("an event was built for nobody")

    monkeypatch.setattr("langchain_tts.strategies.loop.step_event", boom)
    monkeypatch.setattr("langchain_tts.strategies.loop.done_event", boom)
    g = graph_of("beam_search")
    assert g.invoke({"question": TURNS[0]})["answer"] == "11"
    assert list(g.stream({"question": TURNS[0]}, stream_mode="updates"))
    with pytest.raises(AssertionError, match="for nobody"):
        list(g.stream({"question": TURNS[0]}, stream_mode="custom"))


def test_the_chat_reply_is_named_and_carries_token_usage():
    g = graph_of("beam_search", name="math_search")
    out = g.invoke({"messages": [("human", TURNS[0])]})
    reply = out["messages"][-1]
    assert isinstance(reply, AIMessage) and reply.name == "math_search"
    u = out["usage"]
    prompt = u.policy_prompt_tokens + u.policy_cached_tokens  # LangChain's: cache reads too
    assert reply.usage_metadata == {
        "input_tokens": prompt,
        "output_tokens": u.policy_generated_tokens,
        "total_tokens": prompt + u.policy_generated_tokens,
        "input_token_details": {"cache_read": u.policy_cached_tokens},
    }
    assert reply.usage_metadata["output_tokens"] > 0


# LangServe 0.3.3 reads model_fields off instances (pydantic 2.11+ deprecates it).
@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
async def test_langserve_stream_events_carry_them():
    pytest.importorskip("langserve")
    from langserve import RemoteRunnable

    from langchain_tts.serve import create_app
    from tests.test_serve import QUESTION, OraclePolicy, ThreadServer

    app = create_app(OraclePolicy(), FakePRM(lambda t: [0.9] * len(t.steps)), ["beam_search"])
    with ThreadServer(app) as server:
        remote = RemoteRunnable(f"{server.url}/tts/beam_search/", timeout=60)
        events = [
            e
            async for e in remote.astream_events(
                {"question": QUESTION}, {"configurable": {"n": 4}}, version="v2"
            )
            if e["event"] == "on_custom_event"
        ]
    data = [e["data"] for e in events]
    assert [d["step"] for d in data if d["event"] == progress.STEP_EVENT] == [1, 2, 3]
    assert data[-1]["event"] == progress.DONE_EVENT and data[-1]["answer"] == "14"


def test_the_router_passes_its_search_events_on_and_names_its_reply():
    from langchain_tts.routing.router import create_router_graph

    g = create_router_graph(
        FakePolicy(adder), FakePRM(prefer_right), reuse_probe=False, reuse_samples=False
    )
    events = [c for _, c in g.stream({"question": TURNS[0]}, stream_mode="custom", subgraphs=True)]
    route = g.invoke({"question": TURNS[0]})["route"]
    assert events[0]["event"] == "tts_route" and events[-1]["graph"] == "tts_router"
    check_events(events[1:-1], route.strategy, f"tts_{route.node}")  # its search's, between
    reply = g.invoke({"messages": [("human", TURNS[0])]})["messages"][-1]
    assert reply.name == "tts_router" and reply.usage_metadata["output_tokens"] > 0


@pytest.mark.parametrize("reuse_probe", [True, False])
def test_the_router_reports_its_route_and_its_answer(reuse_probe: bool):
    """Standalone (no ``subgraphs=True``) the router's own events: where the question goes,
    then its answer, also when the probe answers and no strategy runs."""
    from langchain_tts.routing.router import create_router_graph
    from tests.test_router import make_policy, make_prm

    if reuse_probe:  # a probe whose answer will do
        g, q = create_router_graph(make_policy(), make_prm(0.9)), "easy q"
    else:
        g = create_router_graph(FakePolicy(adder), FakePRM(prefer_right), reuse_probe=False)
        q = TURNS[0]
    events = list(g.stream({"question": q}, stream_mode="custom"))
    json.dumps(events)
    assert [e["event"] for e in events] == [progress.ROUTE_EVENT, progress.DONE_EVENT]
    out = g.invoke({"question": q})
    route, done = events
    assert route["graph"] == done["graph"] == "tts_router"
    assert (route["strategy"], route["bin"], route["reason"]) == (
        out["route"].strategy,
        out["route"].bin,
        out["route"].reason,
    )
    assert route["p_solve"] == out["difficulty"].p_solve
    assert route["usage"] == out["difficulty"].usage.summary()  # the estimate's spend
    assert (done["answer"], done["stop_reason"]) == (out["answer"], out["stop_reason"])
    assert done["route"] == out["route"].model_dump(mode="json")
    assert done["usage"] == out["usage"].summary() and done["candidates"] == len(out["candidates"])
    assert (out["route"].reason == "reuse_probe") == reuse_probe
