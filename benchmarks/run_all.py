"""Runs every benchmark (``make bench``) and ends with a summary of the measured ratios.

Each benchmark takes seconds to about two minutes at one thread and prints its own table;
numbers are measured in this run, nothing is cached. See ``docs/performance.md``::

    OMP_NUM_THREADS=1 python -m benchmarks.run_all [overhead batching scaling embedded load tracing reuse]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import (
    bench_batching,
    bench_embedded,
    bench_load,
    bench_overhead,
    bench_reuse,
    bench_scaling,
    bench_tracing,
)

BENCHMARKS: dict[str, Callable[[], Any]] = {
    "overhead": bench_overhead.main,
    "batching": bench_batching.main,
    "scaling": bench_scaling.main,
    "embedded": bench_embedded.main,
    "load": bench_load.main,
    "tracing": bench_tracing.main,
    "reuse": bench_reuse.main,
}


def summary(results: dict[str, Any]) -> list[str]:
    lines = []
    if "overhead" in results:
        for case, r in results["overhead"].items():
            lines.append(
                f"overhead {case}: graph {r['graph']:.0f} us/step vs hand loop {r['hand']:.0f} "
                f"(ratio {r['ratio']:.2f}); empty graph {r['floor']:.0f} us/step"
            )
    if "batching" in results:
        for width, r in results["batching"].items():
            lines.append(
                f"batching {width} beams: {r['policy_req_per_step']:.2f} policy + "
                f"{r['prm_req_per_step']:.2f} PRM requests per step, {r['rps_single']:.0f} req/s"
            )
    if "scaling" in results:
        for name, r in results["scaling"].items():
            lines.append(
                f"scaling in {name}: +{r['us_per_unit']:.0f} us per run per unit, linear fit R² "
                f"{r['time_r2']:.3f}, growth exponent at the large end {r['time_exponent']:.2f}"
            )
    if "embedded" in results:
        for case, r in results["embedded"].items():
            lines.append(f"embedded {case}: HFPolicy / model.generate tokens/s = {r['ratio']:.2f}")
    if "load" in results:
        for prm, t in results["load"]["load"].items():
            lines.append(
                f"load small + {prm}: import {t['import']:.2f} s + first load_default() "
                f"{t['first']:.2f} s (again {t['again']:.2f} s)"
            )
        s = results["load"]["sampling"]
        lines.append(f"seeded / unseeded sampling tokens/s = {s['ratio']:.2f}")
    if "tracing" in results:
        for models, r in results["tracing"].items():
            lines.append(
                f"tracing on {models}: model-call runs {r['calls_us']:.0f} us/step "
                f"({r['calls_pct']:.1f}% of a step), all runs {r['all_pct']:.1f}%"
            )
    if "reuse" in results:
        r = results["reuse"]["ratios"]
        lines.append(
            f"reuse: beam search N=16 / best-of-16 FLOPs {r['beam/bon flops reuse on']:.2f} "
            f"(policy {r['beam/bon policy flops reuse on']:.2f}), wall "
            f"{r['beam/bon wall reuse on']:.2f}; without reuse {r['beam/bon flops reuse off']:.2f}"
            f" / {r['beam/bon wall reuse off']:.2f}; same seeded answers: "
            f"{r['beam_search same answers'] and r['best_of_16 same answers']}"
        )
    return lines


def main(names: list[str]) -> None:
    if {"-h", "--help"} & set(names):
        print(f"usage: python -m benchmarks.run_all [{' '.join(BENCHMARKS)}]\n\n{__doc__}")
        return
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    results: dict[str, Any] = {}
    for name in names or list(BENCHMARKS):
        print(f"\n=== {name} " + "=" * (70 - len(name)), flush=True)
        t0 = time.perf_counter()
        results[name] = BENCHMARKS[name]()
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n=== summary " + "=" * 63)
    print("\n".join(summary(results)))


if __name__ == "__main__":
    main(sys.argv[1:])
