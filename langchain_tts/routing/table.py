"""The budget table: difficulty bin -> strategy + config, with defaults from the papers.

The default table is for a small policy with a PRM: best-of-N (N=4) on easy questions, beam
search (N=16 / N=64, width 4) on medium / hard ones, after Liu et al., *Can 1B LLM Surpass
405B LLM?*; ``BudgetTable.preset("sequential")`` is Snell et al.'s allocation.
:func:`calibrate` rewrites the table from eval records. Rationale: ``docs/router.md``.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_tts.core.errors import ConfigError
from langchain_tts.routing.difficulty import (
    BINS,
    EASY_THRESHOLD,
    HARD_THRESHOLD,
    Bin,
    BinThresholds,
    bin_of,
)
from langchain_tts.strategies.registry import budget_config, strategy_config

__all__ = ["PRESETS", "BudgetTable", "RouteAllocation", "calibrate"]


class RouteAllocation(BaseModel):
    """One table entry: a registered strategy's name and its config."""

    model_config = ConfigDict(extra="forbid")

    strategy: str
    config: dict[str, Any] = Field(default_factory=dict)
    note: str | None = Field(None, description="where this choice comes from")

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:  # the package's error type, as BudgetTable's
            raise ConfigError(f"invalid route allocation:\n{e}") from None
        self.check()

    def check(self) -> RouteAllocation:
        """Raise :class:`ConfigError` unless the strategy exists and its config validates."""
        strategy_config(self.strategy, self.config)  # a ConfigError names what is wrong
        return self

    def validated_config(self) -> Any:
        """The strategy's pydantic config for this allocation."""
        return strategy_config(self.strategy, self.config)


def _alloc(strategy: str, config: dict[str, Any], note: str) -> dict[str, Any]:
    return {"strategy": strategy, "config": config, "note": note}


#: named tables; "small_policy" is the default (sources: docs/router.md)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # What the router evaluation calibrates for the embedded small policy and the calculator
    # verifier (seeds dropped; a test pins it to the committed result): bins on the
    # *verifier* estimator's score, so use it with estimator="verifier".
    "embedded_calculator": {
        "easy": _alloc(
            "step_repair",
            {"n": 16},
            "router_eval, embedded small + calculator: step repair of the verifier's greedy "
            "attempt where it is not reused",
        ),
        "medium": _alloc(
            "step_repair",
            {"n": 16},
            "router_eval, embedded small + calculator: the cheapest run as accurate as the "
            "best fixed one, from the attempt's verified steps",
        ),
        "hard": _alloc(
            "step_repair", {"n": 16}, "router_eval: no calibration problem; medium's run"
        ),
        "thresholds": {
            "easy": 0.015,
            "hard": 0.0,
            "note": "router_eval, embedded small + calculator, verifier estimator: P(greedy "
            "CoT solves) >= 0.5 from score 0.015 on 320 validation questions",
        },
    },
    "small_policy": {
        "easy": _alloc(
            "best_of_n", {"n": 4}, "Liu et al. Figs. 8-9: BoN best on easy for small policies"
        ),
        "medium": _alloc(
            "beam_search",
            {"n": 16, "beam_width": 4},
            "Liu et al.: search beats BoN for small policies beyond easy; N=16",
        ),
        "hard": _alloc(
            "beam_search",
            {"n": 64, "beam_width": 4},
            "Liu et al. Figs. 8-9: beam search best on hard for small policies; N=64",
        ),
    },
    "sequential": {
        "easy": _alloc("best_of_n", {"n": 16}, "Snell et al.: easy -> all parallel (N=C, T=0)"),
        "medium": _alloc(
            "hybrid",
            {"split": "sqrt", "budget": 16},
            "Snell et al.: medium -> balanced sqrt split (4 chains x 4 attempts)",
        ),
        "hard": _alloc(
            "revision", {"revisions": 15}, "Snell et al.: hard -> mostly sequential (16 attempts)"
        ),
    },
}


class BudgetTable(BaseModel):
    """Difficulty bin -> :class:`RouteAllocation`. Defaults: the ``small_policy`` preset."""

    model_config = ConfigDict(extra="forbid")

    easy: RouteAllocation = Field(
        default_factory=lambda: RouteAllocation(**PRESETS["small_policy"]["easy"])
    )
    medium: RouteAllocation = Field(
        default_factory=lambda: RouteAllocation(**PRESETS["small_policy"]["medium"])
    )
    hard: RouteAllocation = Field(
        default_factory=lambda: RouteAllocation(**PRESETS["small_policy"]["hard"])
    )
    source: str = Field("default: small_policy preset (Liu et al.; Snell et al.)")
    thresholds: BinThresholds | None = Field(
        None,
        description="cut points on the estimator's p_solve scale (fit_thresholds); the "
        "router bins with these instead of the estimator's own",
    )

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(e) from None
        self.check()

    # -- access and validation -----------------------------------------------------------
    def __getitem__(self, bin: Bin) -> RouteAllocation:
        if bin not in BINS:
            raise ConfigError(f"unknown difficulty bin {bin!r}; use one of {list(BINS)}")
        return getattr(self, bin)

    def items(self) -> list[tuple[Bin, RouteAllocation]]:
        return [(b, self[b]) for b in BINS]

    def check(self) -> BudgetTable:
        """Raise :class:`ConfigError` naming the bin whose strategy or config is invalid."""
        for b in BINS:
            try:
                self[b].check()
            except ConfigError as e:
                raise ConfigError(f"budget table, bin {b!r}: {e}") from None
        return self

    @classmethod
    def preset(cls, name: str = "small_policy") -> BudgetTable:
        """A named table from :data:`PRESETS`: ``small_policy`` (the default, Liu et al.),
        ``sequential`` (Snell et al.), ``embedded_calculator`` (calibrated for the embedded
        small policy and calculator verifier, with the verifier estimator)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown table preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**PRESETS[name], source=f"preset: {name}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetTable:
        """Validate a plain mapping (as read from JSON/YAML); errors are ConfigErrors."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a budget table must be a mapping, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if str(k) not in (*BINS, "source", "thresholds"))
        if unknown:
            raise ConfigError(
                f"unknown difficulty bin(s) {unknown} in the budget table; its keys are "
                f"{list(BINS)} (and optional 'source' and 'thresholds')"
            )
        return cls(**{str(k): v for k, v in data.items()})

    # -- JSON / YAML -----------------------------------------------------------------------
    def to_json(self, path: str | Path | None = None, *, indent: int = 2) -> str:
        """The table as JSON; also written to ``path`` when given."""
        text = self.model_dump_json(indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> BudgetTable:
        """A table from a JSON string, or from a file path (``Path`` or a path string)."""
        text = _read_source(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"budget table is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The table as YAML (needs PyYAML); also written to ``path`` when given."""
        yaml = _yaml()
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> BudgetTable:
        """A table from a YAML string or file path (needs PyYAML)."""
        yaml = _yaml()
        text = _read_source(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"budget table is not valid YAML: {e}") from None
        return cls.from_dict(data)


def _config_error(e: ValidationError) -> ConfigError:
    """A ValidationError as a ConfigError, naming the bin (our own ConfigErrors unwrapped)."""
    for err in e.errors():
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):
            where = err["loc"][0] if err.get("loc") else "?"
            if where == "thresholds":
                return ConfigError(f"budget table thresholds: {inner}")
            return ConfigError(f"budget table, bin {where!r}: {inner}")
    return ConfigError(f"invalid budget table:\n{e}")


def _yaml() -> Any:
    try:
        import yaml  # lazy: YAML is optional
    except ImportError:  # pragma: no cover - PyYAML is installed here
        raise ConfigError("YAML tables need PyYAML: pip install pyyaml (or use JSON)") from None
    return yaml


def _read_source(source: str | Path) -> str:
    """The text of ``source``: a file (a ``Path``, or a one-line string naming a file) or
    the table text itself."""
    if isinstance(source, Path):
        if not source.is_file():
            raise ConfigError(f"no such budget table file: {str(source)!r}")
        return source.read_text()
    if not isinstance(source, str):
        raise ConfigError(f"expected table text or a path, got {type(source).__name__}")
    s = source.strip()
    if s and "\n" not in s and not s.startswith("{") and len(s) < 4096:
        if Path(s).is_file():
            return Path(s).read_text()
        if s.endswith((".json", ".yaml", ".yml")):
            raise ConfigError(f"no such budget table file: {s!r}")
    return source


# -- calibration ---------------------------------------------------------------------------
def calibrate(
    records: Iterable[Mapping[str, Any]],
    difficulty_of: Mapping[Any, Bin] | None = None,
    tolerance: float = 0.01,
    *,
    reference: str | tuple[str, int] | None = None,
    base: BudgetTable | None = None,
    easy: float = EASY_THRESHOLD,
    hard: float = HARD_THRESHOLD,
    noise: float = 0.0,
    thresholds: BinThresholds | None = None,
) -> BudgetTable:
    """A table from eval records (``tts eval`` / :func:`~langchain_tts.eval.runner.run_eval`).

    For each bin: among the runs (``strategy``, ``budget``) that have a record for every
    problem of the bin, take the best accuracy ``best``; keep the runs with accuracy
    ``>= best - tolerance``; choose the one with the lowest mean FLOPs (ties: smaller
    budget, then name). Its config is ``budget_config(strategy, budget)``, the mapping the
    sweep itself used.

    ``noise`` widens the tolerance by that many standard errors of the *paired* accuracy
    difference between each run and the bin's best, measured on the bin's own problems
    (the one-standard-error rule of model selection at ``noise=1``): on a few dozen
    problems a run that looks a point or two better is often noise, and paying 4x the
    FLOPs for it is what a router exists to avoid. ``noise=0`` is the plain rule.

    Bins of problems: ``difficulty_of[problem_id]`` when given (e.g. from
    :func:`~.difficulty.estimate_bins` with the estimator the router will use -- the most
    consistent choice, since the router bins by that estimator). Otherwise each problem's
    ``p_solve`` is its accuracy over a *reference* set of records, binned with the absolute
    thresholds (``easy``/``hard``): ``reference=None`` uses every record of the problem
    (the fraction of swept configurations that solve it), a strategy name only that
    strategy's runs (all budgets), a ``(strategy, budget)`` pair exactly that run.
    Problems missing from ``difficulty_of`` are ignored. A bin without problems keeps
    ``base``'s allocation (default: the default table).

    ``thresholds`` (from :func:`~.difficulty.fit_thresholds`, the cut points that made
    ``difficulty_of``) are stored in the table, so the router bins as calibration did.

    Records must come from one (dataset, policy, prm); mixing them raises ConfigError.
    """
    if not 0.0 <= tolerance <= 1.0 or math.isnan(tolerance):
        raise ConfigError(f"tolerance must be an accuracy gap in [0, 1], got {tolerance!r}")
    if not 0.0 <= noise < math.inf:
        raise ConfigError(f"noise must be a number of standard errors >= 0, got {noise!r}")
    recs = [dict(r) for r in records]
    if not recs:
        raise ConfigError("calibrate needs eval records; run `tts eval` first")
    for i, r in enumerate(recs):
        missing = [k for k in ("strategy", "budget", "id", "correct", "flops") if k not in r]
        if missing:
            raise ConfigError(f"record {i} lacks {missing}; expected the eval runner's records")
        f, b = r["flops"], r["budget"]
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0 <= f < math.inf:
            raise ConfigError(f"record {i} has flops={f!r}; a cost is a finite number >= 0")
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ConfigError(f"record {i} has budget={b!r}; a budget is a whole number >= 1")
    origins = {(r.get("dataset"), r.get("policy"), r.get("prm")) for r in recs}
    if len(origins) > 1:
        raise ConfigError(
            f"records mix several (dataset, policy, prm): {sorted(map(str, origins))}; "
            "calibrate one policy/PRM pair at a time (filter the records first)"
        )
    base = base or BudgetTable()

    # runs[(strategy, budget)][problem_id] = record
    runs: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for r in recs:
        runs[(str(r["strategy"]), int(r["budget"]))][str(r["id"])] = r

    if difficulty_of is not None:
        bins = {str(pid): b for pid, b in difficulty_of.items()}
        bad = {b for b in bins.values() if b not in BINS}
        if bad:
            raise ConfigError(f"difficulty_of has unknown bins {sorted(bad)}; use {list(BINS)}")
    else:
        bins = _reference_bins(recs, reference, easy, hard)

    by_bin: dict[str, list[str]] = defaultdict(list)
    for pid, b in bins.items():
        by_bin[b].append(pid)

    chosen: dict[str, RouteAllocation] = {}
    for b in BINS:
        pids = by_bin.get(b, [])
        if not pids:
            chosen[b] = base[b]
            continue
        stats = []
        for (strategy, budget), per in runs.items():
            if any(p not in per for p in pids):
                continue  # a run must cover the whole bin to be compared fairly
            acc = sum(bool(per[p]["correct"]) for p in pids) / len(pids)
            flops = sum(float(per[p]["flops"]) for p in pids) / len(pids)
            stats.append((acc, flops, budget, strategy))
        if not stats:
            raise ConfigError(
                f"no run has records for all {len(pids)} problems of bin {b!r}; "
                "finish the sweep (it resumes) or pass difficulty_of for the solved problems"
            )
        best = max(s[0] for s in stats)
        # the best run's per-problem outcomes, for paired differences (ties: cheapest)
        top = min((s for s in stats if s[0] == best), key=lambda s: (s[1], s[2], s[3]))
        top_per = runs[(top[3], top[2])]

        def slack(s: tuple, top_per: dict = top_per, pids: list = pids) -> float:
            if not noise:
                return tolerance
            return tolerance + noise * _paired_se(top_per, runs[(s[3], s[2])], pids)

        ok = [s for s in stats if best - s[0] <= slack(s) + 1e-12]
        acc, flops, budget, strategy = min(ok, key=lambda s: (s[1], s[2], s[3]))
        config = budget_config(strategy, budget)
        rule = f"tolerance {tolerance}" + (f" + {noise:g} paired SE" if noise else "")
        note = (
            f"calibrated on {len(pids)} problems: accuracy {acc:.3f} (best {best:.3f}, "
            f"{rule}) at {flops:.3g} FLOPs/question; budget {budget}"
        )
        try:
            chosen[b] = RouteAllocation(strategy=strategy, config=config, note=note)
        except ConfigError as e:
            raise ConfigError(f"records of bin {b!r} name an unusable run: {e}") from None
    dataset, policy, prm = next(iter(origins))
    source = f"calibrated from {len(recs)} records (dataset={dataset}, policy={policy}, prm={prm})"
    return BudgetTable(**chosen, source=source, thresholds=thresholds)


def _paired_se(a: Mapping[str, Any], b: Mapping[str, Any], pids: list[str]) -> float:
    """Standard error of the mean paired difference correct_a - correct_b over ``pids``."""
    d = [bool(a[p]["correct"]) - bool(b[p]["correct"]) for p in pids]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1)
    return math.sqrt(var / len(d))


def _reference_bins(
    recs: list[dict], reference: str | tuple[str, int] | None, easy: float, hard: float
) -> dict[str, Bin]:
    if reference is None:
        sel = recs
    elif isinstance(reference, str):
        sel = [r for r in recs if str(r["strategy"]) == reference]
    else:
        strategy, budget = reference
        sel = [r for r in recs if str(r["strategy"]) == strategy and int(r["budget"]) == budget]
    if not sel:
        raise ConfigError(f"no records for reference {reference!r}")
    correct: dict[str, list[bool]] = defaultdict(list)
    for r in sel:
        correct[str(r["id"])].append(bool(r["correct"]))
    return {pid: bin_of(sum(v) / len(v), easy=easy, hard=hard) for pid, v in correct.items()}
