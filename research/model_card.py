"""The embedded models' model-card sweep: ``python -m research.model_card``.

Runs every (policy, PRM, strategy, budget) the model card reports on the held-out synthetic
test set, appending records to a JSONL file (resumable), then writes the table next to it
(``.md``) and checks the card's claims. Records go to ``research/out/`` unless ``--out``
names a file; ``make model-card`` names ``docs/results/embedded_sweep.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RUNS: list[tuple[str, str, str, int]] = [
    # (policy size, prm kind, strategy, budget N)
    ("small", "none", "cot", 1),
    ("large", "none", "cot", 1),
    ("small", "none", "majority_vote", 16),
    ("small", "strong", "best_of_n", 1),
    ("small", "strong", "best_of_n", 4),
    ("small", "strong", "best_of_n", 16),
    ("small", "strong", "best_of_n", 64),
    ("small", "strong", "beam_search", 4),
    ("small", "strong", "beam_search", 16),
    ("small", "strong", "beam_search", 64),
    ("small", "strong", "weighted_vote", 16),
    ("small", "weak", "best_of_n", 16),
    ("small", "weak", "beam_search", 16),
]


# Every strategy at two budgets, strong PRM, each on its embedded policy (small; the one
# trained to revise for revision and hybrid), 80 problems; docs/strategies.md reports the
# same strategies on 320 problems with the calculator verifier (research/headline.py).
_REVISE = ("revision", "hybrid")  # StrategySpec.embedded_policy == "small-revise"
STRATEGY_RUNS: list[tuple[str, str, str, int]] = [
    ("small", "none", "cot", 1),
    *[
        (
            "small-revise" if s in _REVISE else "small",
            "none" if s == "majority_vote" else "strong",
            s,
            n,
        )
        for s in (
            "majority_vote",
            "best_of_n",
            "weighted_vote",
            "beam_search",
            "dvts",
            "mcts",
            "particle_filtering",
            "revision",
            "hybrid",
        )
        for n in (4, 16)
    ],
]


def claims(rows: list[dict], prm: str = "strong") -> list[tuple[str, bool, str]]:
    """The model card's claims, each with whether the records support it; ``prm`` is the
    verifier searched with (``strong``: the shipped Qwen-style PRM, or ``likelihood``)."""
    acc = {(r["policy"], r["prm"], r["strategy"], int(r["budget"])): r["accuracy"] for r in rows}

    def a(*k) -> float:
        return acc.get(k, float("nan"))

    cot_s, cot_l = a("small", "none", "cot", 1), a("large", "none", "cot", 1)
    out = []
    by_level = next((r["by_level"] for r in rows if r["strategy"] == "cot" and
                     r["policy"] == "small"), {})  # fmt: skip
    lv = [by_level[k] for k in sorted(by_level, key=int)] if by_level else []
    out.append(
        (
            "small CoT below 100% and falling with difficulty",
            bool(lv) and cot_s < 1 and lv[0] > lv[-1],
            f"CoT {100 * cot_s:.1f}%, by level " + " ".join(f"{100 * x:.0f}" for x in lv),
        )
    )
    for strat, n in (("best_of_n", 16), ("beam_search", 16)):
        gain = a("small", prm, strat, n) - cot_s
        out.append(
            (
                f"{strat} N={n} >= CoT + 15 points",
                # in points rounded to 0.01: 260/320 - 212/320 is exactly +15, whatever
                # the last bit of the floats says
                round(100 * gain, 2) >= 15,
                f"{100 * a('small', prm, strat, n):.1f}% vs {100 * cot_s:.1f}% ({100 * gain:+.1f})",
            )
        )
    for strat, ns in (("best_of_n", (1, 4, 16, 64)), ("beam_search", (4, 16, 64))):
        seq = [a("small", prm, strat, n) for n in ns]
        mono = all(y >= x - 0.02 for x, y in zip(seq, seq[1:]))  # within noise
        out.append(
            (
                f"{strat} accuracy rises with N",
                mono,
                " -> ".join(f"N={n}: {100 * x:.1f}" for n, x in zip(ns, seq)),
            )
        )
    best_beam = max(a("small", prm, "beam_search", n) for n in (4, 16, 64))
    out.append(
        (
            "small + beam search beats large CoT",
            best_beam > cot_l,
            f"{100 * best_beam:.1f}% vs large CoT {100 * cot_l:.1f}%",
        )
    )
    for strat in ("best_of_n", "beam_search"):
        s, w = a("small", prm, strat, 16), a("small", "weak", strat, 16)
        out.append(
            (
                f"{prm} verifier beats weak PRM ({strat} N=16)",
                s > w,
                f"{100 * s:.1f}% vs {100 * w:.1f}%",
            )
        )
    return out  # fmt: skip


# `make eval`: the sweep that fits in 30 minutes on 2 CPU cores (docs/results/eval/).
EVAL_RUNS: list[tuple[str, str, str, int]] = [
    ("small", "none", "cot", 1),
    ("large", "none", "cot", 1),
    ("small", "none", "majority_vote", 4),
    ("small", "none", "majority_vote", 16),
    ("small", "strong", "best_of_n", 4),
    ("small", "strong", "best_of_n", 16),
    ("small", "strong", "weighted_vote", 16),
    ("small", "strong", "beam_search", 4),
    ("small", "strong", "beam_search", 16),
    ("small", "weak", "best_of_n", 16),
    # the large policy's likelihood as the verifier (prms/likelihood.py)
    ("small", "likelihood", "best_of_n", 4),
    ("small", "likelihood", "best_of_n", 16),
    ("small", "likelihood", "beam_search", 4),
    ("small", "likelihood", "beam_search", 16),
    # the calculator verifier (prms/equation.py): the one with which search pays
    ("small", "calculator", "best_of_n", 4),
    ("small", "calculator", "best_of_n", 16),
    ("small", "calculator", "beam_search", 4),
    ("small", "calculator", "beam_search", 16),
]
SUITES = {"card": RUNS, "strategies": STRATEGY_RUNS, "eval": EVAL_RUNS}


def _default_out(suite: str, prm: str) -> Path:
    """A file under the gitignored ``research/out/``: a bare run never rewrites docs/results."""
    name = {"card": "embedded_sweep", "strategies": "strategies", "eval": "eval_sweep"}[suite]
    if suite == "card" and prm != "strong":
        name += f"_{prm}"
    return Path("research") / "out" / f"{name}.jsonl"


def main(argv: list[str] | None = None) -> None:
    from langchain_tts import create_tts_graph
    from langchain_tts.eval.datasets import load_synthetic
    from langchain_tts.eval.runner import (
        budget_config,
        markdown_table,
        read_records,
        run_eval,
        summarize,
    )
    from langchain_tts.models import load_default_policy, load_default_prm

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSONL records, appended (default: research/out/<suite>.jsonl)",
    )
    ap.add_argument("--n", type=int, default=320, help="test problems (40 per level)")
    ap.add_argument("--only", nargs="*", help="strategy names to run (default: all)")
    ap.add_argument("--runs", type=str, default="", help="comma-separated run indexes")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="card",
        help="card: the model card's runs; strategies: every strategy at N=4 and 16; "
        "eval: the 30-minute sweep of `make eval`",
    )
    ap.add_argument(
        "--concurrency", type=int, default=16, help="problems in flight (batched together)"
    )
    ap.add_argument(
        "--prm",
        choices=("strong", "likelihood", "calculator"),
        default="strong",
        help="card suite: the verifier searched with (likelihood: the large policy's "
        "likelihoods); without --out records go to research/out/embedded_sweep_<prm>.jsonl; "
        "with --out give each verifier a file of its own (resuming skips the problems a "
        "file already has)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed of every run (0: the card's draw); another seed is an "
        "independent draw of the same runs, recorded with a 'seed' field: give it its own "
        "--out, since resuming skips the problems a file already has",
    )
    ap.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="load the embedded models from this folder (a rebuild: `python -m research.train --out "
        "DIR`) instead of the shipped ones",
    )
    args = ap.parse_args(argv)
    if args.weights is not None:
        os.environ["LANGCHAIN_TTS_WEIGHTS_DIR"] = str(args.weights.resolve())
    runs = SUITES[args.suite]
    if args.suite == "card" and args.prm != "strong":
        runs = [(size, args.prm if k == "strong" else k, s, n) for size, k, s, n in runs]
    if args.out is None:
        args.out = _default_out(args.suite, args.prm)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    problems = load_synthetic("test", args.n)
    if not args.report_only:
        picked = {int(i) for i in args.runs.split(",") if i} if args.runs else None
        for idx, (size, prm_kind, strategy, n) in enumerate(runs):
            if args.only and strategy not in args.only or picked and idx not in picked:
                continue
            # Fresh models per run: their prefix caches would otherwise carry one run's
            # prompts into the next, and a row's FLOPs would depend on the runs before it.
            policy = load_default_policy(size)
            prm = load_default_prm(prm_kind) if prm_kind != "none" else None
            cfg = {**budget_config(strategy, n), "seed": args.seed}
            graph = create_tts_graph(policy, prm, strategy, cfg)
            meta = {"dataset": "synthetic", "policy": size, "prm": prm_kind,
                    "strategy": strategy, "budget": n}  # fmt: skip
            if args.seed:
                meta["seed"] = args.seed
            asyncio.run(
                run_eval(graph, problems, meta=meta, out=args.out, concurrency=args.concurrency)
            )
    # Shards (``--out X.part2.jsonl``, run in parallel processes) are reported together.
    stem = args.out.name.split(".")[0]
    files = sorted(
        {*args.out.parent.glob(stem + ".jsonl"), *args.out.parent.glob(stem + ".*.jsonl")}
    )
    rows = summarize([r for f in files for r in read_records(f)])
    table = markdown_table(rows)
    lines = [table]
    if args.suite == "card":
        lines += ["", "| claim | holds | measured |", "|---|---|---|"]
        lines += [f"| {c} | {'yes' if ok else 'NO'} | {m} |" for c, ok, m in claims(rows, args.prm)]
    text = "\n".join(lines)
    (args.out.parent / f"{stem}.md").write_text(
        "# Embedded models on the synthetic test set\n\n"
        f"Made by `python -m research.model_card --suite {args.suite} --n {args.n}"
        + (f" --prm {args.prm}" if args.prm != "strong" else "")
        + (f" --seed {args.seed}" if args.seed else "")
        + f" --out {args.out}` "
        f"({args.n} held-out problems, equal per level; L1..L8 = number of operations; "
        "accuracy in %; FLOPs = 2 x params x tokens, policy + PRM).\n\n" + text + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
