"""Package types in a user's checkpoints: a saver with LangGraph's default serializer (a
plain ``InMemorySaver()``, ``SqliteSaver``) or a strict one stores TTS state as plain data,
logs no "unregistered type" warning, and the Python API still returns the objects."""

from __future__ import annotations

import logging
import sqlite3
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from langchain_tts.core.errors import BackendError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.graph import create_tts_graph
from langchain_tts.strategies.mcts import MCTSNode
from langchain_tts.testing import FakePolicy, FakePRM
from tests.test_turns import ANSWERS, CONFIGS, TURNS, adder, prefer_right

RUNS = {
    "beam_search": CONFIGS["beam_search"],
    "dvts": CONFIGS["dvts"],
    "mcts": CONFIGS["mcts"],
    "best_of_n": CONFIGS["best_of_n"],
    "revision": CONFIGS["revision"],
    "budgeted": {**CONFIGS["beam_search"], "max_tokens": 500},
}


@pytest.fixture(params=["memory", "sqlite", "strict"])
def saver(request) -> Iterator[Any]:
    """Savers as a user makes them: LangGraph's default serializer, no registration; and
    one that refuses every type not registered (what ``LANGGRAPH_STRICT_MSGPACK`` does)."""
    if request.param == "memory":
        yield InMemorySaver()
    elif request.param == "strict":
        yield InMemorySaver(serde=JsonPlusSerializer(allowed_msgpack_modules=None))
    else:
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            yield SqliteSaver(conn)
        finally:
            conn.close()


@pytest.fixture
def no_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # LangGraph warns once per type and process: forget what earlier tests triggered
    jsonplus._warned_unregistered_types.clear()
    jsonplus._warned_blocked_types.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        yield
    texts = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    bad = [t for t in texts if "unregistered" in t or "blocked" in t.lower()]
    assert not bad, bad


def graph_of(strategy: str, saver: Any, policy: FakePolicy | None = None):
    name = "beam_search" if strategy == "budgeted" else strategy
    return create_tts_graph(
        policy or FakePolicy(adder), FakePRM(prefer_right), name, RUNS[strategy], checkpointer=saver
    )


@pytest.mark.parametrize("strategy", list(RUNS))
def test_three_turns_checkpoint_plain_data(strategy: str, saver: Any, no_warnings: None):
    graph = graph_of(strategy, saver)
    rc = {"configurable": {"thread_id": f"chat-{strategy}"}}
    for turn, expected in zip(TURNS, ANSWERS):
        out = graph.invoke({"messages": [("human", turn)]}, rc)
        assert out["question"] == turn
        if strategy in ("beam_search", "dvts", "mcts"):  # (the others: whole-solution samples)
            assert out["answer"] == expected
        assert isinstance(out["usage"], Usage) and out["usage"].policy_calls >= 1
        assert out["candidates"] and all(isinstance(t, Trajectory) for t in out["candidates"])
    # the saved checkpoint holds plain data; the state read back holds the objects
    saved = saver.get_tuple(rc).checkpoint["channel_values"]
    assert isinstance(saved["usage"], dict) and isinstance(saved["candidates"][0], dict)
    state = graph.get_state(rc).values
    assert isinstance(state["usage"], Usage) and isinstance(state["thread_usage"], Usage)
    assert state["thread_usage"].policy_calls > state["usage"].policy_calls
    if strategy == "mcts":
        assert isinstance(saved["tree"][0], dict)
        assert all(isinstance(n, MCTSNode) for n in state["tree"])


def test_a_crashed_run_resumes_from_plain_checkpoints(saver: Any, no_warnings: None):
    class Flaky(FakePolicy):
        """Fails its ``fail_at``-th call once (a server going away mid-search)."""

        fail_at: int | None = None

        async def _agenerate(self, prefixes, n, params):  # type: ignore[override]
            if len(self.calls) + 1 == self.fail_at:
                self.fail_at = None
                raise RuntimeError("server went away")
            return await super()._agenerate(prefixes, n, params)

    policy = Flaky(adder)
    graph = graph_of("mcts", saver, policy)
    rc = {"configurable": {"thread_id": "crash"}}
    graph.invoke({"messages": [("human", TURNS[0])]}, rc)
    policy.fail_at = len(policy.calls) + 2  # turn 2's second search step
    with pytest.raises(BackendError):
        graph.invoke({"messages": [("human", TURNS[1])]}, rc)
    before = len(policy.calls)
    out = graph.invoke(None, rc)  # resumes with the tree the checkpoint held
    assert out["question"] == TURNS[1] and out["answer"] == ANSWERS[1]
    assert len(policy.calls) - before < out["usage"].policy_calls  # earlier steps not redone
    fresh = graph_of("mcts", None)
    assert out["usage"].policy_calls == fresh.invoke({"question": TURNS[1]})["usage"].policy_calls


def test_old_checkpoints_holding_objects_still_load():
    """A thread saved before the channels (objects in the checkpoint) resumes as before."""
    from langchain_tts.core.channels import PlainAggregate, PlainValue
    from langchain_tts.core.types import add_usage

    t = Trajectory(question="q", steps=["a"], step_scores=[0.5])
    ch = PlainValue(list[Trajectory]).from_checkpoint([t])
    assert ch.get() == [t] and ch.checkpoint() == [t.model_dump()]
    agg = PlainAggregate(Usage, add_usage).from_checkpoint(Usage(policy_calls=2))
    agg.update([Usage(policy_calls=1)])
    assert agg.get() == Usage(policy_calls=3) and agg.checkpoint()["policy_calls"] == 3


def test_the_router_checkpoints_plain_data(saver: Any, no_warnings: None):
    from langchain_tts.routing.difficulty import DifficultyEstimate
    from langchain_tts.routing.router import Route, create_router_graph

    graph = create_router_graph(
        FakePolicy(adder), FakePRM(prefer_right), checkpointer=saver, reuse_samples=False
    )
    rc = {"configurable": {"thread_id": "router"}}
    for turn in TURNS:
        out = graph.invoke({"question": turn}, rc)
        assert out["question"] == turn and isinstance(out["route"], Route)
    saved = saver.get_tuple(rc).checkpoint["channel_values"]
    assert isinstance(saved["route"], dict) and isinstance(saved["difficulty"], dict)
    state = graph.get_state(rc).values
    assert isinstance(state["difficulty"], DifficultyEstimate)
    assert isinstance(state["usage"], Usage)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["beam_search", "mcts"])
def test_embedded_models_on_a_plain_saver_log_no_unregistered_types(
    strategy: str, no_warnings: None
):
    from langchain_tts import load_default

    policy, prm = load_default()
    knobs = {"n": 4, "beam_width": 2} if strategy == "beam_search" else {"simulations": 4}
    graph = create_tts_graph(
        policy, prm, strategy, {**knobs, "seed": 0}, checkpointer=InMemorySaver()
    )
    rc = {"configurable": {"thread_id": "embedded"}}
    for turn, answer in [("Start with 5. Add 6.", "11"), ("Start with 7. Multiply by 3.", "21")]:
        out = graph.invoke({"messages": [("human", turn)]}, rc)
        assert out["question"] == turn and out["answer"] == answer
    state = graph.get_state(rc).values  # read back from the plain checkpoint
    assert all(isinstance(t, Trajectory) for t in state["candidates"])
