"""Orchestration overhead: beam search through LangGraph vs a hand-written asyncio loop.

Both drive the same null engine (instant fake policy and PRM) and the same search step
(`beam_step`), so the difference is what the graph costs. Prints microseconds per search
step and the ratio, measured in this one run.

    python benchmarks/bench_overhead.py
"""

from __future__ import annotations

import asyncio
import statistics
import time

from langchain_tts import create_tts_graph
from langchain_tts.core.types import Trajectory
from langchain_tts.strategies.beam_search import BeamSearchConfig, beam_step
from langchain_tts.testing import FakePolicy, FakePRM

STEPS = 40


def engines() -> tuple[FakePolicy, FakePRM]:
    policy = FakePolicy(lambda p, i: "\\boxed{1}" if len(p.steps) >= STEPS - 1 else "x")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    return policy, prm


async def hand_loop(cfg: BeamSearchConfig) -> int:
    policy, prm = engines()
    active: list[Trajectory] = []
    finished: list[Trajectory] = []
    step = 0
    while True:
        active, finished, _ = await beam_step(policy, prm, cfg, "q", active, finished, step)
        step += 1
        if not active or step >= cfg.max_steps or len(finished) >= cfg.target_finished:
            return step


async def graph_run(cfg: BeamSearchConfig) -> int:
    policy, prm = engines()
    g = create_tts_graph(policy, prm, "beam_search", cfg)
    await g.ainvoke({"question": "q"})
    return len(policy.calls)


def measure(fn, cfg: BeamSearchConfig, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        steps = asyncio.run(fn(cfg))
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times) * 1e6


def main() -> None:
    print(f"{'width':>6} {'n':>5} {'hand us/step':>13} {'graph us/step':>14} {'ratio':>6}")
    for width in (4, 16):
        cfg = BeamSearchConfig(n=width * 4, beam_width=4, max_steps=STEPS + 5)
        hand = measure(hand_loop, cfg)
        graph = measure(graph_run, cfg)
        print(f"{width:>6} {cfg.n:>5} {hand:>13.0f} {graph:>14.0f} {graph / hand:>6.2f}")


if __name__ == "__main__":
    main()
