"""What tracing model calls costs: a search step with a callback handler on and off.

With a handler (here LangSmith's tracer, its client sending nothing), every policy call is
an ``llm`` run and every PRM call a ``chain`` run (:mod:`langchain_tts.tracing`). Measured
per search step of beam search, on instant fake models (the absolute cost: what the model
calls' runs add over the graph's own runs) and on the embedded models (whose step time the
cost is compared with; the target is under 5% of a step)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_tracing
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from langchain_core.tracers.langchain import LangChainTracer

import langchain_tts.strategies.core as core
from benchmarks._util import best_of, timed
from langchain_tts import tracing
from langchain_tts.eval.synthetic import make_split
from langchain_tts.graph import create_tts_graph
from langchain_tts.testing import FakePolicy, FakePRM

CONFIG = {"n": 16, "beam_width": 4, "seed": 0}


class OfflineLangSmith:
    """A LangSmith client that keeps nothing: the tracer's own work, without the network."""

    def create_run(self, **kwargs: Any) -> None:
        pass

    def update_run(self, run_id: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass


def _tracer() -> LangChainTracer:
    return LangChainTracer(client=OfflineLangSmith(), project_name="bench")  # type: ignore[arg-type]


async def _untraced(backend: object, fn: Any, *args: Any) -> Any:
    return await fn(*args)


def _per_step(graph: Any, questions: list[str], traced: bool, calls: bool = True) -> float:
    """Seconds per search step (policy call) over ``questions``; ``calls=False``: the
    handler sees the graph and its nodes but not the model calls."""
    if not calls:
        core.traced_call = _untraced
    try:
        return _run(graph, questions, traced)
    finally:
        core.traced_call = tracing.traced_call


def _run(graph: Any, questions: list[str], traced: bool) -> float:
    async def run() -> tuple[float, int]:
        total, steps = 0.0, 0
        for q in questions:
            tracer = _tracer() if traced else None
            config = {"callbacks": [tracer]} if tracer else {}
            seconds, out = await timed(graph.ainvoke({"question": q}, config))
            if tracer is not None:
                tracer.wait_for_futures()
            total, steps = total + seconds, steps + out["usage"].policy_calls
        return total, steps

    total, steps = asyncio.run(run())
    return total / max(steps, 1)


def measure(graph: Any, questions: list[str], repeats: int) -> dict[str, float]:
    t = best_of(
        {
            "off": lambda: _per_step(graph, questions, False),
            "nodes": lambda: _per_step(graph, questions, True, calls=False),
            "on": lambda: _per_step(graph, questions, True),
        },
        repeats,
    )
    off, nodes, on = t["off"] * 1e6, t["nodes"] * 1e6, t["on"] * 1e6
    return {
        "off_us": off,
        "on_us": on,
        "calls_us": on - nodes,
        "calls_pct": 100 * (on - nodes) / off,
        "all_pct": 100 * (on - off) / off,
    }


def _fake_step(p: Any, i: int) -> str:
    return "a step" if len(p.steps) < 4 else "\\boxed{1}"


def main(repeats: int = 5) -> dict[str, dict[str, float]]:
    questions = [p.question for p in make_split("test", 4)]
    results: dict[str, dict[str, float]] = {}
    fake = create_tts_graph(
        FakePolicy(_fake_step), FakePRM(lambda t: [0.5] * len(t.steps)), "beam_search", CONFIG
    )
    results["fake models"] = measure(fake, questions, 3 * repeats)  # cheap: more repeats
    try:
        from langchain_tts.models import load_default_policy, load_default_prm

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        policy, prm = load_default_policy(), load_default_prm()
    except Exception as e:  # no embedded weights built: the fake-model row only
        print(f"embedded models not available ({type(e).__name__}: {e})")
    else:
        graph = create_tts_graph(policy, prm, "beam_search", CONFIG)
        results["embedded models"] = measure(graph, questions, repeats)
    print("beam search (n=16, beam_width=4), per search step: no handler (off) vs LangSmith's")
    print("tracer, offline (on); 'calls': the two child runs a step adds, 'all': every run")
    print(f"{'models':<18}{'off us':>10}{'on us':>10}{'calls us':>10}{'calls %':>9}{'all %':>8}")
    for name, r in results.items():
        print(
            f"{name:<18}{r['off_us']:>10.0f}{r['on_us']:>10.0f}{r['calls_us']:>10.0f}"
            f"{r['calls_pct']:>8.1f}%{r['all_pct']:>7.1f}%"
        )
    if "embedded models" in results:  # the fake models' difference is the one above noise
        cost, step = results["fake models"]["calls_us"], results["embedded models"]["off_us"]
        results["embedded models"]["calls_share_pct"] = share = 100 * cost / step
        print(f"model-call runs: {cost:.0f} us per step = {share:.2f}% of an embedded-model step")
    return results


if __name__ == "__main__":
    main()
