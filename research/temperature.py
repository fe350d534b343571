"""A strategy at several sampling temperatures, against greedy CoT: ``python -m research.temperature``

Runs greedy CoT and one sampling strategy at several temperatures on the synthetic
*validation* split (never test: the defaults are chosen here), on the embedded small policy,
and prints accuracy and FLOPs per question for each, against CoT:

* ``--strategy majority_vote`` (no verifier): self-consistency pays when a policy's errors
  are sampling slips that scatter over many wrong answers while its right answer recurs;
* ``--strategy step_repair`` (the calculator verifier): the temperature of the candidates
  sampled for a rejected step, where the verifier filters every sample;
* ``--strategy beam_search`` / ``particle_filtering`` (the calculator verifier): the
  searches' sampling temperature, for the same question.

Records go to ``<out>.jsonl`` (resumable with ``--resume``), the table to ``<out>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from research.runs import add_run_options, command_line

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: per strategy: the PRM it runs with, and the temperatures swept by default
STRATEGIES = {
    "majority_vote": ("none", (0.3, 0.5, 0.7, 1.0, 1.3)),
    "step_repair": ("calculator", (0.7, 1.0, 1.3, 1.6, 2.0)),
    "beam_search": ("calculator", (0.7, 1.0, 1.3)),
    "particle_filtering": ("calculator", (0.7, 1.0, 1.3)),
}
DEFAULT_OUT = Path("research") / "out" / "temperature"


def _floats(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"temperatures must be numbers, got {text!r}") from None
    if not out or any(not 0.0 < t <= 5.0 for t in out):
        raise argparse.ArgumentTypeError(f"temperatures must be in (0, 5], got {text!r}")
    return out


def run_name(strategy: str, temperature: float | None) -> str:
    return "cot" if temperature is None else f"{strategy} t={temperature:g}"


def table(records: Sequence[dict], strategy: str, temperatures: Sequence[float]) -> list[dict]:
    """One row per run: accuracy, FLOPs per question, points against CoT."""
    rows = []
    for t in (None, *temperatures):
        rs = [r for r in records if r["strategy"] == run_name(strategy, t)]
        if not rs:
            continue
        rows.append({"run": run_name(strategy, t), "n": len(rs),
                     "accuracy": sum(bool(r["correct"]) for r in rs) / len(rs),
                     "flops": sum(float(r["flops"]) for r in rs) / len(rs)})  # fmt: skip
    cot = next((r["accuracy"] for r in rows if r["run"] == "cot"), None)
    for r in rows:
        r["vs_cot"] = None if cot is None else 100 * (r["accuracy"] - cot)
    return rows


def markdown(rows: Sequence[dict], command: str, strategy: str, n_samples: int) -> str:
    n = rows[0]["n"] if rows else 0
    what = {
        "majority_vote": ("Majority vote", f"no verifier, {n_samples} votes"),
        "step_repair": ("Step repair", f"the calculator verifier, N={n_samples}"),
        "beam_search": ("Beam search", f"the calculator verifier, N={n_samples}"),
        "particle_filtering": ("Particle filtering", f"the calculator verifier, N={n_samples}"),
    }[strategy]
    lines = [
        f"# {what[0]} against greedy CoT, by sampling temperature",
        "",
        f"Made by `{command}`: the embedded small policy, {what[1]}, on {n} "
        "synthetic validation problems (balanced over the 8 levels).",
        "",
        "| run | acc % | vs CoT (points) | FLOPs/q |",
        "|---|---|---|---|",
    ]
    for r in rows:
        vs = "" if r["run"] == "cot" or r["vs_cot"] is None else f"{r['vs_cot']:+.1f}"
        lines.append(f"| {r['run']} | {100 * r['accuracy']:.1f} | {vs} | {r['flops']:.3g} |")
    beats = [r["run"] for r in rows if r["run"] != "cot" and (r["vs_cot"] or 0) > 0]
    best = max((r for r in rows if r["run"] != "cot"), key=lambda r: r["accuracy"], default=None)
    lines += ["", f"Temperatures at which {strategy} beats CoT: "
              + (", ".join(beats) if beats else "none") + "."]  # fmt: skip
    if best is not None:
        lines.append(f"The most accurate: {best['run']}.")
    return "\n".join(lines) + "\n"


async def _solve(args: argparse.Namespace) -> list[dict]:
    import torch

    from langchain_tts import create_tts_graph
    from langchain_tts.eval.datasets import load_synthetic
    from langchain_tts.eval.runner import read_records, run_eval
    from langchain_tts.models import load_default_policy, load_default_prm

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out).with_suffix(".jsonl")
    if not args.resume:
        out.unlink(missing_ok=True)
    problems = load_synthetic("validation", args.n)
    policy = load_default_policy("small")
    prm_name = STRATEGIES[args.strategy][0]
    prm = None if prm_name == "none" else load_default_prm(prm_name)
    for t in (None, *args.temperatures):
        cfg = {} if t is None else {"n": args.samples, "temperature": t}
        graph = create_tts_graph(policy, None if t is None else prm,
                                 "cot" if t is None else args.strategy,
                                 {**cfg, "seed": args.seed})  # fmt: skip
        policy.clear_cache()  # each run's FLOPs are its own
        if prm is not None:
            prm.clear_cache()
        meta = {"dataset": "synthetic-validation", "policy": "small",
                "prm": "none" if t is None else prm_name,
                "strategy": run_name(args.strategy, t),
                "budget": 1 if t is None else args.samples, "seed": args.seed}  # fmt: skip
        await run_eval(graph, problems, meta=meta, out=out, concurrency=args.concurrency,
                       progress=not args.quiet)  # fmt: skip
    ids = {p.id for p in problems}
    return [r for r in read_records(out) if r["id"] in ids and r.get("seed") == args.seed]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m research.temperature", description=__doc__)
    ap.add_argument("--strategy", choices=sorted(STRATEGIES), default="majority_vote")
    ap.add_argument("--n", type=int, default=320, help="validation problems (320)")
    ap.add_argument("--samples", type=int, default=16,
                    help="the strategy's N: votes, or candidates of a rejected step (16)")  # fmt: skip
    ap.add_argument("--temperatures", type=_floats, default=None,
                    help="comma-separated (majority_vote: 0.3,0.5,0.7,1.0,1.3; "
                    "step_repair: 0.7,1.0,1.3,1.6,2.0; the searches: 0.7,1.0,1.3)")  # fmt: skip
    add_run_options(ap, DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.n < 1 or args.samples < 2:
        ap.error("--n must be positive and --samples at least 2")
    args.temperatures = args.temperatures or STRATEGIES[args.strategy][1]
    records = asyncio.run(_solve(args))
    rows = table(records, args.strategy, args.temperatures)
    command = command_line("research.temperature", argv)
    md = markdown(rows, command, args.strategy, args.samples)
    Path(args.out).with_suffix(".md").write_text(md)
    print(md)
    return rows


if __name__ == "__main__":
    main()
