"""The strategies' headline comparisons on the embedded models: ``python -m research.headline``.

Runs greedy CoT and every searching strategy at N=4 and N=16 on the synthetic test set, each
(strategy, budget) in its own ``tts eval`` process (empty prefix caches, so each row's FLOPs
are its own) and on the embedded policy the strategy runs on by default (the one trained to
revise for ``revision`` and ``hybrid``), for each seed. Then it writes a table of accuracy
overall and per difficulty bin, FLOPs per question, and the claims the references make
with whether they hold here. Difficulty bins are the task's levels (operations per
question): easy 1-2, medium 3-6, hard 7-8, where greedy CoT solves about 90%, 60-80% and
20-30%.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

from langchain_tts.eval.runner import read_records

REPO_ROOT = Path(__file__).resolve().parents[1]
BINS = {"easy": (1, 2), "medium": (3, 4, 5, 6), "hard": (7, 8)}
#: (strategy, embedded policy); best-of-N also on the revision-trained policy, the baseline of
#: its revisions (Snell et al. compare both on their revision model)
RUNS = [
    ("cot", "small"),
    ("cot", "small-revise"),
    ("majority_vote", "small"),
    ("best_of_n", "small"),
    ("weighted_vote", "small"),
    ("beam_search", "small"),
    ("dvts", "small"),
    ("particle_filtering", "small"),
    ("mcts", "small"),
    ("step_repair", "small"),
    ("best_of_n", "small-revise"),
    ("revision", "small-revise"),
    ("hybrid", "small-revise"),
]


#: budgets run besides ``--budgets``: MCTS's default 24 simulations cost about what beam
#: search N=16 does (a simulation writes at most one solution, often only its end)
EXTRA_BUDGETS = {"mcts": ["24"]}


def run(out: Path, n: int, budgets: str, seed: int, runs: list[tuple[str, str]]) -> None:
    """One ``tts eval`` process per (strategy, policy, budget); resumable (records append)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for strategy, policy in runs:
        extra = EXTRA_BUDGETS.get(strategy, [])
        for b in ["1"] if strategy == "cot" else [*budgets.split(","), *extra]:
            cmd = [sys.executable, "-m", "langchain_tts.cli", "eval", "--dataset", "synthetic",
                   "--n", str(n), "--strategy", strategy, "--budgets", b, "--policy", policy,
                   "--seed", str(seed), "--out", str(out)]  # fmt: skip
            print(" ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)


def rows_of(files: list[Path]) -> list[dict]:
    """Per (strategy, policy, budget): accuracy overall and per bin (mean and standard
    deviation over seeds), mean FLOPs per question."""
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for seed, f in enumerate(files):
        for r in read_records(f):  # a truncated last line (a killed run) is skipped
            key = (r["strategy"], r["policy"], int(r["budget"]))
            groups.setdefault(key, {}).setdefault(seed, []).append(r)
    rows = []
    for (strategy, policy, budget), by_seed in groups.items():
        row = {"strategy": strategy, "policy": policy, "budget": budget, "seeds": len(by_seed)}
        for name, levels in {"all": tuple(range(1, 9)), **BINS}.items():
            accs = []
            for recs in by_seed.values():
                sel = [r for r in recs if int(r.get("level") or 0) in levels]
                accs.append(sum(r["correct"] for r in sel) / max(1, len(sel)))
            row[name] = statistics.mean(accs)
            row[f"{name}_sd"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
        recs = [r for rs in by_seed.values() for r in rs]
        row["n"] = len(recs) // len(by_seed)
        row["flops"] = statistics.mean(r["flops"] for r in recs)
        rows.append(row)
    order = {s: i for i, (s, _) in enumerate(RUNS)}
    return sorted(rows, key=lambda r: (r["budget"] > 1, r["budget"],
                                       order.get(r["strategy"], 99), r["policy"]))  # fmt: skip


def standard_error(p: float, n: int) -> float:
    """One binomial standard error of an accuracy ``p`` measured on ``n`` problems."""
    return math.sqrt(max(p * (1 - p), 1e-9) / max(1, n))


def claims(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """The claims of issue-level targets, each with whether these records support it."""
    at = {(r["strategy"], r["policy"], r["budget"]): r for r in rows}
    out: list[tuple[str, bool, str]] = []

    def get(strategy: str, budget: int, policy: str = "small") -> dict | None:
        return at.get((strategy, policy, budget))

    def pct(r: dict, key: str = "all") -> str:
        return f"{100 * r[key]:.1f}%"

    for r in rows:  # against greedy CoT of the same policy
        cot = get("cot", 1, r["policy"])
        if cot is not None and r["strategy"] != "cot" and r["budget"] == 16:
            out.append((f"{r['strategy']} N=16 ({r['policy']}) beats its policy's greedy CoT",
                        r["all"] > cot["all"], f"{pct(r)} vs {pct(cot)}"))  # fmt: skip
    beam, bon = get("beam_search", 16), get("best_of_n", 16)
    for sims in (16, 24):
        mcts = get("mcts", sims)
        if not (beam and bon and mcts):
            continue
        out.append(
            (
                f"MCTS {sims} simulations within 1 point of beam search N=16, at no more "
                "than 1.1x its FLOPs",
                mcts["all"] >= beam["all"] - 0.01 and mcts["flops"] <= 1.1 * beam["flops"],
                f"{pct(mcts)} at {mcts['flops']:.3g} vs {pct(beam)} at {beam['flops']:.3g}",
            )
        )
        out.append(
            (
                f"MCTS {sims} simulations ahead of best-of-16 at no more FLOPs",
                mcts["all"] > bon["all"] and mcts["flops"] <= 1.05 * bon["flops"],
                f"{pct(mcts)} at {mcts['flops']:.3g} vs {pct(bon)} at {bon['flops']:.3g}",
            )
        )
    for n in (4, 16):
        pf, bs = get("particle_filtering", n), get("beam_search", n)
        if pf and bs:
            se = standard_error(bs["all"], bs["n"] * bs["seeds"])
            if n == 4:
                claim, ok = "particle filtering beats beam search at N=4", pf["all"] > bs["all"]
            else:
                claim = "particle filtering at N=16 no worse than beam search (within 1 s.e.)"
                ok = pf["all"] >= bs["all"] - se
            out.append((claim, ok, f"{pct(pf)} vs {pct(bs)} (s.e. {100 * se:.1f})"))
    for n in (4, 16):
        rev, hyb = get("revision", n, "small-revise"), get("hybrid", n, "small-revise")
        par = get("best_of_n", n, "small-revise")
        if rev and par:
            out.append(
                (
                    f"revision N={n} beats best-of-N (same policy) at no more FLOPs",
                    rev["all"] > par["all"] and rev["flops"] <= 1.05 * par["flops"],
                    f"{pct(rev)} at {rev['flops']:.3g} vs {pct(par)} at {par['flops']:.3g}",
                )
            )
        if rev and hyb and par:
            out.append(
                (
                    f"hybrid N={n} beats both best-of-N and revision on medium questions",
                    hyb["medium"] > max(par["medium"], rev["medium"]),
                    f"medium: hybrid {pct(hyb, 'medium')}, best-of-N {pct(par, 'medium')}, "
                    f"revision {pct(rev, 'medium')}",
                )
            )
    return out


def markdown(rows: list[dict], command: str) -> str:
    seeds = max(r["seeds"] for r in rows)
    sd = seeds > 1
    lines = [
        "# Headline comparisons on the embedded models",
        "",
        f"Made by `{command}` ({rows[0]['n']} held-out synthetic test problems, equal per "
        f"level; up to {seeds} seed(s) per row; accuracy in %"
        + (", the mean over the row's seeds ± their standard deviation" if sd else "")
        + "; easy = levels 1-2, medium = 3-6, hard = 7-8; FLOPs = 2 x params x computed "
        "tokens per question, policy + calculator verifier, each run from empty prefix "
        "caches).",
        "",
        "| strategy | policy | N | seeds | acc % | easy | medium | hard | FLOPs/q |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{100 * r[k]:.1f}" + (f" ± {100 * r[k + '_sd']:.1f}" if r["seeds"] > 1 else "")
                 for k in ("all", "easy", "medium", "hard")]  # fmt: skip
        lines.append(f"| {r['strategy']} | {r['policy']} | {r['budget']} | {r['seeds']} | "
                     + " | ".join(cells) + f" | {r['flops']:.3g} |")  # fmt: skip
    lines += ["", "| claim | holds | measured |", "|---|---|---|"]
    lines += [f"| {c} | {'yes' if ok else 'NO'} | {m} |" for c, ok, m in claims(rows)]
    return "\n".join(lines) + "\n"


#: where ``--doc`` writes the compact table in a page (docs/strategies.md)
DOC_BEGIN, DOC_END = "<!-- headline table -->", "<!-- /headline table -->"


def doc_table(rows: list[dict]) -> str:
    """The compact table of docs/strategies.md: per strategy and policy, accuracy at N=4 and
    N=16 and FLOPs at N=16 (CoT: N=1; MCTS's default 24 simulations a row of its own)."""
    at = {(r["strategy"], r["policy"], r["budget"]): r for r in rows}
    lines = ["| strategy | policy | acc % at N=4 | acc % at N=16 | FLOPs/q at N=16 |",
             "|---|---|---|---|---|"]  # fmt: skip

    def pct(r: dict | None) -> str:
        return "" if r is None else f"{100 * r['all']:.1f}"

    for strategy, policy in RUNS:
        if strategy == "cot":
            r = at.get(("cot", policy, 1))
            if r is not None:
                lines.append(f"| `cot` (N=1) | {policy} | {pct(r)} | | {r['flops']:.2e} |")
            continue
        four, sixteen = at.get((strategy, policy, 4)), at.get((strategy, policy, 16))
        if four is not None or sixteen is not None:
            name = f"`{strategy}`" + (" (no PRM)" if strategy == "majority_vote" else "")
            flops = "" if sixteen is None else f"{sixteen['flops']:.2e}"
            lines.append(f"| {name} | {policy} | {pct(four)} | {pct(sixteen)} | {flops} |")
        for b in EXTRA_BUDGETS.get(strategy, []):
            r = at.get((strategy, policy, int(b)))
            if r is not None:
                lines.append(f"| `{strategy}`, {b} simulations (the default) | {policy} | | "
                             f"{pct(r)} | {r['flops']:.2e} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_doc_table(path: Path, rows: list[dict]) -> None:
    """Replace the table between ``DOC_BEGIN`` and ``DOC_END`` in ``path``."""
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{path} has no {DOC_BEGIN} ... {DOC_END} markers")
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    path.write_text(f"{head}{DOC_BEGIN}\n{doc_table(rows)}{DOC_END}{tail}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=320, help="test problems (a multiple of 8)")
    ap.add_argument("--budgets", default="4,16", help="comma-separated N")
    ap.add_argument("--seeds", default="0", help="comma-separated sampling seeds")
    ap.add_argument("--only", nargs="*", help="strategies to run (default: all of RUNS)")
    ap.add_argument("--records", type=Path, default=REPO_ROOT / "research" / "out" / "headline",
                    help="folder of the JSONL records, one file per seed (resumable)")  # fmt: skip
    ap.add_argument("--md", type=Path, default=None, help="write the table there too")
    ap.add_argument("--doc", type=Path, default=None,
                    help="also write the compact table into this page, between its "
                    f"{DOC_BEGIN} markers (docs/strategies.md)")  # fmt: skip
    ap.add_argument("--report-only", action="store_true", help="no runs, table from records")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.records.mkdir(parents=True, exist_ok=True)
    files = [args.records / f"seed{s}.jsonl" for s in seeds]
    runs = [r for r in RUNS if not args.only or r[0] in args.only]
    if not args.report_only:
        for seed, f in zip(seeds, files, strict=True):
            run(f, args.n, args.budgets, seed, runs)
    command = f"python -m research.headline --n {args.n} --budgets {args.budgets}"
    command += f" --seeds {args.seeds}" + (f" --md {args.md}" if args.md else "")
    rows = rows_of([f for f in files if f.exists()])
    if not rows:
        raise SystemExit(
            f"no records under {args.records} for seeds {args.seeds}: run without "
            "--report-only first (or point --records at a folder that has them)"
        )
    text = markdown(rows, command)
    if args.md:
        args.md.write_text(text)
    if args.doc:
        write_doc_table(args.doc, rows)
    print(text)


if __name__ == "__main__":
    main()
