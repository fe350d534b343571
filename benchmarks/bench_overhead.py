"""Orchestration overhead: searches through LangGraph vs hand-written asyncio loops.

Both sides drive the same null engine (an instant scripted policy and PRM) through the same
library code: the graph's own step functions (``beam_step``, ``simulate``), the same
question check, usage ledger and final answer selection (``beam_final_update``,
``mcts_final_update``). What differs is only what LangGraph adds: the graph run, one
superstep per search step, channel writes, the conditional edge. Graph compilation is
outside the timings (one-off); event-loop start-up too.

A third column runs an *empty* graph with the same state schema, the same routing (the
looping node returns a ``Command``) and the same number of supersteps, whose nodes return
precomputed updates: LangGraph's fixed cost per superstep, the floor of any graph that
makes one update per search step.

Before timing, each case checks that both sides make the same calls and return the same
answer, candidates and usage. Prints microseconds per search step (per simulation for
MCTS), best of ``REPEATS`` interleaved runs, and the ratio graph / hand loop, measured in
this one run::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_overhead
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from benchmarks._util import best_of, per_unit, table
from langchain_tts import create_tts_graph
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.strategies.beam_search import BeamSearchConfig, beam_final_update, beam_step
from langchain_tts.strategies.core import TTSInput, TTSOutput, TTSState, question_of
from langchain_tts.strategies.mcts import MCTSConfig, MCTSNode, mcts_final_update, simulate
from langchain_tts.testing import FakePolicy, FakePRM

STEPS = 40  # beam search: every beam finishes at this depth
SIMULATIONS = 40
REPEATS = 7
QUESTION = "Start with 3. Add 4."


def beam_engines() -> tuple[FakePolicy, FakePRM]:
    policy = FakePolicy(lambda p, i: "\\boxed{1}" if len(p.steps) >= STEPS - 1 else "x")
    return policy, FakePRM(lambda t: [0.5] * len(t.steps))


def mcts_engines() -> tuple[FakePolicy, FakePRM]:
    # Distinct children with distinct scores, solutions end at depth 12: a real tree.
    policy = FakePolicy(lambda p, i: "\\boxed{1}" if len(p.steps) >= 11 else f"s{i}")
    prm = FakePRM(lambda t: [0.1 + 0.2 * (int(s[1:]) % 4) if s[0] == "s" else 0.9 for s in t.steps])
    return policy, prm


# -- beam search ----------------------------------------------------------------------------
async def beam_hand(cfg: BeamSearchConfig) -> tuple[int, dict]:
    """The search as a plain loop: (steps, the final update with the usage ledger)."""
    policy, prm = beam_engines()
    question = question_of({"question": QUESTION})
    root = Trajectory(question=question)
    active: list[Trajectory] = []
    finished: list[Trajectory] = []
    step, usage = 0, Usage()
    while True:
        active, finished, u = await beam_step(policy, prm, cfg, root, active, finished, step)
        step, usage = step + 1, usage + u
        if not active or step >= cfg.max_steps or len(finished) >= cfg.target_finished:
            break
    state: dict[str, Any] = {"question": question, "active": active, "finished": finished}
    out = beam_final_update({**state, "step": step}, cfg)  # type: ignore[arg-type]
    return step, {**out, "usage": usage}


def beam_graph(cfg: BeamSearchConfig) -> Callable[[], Awaitable[tuple[int, dict]]]:
    policy, prm = beam_engines()
    graph = create_tts_graph(policy, prm, "beam_search", cfg)  # compiled before the timer

    async def run() -> tuple[int, dict]:
        out = await graph.ainvoke({"question": QUESTION})
        return len(policy.calls), out

    return run


# -- MCTS -----------------------------------------------------------------------------------
async def mcts_hand(cfg: MCTSConfig) -> tuple[int, dict]:
    policy, prm = mcts_engines()
    question = question_of({"question": QUESTION})
    root = Trajectory(question=question)
    search: dict = {"tree": [MCTSNode()], "finished": [], "active": []}
    usage, steps = Usage(), 0
    while steps * cfg.parallel < cfg.simulations and not search["tree"][0].exhausted:
        search, u = await simulate(policy, prm, cfg, root, search, steps)  # type: ignore[arg-type]
        usage, steps = usage + u, steps + 1
    state = {"question": question, **search, "step": steps}
    out = mcts_final_update(state, cfg)  # type: ignore[arg-type]
    return cfg.simulations, {**out, "usage": usage}


def mcts_graph(cfg: MCTSConfig) -> Callable[[], Awaitable[tuple[int, dict]]]:
    policy, prm = mcts_engines()
    graph = create_tts_graph(policy, prm, "mcts", cfg)

    async def run() -> tuple[int, dict]:
        return cfg.simulations, await graph.ainvoke({"question": QUESTION})

    return run


# -- LangGraph's floor ----------------------------------------------------------------------
def empty_graph(steps: int) -> Callable[[], Awaitable[tuple[int, dict]]]:
    """Same state schema, routing and superstep count as a search; nodes do no work."""
    beams = [Trajectory(question=QUESTION, steps=["x"])] * 4
    usage = Usage(policy_calls=1, prm_calls=1)

    async def prepare(state: TTSState) -> dict:
        return {"question": QUESTION, "step": 0, "active": [], "finished": []}

    async def step(state: TTSState) -> Command:
        i = state["step"] + 1
        update = {"active": beams, "finished": [], "step": i, "usage": usage}
        return Command(update=update, goto="finalize" if i >= steps else "step")

    async def finalize(state: TTSState) -> dict:
        return {"answer": "1", "solution": "x", "candidates": beams, "stop_reason": "done"}

    g = StateGraph(TTSState, input_schema=TTSInput, output_schema=TTSOutput)
    g.add_node("prepare", prepare)
    g.add_node("step", step, destinations=("step", "finalize"))
    g.add_node("finalize", finalize)
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "step")
    g.add_edge("finalize", END)
    graph = g.compile()

    async def run() -> tuple[int, dict]:
        return steps, await graph.ainvoke({"question": QUESTION})

    return run


Run = Callable[[], Awaitable[tuple[int, dict]]]


def same_result(hand: Run, graph: Run) -> None:
    """The fairness check: both sides make the same calls and pick the same answer."""
    (n1, a), (n2, b) = asyncio.run(hand()), asyncio.run(graph())
    assert n1 == n2 and a["answer"] == b["answer"] and a["solution"] == b["solution"]
    assert [c.text for c in a["candidates"]] == [c.text for c in b["candidates"]]
    assert a["usage"] == b["usage"], (a["usage"], b["usage"])


def measure(hand: Run, make_graph: Callable[[], Run], steps: int) -> dict[str, float]:
    """Microseconds per step of the hand loop, the graph and the empty graph."""
    same_result(hand, make_graph())
    floor = empty_graph(steps)

    def graph_once() -> float:
        run = make_graph()  # compile outside the timer
        return per_unit(run)

    variants = {
        "hand": lambda: per_unit(hand),
        "graph": graph_once,
        "floor": lambda: per_unit(floor),
    }
    return {k: v * 1e6 for k, v in best_of(variants, REPEATS).items()}


def main() -> dict[str, dict[str, float]]:
    """Runs the benchmark, prints the tables, returns ``{case: {hand, graph, floor, ratio}}``."""
    results: dict[str, dict[str, float]] = {}
    rows = []
    for beams in (4, 16, 64):
        cfg = BeamSearchConfig(n=beams * 4, beam_width=4, max_steps=STEPS + 5)
        us = measure(lambda cfg=cfg: beam_hand(cfg), lambda cfg=cfg: beam_graph(cfg), STEPS)
        ratio = us["graph"] / us["hand"]
        results[f"beam_search/{beams}"] = {**us, "ratio": ratio}
        rows.append(
            [beams, cfg.n, us["hand"], us["graph"], us["graph"] - us["hand"], us["floor"], ratio]
        )
    print(f"beam search, null engine: us per search step (best of {REPEATS})")
    header = ["beams", "n", "hand", "graph", "graph-hand", "empty graph", "ratio"]
    print(table(header, rows))

    rows = []
    for k in (4, 16):
        cfg = MCTSConfig(simulations=SIMULATIONS, expand_k=k, max_depth=40)
        us = measure(lambda cfg=cfg: mcts_hand(cfg), lambda cfg=cfg: mcts_graph(cfg), SIMULATIONS)
        ratio = us["graph"] / us["hand"]
        results[f"mcts/{k}"] = {**us, "ratio": ratio}
        rows.append([k, us["hand"], us["graph"], us["graph"] - us["hand"], us["floor"], ratio])
    print(f"\nMCTS, null engine: us per simulation (best of {REPEATS})")
    print(table(["expand_k", "hand", "graph", "graph-hand", "empty graph", "ratio"], rows))
    return results


if __name__ == "__main__":
    main()
