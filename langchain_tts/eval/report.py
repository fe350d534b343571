"""Evaluation reports from eval records: accuracy vs compute, scaling laws, crossovers, plots.

:func:`write_report` turns the records :func:`~langchain_tts.eval.runner.run_eval` (``tts
eval``) writes into ``report.md``, ``report.json`` and plots, per dataset. matplotlib is
optional (``pip install "langchain-tts[eval]"``) and imported only to plot.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_tts.scaling import ScalingFit, crossover_tokens, fit_scaling_law

__all__ = [
    "LAW_X",
    "Crossover",
    "DatasetReport",
    "LawFit",
    "analyze",
    "crossovers",
    "difficulty_bins",
    "fit_laws",
    "plot_accuracy_by_difficulty",
    "plot_accuracy_vs_flops",
    "render_markdown",
    "run_rows",
    "write_report",
]

RUN_KEY = ("dataset", "policy", "prm", "strategy", "budget")
#: what ``T`` of the scaling law can be: a per-problem mean of a record field, or the budget N
LAW_X: dict[str, str] = {
    "generated_tokens": "mean generated (thinking) tokens per problem",
    "tokens": "mean tokens per problem (policy prompt + generated + PRM)",
    "policy_tokens": "mean policy tokens per problem (prompt + generated)",
    "flops": "mean FLOPs per problem",
    "budget": "the budget N",
}
Difficulty = Literal["auto", "level", "pass1"]


# -- difficulty bins ---------------------------------------------------------------------------
def _has_level(r: dict) -> bool:
    return r.get("level") not in (None, "")


def difficulty_bins(
    records: Iterable[dict],
    by: Difficulty = "auto",
    *,
    easy: float = 0.5,
    hard: float = 0.1,
) -> dict[tuple[str, str], str]:
    """``(dataset, problem id) -> bin label`` for every problem of ``records``.

    * ``by="level"``: the dataset's level, labelled ``L1``, ``L2``, ...;
    * ``by="pass1"``: ``easy`` / ``medium`` / ``hard`` from the problem's solve rate over
      every record of it (all runs), with the router's absolute thresholds;
    * ``by="auto"``: ``level`` for a dataset whose records all have a level, else ``pass1``.
    """
    if by not in ("auto", "level", "pass1"):
        raise ValueError(f"difficulty must be 'auto', 'level' or 'pass1', got {by!r}")
    per_ds: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        per_ds[str(r.get("dataset"))].append(r)
    out: dict[tuple[str, str], str] = {}
    for ds, recs in per_ds.items():
        mode = by
        if mode == "auto":
            mode = "level" if all(_has_level(r) for r in recs) else "pass1"
        if mode == "level":
            for r in recs:
                lv = r.get("level")
                out[(ds, str(r["id"]))] = f"L{lv}" if _has_level(r) else "L?"
            continue
        from langchain_tts.routing.difficulty import bin_of  # lazy: pulls in strategies

        solved: dict[str, list[bool]] = defaultdict(list)
        for r in recs:
            solved[str(r["id"])].append(bool(r.get("correct")))
        for pid, v in solved.items():
            out[(ds, pid)] = bin_of(sum(v) / len(v), easy=easy, hard=hard)
    return out


def _bin_order(label: str) -> tuple:
    named = {"easy": 0, "medium": 1, "hard": 2}
    if label in named:
        return (0, named[label], "")
    if label.startswith("L") and label[1:].isdigit():
        return (1, int(label[1:]), "")
    return (2, 0, label)


# -- per-run rows ------------------------------------------------------------------------------
def _mean(rs: Sequence[dict], key: str) -> float:
    return math.fsum(float(r.get(key) or 0.0) for r in rs) / len(rs) if rs else 0.0


def run_rows(records: Iterable[dict], bins: dict[tuple[str, str], str] | None = None) -> list[dict]:
    """One row per run ``(dataset, policy, prm, strategy, budget)``: accuracy, per-bin
    accuracy and compute per problem.

    A problem recorded twice for the same run (overlapping shards) counts once (the last
    record). Row fields: the run key, ``n``, ``accuracy`` (fraction), ``by_bin``
    (``label -> {"n", "accuracy", "mean_flops", "mean_tokens"}``) and ``mean_*`` of
    ``tokens``, ``generated_tokens``, ``policy_tokens``, ``prm_tokens``, ``flops``,
    ``policy_flops``, ``prm_flops``, ``seconds`` (per problem).
    """
    records = list(records)
    if bins is None:
        bins = difficulty_bins(records)
    runs: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        runs[tuple(r.get(k) for k in RUN_KEY)][str(r["id"])] = r
    rows = []
    for key, per in runs.items():
        rs = list(per.values())
        row: dict[str, Any] = dict(zip(RUN_KEY, key))
        row["n"] = len(rs)
        row["accuracy"] = sum(bool(r.get("correct")) for r in rs) / len(rs)
        grouped: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            grouped[bins.get((str(r.get("dataset")), str(r["id"])), "all")].append(r)
        row["by_bin"] = {
            b: {
                "n": len(g),
                "accuracy": sum(bool(r.get("correct")) for r in g) / len(g),
                "mean_flops": _mean(g, "flops"),
                "mean_tokens": _mean(g, "tokens"),
            }
            for b, g in sorted(grouped.items(), key=lambda kv: _bin_order(kv[0]))
        }
        for k in (
            "tokens",
            "generated_tokens",
            "policy_tokens",
            "prm_tokens",
            "flops",
            "policy_flops",
            "prm_flops",
            "seconds",
        ):
            row[f"mean_{k}"] = _mean(rs, k)
        rows.append(row)
    return sorted(
        rows,
        key=lambda r: (
            str(r["dataset"]),
            str(r["policy"]),
            str(r["prm"]),
            str(r["strategy"]),
            int(r["budget"]),
        ),
    )


def _x_of(row: dict, law_x: str) -> float:
    return float(row["budget"]) if law_x == "budget" else float(row[f"mean_{law_x}"])


def _series_key(row: dict) -> tuple[str, str, str, str]:
    return (str(row["dataset"]), str(row["policy"]), str(row["prm"]), str(row["strategy"]))


def _label(policy: str, prm: str, strategy: str) -> str:
    return f"{policy} {strategy}" if prm in ("none", "None", "") else f"{policy}+{prm} {strategy}"


# -- scaling laws --------------------------------------------------------------------------------
@dataclass
class LawFit:
    """``Q(T) = q0 + gamma ln T`` of one (dataset, policy, prm, strategy) over its budgets.

    ``accuracy`` is in percent, ``x`` the ``T`` of each budget (see ``law_x``); ``fit`` is
    the fit on ``x``, ``flops_fit`` the same curve against mean FLOPs per problem (``None``
    when no FLOPs were recorded, e.g. a remote policy without ``num_parameters``).
    """

    dataset: str
    policy: str
    prm: str
    strategy: str
    law_x: str
    budgets: list[int]
    x: list[float]
    accuracy: list[float]
    flops: list[float]
    fit: ScalingFit
    flops_fit: ScalingFit | None = None

    @property
    def label(self) -> str:
        return _label(self.policy, self.prm, self.strategy)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(
            fit=self.fit.model_dump(), flops_fit=self.flops_fit and self.flops_fit.model_dump()
        )
        return d


def fit_laws(rows: Iterable[dict], law_x: str = "generated_tokens") -> list[LawFit]:
    """Fit the scaling law per (dataset, policy, prm, strategy) with >= 2 distinct ``T``.

    Accuracy is in percent, so ``gamma`` is percentage points per ln-token (the blog's
    unit); ``q0`` and ``gamma`` are both fitted (OLS on ``ln T``). Runs with ``T <= 0``
    (nothing recorded) are left out of the fit.
    """
    if law_x not in LAW_X:
        raise ValueError(f"law_x must be one of {sorted(LAW_X)}, got {law_x!r}")
    series: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        series[_series_key(r)].append(r)
    out = []
    for (ds, policy, prm, strategy), rs in series.items():
        pts = sorted((r for r in rs if _x_of(r, law_x) > 0), key=lambda r: int(r["budget"]))
        if len({_x_of(r, law_x) for r in pts}) < 2:
            continue
        xs = [_x_of(r, law_x) for r in pts]
        qs = [100.0 * r["accuracy"] for r in pts]
        fs = [float(r["mean_flops"]) for r in pts]
        flops_fit = None
        if all(f > 0 for f in fs) and len(set(fs)) >= 2:
            flops_fit = fit_scaling_law(fs, qs)
        out.append(
            LawFit(
                dataset=ds,
                policy=policy,
                prm=prm,
                strategy=strategy,
                law_x=law_x,
                budgets=[int(r["budget"]) for r in pts],
                x=xs,
                accuracy=qs,
                flops=fs,
                fit=fit_scaling_law(xs, qs),
                flops_fit=flops_fit,
            )
        )
    return out


# -- crossovers ------------------------------------------------------------------------------
@dataclass
class Crossover:
    """Where a small model's fitted curve reaches a larger model's CoT accuracy.

    ``tokens``: ``T`` (in the law's unit) at which ``law.fit`` reaches ``target``;
    ``flops``: the FLOPs per problem at which ``law.flops_fit`` does (``None`` without
    FLOPs), and ``flops_ratio`` that over the reference's FLOPs per problem (< 1: cheaper
    than the large model answering directly). Both are ``inf`` when the curve never gets
    there (``gamma <= 0``) and ``1.0`` when ``q0`` is already above. ``extrapolated``: the
    crossover lies outside the measured budgets. ``measured_budget`` / ``measured_flops``:
    the cheapest measured run of the series that reaches the target (``None`` if none).
    """

    law: LawFit
    reference_policy: str
    reference_prm: str
    reference_strategy: str
    target: float
    reference_flops: float
    reference_tokens: float
    tokens: float
    flops: float | None
    flops_ratio: float | None
    extrapolated: bool
    measured_budget: int | None
    measured_flops: float | None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "law"}
        d.update({k: getattr(self.law, k) for k in ("dataset", "policy", "prm", "strategy")})
        return d


def _per_token_cost(rows: Iterable[dict]) -> float | None:
    """FLOPs per policy token (``2 x params``) of a policy's runs; None when not recorded."""
    rows = list(rows)
    tokens = math.fsum(r["mean_policy_tokens"] for r in rows)
    flops = math.fsum(r["mean_policy_flops"] for r in rows)
    return flops / tokens if tokens > 0 and flops > 0 else None


def crossovers(
    laws: Iterable[LawFit],
    rows: Iterable[dict],
    *,
    reference_policy: str | None = None,
    reference_strategy: str = "cot",
) -> list[Crossover]:
    """Crossovers of each fitted curve with the ``reference_strategy`` runs of other policies.

    ``reference_policy`` names the large model; by default every other policy of the
    dataset that has a ``cot`` run and costs more FLOPs per token (``2 x params``, from the
    records) is a reference, or any other policy when FLOPs were not recorded.
    """
    rows = list(rows)
    by_policy: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_policy[(str(r["dataset"]), str(r["policy"]))].append(r)
    refs = [r for r in rows if str(r["strategy"]) == reference_strategy]
    out = []
    for law in laws:
        own_cost = _per_token_cost(by_policy[(law.dataset, law.policy)])
        for ref in refs:
            if str(ref["dataset"]) != law.dataset or str(ref["policy"]) == law.policy:
                continue
            if reference_policy is not None:
                if str(ref["policy"]) != reference_policy:
                    continue
            else:
                ref_cost = _per_token_cost(by_policy[(law.dataset, str(ref["policy"]))])
                if own_cost is not None and ref_cost is not None and ref_cost <= own_cost:
                    continue  # not a larger model
            target = 100.0 * ref["accuracy"]
            tokens = crossover_tokens(law.fit, target)
            flops = ratio = None
            if law.flops_fit is not None:
                flops = crossover_tokens(law.flops_fit, target)
                ratio = flops / ref["mean_flops"] if ref["mean_flops"] > 0 else None
            reached = [
                (b, f) for b, q, f in zip(law.budgets, law.accuracy, law.flops) if q >= target
            ]
            best = min(reached, key=lambda bf: (bf[1], bf[0])) if reached else None
            out.append(
                Crossover(
                    law=law,
                    reference_policy=str(ref["policy"]),
                    reference_prm=str(ref["prm"]),
                    reference_strategy=reference_strategy,
                    target=target,
                    reference_flops=float(ref["mean_flops"]),
                    reference_tokens=float(ref["mean_generated_tokens"]),
                    tokens=tokens,
                    flops=flops,
                    flops_ratio=ratio,
                    extrapolated=not (law.fit.t_min <= tokens <= law.fit.t_max),
                    measured_budget=best[0] if best else None,
                    measured_flops=best[1] if best else None,
                )
            )
    return out


# -- analysis --------------------------------------------------------------------------------
@dataclass
class DatasetReport:
    """Everything the report says about one dataset."""

    dataset: str
    rows: list[dict]
    bins: list[str]
    bin_counts: dict[str, int]
    difficulty: str
    laws: list[LawFit]
    crossovers: list[Crossover]
    plots: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("dataset", "difficulty", "bins", "bin_counts")}
        d.update(runs=self.rows, laws=[law.to_dict() for law in self.laws])
        d.update(crossovers=[c.to_dict() for c in self.crossovers])
        return {**d, "plots": [p.name for p in self.plots]}


def analyze(
    records: Iterable[dict],
    *,
    law_x: str = "generated_tokens",
    difficulty: Difficulty = "auto",
    reference_policy: str | None = None,
) -> list[DatasetReport]:
    """Run rows, scaling-law fits and crossovers, one :class:`DatasetReport` per dataset."""
    records = list(records)
    if not records:
        raise ValueError("no eval records to report on; run `tts eval` first")
    for i, r in enumerate(records):
        missing = [k for k in (*RUN_KEY, "id", "correct") if k not in r]
        if missing:
            raise ValueError(f"record {i} lacks {missing}; expected the eval runner's records")
    bins = difficulty_bins(records, difficulty)
    rows = run_rows(records, bins)
    laws = fit_laws(rows, law_x)
    cross = crossovers(laws, rows, reference_policy=reference_policy)
    out = []
    for ds in sorted({str(r["dataset"]) for r in rows}):
        ds_bins = {k: v for k, v in bins.items() if k[0] == ds}
        labels = sorted(set(ds_bins.values()), key=_bin_order)
        counts = {b: sum(v == b for v in ds_bins.values()) for b in labels}
        mode = difficulty
        if mode == "auto":
            mode = "level" if all(b.startswith("L") for b in labels) else "pass1"
        out.append(
            DatasetReport(
                dataset=ds,
                rows=[r for r in rows if str(r["dataset"]) == ds],
                bins=labels,
                bin_counts=counts,
                difficulty=mode,
                laws=[law for law in laws if law.dataset == ds],
                crossovers=[c for c in cross if c.law.dataset == ds],
            )
        )
    return out


# -- plots ----------------------------------------------------------------------------------
def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (7.0, 4.5)):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is in the eval extra
        raise ImportError(
            'the report plots need matplotlib: pip install "langchain-tts[eval]" '
            "(or pass plots=False / `tts report --no-plots`)"
        ) from None
    # A bare Figure on the Agg canvas: no pyplot, no global backend switch, thread-safe.
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _log_x(ax: Any, labelsize: float | None = None) -> None:
    """Log x axis labelled at 1, 2, 5 x 10^k: readable whether the data span a fraction
    of a decade (no minor-tick label pile-up) or many decades."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if labelsize is not None:
        ax.tick_params(labelsize=labelsize)


def _save(fig: Any, stem: Path, formats: Sequence[str]) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(p, format=fmt, dpi=150)
        paths.append(p)
    return paths


def _series(rows: Iterable[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[_series_key(r)].append(r)
    return {k: sorted(v, key=lambda r: int(r["budget"])) for k, v in sorted(out.items())}


def plot_accuracy_vs_flops(
    rows: Sequence[dict],
    stem: str | Path,
    *,
    title: str = "",
    laws: Sequence[LawFit] = (),
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Accuracy (%) vs FLOPs per problem (log x), one line per (policy, prm, strategy).

    Points are labelled with their budget N; single-budget runs (CoT) are stars with a
    dotted horizontal line at their accuracy; a series' fitted law (against FLOPs) is drawn
    dashed. Runs without FLOPs are left out. Returns the written files.
    """
    fig, axes = _figure()
    ax = axes[0][0]
    fitted = {(law.dataset, law.policy, law.prm, law.strategy): law for law in laws}
    plotted = 0
    for i, (key, rs) in enumerate(_series(rows).items()):
        rs = [r for r in rs if r["mean_flops"] > 0]
        if not rs:
            continue
        color = f"C{i % 10}"
        xs = [r["mean_flops"] for r in rs]
        ys = [100.0 * r["accuracy"] for r in rs]
        label = _label(*key[1:])
        if len(rs) == 1:
            ax.plot(xs, ys, marker="*", markersize=12, linestyle="none", color=color, label=label)
            ax.axhline(ys[0], color=color, linestyle=":", linewidth=1)
        else:
            ax.plot(xs, ys, marker="o", color=color, label=label)
        for r, x, y in zip(rs, xs, ys):
            ax.annotate(
                f"N={r['budget']}",
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=color,
            )
        law = fitted.get(key)
        if law is not None and law.flops_fit is not None:
            lo, hi = min(law.flops), max(law.flops)
            grid = [lo * (hi / lo) ** (k / 40) for k in range(41)]
            ax.plot(grid, law.flops_fit.predict(grid), linestyle="--", linewidth=1, color=color)
        plotted += 1
    _log_x(ax)
    ax.set_xlabel("FLOPs per problem (policy + PRM)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "Accuracy vs test-time compute")
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no FLOPs recorded", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, Path(stem), formats)


def plot_accuracy_by_difficulty(
    rows: Sequence[dict],
    bins: Sequence[str],
    stem: str | Path,
    *,
    title: str = "",
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """One panel per difficulty bin: accuracy (%) vs FLOPs per problem of that bin (log x),
    one line per (policy, prm, strategy). Returns the written files."""
    bins = list(bins) or ["all"]
    ncols = min(4, len(bins))
    nrows = -(-len(bins) // ncols)
    fig, axes = _figure(ncols, nrows, size=(3.6 * ncols, 3.0 * nrows + 0.6))
    flat = [ax for row in axes for ax in row]
    handles: dict[str, Any] = {}
    for ax, b in zip(flat, bins):
        for i, (key, rs) in enumerate(_series(rows).items()):
            pts = [
                (r["by_bin"][b]["mean_flops"], 100.0 * r["by_bin"][b]["accuracy"])
                for r in rs
                if b in r["by_bin"] and r["by_bin"][b]["mean_flops"] > 0
            ]
            if not pts:
                continue
            style = (
                {"marker": "*", "markersize": 10, "linestyle": "none"}
                if len(pts) == 1
                else {"marker": "o", "markersize": 4}
            )
            (h,) = ax.plot(*zip(*pts), color=f"C{i % 10}", **style)
            handles.setdefault(_label(*key[1:]), h)
        n = next((r["by_bin"][b]["n"] for r in rows if b in r["by_bin"]), 0)
        ax.set_title(f"{b} (n={n})", fontsize=9)
        _log_x(ax, labelsize=7)
        ax.set_ylim(-3, 103)
        ax.grid(True, which="both", alpha=0.3)
    for ax in flat[len(bins) :]:
        ax.set_visible(False)
    for ax in flat[::ncols]:
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in flat[-ncols:]:
        ax.set_xlabel("FLOPs per problem", fontsize=8)
    fig.suptitle(title or "Accuracy vs compute per difficulty bin", fontsize=10)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            fontsize=7,
            loc="outside lower center",
            ncols=min(4, len(handles)),
        )
    return _save(fig, Path(stem), formats)


# -- markdown ---------------------------------------------------------------------------------
def _num(x: float | None, fmt: str = ".3g") -> str:
    if x is None:
        return "–"
    if math.isinf(x):
        return "never" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return format(x, fmt)


def _table(head: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in lines]
    return "\n".join(out)


def render_markdown(
    reports: Sequence[DatasetReport],
    *,
    title: str = "Evaluation report",
    sources: Sequence[str] = (),
    n_records: int | None = None,
) -> str:
    """The markdown report (plots are linked by file name: keep them next to it)."""
    parts = [f"# {title}", ""]
    if sources:
        made = "Made by `tts report " + " ".join(sources) + "`"
        parts.append(made + (f" from {n_records} records." if n_records is not None else "."))
    parts.append(
        "Accuracy in %; compute per problem: tokens = policy prompt + generated + PRM, "
        "FLOPs = 2 x params x tokens (policy + PRM)."
    )
    for rep in reports:
        parts += _dataset_section(rep)
    return "\n".join(parts).rstrip() + "\n"


def _dataset_section(rep: DatasetReport) -> list[str]:
    how = (
        "the dataset's levels"
        if rep.difficulty == "level"
        else "each problem's solve rate over all runs (easy >= 50%, hard < 10%)"
    )
    counts = ", ".join(f"{b}: {n}" for b, n in rep.bin_counts.items())
    parts = ["", f"## {rep.dataset}", "", f"Difficulty bins from {how} ({counts}).", ""]
    parts += ["### Accuracy and compute per run", "", _runs_table(rep)]
    parts += ["", "### Scaling law Q(T) = Q0 + γ ln T", "", *_laws_section(rep.laws)]
    if rep.crossovers:
        parts += ["", "### Crossover with a larger model's CoT", "", *_crossovers_section(rep)]
    if rep.plots:
        parts += ["", "### Plots", "", *_plots_section(rep.plots)]
    return parts


_RUN_COMPUTE = {"tokens/q": ("mean_tokens", ".0f"), "generated/q": ("mean_generated_tokens", ".0f"),
                "PRM tokens/q": ("mean_prm_tokens", ".0f"), "FLOPs/q": ("mean_flops", ".3g"),
                "s/q": ("mean_seconds", ".2f")}  # fmt: skip


def _runs_table(rep: DatasetReport) -> str:
    """Accuracy overall and per difficulty bin, and the compute per problem, of each run."""
    head = ["policy", "prm", "strategy", "N", "n", "acc %", *rep.bins, *_RUN_COMPUTE]
    lines = []
    for r in rep.rows:
        cells = [r["policy"], r["prm"], r["strategy"], r["budget"], r["n"]]
        cells.append(f"{100 * r['accuracy']:.1f}")
        cells += [
            f"{100 * r['by_bin'][b]['accuracy']:.0f}" if b in r["by_bin"] else "–" for b in rep.bins
        ]
        cells += [format(r[key], fmt) for key, fmt in _RUN_COMPUTE.values()]
        lines.append([str(c) for c in cells])
    return _table(head, lines)


_LAW_HEAD = ["policy", "prm", "strategy", "budgets", "γ", "Q0", "R²", "T range", "γ (FLOPs)",
             "R² (FLOPs)"]  # fmt: skip


def _laws_section(laws: Sequence[LawFit]) -> list[str]:
    """The fitted scaling law of each (policy, prm, strategy)."""
    if not laws:
        return ["No (policy, prm, strategy) has two budgets with different compute."]
    intro = (
        f"Fitted per (policy, prm, strategy) over its budgets by least squares on ln T; "
        f"T = {LAW_X[laws[0].law_x]}; Q in %, so γ is points per ln-unit (γ ln 2 per "
        "doubling). The FLOPs columns fit the same accuracies against FLOPs/problem."
    )
    lines = [
        [
            law.policy,
            law.prm,
            law.strategy,
            ",".join(map(str, law.budgets)),
            f"{law.fit.gamma:.3f}",
            f"{law.fit.q0:.2f}",
            f"{law.fit.r2:.3f}",
            f"{law.fit.t_min:.3g}–{law.fit.t_max:.3g}",
            _num(law.flops_fit.gamma if law.flops_fit else None, ".3f"),
            _num(law.flops_fit.r2 if law.flops_fit else None, ".3f"),
        ]
        for law in laws
    ]
    return [intro, "", _table(_LAW_HEAD, lines)]


_CROSSOVER_HEAD = ["policy", "prm", "strategy", "reference", "target acc %", "ref FLOPs/q", "T*",
                   "FLOPs*", "FLOPs*/ref", "measured"]  # fmt: skip


def _crossovers_section(rep: DatasetReport) -> list[str]:
    """Where each fitted curve reaches the larger model's CoT accuracy."""
    intro = (
        "Where each fitted curve reaches the larger model's CoT accuracy: T* in the "
        "law's unit, FLOPs* on the FLOPs fit and its ratio to the larger model's "
        "FLOPs/problem (< 1: cheaper); 'measured' is the cheapest run that already "
        "reaches it. (extrap.): T* beyond the measured range; '< x': the curve is "
        "already above the target at the smallest measured budget."
    )
    return [intro, "", _table(_CROSSOVER_HEAD, [_crossover_cells(c) for c in rep.crossovers])]


def _crossover_cells(c: Crossover) -> list[str]:
    law = c.law
    meas = (
        "–"
        if c.measured_budget is None
        else f"N={c.measured_budget} ({c.measured_flops:.3g} FLOPs)"
    )
    t, f, ratio = _num(c.tokens, ".4g"), _num(c.flops), _num(c.flops_ratio)
    if c.tokens < law.fit.t_min:  # the curve is above the target on the whole range
        t = f"< {law.fit.t_min:.4g}"
    elif c.extrapolated and math.isfinite(c.tokens):
        t += " (extrap.)"
    if c.flops is not None and law.flops and c.flops < min(law.flops):
        f = f"< {min(law.flops):.3g}"
        if c.reference_flops > 0:
            ratio = f"< {min(law.flops) / c.reference_flops:.3g}"
    reference = f"{c.reference_policy} {c.reference_strategy}"
    return [law.policy, law.prm, law.strategy, reference, f"{c.target:.1f}",
            f"{c.reference_flops:.3g}", t, f, ratio, meas]  # fmt: skip


def _plots_section(plots: Sequence[Path]) -> list[str]:
    """The PNG plots inline, then links to their vector versions."""
    parts: list[str] = []
    for p in plots:
        if p.suffix == ".png":
            parts += [f"![{p.stem}]({p.name})", ""]
    svgs = [p.name for p in plots if p.suffix == ".svg"]
    if svgs:
        parts.append("Vector versions: " + ", ".join(f"[{s}]({s})" for s in svgs) + ".")
    return parts


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "dataset"


def write_report(
    results_paths: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    title: str = "Evaluation report",
    *,
    plots: bool = True,
    law_x: str = "generated_tokens",
    difficulty: Difficulty = "auto",
    reference_policy: str | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> Path:
    """Write ``report.md`` (+ ``report.json`` and, with ``plots``, PNG/SVG plots) to
    ``out_dir`` from results JSONL files (or directories of them); returns the markdown path.

    Plots per dataset: ``<dataset>_accuracy_vs_flops.{png,svg}`` and
    ``<dataset>_accuracy_by_difficulty.{png,svg}``.

    Per dataset:

    * accuracy per (policy, prm, strategy, budget) overall and per difficulty bin, with the
      compute spent per problem (tokens, generated tokens, PRM tokens, FLOPs, seconds);
    * the test-time scaling law ``Q(T) = Q0 + gamma ln T`` fitted per (policy, prm, strategy)
      over its budgets (:func:`langchain_tts.scaling.fit_scaling_law`, ordinary least squares;
      ``Q`` in percent, ``T`` the mean *generated* tokens per problem by default -- the
      references' "thinking tokens"), with a second fit against FLOPs per problem;
    * the crossover against a larger model's CoT when the records have one (e.g. policy
      ``large``, strategy ``cot``): the thinking tokens / FLOPs at which each fitted curve
      reaches the large model's accuracy (:func:`langchain_tts.scaling.crossover_tokens`), and
      the cheapest measured run that does;
    * plots (matplotlib, Agg canvas, PNG and SVG): accuracy vs FLOPs per strategy (log x) and
      accuracy vs FLOPs per difficulty bin.

    Difficulty bins: the dataset's own levels (MATH levels 1-5, the synthetic task's 1-8) when
    every record has one, else (AIME) each problem's solve rate over all records of the
    dataset, binned like the router (easy ``>= 0.5``, hard ``< 0.1``, see
    :func:`langchain_tts.routing.difficulty.bin_of`).
    """
    from langchain_tts.eval.runner import load_records

    if isinstance(results_paths, (str, Path)):
        results_paths = [results_paths]
    records = load_records(*results_paths)
    reports = analyze(
        records, law_x=law_x, difficulty=difficulty, reference_policy=reference_policy
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        for rep in reports:
            slug = _slug(rep.dataset)
            rep.plots += plot_accuracy_vs_flops(
                rep.rows,
                out / f"{slug}_accuracy_vs_flops",
                title=f"{rep.dataset}: accuracy vs test-time compute",
                laws=rep.laws,
                formats=formats,
            )
            rep.plots += plot_accuracy_by_difficulty(
                rep.rows,
                rep.bins,
                out / f"{slug}_accuracy_by_difficulty",
                title=f"{rep.dataset}: accuracy vs compute per difficulty bin",
                formats=formats,
            )
    md = render_markdown(
        reports, title=title, sources=[str(p) for p in results_paths], n_records=len(records)
    )
    path = out / "report.md"
    path.write_text(md, encoding="utf-8")
    payload = {
        "title": title,
        "sources": [str(p) for p in results_paths],
        "datasets": [rep.to_dict() for rep in reports],
    }
    (out / "report.json").write_text(json.dumps(_plain(payload), indent=1) + "\n")
    return path


def _plain(x: Any) -> Any:
    """Strict JSON: non-finite floats as the strings "inf" / "-inf" / "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
