"""What a per-run compute budget buys from the embedded router: ``python -m research.router_budget``

Runs the router a user gets for the embedded small policy and calculator verifier
(``embedded_router_kwargs``: the verifier estimator and the calibrated table, seeded; or
the table of ``--table``, a budget table JSON or a ``research.router_eval`` result) under
several per-run ``max_flops`` caps, and once without a cap, on synthetic problems, and
reports for each cap: accuracy, FLOPs per question (mean and max: the cap holds), and what
the router did with the questions (answered by the estimate, ran the bin's allocation,
downgraded it, or answered with the estimate because nothing was predicted to fit), how
many runs the budget cut short, and how many strategy runs ended without a finished answer
of their own and answered with the estimate's attempt (``route.probe_fallback``).

Records go to ``<out>.jsonl`` (resumable with ``--resume``), the table to ``<out>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from research.runs import add_run_options, command_line

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_CAPS = (1.2e9, 1.4e9, 1.6e9, 2.0e9, 3.0e9)
DEFAULT_OUT = Path("research") / "out" / "router_budget"
#: what the router did with a question (``Route.reason``), in table order
REASONS = ("reuse_probe", "table", "budget_downgrade", "budget_probe_only")


def _caps(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"caps must be numbers, got {text!r}") from None
    if not out or any(not c > 0 for c in out):
        raise argparse.ArgumentTypeError(f"caps must be positive FLOPs, got {text!r}")
    return out


def cap_name(cap: float | None) -> str:
    return "none" if cap is None else f"{cap:.3g}"


def table(records: Sequence[dict], caps: Sequence[float | None]) -> list[dict]:
    """One row per cap: accuracy, FLOPs per question (mean, max), what the router did."""
    rows = []
    for cap in caps:
        rs = [r for r in records if r["cap"] == cap_name(cap)]
        if not rs:
            continue
        reasons = Counter(r["reason"] for r in rs)
        rows.append({
            "cap": cap_name(cap), "n": len(rs),
            "accuracy": sum(bool(r["correct"]) for r in rs) / len(rs),
            "flops": sum(float(r["flops"]) for r in rs) / len(rs),
            "max_flops": max(float(r["flops"]) for r in rs),
            **{k: reasons.get(k, 0) for k in REASONS},
            "cut": sum(bool(r["budget_stopped"]) for r in rs),
            "fallback": sum(bool(r["probe_fallback"]) for r in rs),
        })  # fmt: skip
    return rows


def markdown(rows: Sequence[dict], command: str, split: str, table: str | None = None) -> str:
    n = rows[0]["n"] if rows else 0
    which = f"the table of `{table}`" if table else "the calibrated table"
    lines = [
        "# The embedded router under a per-run FLOPs cap",
        "",
        f"Made by `{command}`: the embedded small policy and calculator verifier, the router "
        f"of `embedded_router_kwargs` with {which} (seeded), on {n} synthetic {split} "
        "problems (balanced "
        "over the 8 levels). `max_flops` caps each run, estimate included. Columns: "
        "questions the estimate answered (`reuse_probe`), that ran the bin's allocation "
        "(`table`), a cheaper one (`budget_downgrade`), or none (`budget_probe_only`: the "
        "estimate's answer); runs the budget cut short; strategy runs that found no finished "
        "answer and answered with the estimate's attempt (`fallback`).",
        "",
        "| max_flops | acc % | FLOPs/q | max FLOPs/q | reuse_probe | table | downgrade | "
        "probe only | cut | fallback |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cap']} | {100 * r['accuracy']:.1f} | {r['flops']:.3g} | "
            f"{r['max_flops']:.3g} | {r['reuse_probe']} | {r['table']} | "
            f"{r['budget_downgrade']} | {r['budget_probe_only']} | {r['cut']} | "
            f"{r['fallback']} |"
        )
    return "\n".join(lines) + "\n"


async def _solve(args: argparse.Namespace) -> list[dict]:
    import json

    import torch

    from langchain_tts.eval.datasets import load_synthetic
    from langchain_tts.eval.grading import answers_match
    from langchain_tts.models import load_default_policy, load_default_prm
    from langchain_tts.routing import (
        BudgetTable,
        RouteAllocation,
        create_router_graph,
        embedded_router_kwargs,
    )

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out).with_suffix(".jsonl")
    if not args.resume:
        out.unlink(missing_ok=True)
    done = set()
    if out.exists():
        done = {(r["cap"], r["id"]) for r in map(json.loads, out.read_text().splitlines())}
    problems = load_synthetic(args.split, args.n)
    policy, prm = load_default_policy("small"), load_default_prm("calculator")
    kwargs = embedded_router_kwargs("small", "calculator")
    t = kwargs["table"] if args.table is None else read_table(args.table)
    kwargs["table"] = BudgetTable(**{  # seeded: every cap runs the same samples
        b: RouteAllocation(strategy=t[b].strategy, config={**t[b].config, "seed": args.seed})
        for b in ("easy", "medium", "hard")
    }, thresholds=t.thresholds)  # fmt: skip
    sem = asyncio.Semaphore(args.concurrency)
    for cap in (*args.caps, None):
        router = create_router_graph(policy, prm, max_flops=cap, **kwargs)
        policy.clear_cache()  # each cap's FLOPs are its own
        prm.clear_cache()
        todo = [p for p in problems if (cap_name(cap), p.id) not in done]

        async def one(p, router=router, cap=cap) -> dict:
            async with sem:
                o = await router.ainvoke({"question": p.problem})
            route = o["route"]
            return {"cap": cap_name(cap), "id": p.id, "level": p.level,
                    "correct": answers_match(o.get("answer"), p.answer),
                    "flops": o["usage"].flops, "reason": route.reason,
                    "strategy": route.strategy, "budget_stopped": route.budget_stopped,
                    "probe_fallback": route.probe_fallback,
                    "stop_reason": o.get("stop_reason") or ""}  # fmt: skip

        recs = await asyncio.gather(*(one(p) for p in todo))
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        if not args.quiet:
            print(f"max_flops={cap_name(cap)}: {len(recs)} problems", file=sys.stderr)
    ids = {p.id for p in problems}
    return [r for r in map(json.loads, out.read_text().splitlines()) if r["id"] in ids]


def read_table(path: Path) -> Any:
    """A budget table from JSON: the table itself, or a ``research.router_eval`` result
    (its calibrated table)."""
    import json

    from langchain_tts.routing import BudgetTable

    data = json.loads(Path(path).read_text())
    return BudgetTable.from_dict(data.get("calibration", {}).get("table", data))


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m research.router_budget", description=__doc__)
    ap.add_argument("--split", choices=("validation", "test"), default="test")
    ap.add_argument("--n", type=int, default=320, help="problems (320)")
    ap.add_argument("--caps", type=_caps, default=DEFAULT_CAPS,
                    help="per-run max_flops caps, comma-separated (a run without a cap "
                    "is added)")  # fmt: skip
    ap.add_argument("--table", type=Path,
                    help="a budget table JSON, or a research.router_eval result whose "
                    "calibrated table to run (default: the embedded router's)")  # fmt: skip
    add_run_options(ap, DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be positive")
    records = asyncio.run(_solve(args))
    rows = table(records, (*args.caps, None))
    command = command_line("research.router_budget", argv)
    md = markdown(rows, command, args.split, None if args.table is None else str(args.table))
    Path(args.out).with_suffix(".md").write_text(md)
    print(md)
    return rows


if __name__ == "__main__":
    main()
