"""Early-stopping votes on the embedded models: samples, FLOPs and accuracy per question.

Majority vote (self-consistency) and weighted vote (PRM-vote, the calculator verifier)
with ``n=16``, each with and without ``early_stop`` (rounds of ``round_size`` samples until
the leading answer is decided: "Let's Sample Step by Step: Adaptive-Consistency for
Efficient Reasoning and Coding with LLMs", Aggarwal et al.), on held-out test problems of
the synthetic task, seeded per question so both sides see the same first samples::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_votes [--problems 40] [--n 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._util import table  # noqa: E402
from langchain_tts import create_tts_graph  # noqa: E402
from langchain_tts.eval.grading import answers_match  # noqa: E402
from langchain_tts.eval.synthetic import make_split  # noqa: E402
from langchain_tts.models import load_default  # noqa: E402

CONCURRENCY = 8


async def run(strategy: str, knobs: dict, problems: list, policy: object, prm: object) -> dict:
    policy.clear_cache()  # type: ignore[attr-defined]  # each variant pays its own prefixes
    prm.clear_cache()  # type: ignore[attr-defined]
    graph = create_tts_graph(policy, prm, strategy, knobs)  # type: ignore[arg-type]
    inputs = [{"question": p.question} for p in problems]
    configs = [{"configurable": {"seed": 1000 + i}} for i in range(len(problems))]
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(inp: dict, cfg: dict) -> dict:
        async with sem:
            return await graph.ainvoke(inp, cfg)

    outs = await asyncio.gather(*(one(i, c) for i, c in zip(inputs, configs)))
    wall = time.perf_counter() - t0
    k = len(problems)
    return {
        "accuracy": sum(answers_match(o["answer"], p.answer) for o, p in zip(outs, problems)) / k,
        "samples": sum(len(o["candidates"]) for o in outs) / k,
        "gflops": sum(o["usage"].flops for o in outs) / k / 1e9,
        "prm_calls": sum(o["usage"].prm_calls for o in outs) / k,
        "wall": wall / k,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--round-size", type=int, default=4)
    args = ap.parse_args()
    policy, prm = load_default()
    problems = make_split("test", args.problems)
    rows = []
    for strategy in ("majority_vote", "weighted_vote"):
        # off; on with the Beta criterion; on, stopping only when the rest cannot matter
        for early, confidence in ((False, 0.95), (True, 0.95), (True, 1.0)):
            knobs = {
                "n": args.n,
                "early_stop": early,
                "round_size": args.round_size,
                "stop_confidence": confidence,
            }
            r = asyncio.run(run(strategy, knobs, problems, policy, prm))
            rows.append(
                [
                    strategy,
                    f"on ({confidence:g})" if early else "off",
                    f"{100 * r['accuracy']:.1f}%",
                    r["samples"],
                    r["gflops"],
                    r["prm_calls"],
                    r["wall"],
                ]
            )
    print(f"{len(problems)} test problems, n={args.n}, round_size={args.round_size}")
    header = [
        "strategy",
        "early_stop (stop_confidence)",
        "accuracy",
        "samples/q",
        "GFLOPs/q",
        "PRM calls/q",
        "s/q",
    ]
    print(table(header, rows))


if __name__ == "__main__":
    main()
