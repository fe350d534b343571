"""Does the calibrated router beat fixed strategies? ``python -m research.router_eval``

The claim checked, on the embedded small policy + a verifier and the synthetic task: the
calibrated router reaches the accuracy of the best single fixed strategy within 1 point
at no more than half its FLOPs per question (or, at equal-or-lower FLOPs, is more
accurate). One command does all of it:

1. **Calibration sweep** (validation split, never test): every candidate run (strategy x
   budget: best-of-N, votes, beam search, MCTS, particle filtering at N=4 and 16, beam
   search and particle filtering also at N=8, greedy CoT) on ``--n-calib`` problems, with
   :func:`~langchain_tts.eval.runner.run_eval` (resumable JSONL records).
2. **Bins**: the router's own difficulty estimator (default: the verifier, one greedy
   attempt scored by the PRM) on each calibration problem, its bin cut points fitted where
   the score means a 50% / 10% chance that greedy CoT solves the question. The questions
   the router answers with the estimate itself (easy and sure) are set aside; the table
   serves the rest. ``--rule joint`` (default): of every assignment of swept runs to bins,
   the one with the fewest FLOPs whose router, simulated on the validation problems from
   the records (estimate included), is within ``--tolerance`` of the best fixed run's
   validation accuracy. ``--rule per-bin``: :func:`~langchain_tts.routing.calibrate`, per
   bin the cheapest run within ``--tolerance`` of that bin's best.
3. **Test** (held-out test split): the calibrated router graph and every fixed run of the
   sweep. The router's FLOPs include its estimate.
4. **Report**: a table (run, accuracy, FLOPs/question, FLOPs relative to the best fixed run),
   the claim check, the calibrated table, the router as simulated on validation and where
   the router sent the test questions; printed, and written to ``<out>.md`` and
   ``<out>.json`` (default ``research/out/router_eval_<prm>``; the committed results name
   ``--out docs/results/...``). Records go to ``<out>.{calib,probe,test,routes}.jsonl``;
   ``--resume`` keeps them and solves only what is missing (without it they are cleared).

Records are labelled with a fingerprint of the model weights (``small@1a2b3c4d``) and the
router's runs with a hash of its table and estimator, so records of older weights or another
table are never mixed in on ``--resume``. ``--tiny`` is a seconds-long smoke run (tests).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research.runs import command_line

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__all__ = [
    "ACC_MARGIN",
    "FLOPS_SAVING",
    "Option",
    "check_claim",
    "cheapest_choice",
    "main",
    "parse_runs",
    "probe_answers",
    "simulate",
]

#: the claim: within 1 accuracy point of the best fixed run ...
ACC_MARGIN = 0.01
#: ... with at most half its FLOPs per question
FLOPS_SAVING = 0.50

#: an entry ``name`` runs at every budget of ``--budgets``; ``name@N`` runs at N only
DEFAULT_STRATEGIES = ("cot", "best_of_n", "majority_vote", "weighted_vote", "beam_search",
                      "mcts", "particle_filtering", "step_repair",
                      "beam_search@8", "particle_filtering@8")  # fmt: skip
DEFAULT_BUDGETS = (4, 16)
DEFAULTS = {"n_calib": 320, "n_test": 320, "strategies": DEFAULT_STRATEGIES,
            "budgets": DEFAULT_BUDGETS, "probe_k": 4}  # fmt: skip
#: ``--tiny``: a smoke run of a few seconds (tests); explicit options still win
TINY = {"n_calib": 8, "n_test": 4, "strategies": ("cot", "majority_vote", "best_of_n",
        "beam_search", "mcts", "particle_filtering", "step_repair"), "budgets": (2,),
        "probe_k": 2}  # fmt: skip
ROUTER = "router"
PROBE_SEED_OFFSET = 7919  # the probe's seed is the sweep's + this
ESTIMATORS = ("probe", "agreement", "verifier")
DEFAULT_OUT = Path("research") / "out" / "router_eval"  # gitignored; docs/results is named


# -- options -------------------------------------------------------------------------------
def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _budgets(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"budgets must be integers, e.g. 4,16; got {text!r}"
        ) from None
    if not out or any(b < 1 for b in out):
        raise argparse.ArgumentTypeError(f"budgets must be positive integers; got {text!r}")
    return out


def parse_runs(strategies: Sequence[str], budgets: Sequence[int]) -> list[tuple[str, int]]:
    """The sweep's runs ``(strategy, budget)``: each strategy at each budget (``cot`` once,
    at budget 1); an entry ``name@N`` runs that strategy at N only (a middle budget for a
    few strategies without doubling the sweep). Raises ``ConfigError`` for an unknown
    strategy or an unusable budget."""
    from langchain_tts.core.errors import ConfigError
    from langchain_tts.eval.runner import budget_config
    from langchain_tts.graph import STRATEGIES, strategy_config

    runs: list[tuple[str, int]] = []
    for entry in strategies:
        s, at, fixed = entry.partition("@")
        if s not in STRATEGIES:
            raise ConfigError(f"unknown strategy {s!r}; available: {sorted(STRATEGIES)}")
        if at:
            try:
                only = (int(fixed),)
            except ValueError:
                raise ConfigError(
                    f"{entry!r}: the budget after '@' must be an integer, e.g. beam_search@8"
                ) from None
            if only[0] < 1:
                raise ConfigError(f"{entry!r}: the budget after '@' must be positive")
        for b in (1,) if s == "cot" else only if at else budgets:
            try:
                strategy_config(s, budget_config(s, b))
            except ConfigError as e:
                raise ConfigError(f"{s} at budget {b}: {e}") from None
            if (s, b) not in runs:
                runs.append((s, b))
    if not runs:
        raise ConfigError("no runs: pass --strategies (and --budgets)")
    return runs


@dataclass(frozen=True)
class Paths:
    """``<stem>.md``, ``<stem>.json`` and the records ``<stem>.<part>.jsonl``."""

    stem: Path

    @classmethod
    def of(cls, out: str | Path) -> Paths:
        p = Path(out)
        return cls(p.with_suffix("") if p.suffix in (".md", ".json", ".jsonl") else p)

    def part(self, name: str) -> Path:
        return self.stem.with_name(f"{self.stem.name}.{name}.jsonl")

    @property
    def records(self) -> list[Path]:
        return [self.part(n) for n in ("calib", "probe", "prefix", "test", "routes")]

    @property
    def md(self) -> Path:
        return self.stem.with_name(self.stem.name + ".md")

    @property
    def json(self) -> Path:
        return self.stem.with_name(self.stem.name + ".json")


# -- helpers -------------------------------------------------------------------------------
def _fingerprint(folder: str) -> str:
    """A short hash of one embedded model's weights (records of other weights never mix)."""
    from langchain_tts.models import default_model_path

    h = hashlib.sha256()
    with open(default_model_path(folder) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:8]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _append(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _run_name(strategy: str, budget: int) -> str:
    return strategy if strategy == "cot" else f"{strategy} N={budget}"


def _stats(recs: Sequence[dict]) -> dict[str, float]:
    return {
        "n": len(recs),
        "accuracy": _mean([bool(r["correct"]) for r in recs]),
        "flops": _mean([float(r["flops"]) for r in recs]),
        "tokens": _mean([float(r["tokens"]) for r in recs]),
    }


def _config_text(config: dict) -> str:
    shown = {k: v for k, v in config.items() if k != "seed"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "-"


# -- the claim -----------------------------------------------------------------------------
def check_claim(fixed: Sequence[dict], router: dict) -> dict[str, Any]:
    """The claim's check of the router against the best fixed run (rows: ``name``,
    ``accuracy``, ``flops``).

    Best fixed: the most accurate fixed run (ties: fewer FLOPs). The claim holds when the
    router is within :data:`ACC_MARGIN` of its accuracy with at most ``1 - FLOPS_SAVING``
    of its FLOPs (``savings``), or is more accurate at equal-or-lower FLOPs
    (``equal_compute``). Also reported: the compute-matched fixed run (the most accurate
    one costing no more than the router) and whether the router beats it.
    """
    best = min(fixed, key=lambda r: (-r["accuracy"], r["flops"]))
    acc_r, flops_r = router["accuracy"], router["flops"]
    gap = acc_r - best["accuracy"]
    ratio = flops_r / best["flops"] if best["flops"] > 0 else math.inf
    savings = gap >= -ACC_MARGIN - 1e-12 and ratio <= 1.0 - FLOPS_SAVING + 1e-12
    equal = gap > 1e-12 and ratio <= 1.0 + 1e-12
    cheaper = [r for r in fixed if r["flops"] <= flops_r]
    matched = min(cheaper, key=lambda r: (-r["accuracy"], r["flops"])) if cheaper else None
    holds = savings or equal
    verdict = "HOLDS" if holds else "does NOT hold"
    text = (
        f"{verdict}: router {100 * acc_r:.1f}% at {flops_r:.3g} FLOPs/q vs best fixed "
        f"({best['name']}) {100 * best['accuracy']:.1f}% at {best['flops']:.3g} FLOPs/q: "
        f"{100 * gap:+.1f} points, {ratio:.2f}x the FLOPs (needs >= {-100 * ACC_MARGIN:+.0f} "
        f"points at <= {1 - FLOPS_SAVING:.2f}x, or more accurate at <= 1x)"
    )
    return {
        "holds": holds,
        "savings": savings,
        "equal_compute": equal,
        "best_fixed": best,
        "router": router,
        "accuracy_gap": gap,
        "flops_ratio": ratio,
        "acc_margin": ACC_MARGIN,
        "flops_saving": FLOPS_SAVING,
        "compute_matched": matched,
        "beats_compute_matched": None if matched is None else acc_r > matched["accuracy"],
        "text": text,
    }


# -- the steps -----------------------------------------------------------------------------
async def _probe_bins(estimator, problems, path: Path, label: str, concurrency: int) -> dict:
    """``{id: probe record}`` for every problem (resumable: ``path`` keeps what is done)."""
    from langchain_tts.eval.grading import answers_match
    from langchain_tts.eval.runner import read_records
    from langchain_tts.routing import RouterConfig, verified_prefix

    threshold = RouterConfig().prefix_threshold
    # records without the estimate's own answer or verified steps (older ones) are made again
    done = {r["id"]: r for r in read_records(path) if r.get("estimator") == label
            and "correct" in r and "prefix_steps" in r}  # fmt: skip
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(p) -> None:
        async with sem:
            est = await estimator.aestimate(p.problem)
        rec = {"estimator": label, "id": p.id, "level": p.level, "bin": est.bin,
               "p_solve": est.p_solve, "agreement": est.agreement, "prm_score": est.prm_score,
               "flops": est.usage.flops, "tokens": est.usage.tokens, "answer": est.answer,
               "correct": answers_match(est.answer, p.answer),
               "prefix_steps": verified_prefix(est, threshold)}  # fmt: skip
        done[p.id] = rec
        _append(path, rec)

    await asyncio.gather(*(one(p) for p in problems if p.id not in done))
    return {p.id: done[p.id] for p in problems}


def _priced(records: list[dict], estimator: Any) -> list[dict]:
    """The records with ``flops`` as the router spends them after its estimate.

    A sampling strategy (best-of-N, votes; ``cot`` after the verifier) whose samples are
    drawn like the estimator's (same temperature and token cap) counts the estimator's k
    samples among its N, with their PRM scores when it scored them (``reuse_samples``), so
    in the router it costs only its ``N - k`` other samples. The estimate itself is the same
    whatever the bin's choice, so leaving it out does not change ``calibrate``'s pick.
    Other records are unchanged.
    """
    from langchain_tts.eval.runner import budget_config
    from langchain_tts.graph import strategy_config
    from langchain_tts.routing import ProbeEstimator, VerifierEstimator
    from langchain_tts.strategies import STRATEGY_SPECS

    if isinstance(estimator, ProbeEstimator):
        k, temperature = estimator.k, estimator.temperature
        scored = estimator.prm is not None and estimator.prm_weight > 0
    elif isinstance(estimator, VerifierEstimator):
        k, temperature, scored = 1, 0.0, True
    else:
        return records
    out = []
    for r in records:
        s, n = str(r["strategy"]), int(r["budget"])
        spec = STRATEGY_SPECS.get(s)
        cfg = strategy_config(s, budget_config(s, n)) if spec and spec.reuses_samples else None
        same = cfg is not None and (cfg.temperature, cfg.max_step_tokens) == (
            temperature,
            estimator.max_tokens,
        )
        if not same:
            out.append(r)
            continue
        frac = max(0, n - k) / n
        policy = float(r["policy_flops"]) * frac
        prm = float(r["prm_flops"]) * (frac if scored else 1.0)
        out.append({**r, "flops": policy + prm, "sweep_flops": r["flops"]})
    return out


def _calibrated_table(
    records: list[dict],
    bins: dict[str, str],
    tolerance: float,
    seed,
    noise: float = 0.0,
    thresholds=None,
):
    """Per-bin :func:`calibrate`; a bin without problems gets the pooled choice."""
    from langchain_tts.routing import BudgetTable, RouteAllocation, calibrate

    pooled = calibrate(records, {pid: "easy" for pid in bins}, tolerance, noise=noise).easy
    pooled = pooled.model_copy(
        update={"note": f"no calibration problem: pooled choice; {pooled.note}"}
    )
    base = BudgetTable(easy=pooled, medium=pooled, hard=pooled, source="pooled")
    table = calibrate(records, bins, tolerance, base=base, noise=noise, thresholds=thresholds)
    if seed is None:
        return table
    seeded = {
        b: RouteAllocation(strategy=a.strategy, config={**a.config, "seed": seed}, note=a.note)
        for b, a in table.items()
    }
    return BudgetTable(**seeded, source=table.source, thresholds=table.thresholds)


def probe_answers(probe: dict, bin: str, threshold: float | None = None) -> bool:
    """Whether the router answers a question with its estimate's own answer, no strategy
    run (its ``reuse_probe`` rule: an easy question whose estimate is sure enough)."""
    if threshold is None:
        from langchain_tts.routing import RouterConfig

        threshold = RouterConfig().reuse_threshold
    agreement = probe.get("agreement")
    return (
        bin == "easy"
        and probe.get("answer") is not None
        and probe["p_solve"] >= threshold
        and (agreement is None or agreement >= threshold)
    )


@dataclass(frozen=True)
class Option:
    """One run as a bin's choice: its correct answers and FLOPs summed over the bin."""

    run: tuple[str, int]
    correct: int
    flops: float


def cheapest_choice(options: dict[str, list[Option]], need: int) -> dict[str, Option]:
    """One option per bin: the least FLOPs in all with at least ``need`` correct answers in
    all; when no choice reaches ``need``, the most correct (ties: the fewest FLOPs).

    Why joint, not bin by bin: the claim is about the whole router, so a bin may give up a
    point where that saves much and another bin keep it; a per-bin tolerance spends its
    slack in every bin. Exhaustive over the options left after removing, in each bin, those
    another option beats on both counts (a few per bin), so exact and fast.
    """
    front: dict[str, list[Option]] = {}
    for b, opts in options.items():
        kept: list[Option] = []
        for o in sorted(opts, key=lambda o: (o.flops, -o.correct, o.run)):
            if not kept or o.correct > kept[-1].correct:
                kept.append(o)
        if not kept:
            raise ValueError(f"bin {b!r} has no option")
        front[b] = kept
    bins = list(front)
    best: tuple | None = None
    for combo in itertools.product(*(front[b] for b in bins)):
        correct = sum(o.correct for o in combo)
        flops = sum(o.flops for o in combo)
        key = (0, flops) if correct >= need else (1, -correct, flops)
        if best is None or key < best[0]:
            best = (key, combo)
    assert best is not None
    return dict(zip(bins, best[1]))


def _routed(bins: dict[str, str], probes: dict[str, dict]) -> dict[str, str]:
    """The problems the table serves: all but those the estimate answers itself."""
    return {pid: b for pid, b in bins.items() if not probe_answers(probes[pid], b)}


def _accuracy_then_cheap(per: dict[str, dict], ids: list[str]) -> tuple[float, float]:
    rs = [per[p] for p in ids]
    return _mean([bool(r["correct"]) for r in rs]), -_mean([float(r["flops"]) for r in rs])


def _by_run_and_id(records: list[dict]) -> dict[tuple[str, int], dict[str, dict]]:
    out: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for r in records:
        out[(str(r["strategy"]), int(r["budget"]))][str(r["id"])] = r
    return out


def _joint_table(
    records: list[dict],
    bins: dict[str, str],
    probes: dict[str, dict],
    tolerance: float,
    seed,
    thresholds=None,
    fixed: list[dict] | None = None,
):
    """The table with the fewest validation FLOPs whose router, as simulated on the
    validation problems (the estimate's own answers where it answers, the bin's run
    elsewhere), is within ``tolerance`` of the best fixed run's validation accuracy.
    ``records``: the runs as the router runs them; ``fixed``: as fixed runs (default: the
    same records)."""
    from langchain_tts.eval.runner import budget_config
    from langchain_tts.routing import BudgetTable, RouteAllocation

    per_run = _by_run_and_id(records)
    ids = list(bins)
    full = {k: v for k, v in per_run.items() if all(p in v for p in ids)}
    alone = per_run if fixed is None else _by_run_and_id(fixed)
    best_acc = max(_mean([bool(v[p]["correct"]) for p in ids]) for v in alone.values()
                   if all(p in v for p in ids))  # fmt: skip
    routed = _routed(bins, probes)
    answered = sum(bool(probes[p]["correct"]) for p in ids if p not in routed)
    need = math.ceil((best_acc - tolerance) * len(ids) - 1e-9) - answered
    by_bin: dict[str, list[str]] = defaultdict(list)
    for pid, b in routed.items():
        by_bin[b].append(pid)
    options = {
        b: [Option(run, sum(bool(v[p]["correct"]) for p in pids),
                   sum(float(v[p]["flops"]) for p in pids)) for run, v in full.items()]
        for b, pids in by_bin.items()
    }  # fmt: skip
    choice = cheapest_choice(options, need) if options else {}
    # a bin the validation problems never reach: the run the most-populated bin got
    fallback = max(choice, key=lambda b: len(by_bin[b])) if choice else None
    allocs = {}
    for b in ("easy", "medium", "hard"):
        if b in choice:
            o = choice[b]
            n_b = len(by_bin[b])
            note = (f"joint calibration on {n_b} problems: accuracy {o.correct / n_b:.3f} "
                    f"at {o.flops / n_b:.3g} FLOPs/question; budget {o.run[1]}")  # fmt: skip
            run = o.run
        elif fallback is not None:
            run, note = choice[fallback].run, f"no calibration problem: bin {fallback}'s run"
        else:  # the estimate answers every validation problem
            run = max(full, key=lambda k: _accuracy_then_cheap(full[k], ids))
            note = "no calibration problem: the most accurate run"
        config = budget_config(*run) | ({} if seed is None else {"seed": seed})
        allocs[b] = RouteAllocation(strategy=run[0], config=config, note=note)
    dataset, policy, prm = (records[0].get(k) for k in ("dataset", "policy", "prm"))
    source = (f"joint calibration from {len(records)} records (dataset={dataset}, "
              f"policy={policy}, prm={prm}): fewest FLOPs within {tolerance} of the best "
              f"fixed run's accuracy {best_acc:.3f}")  # fmt: skip
    return BudgetTable(**allocs, source=source, thresholds=thresholds)


def simulate(
    table, runs: dict[tuple[str, int], list[dict]], bins: dict[str, str],
    probes: dict[str, dict], estimator: Any,
) -> dict[str, float]:  # fmt: skip
    """The router with ``table`` on the calibration problems, from the sweep's records:
    the estimate's answer where the router takes it, else the bin's run, FLOPs as the
    router spends them (the estimate's, plus the run's after reusing its samples)."""
    from langchain_tts.eval.runner import budget_config
    from langchain_tts.graph import strategy_config

    def key(strategy: str, config: dict) -> tuple[str, str]:
        knobs = {k: v for k, v in config.items() if k != "seed"}
        return strategy, strategy_config(strategy, knobs).model_dump_json()

    by_run = {key(s, budget_config(s, n)): {r["id"]: r for r in _priced(rs, estimator)}
              for (s, n), rs in runs.items()}  # fmt: skip
    correct, flops, answered = [], [], 0
    for pid, b in bins.items():
        probe = probes[pid]
        if probe_answers(probe, b):
            answered += 1
            correct.append(bool(probe["correct"]))
            flops.append(float(probe["flops"]))
            continue
        rec = by_run[key(table[b].strategy, table[b].config)][pid]
        correct.append(bool(rec["correct"]))
        flops.append(float(probe["flops"]) + float(rec["flops"]))
    return {"n": len(bins), "accuracy": _mean(correct), "flops": _mean(flops),
            "probe_answered": answered}  # fmt: skip


class _FromPrefix:
    """A strategy graph as ``run_eval`` calls it, each question started from its steps."""

    def __init__(self, graph, prefixes: dict[str, list[str]]):
        self.graph, self.prefixes = graph, prefixes

    async def ainvoke(self, inp: dict, config=None) -> dict:
        return await self.graph.ainvoke(
            {**inp, "prefix_steps": self.prefixes[inp["question"]]}, config
        )


def with_prefix_runs(
    runs: dict[tuple[str, int], list[dict]], prefix_runs: dict[tuple[str, int], list[dict]]
) -> dict[tuple[str, int], list[dict]]:
    """Each run's records as the router would get them: a problem's record of the run
    started from the estimate's verified steps replaces the run's own record."""
    out = {}
    for key, recs in runs.items():
        warm = {r["id"]: r for r in prefix_runs.get(key, [])}
        out[key] = [warm.get(r["id"], r) for r in recs]
    return out


class _RouteTap:
    """The router graph as ``run_eval`` calls it, keeping each question's route."""

    def __init__(self, graph):
        self.graph, self.info = graph, {}

    async def ainvoke(self, inp: dict, config=None) -> dict:
        res = await self.graph.ainvoke(inp, config)
        route, est = res.get("route"), res.get("difficulty")
        self.info[inp["question"]] = {
            "bin": route.bin if route else None,
            "node": route.node if route else None,
            "strategy": route.strategy if route else None,
            "reason": route.reason if route else None,
            "reused_samples": route.reused_samples if route else 0,
            "prefix_steps": len(route.prefix_steps) if route else 0,
            "probe_fallback": bool(route and route.probe_fallback),
            "p_solve": est.p_solve if est else None,
            "probe_flops": est.usage.flops if est else 0.0,
        }
        return res


def _route_summary(routes: list[dict], recs: dict[str, dict]) -> dict[str, Any]:
    by_bin: dict[str, list[dict]] = defaultdict(list)
    for r in routes:
        by_bin[str(r["bin"])].append(r)
    out = {}
    for b in ("easy", "medium", "hard"):
        rs = by_bin.get(b, [])
        paired = [recs[r["id"]] for r in rs if r["id"] in recs]
        out[b] = {
            **_stats(paired),
            "routes": dict(Counter(f"{r['node']} ({r['reason']})" for r in rs)),
            "probe_flops": _mean([r["probe_flops"] for r in rs]),
        }
    return out


# -- report --------------------------------------------------------------------------------
def _thresholds_text(th: dict | None) -> str:
    if not th:
        return ""
    if th["note"] == "absolute":
        return (f" Bins: the estimator's score read as P(solve): easy >= {th['easy']:g}, "
                f"hard < {th['hard']:g}.")  # fmt: skip
    return (f" Bins: easy from score {th['easy']:g}, hard below {th['hard']:g}, where "
            f"P(greedy CoT solves) reaches 50% / 10% ({th['note']}).")  # fmt: skip


def _rule_text(cfg: dict) -> str:
    if cfg.get("rule") == "joint":
        return (f"Joint rule: the table with the fewest FLOPs whose router, simulated on the "
                f"validation problems, is within {cfg['tolerance']:g} of the best fixed run's "
                "validation accuracy.")  # fmt: skip
    noise = f" + {cfg['noise']:g} paired standard errors" if cfg.get("noise") else ""
    return (f"Per-bin rule: in each bin the cheapest run within {cfg['tolerance']:g}{noise} "
            "of the bin's best accuracy.")  # fmt: skip


def _markdown(result: dict) -> str:
    cfg, claim, test = result["config"], result["claim"], result["test"]
    best = claim["best_fixed"]
    lines = [
        "# Calibrated router vs fixed strategies on the embedded models",
        "",
        f"Made by `{result['command']}`: policy {cfg['policy']}, PRM {cfg['prm']}; calibrated "
        f"on {cfg['n_calib']} synthetic validation problems, measured on {cfg['n_test']} "
        "held-out test problems (balanced over levels). FLOPs = 2 x params x tokens, policy + "
        f"PRM, per question; the router's include its difficulty estimate ({cfg['probe']}).",
        "",
        "| run | acc % | FLOPs/q | vs best fixed | tokens/q |",
        "|---|---|---|---|---|",
    ]
    for row in [*test["fixed"], test["router"]]:
        ratio = row["flops"] / best["flops"] if best["flops"] else math.nan
        name = row["name"]
        if name == best["name"]:
            name += " (best fixed)"
        elif row is test["router"]:
            name = f"**router** (probe {row['probe_flops']:.2e})"
        lines.append(
            f"| {name} | {100 * row['accuracy']:.1f} | {row['flops']:.2e} | {ratio:.2f}x | "
            f"{row['tokens']:.0f} |"
        )
    lines += [
        "",
        f"**Claim** (within {100 * ACC_MARGIN:.0f} point of the best fixed run with "
        f">= {100 * FLOPS_SAVING:.0f}% fewer FLOPs, or more accurate at equal-or-lower FLOPs): "
        f"{claim['text']}.",
    ]
    m = claim["compute_matched"]
    if m is not None:
        lines.append(
            f"Compute-matched: the best fixed run costing no more than the router is {m['name']}"
            f" ({100 * m['accuracy']:.1f}%); the router "
            f"{'beats' if claim['beats_compute_matched'] else 'does not beat'} it."
        )
    cal = result["calibration"]
    lines += [
        "",
        f"Calibrated table ({cal['n']} validation problems binned by the router's estimator; "
        f"it answers {cal['router']['probe_answered']} of them itself: easy, with p_solve and "
        "agreement >= 0.75; the table serves the others). "
        + _rule_text(cfg)
        + " FLOPs priced "
        + ("as the router spends them" if cfg["pricing"] == "router" else "as swept")
        + " (a best-of-N / vote, or CoT after the verifier, reuses the estimate's samples)."
        + _thresholds_text(cal.get("thresholds")),
        "",
        "| bin | calib problems | answered by the estimate | strategy | config | "
        "calib acc % (served) | FLOPs/q alone | FLOPs/q after the estimate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, row in cal["table_rows"].items():
        acc, flops, after = (
            "-" if math.isnan(x) else fmt.format(x)
            for x, fmt in ((100 * row["accuracy"], "{:.1f}"), (row["flops"], "{:.2e}"),
                           (row["router_flops"], "{:.2e}"))
        )  # fmt: skip
        lines.append(
            f"| {b} | {row['problems']} | {row['answered']} | {row['strategy']} | "
            f"{row['config']} | {acc} | {flops} | {after} |"
        )
    sim, vbest = cal["router"], cal["best_fixed"]
    lines += [
        "",
        f"On the validation problems (simulated from the records): router "
        f"{100 * sim['accuracy']:.1f}% at {sim['flops']:.2e} FLOPs/q, "
        f"{sim['flops'] / vbest['flops']:.2f}x the FLOPs of the best fixed run there "
        f"({vbest['name']}, {100 * vbest['accuracy']:.1f}% at {vbest['flops']:.2e}).",
    ]
    lines += [
        "",
        "Router on the test set, by estimated bin:",
        "",
        "| bin | questions | acc % | FLOPs/q | routes |",
        "|---|---|---|---|---|",
    ]
    for b, row in test["router"]["by_bin"].items():
        acc = "-" if not row["n"] else f"{100 * row['accuracy']:.1f}"
        flops = "-" if not row["n"] else f"{row['flops']:.2e}"
        routes = ", ".join(f"{k}: {v}" for k, v in sorted(row["routes"].items())) or "-"
        lines.append(f"| {b} | {row['n']} | {acc} | {flops} | {routes} |")
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m research.router_eval",
        description="Calibrate the router on validation problems, then compare it with every "
        "fixed strategy of the sweep on the held-out test set.",
    )
    ap.add_argument("--n-calib", type=int, help="validation problems to calibrate on (320)")
    ap.add_argument("--n-test", type=int, help="held-out test problems (320)")
    ap.add_argument("--strategies", type=_csv,
                    help="candidate strategies, comma-separated (" + ",".join(DEFAULT_STRATEGIES)
                    + "); cot runs once")  # fmt: skip
    ap.add_argument("--budgets", type=_budgets, help="budgets N, comma-separated (4,16)")
    ap.add_argument("--rule", choices=("joint", "per-bin"), default="joint",
                    help="how the table is chosen: joint (the fewest FLOPs for the whole "
                    "router, as simulated on the validation problems, within --tolerance of "
                    "the best fixed run's validation accuracy) or per-bin (calibrate: in each "
                    "bin the cheapest run within --tolerance of that bin's best)")  # fmt: skip
    ap.add_argument("--tolerance", type=float,
                    help="accuracy the rule may give up: joint, the router's against the best "
                    "fixed run (0); per-bin, each bin's run against the bin's best (0.01)")  # fmt: skip
    ap.add_argument("--noise", type=float, default=0.0,
                    help="calibrate: widen the tolerance by this many standard errors of the "
                    "paired accuracy difference to the bin's best (1: the one-SE rule)")  # fmt: skip
    ap.add_argument("--thresholds", choices=("fitted", "absolute"), default="fitted",
                    help="bin cut points on the estimator's score: fitted (where the score "
                    "means a 50%% / 10%% chance that greedy CoT solves the question, fitted on "
                    "the validation split) or absolute (the score read as a probability)")  # fmt: skip
    ap.add_argument("--pricing", choices=("router", "sweep"), default="router",
                    help="FLOPs calibrate compares: router (as the router spends them: a "
                    "best-of-N / vote reuses the probe's samples) or sweep (as measured alone)")  # fmt: skip
    ap.add_argument("--probe-k", type=int, help="samples of the router's difficulty probe (4)")
    ap.add_argument("--estimator", choices=ESTIMATORS, default="verifier",
                    help="the router's difficulty estimator: verifier (one greedy attempt + "
                    "one PRM call: the cheapest, and CoT reuses its attempt), probe (k "
                    "samples + one PRM call, create_router_graph's default), agreement (k "
                    "samples, no PRM call)")  # fmt: skip
    ap.add_argument(
        "--prm",
        choices=("calculator", "strong", "weak", "likelihood"),
        default="calculator",
        help="the embedded verifier (calculator: the one with which search pays; strong / "
        "weak: the Qwen-interface PRMs; likelihood: the large policy's likelihoods)",
    )
    ap.add_argument("--no-reuse-prefix", dest="reuse_prefix", action="store_false",
                    help="the router's strategies start from the bare question, not from the "
                    "steps of the estimate's attempt its verifier accepted (reuse_prefix)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of every run (-1: none)")
    ap.add_argument("--concurrency", type=int, default=16, help="problems in flight (batched)")
    ap.add_argument("--out", type=Path,
                    help="writes <out>.md, <out>.json and <out>.*.jsonl records (default: "
                    "research/out/router_eval_<prm>)")  # fmt: skip
    ap.add_argument("--resume", action="store_true",
                    help="keep the records of an earlier run and solve only what is missing "
                    "(default: start afresh)")  # fmt: skip
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the evaluation; prints the table and returns the JSON result."""
    ap = _parser()
    args = ap.parse_args(argv)
    preset = TINY if args.tiny else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.n_calib < 1 or args.n_test < 1:
        ap.error("--n-calib and --n-test must be positive")
    if args.probe_k < 1:
        ap.error("--probe-k must be positive")
    if args.tolerance is None:
        args.tolerance = 0.0 if args.rule == "joint" else 0.01
    if not 0.0 <= args.tolerance <= 1.0:
        ap.error("--tolerance must be in [0, 1]")
    if not 0.0 <= args.noise < math.inf:
        ap.error("--noise must be a number of standard errors >= 0")
    if args.noise and args.rule != "per-bin":
        ap.error("--noise widens the per-bin rule's tolerance: pass --rule per-bin too")
    from langchain_tts.core.errors import ConfigError

    try:
        runs = parse_runs(args.strategies, args.budgets)
    except ConfigError as e:
        ap.error(str(e))
    if args.thresholds == "fitted" and ("cot", 1) not in runs:
        ap.error("--thresholds fitted needs cot among --strategies (its outcomes are fitted)")
    return asyncio.run(_run(args, runs, command_line("research.router_eval", argv)))


@dataclass
class _Sweep:
    """What every stage of one evaluation shares: the models, their labels, one graph per
    fixed run, where records go."""

    args: argparse.Namespace
    runs: list[tuple[str, int]]
    paths: Paths
    seed: int | None
    policy: Any
    prm: Any
    pol_label: str
    prm_label: str
    graphs: dict[tuple[str, int], Any]

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, file=sys.stderr)

    def clear_caches(self) -> None:
        """Each run starts with empty prefix caches: its FLOPs are its own, not lowered by
        prefixes an earlier run on the same questions left behind."""
        self.policy.clear_cache()
        if self.prm is not None:
            self.prm.clear_cache()

    def meta(self, split: str, strategy: str, budget: int) -> dict:
        return {"dataset": f"synthetic-{split}", "policy": self.pol_label,
                "prm": self.prm_label, "strategy": strategy, "budget": budget,
                "seed": self.seed}  # fmt: skip

    async def solve_from_prefixes(
        self, split: str, problems: list, prefixes: dict[str, list[str]], path: Path
    ) -> dict[tuple[str, int], list]:
        """Every fixed run but ``cot`` (the router's CoT reuses the estimate's attempt) on the
        ``problems`` that have verified steps, started from them (``prefix_steps``), as the
        router runs its strategy; records in ``path`` (resumable)."""
        from langchain_tts.eval.runner import run_eval

        todo = [p for p in problems if prefixes.get(p.id)]
        by_question = {p.problem: prefixes[p.id] for p in todo}
        for s, b in self.runs:
            if s == "cot" or not todo:
                continue
            self.say(f"[{split}] {_run_name(s, b)} from the estimate's verified steps")
            self.clear_caches()
            await run_eval(_FromPrefix(self.graphs[(s, b)], by_question), todo,
                           meta={**self.meta(split, s, b), "start": "prefix"}, out=path,
                           concurrency=self.args.concurrency, progress=not self.args.quiet)  # fmt: skip
        return self.records_by_run(split, todo, path)

    async def solve(self, split: str, problems: list, path: Path) -> dict[tuple[str, int], list]:
        """Every fixed run on ``problems`` (resumable), then their records by run."""
        from langchain_tts.eval.runner import run_eval

        for s, b in self.runs:
            self.say(f"[{split}] {_run_name(s, b)}")
            self.clear_caches()
            await run_eval(self.graphs[(s, b)], problems, meta=self.meta(split, s, b), out=path,
                           concurrency=self.args.concurrency, progress=not self.args.quiet)  # fmt: skip
        return self.records_by_run(split, problems, path)

    def records_by_run(self, split: str, problems: list, path: Path) -> dict[tuple[str, int], list]:
        """The records in ``path`` of this sweep's runs on ``problems``, by run."""
        from langchain_tts.eval.runner import read_records

        ids = {p.id for p in problems}
        out: dict[tuple[str, int], list[dict]] = {}
        for r in read_records(path):
            key = (str(r["strategy"]), int(r["budget"]))
            if key in self.graphs and r["id"] in ids and r["dataset"] == f"synthetic-{split}":
                out.setdefault(key, []).append(r)
        return out


_WEIGHTS = {"strong": "prm", "weak": "prm-weak", "likelihood": "policy-large",
            "calculator": "verifier-calc"}  # fmt: skip


def _check_resumed_seed(paths: Paths, seed: int | None) -> None:
    """Records of another seed would pass for this one on ``--resume`` (a run's records are
    keyed without it): refuse them."""
    from langchain_tts.core.errors import ConfigError
    from langchain_tts.eval.runner import read_records

    for path in (paths.part("calib"), paths.part("test")):
        seeds = {r["seed"] for r in read_records(path) if "seed" in r}
        if seeds - {seed}:
            raise ConfigError(
                f"--resume with --seed {seed}: {path} holds records of seed(s) "
                f"{sorted(seeds - {seed}, key=str)}; pass their --seed, or another --out"
            )


def _setup(args: argparse.Namespace, runs: list[tuple[str, int]]) -> _Sweep:
    from langchain_tts import create_tts_graph
    from langchain_tts.eval.runner import budget_config
    from langchain_tts.models import load_default

    if args.out is None:
        args.out = DEFAULT_OUT.with_name(f"router_eval_{args.prm}")
    paths = Paths.of(args.out)
    if not args.resume:
        for p in paths.records:
            p.unlink(missing_ok=True)
    seed = None if args.seed is not None and args.seed < 0 else args.seed
    _check_resumed_seed(paths, seed)
    policy, prm = load_default("small", args.prm)
    graphs = {
        (s, b): create_tts_graph(policy, prm, s, {**budget_config(s, b), "seed": seed})
        for s, b in runs
    }
    return _Sweep(args=args, runs=runs, paths=paths, seed=seed, policy=policy, prm=prm,
                  pol_label=f"small@{_fingerprint('policy-small')}",
                  prm_label=f"{args.prm}@{_fingerprint(_WEIGHTS[args.prm])}",
                  graphs=graphs)  # fmt: skip


def _estimator(sw: _Sweep) -> tuple[Any, str]:
    """The router's difficulty estimator and its label (part of the router's record label)."""
    from langchain_tts.routing import ProbeEstimator, VerifierEstimator

    args = sw.args
    if args.estimator == "verifier":
        return VerifierEstimator(sw.policy, sw.prm), f"verifier {sw.pol_label} {sw.prm_label}"
    # its own seed: the strategies' seeded streams would replay the probe's draws
    probe = ProbeEstimator(
        sw.policy,
        sw.prm if args.estimator == "probe" else None,
        k=args.probe_k,
        seed=None if sw.seed is None else sw.seed + PROBE_SEED_OFFSET,
    )
    label = f"{args.estimator} k={args.probe_k} t={probe.temperature} {sw.pol_label}"
    label += f" seed={probe.seed}" if probe.seed is not None else ""
    label += f" {sw.prm_label}" if args.estimator == "probe" else ""
    return probe, label


@dataclass
class _Calibration:
    runs: dict[tuple[str, int], list[dict]]  # validation records by fixed run
    #: the same, as the router runs them: from the estimate's verified steps (reuse_prefix)
    routed_runs: dict[tuple[str, int], list[dict]]
    probes: dict[str, dict]  # the estimator's record per validation problem
    estimator: Any  # with fitted thresholds when --thresholds fitted
    label: str
    thresholds: Any
    bins: dict[str, str]  # problem id -> bin
    table: Any  # the calibrated BudgetTable

    def per_bin(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for pid, b in self.bins.items():
            out[b].append(pid)
        return out


async def _calibrate(sw: _Sweep, calib: list) -> _Calibration:
    """The validation sweep, the estimator's bins, then the calibrated table."""
    from langchain_tts.routing import fit_thresholds

    runs = await sw.solve("validation", calib, sw.paths.part("calib"))
    estimator, label = _estimator(sw)
    sw.say(f"[validation] difficulty probe ({label})")
    sw.clear_caches()  # its FLOPs are its own, as on a question the router sees first
    probes = await _probe_bins(estimator, calib, sw.paths.part("probe"), label,
                               sw.args.concurrency)  # fmt: skip
    thresholds = None
    if sw.args.thresholds == "fitted":  # where the score means P(CoT solves) 50% / 10%
        cot = {r["id"]: bool(r["correct"]) for r in runs.get(("cot", 1), [])}
        thresholds = fit_thresholds({pid: r["p_solve"] for pid, r in probes.items()}, cot)
        estimator = estimator.with_thresholds(thresholds)
    bins = {pid: estimator.bin_of(r["p_solve"]) for pid, r in probes.items()}
    routed_runs = runs
    if sw.args.reuse_prefix:  # the table's runs start where the estimate's attempt went wrong
        prefixes = {pid: probes[pid]["prefix_steps"] for pid in _routed(bins, probes)}
        warm = await sw.solve_from_prefixes("validation", calib, prefixes, sw.paths.part("prefix"))
        routed_runs = with_prefix_runs(runs, warm)
    records = [r for rs in routed_runs.values() for r in rs]
    priced = _priced(records, estimator) if sw.args.pricing == "router" else records
    if sw.args.rule == "joint":
        fixed = [r for rs in runs.values() for r in rs]
        table = _joint_table(priced, bins, probes, sw.args.tolerance, sw.seed, thresholds,
                             fixed=fixed)  # fmt: skip
    else:  # the table serves only the questions the estimate does not answer itself
        routed = _routed(bins, probes) or bins
        table = _calibrated_table(priced, routed, sw.args.tolerance, sw.seed, sw.args.noise,
                                  thresholds)  # fmt: skip
    return _Calibration(runs, routed_runs, probes, estimator, label, thresholds, bins, table)


async def _route_test(sw: _Sweep, cal: _Calibration, test: list) -> tuple[str, dict, list]:
    """The calibrated router on the test problems: its label, records by id and routes."""
    from langchain_tts.eval.runner import read_records, run_eval
    from langchain_tts.routing import create_router_graph

    reuse = {"reuse_prefix": sw.args.reuse_prefix}
    label = f"{ROUTER}@{_digest([cal.table.model_dump(mode='json'), cal.label, reuse])}"
    tap = _RouteTap(create_router_graph(sw.policy, sw.prm, estimator=cal.estimator,
                                        table=cal.table, **reuse))  # fmt: skip
    question_of = {p.id: p.problem for p in test}
    routes_path = sw.paths.part("routes")

    def keep_route(rec: dict) -> None:
        info = tap.info.get(question_of[rec["id"]], {})
        _append(routes_path, {"router": label, "id": rec["id"], **info})

    sw.say(f"[test] {label}")
    sw.clear_caches()
    await run_eval(tap, test, meta=sw.meta("test", label, 0), out=sw.paths.part("test"),
                   concurrency=sw.args.concurrency, progress=not sw.args.quiet,
                   on_record=keep_route)  # fmt: skip
    ids = {p.id for p in test}
    recs = {r["id"]: r for r in read_records(sw.paths.part("test"))
            if r["strategy"] == label and r["id"] in ids}  # fmt: skip
    routes = [r for r in read_records(routes_path) if r.get("router") == label
              and r["id"] in ids]  # fmt: skip
    return label, recs, list({r["id"]: r for r in routes}.values())


def _router_row(label: str, recs: dict[str, dict], routes: list[dict]) -> dict:
    return {
        "name": ROUTER,
        "strategy": ROUTER,
        "budget": None,
        **_stats(list(recs.values())),
        "probe_flops": _mean([r["probe_flops"] for r in routes]),
        "by_bin": _route_summary(routes, recs),
        "reasons": dict(Counter(r["reason"] for r in routes)),
        "label": label,
    }


def _table_rows(cal: _Calibration, runs: list[tuple[str, int]]) -> dict[str, dict]:
    """Each bin's calibrated choice with its validation accuracy and FLOPs in that bin."""
    from langchain_tts.eval.runner import budget_config

    per_bin = cal.per_bin()
    routed = _routed(cal.bins, cal.probes)
    rows = {}
    for b, alloc in cal.table.items():
        knobs = {k: v for k, v in alloc.config.items() if k != "seed"}
        budget = next((n for s, n in runs if s == alloc.strategy
                       and budget_config(s, n) == knobs), None)  # fmt: skip
        ids_b = {pid for pid in per_bin[b] if pid in routed}
        recs = [r for r in cal.routed_runs.get((alloc.strategy, budget), []) if r["id"] in ids_b]
        marginal = _priced(recs, cal.estimator)
        rows[b] = {"problems": len(per_bin[b]), "answered": len(per_bin[b]) - len(ids_b),
                   "strategy": alloc.strategy,
                   "budget": budget, "config": _config_text(alloc.config), **_stats(recs),
                   "router_flops": _mean([float(r["flops"]) for r in marginal])}  # fmt: skip
    return rows


def _calib_rows(cal: _Calibration) -> list[dict]:
    """Each fixed run's validation accuracy and FLOPs, overall and per bin."""
    per_bin = cal.per_bin()
    rows = []
    for (s, b), rs in cal.runs.items():
        row = {"name": _run_name(s, b), "strategy": s, "budget": b, **_stats(rs), "by_bin": {}}
        for bn, pids in per_bin.items():
            row["by_bin"][bn] = _stats([r for r in rs if r["id"] in set(pids)])
        rows.append(row)
    return rows


def _config_record(sw: _Sweep, probe_label: str) -> dict[str, Any]:
    args = sw.args
    return {"policy": sw.pol_label, "prm": sw.prm_label, "n_calib": args.n_calib,
            "n_test": args.n_test, "runs": [list(r) for r in sw.runs],
            "rule": args.rule, "tolerance": args.tolerance, "noise": args.noise,
            "probe_k": args.probe_k,
            "estimator": args.estimator, "pricing": args.pricing,
            "thresholds": args.thresholds, "probe": probe_label, "seed": sw.seed,
            "reuse_prefix": args.reuse_prefix}  # fmt: skip


async def _run(args: argparse.Namespace, runs: list[tuple[str, int]], command: str) -> dict:
    from langchain_tts.eval.datasets import load_synthetic

    sw = _setup(args, runs)
    calib = load_synthetic("validation", args.n_calib)
    test = load_synthetic("test", args.n_test)
    cal = await _calibrate(sw, calib)
    test_runs = await sw.solve("test", test, sw.paths.part("test"))
    router_label, router_recs, routes = await _route_test(sw, cal, test)

    fixed = [{"name": _run_name(s, b), "strategy": s, "budget": b, **_stats(test_runs[(s, b)])}
             for s, b in runs]  # fmt: skip
    router_row = _router_row(router_label, router_recs, routes)
    per_bin = cal.per_bin()
    est = cal.estimator
    result = {
        "command": command,
        "config": _config_record(sw, cal.label),
        "calibration": {
            "n": len(calib),
            "bins": {b: len(per_bin.get(b, [])) for b in ("easy", "medium", "hard")},
            "probe_flops": _mean([r["flops"] for r in cal.probes.values()]),
            "runs": _calib_rows(cal),
            "table": cal.table.model_dump(mode="json"),
            "thresholds": {
                "easy": est.easy,
                "hard": est.hard,
                "note": cal.thresholds.note if cal.thresholds else "absolute",
            },  # fmt: skip
            "table_rows": _table_rows(cal, runs),
            "router": simulate(cal.table, cal.routed_runs, cal.bins, cal.probes, cal.estimator),
            "best_fixed": min(_calib_rows(cal), key=lambda r: (-r["accuracy"], r["flops"])),
        },
        "test": {"n": len(test), "fixed": fixed, "router": router_row},
        "claim": check_claim(fixed, router_row),
    }
    md = _markdown(result)
    sw.paths.md.parent.mkdir(parents=True, exist_ok=True)
    sw.paths.md.write_text(md)
    sw.paths.json.write_text(json.dumps(_finite(result), indent=2, default=str) + "\n")
    print(md)
    return result


def _finite(o: Any) -> Any:
    """``o`` with NaN / infinite floats as None (strict JSON has no NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


if __name__ == "__main__":
    main()
