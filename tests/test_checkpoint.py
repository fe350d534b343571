"""Checkpointing: a killed search resumes from its last step without recomputing it, and the
package's serializer restores every state type without LangGraph's "unregistered" warning."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

pytest.importorskip("langgraph.checkpoint.sqlite")

from langchain_tts import STRATEGIES, Trajectory, create_tts_graph  # noqa: E402
from langchain_tts.checkpoint import (  # noqa: E402
    allowed_msgpack_modules,
    async_sqlite_saver,
    serializer,
    sqlite_saver,
)
from langchain_tts.core.config import SamplingParams  # noqa: E402
from langchain_tts.eval.runner import budget_config  # noqa: E402
from langchain_tts.policies.base import PolicyResult  # noqa: E402
from langchain_tts.strategies.mcts import MCTSNode  # noqa: E402
from langchain_tts.testing import FakePolicy, FakePRM  # noqa: E402

STEPS = 6  # every trajectory: s0..s5, then a boxed answer
CFG = {"n": 4, "beam_width": 2}


def step(prefix: Trajectory, i: int) -> str:
    k = len(prefix.steps)
    return f"\\boxed{{{k * 10 + i % 2}}}" if k >= STEPS else f"s{k}.{i}"


def prm_fn(t: Trajectory) -> list[float]:
    return [0.5 + 0.4 * (len(s) % 2) for s in t.steps]  # deterministic, varies per step


class KilledPolicy(FakePolicy):
    """Works for ``k`` calls, then raises: a run killed in the middle of the search."""

    def __init__(self, k: int) -> None:
        super().__init__(step)
        self.k = k

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        if len(self.calls) >= self.k:
            raise RuntimeError("killed")
        return await super()._agenerate(prefixes, n, params)


@pytest.fixture
def no_unregistered_warning(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="langgraph"):
        yield
    msgs = [r.getMessage() for r in caplog.get_records("call")]  # not .records: teardown
    bad = [m for m in msgs if "unregistered type" in m or "Blocked deserialization" in m]
    assert not bad, bad


def test_killed_beam_search_resumes_without_recomputing_steps(
    tmp_path: Path, no_unregistered_warning: None
):
    full_policy = FakePolicy(step)
    full = create_tts_graph(full_policy, FakePRM(prm_fn), "beam_search", CFG).invoke(
        {"question": "q"}
    )
    total_calls = len(full_policy.calls)
    assert total_calls == STEPS + 1

    k = 3
    config = {"configurable": {"thread_id": "run-1"}}
    with sqlite_saver(tmp_path / "ckpt.db") as saver:
        dying = KilledPolicy(k)
        graph = create_tts_graph(dying, FakePRM(prm_fn), "beam_search", CFG, checkpointer=saver)
        with pytest.raises(RuntimeError, match="killed"):
            graph.invoke({"question": "q"}, config)
        assert len(dying.calls) == k  # k steps done; the (k+1)-th call was killed
        assert graph.get_state(config).values["step"] == k  # the last checkpoint

    # A new process: same database and thread, a working policy.
    with sqlite_saver(tmp_path / "ckpt.db") as saver:
        policy, prm = FakePolicy(step), FakePRM(prm_fn)
        graph = create_tts_graph(policy, prm, "beam_search", CFG, checkpointer=saver)
        out = graph.invoke(None, config)  # resume from the last checkpoint
        state = graph.get_state(config).values

    assert len(policy.calls) == total_calls - k  # finished steps were not recomputed
    assert len(prm.calls) == total_calls - k
    assert out["answer"] == full["answer"] and out["solution"] == full["solution"]
    assert out["usage"].policy_calls == total_calls  # the ledger spans both processes
    assert all(isinstance(t, Trajectory) for t in state["candidates"])


async def test_async_saver_resumes_under_ainvoke(tmp_path: Path, no_unregistered_warning: None):
    config = {"configurable": {"thread_id": "run-async"}}
    async with async_sqlite_saver(tmp_path / "ackpt.db") as saver:
        dying = KilledPolicy(2)
        g = create_tts_graph(dying, FakePRM(prm_fn), "beam_search", CFG, checkpointer=saver)
        with pytest.raises(RuntimeError):
            await g.ainvoke({"question": "q"}, config)
        policy = FakePolicy(step)
        g = create_tts_graph(policy, FakePRM(prm_fn), "beam_search", CFG, checkpointer=saver)
        out = await g.ainvoke(None, config)
    assert len(policy.calls) == STEPS + 1 - 2
    assert out["answer"] is not None


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_state_round_trips_through_the_serializer(
    strategy: str, tmp_path: Path, no_unregistered_warning: None
):
    cfg = budget_config(strategy, 4)
    if strategy == "mcts":
        cfg = {"simulations": 4, "expand_k": 2}
    config = {"configurable": {"thread_id": strategy}}
    with sqlite_saver(tmp_path / "s.db") as saver:
        graph = create_tts_graph(
            FakePolicy(step), FakePRM(prm_fn), strategy, cfg, checkpointer=saver
        )
        graph.invoke({"question": "q"}, config)
        values = graph.get_state(config).values
        # the steps' pending writes (each task's result) hold the objects as written
        results = [t.result for s in graph.get_state_history(config) for t in s.tasks]
    assert any(results)
    # Restored as the package's classes: nothing was blocked or left as a raw dict.
    assert values["candidates"] and all(isinstance(t, Trajectory) for t in values["candidates"])
    assert type(values["usage"]).__name__ == "Usage"
    if strategy == "mcts":
        assert all(isinstance(n, MCTSNode) for n in values["tree"])


def test_serializer_allowlist_and_extra_types():
    pairs = allowed_msgpack_modules()
    assert ("langchain_tts.core.types", "Trajectory") in pairs
    assert ("langchain_tts.strategies.mcts", "MCTSNode") in pairs

    class Mine:
        pass

    assert (__name__, "test_serializer_allowlist_and_extra_types.<locals>.Mine") in (
        allowed_msgpack_modules([Mine])
    )
    data = serializer().dumps_typed(Trajectory(question="q", steps=["a"]))
    assert serializer().loads_typed(data) == Trajectory(question="q", steps=["a"])
