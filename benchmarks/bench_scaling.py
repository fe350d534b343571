"""Scaling on the null engine: time and peak memory as the search grows.

Runs the graphs (``ainvoke``, as users do) with an instant policy and PRM that do O(1) work
per sample (so what grows is the library's and LangGraph's work) and grows one knob at a
time:

* beam search, kept beams 4 -> 64 at 20 steps (candidates per step = 4 x beams);
* beam search, steps 10 -> 160 at 8 beams;
* MCTS, simulations 50 -> 400 (``expand_k=4``), each rollout a new 10-step solution, so
  the tree grows by up to 10 nodes per rollout.

Time is the best of ``REPEATS`` runs; peak memory is traced (``tracemalloc``) in a separate
run, since tracing slows Python down. For each series it fits ``y = a + b x`` (slope and R²;
the intercept is the fixed cost of a run) and gives the growth exponent ``k`` of ``y ~ x^k``
between the two largest sizes, where fixed costs matter least: 1.0 is linear, 2.0
quadratic::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_scaling
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
import tracemalloc
from collections.abc import Callable, Sequence

from langgraph.graph.state import CompiledStateGraph

from benchmarks._util import loglog_slope, slope, table
from langchain_tts import create_tts_graph
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

REPEATS = 5
QUESTION = "Start with 3. Add 4."


class NullPolicy(StepPolicy):
    """Instant steps: ``fn(depth, sample)``; O(1) work per sample (FakePolicy counts prompt
    tokens over the whole prefix, which would add its own O(depth) per step)."""

    name = "null-policy"

    def __init__(self, fn: Callable[[int, int], str]):
        self.fn = fn

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        steps = [
            [Step(text=self.fn(len(p.steps), i), tokens=1) for i in range(n)] for p in prefixes
        ]
        return PolicyResult(steps=steps, usage=Usage(policy_calls=1))


class NullPRM(ProcessRewardModel):
    """Instant scores: ``fn(last step)`` for the newest step, 0.5 for the earlier ones."""

    name = "null-prm"

    def __init__(self, fn: Callable[[str], float]):
        self.fn = fn

    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        scores = [[0.5] * (len(t.steps) - 1) + [self.fn(t.steps[-1])] for t in trajectories]
        return PRMResult(scores=scores, usage=Usage(prm_calls=1))


def beam_graph(beams: int, steps: int) -> CompiledStateGraph:
    policy = NullPolicy(lambda d, i: "\\boxed{1}" if d >= steps - 1 else f"x{i}")
    prm = NullPRM(lambda s: 0.1 + 0.2 * (len(s) % 4))
    cfg = {"n": beams * 4, "beam_width": 4, "max_steps": steps + 5}
    return create_tts_graph(policy, prm, "beam_search", cfg)


class NullRollouts(StepPolicy):
    """Instant whole solutions for MCTS's rollouts: the steps from the prefix's depth to
    ``depth``, each rollout's steps new (a counter), so that no two rollouts merge in the
    tree and every one adds its nodes; O(steps) work per sample."""

    name = "null-rollouts"

    def __init__(self, depth: int):
        self.depth, self.made = depth, itertools.count()

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        rows = []
        for p in prefixes:
            row = []
            for _ in range(n):
                k = next(self.made)
                steps = [f"s{k}.{d}" for d in range(len(p.steps), self.depth - 1)]
                text = "\n\n".join([*steps, "\\boxed{1}"])
                row.append(Step(text=text, tokens=len(steps) + 1, finish_reason="eos"))
            rows.append(row)
        return PolicyResult(steps=rows, usage=Usage(policy_calls=1))


def mcts_graph(simulations: int) -> CompiledStateGraph:
    # Rollouts end at depth 10 (MCTS's default max_depth), every one of them new.
    policy = NullRollouts(depth=10)
    prm = NullPRM(lambda s: 0.1 + 0.2 * (int(s[1:].split(".")[0]) % 4) if s[0] == "s" else 0.9)
    cfg = {"simulations": simulations, "expand_k": 4}
    return create_tts_graph(policy, prm, "mcts", cfg)


def run_once(graph: CompiledStateGraph) -> None:
    asyncio.run(graph.ainvoke({"question": QUESTION}, {"recursion_limit": 1000}))


def seconds(make: Callable[[], CompiledStateGraph]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        graph = make()
        t0 = time.perf_counter()
        run_once(graph)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_mb(make: Callable[[], CompiledStateGraph]) -> float:
    graph = make()
    gc.collect()
    tracemalloc.start()
    try:
        run_once(graph)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def series(
    name: str, unit: str, xs: list[int], make: Callable[[int], CompiledStateGraph]
) -> dict[str, float]:
    times = [seconds(lambda x=x: make(x)) * 1e3 for x in xs]
    mems = [peak_mb(lambda x=x: make(x)) for x in xs]
    rows = [[x, t, m] for x, t, m in zip(xs, times, mems)]
    print(f"\n{name}")
    print(table([unit, "ms", "peak MB"], rows))
    bt, rt = slope(xs, times)
    bm, rm = slope(xs, mems)
    kt, km = loglog_slope(xs[-2:], times[-2:]), loglog_slope(xs[-2:], mems[-2:])
    print(f"time:   +{bt * 1e3:.0f} us per {unit} (linear fit R² {rt:.3f}), exponent {kt:.2f}")
    print(f"memory: +{bm * 1024:.1f} KB per {unit} (linear fit R² {rm:.3f}), exponent {km:.2f}")
    return {"us_per_unit": bt * 1e3, "time_r2": rt, "time_exponent": kt, "kb_per_unit": bm * 1024}


def main() -> dict[str, dict[str, float]]:
    """Runs the three series, prints them, returns ``{series: fitted slopes}``."""
    print(f"scaling on the null engine (graph.ainvoke; time: best of {REPEATS})")
    return {
        "beams": series(
            "beam search, 20 steps: kept beams",
            "beam",
            [4, 8, 16, 32, 64],
            lambda b: beam_graph(b, 20),
        ),
        "steps": series(
            "beam search, 8 beams: steps", "step", [10, 20, 40, 80, 160], lambda s: beam_graph(8, s)
        ),
        "simulations": series(
            "MCTS, expand_k=4: simulations", "simulation", [50, 100, 200, 400], mcts_graph
        ),
    }


if __name__ == "__main__":
    main()
