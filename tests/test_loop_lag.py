"""No strategy blocks the event loop: with big knobs, the longest stretch between two awaits
stays under ~100 ms, so a server keeps answering other requests (and /health) meanwhile.

The models are fakes that compute in the worker pool, as the real local ones do, so the lag
measured is the strategy's own work (and LangGraph's) on the loop's thread.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Sequence

import pytest

from langchain_tts import create_tts_graph
from langchain_tts.backends.sync import run_in_worker
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.prms.base import PRMResult, ProcessRewardModel
from langchain_tts.strategies import STRATEGY_SPECS

#: the longest a strategy may hold the loop between two awaits (seconds)
MAX_LAG = 0.1


class WorkerPolicy(StepPolicy):
    """Varied steps, a final answer after a few; built in the worker pool."""

    name = "worker-policy"
    num_parameters = 1000

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        def build() -> list[list[Step]]:
            rng = random.Random(len(prefixes) * 31 + n)
            rows = []
            for p in prefixes:
                row = []
                for _ in range(n):
                    k = rng.randrange(100)
                    if len(p.steps) >= 3 or k < 10:
                        text = f"so the answer is \\boxed{{{k % 7}}}"
                        row.append(Step(text=text, tokens=6, finish_reason="eos"))
                    else:
                        row.append(Step(text=f"step {len(p.steps)} value {k}", tokens=5))
                rows.append(row)
            return rows

        steps = await run_in_worker(build)
        return PolicyResult(steps=steps, usage=Usage(policy_calls=1))


class WorkerPRM(ProcessRewardModel):
    name = "worker-prm"
    num_parameters = 1000

    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        def build() -> list[list[float]]:
            rng = random.Random(len(trajectories))
            return [[rng.random() for _ in t.steps] for t in trajectories]

        return PRMResult(scores=await run_in_worker(build), usage=Usage(prm_calls=1))


#: knobs far above the defaults (what a hostile or careless client may send)
BIG = {
    "cot": {"max_steps": 2000},
    "best_of_n": {"n": 20000},
    "majority_vote": {"n": 20000},
    "weighted_vote": {"n": 20000},
    "beam_search": {"n": 1024, "beam_width": 4},
    "dvts": {"n": 1024, "beam_width": 4},
    "mcts": {"simulations": 3000, "width": 32, "parallel": 32},
    "particle_filtering": {"n": 1024},
    "revision": {"revisions": 300, "stop_threshold": 1.0},
    "hybrid": {"chains": 256, "revisions": 8, "stop_threshold": 1.0},
    "step_repair": {"n": 1024, "repairs": 64, "reject_below": 1.0},
}


async def run_with_lag_monitor(graph, knobs: dict) -> tuple[float, float]:
    """``(longest the loop's thread computed between two 10 ms sleeps, seconds the run
    took)``. CPU time of the loop's thread, not wall time: on a busy machine the OS
    descheduling the process is no stall of ours; code running on the loop is."""
    lag = 0.0
    done = asyncio.Event()

    async def monitor() -> None:
        nonlocal lag
        while not done.is_set():
            t0 = time.thread_time()
            await asyncio.sleep(0.01)
            lag = max(lag, time.thread_time() - t0)

    mon = asyncio.create_task(monitor())
    await asyncio.sleep(0.02)
    t0 = time.perf_counter()
    try:
        await graph.ainvoke(
            {"question": "Start with 3. Add 4."},
            {"configurable": knobs, "recursion_limit": 10**5},
        )
    finally:
        done.set()
        await mon
    return lag, time.perf_counter() - t0


def test_the_table_covers_every_strategy():
    assert set(BIG) == set(STRATEGY_SPECS)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(BIG))
def test_no_strategy_blocks_the_event_loop(strategy):
    graph = create_tts_graph(WorkerPolicy(), WorkerPRM(), strategy)
    asyncio.run(graph.ainvoke({"question": "Start with 3."}))  # first-use imports and pools
    # The heap the earlier tests of this process left is no part of the strategy: a full
    # garbage collection over it would stall any loop. Freeze it; the run's own garbage counts.
    gc.collect()
    gc.freeze()
    try:
        lag, took = asyncio.run(run_with_lag_monitor(graph, BIG[strategy]))
    finally:
        gc.unfreeze()
    assert lag < MAX_LAG, f"{strategy} held the event loop {lag * 1000:.0f} ms ({took:.1f} s run)"
