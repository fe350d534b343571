"""Difficulty estimation: how likely is the policy to solve this question unaided?

The router spends little compute on easy questions and a lot on hard ones, so it first needs
a cheap guess of ``p_solve`` (the policy's Pass@1 on the question) and its bin
(:func:`bin_of`). Every estimator has ``await aestimate(question) -> DifficultyEstimate``; the
estimate keeps the probe's samples and usage, so the router counts and reuses them.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from langchain_tts.backends.sync import run_sync
from langchain_tts.core.answers import vote_keys
from langchain_tts.core.config import Aggregation, StrategyConfig
from langchain_tts.core.errors import ConfigError, InputError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.aggregate import aggregate_scores
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import expand, score

__all__ = [
    "BINS",
    "Bin",
    "BinThresholds",
    "ClassifierEstimator",
    "DifficultyEstimate",
    "DifficultyEstimator",
    "ProbeEstimator",
    "VerifierEstimator",
    "bin_of",
    "estimate_bins",
    "fit_thresholds",
    "make_estimator",
]

Bin = Literal["easy", "medium", "hard"]
BINS: tuple[Bin, ...] = ("easy", "medium", "hard")

#: Liu et al., section 3.2: easy = Pass@1 in [50%, 100%], medium [10%, 50%), hard [0, 10%)
EASY_THRESHOLD = 0.5
HARD_THRESHOLD = 0.1

#: a representative p_solve for a classifier that only returns a bin (the bins' midpoints)
_BIN_MIDPOINT: dict[str, float] = {"easy": 0.75, "medium": 0.3, "hard": 0.05}


def _check_thresholds(easy: float, hard: float) -> None:
    for name, v in (("easy", easy), ("hard", hard)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise ConfigError(f"{name} threshold must be a number in [0, 1], got {v!r}")
    if not 0.0 <= hard <= easy <= 1.0:
        raise ConfigError(
            f"difficulty thresholds must satisfy 0 <= hard ({hard}) <= easy ({easy}) <= 1; "
            "Liu et al.'s bins are easy=0.5, hard=0.1"
        )


def bin_of(p: float, *, easy: float = EASY_THRESHOLD, hard: float = HARD_THRESHOLD) -> Bin:
    """The difficulty bin of a solve probability, with absolute thresholds (Liu et al.).

    ``p >= easy`` is easy, ``p < hard`` is hard, anything between is medium. Absolute
    thresholds (not quantiles of one model's scores) keep bins comparable across policies.
    """
    _check_thresholds(easy, hard)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p):
        raise InputError(f"p_solve must be a probability in [0, 1], got {p!r}")
    if not 0.0 <= p <= 1.0:
        raise InputError(f"p_solve must be a probability in [0, 1], got {p!r}")
    if p >= easy:
        return "easy"
    if p < hard:
        return "hard"
    return "medium"


class BinThresholds(BaseModel):
    """Cut points on an estimator's own ``p_solve`` scale: ``>= easy`` is easy, ``< hard``
    is hard. :func:`fit_thresholds` finds where the estimator's score means a solve
    probability of 50% and 10% (Liu et al.'s absolute bins); a :class:`~.table.BudgetTable`
    carries them, and the router applies them to its estimator."""

    model_config = ConfigDict(extra="forbid")

    easy: float = EASY_THRESHOLD
    hard: float = HARD_THRESHOLD
    note: str = ""

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            inner = [(err.get("ctx") or {}).get("error") for err in e.errors()]
            mine = next((x for x in inner if isinstance(x, ConfigError)), None)
            raise (mine or ConfigError(f"invalid bin thresholds:\n{e}")) from None

    @model_validator(mode="after")
    def _valid(self) -> BinThresholds:
        _check_thresholds(self.easy, self.hard)
        return self


def fit_thresholds(
    scores: Mapping[str, float],
    solved: Mapping[str, bool],
    *,
    easy: float = EASY_THRESHOLD,
    hard: float = HARD_THRESHOLD,
    resolution: float = 0.01,
) -> BinThresholds:
    """Thresholds on an estimator's raw scale that mean solve probabilities ``easy``/``hard``.

    Why: an estimator's ``p_solve`` is a score, not a calibrated probability. The probe's
    agreement term can never fall below ``1/k`` (with k=4 and half weight, no question is
    ever "hard"), and a verifier's scores are as sharp as its training made them. Fitting
    ``P(solved | score)`` on calibration questions puts the bins back where Liu et al. put
    them.

    ``scores[id]`` is the estimator's ``p_solve``; ``solved[id]`` whether the policy solved
    the question unaided, e.g. its greedy CoT. Scores are rounded to ``resolution``, and
    ``P(solved | score)`` is fitted by isotonic regression (pool-adjacent-violators), so it
    rises with the score. Each threshold is the lower edge of the lowest rounded score
    whose fitted probability reaches the level (that score minus ``resolution / 2``), so
    the router, which compares *raw* scores, bins every question as the fit did (a raw
    0.1251 rounds to 0.13 and is binned with it); when no score reaches the level, the
    threshold lies above every score seen.
    """
    common = [pid for pid in scores if pid in solved]
    if not common:
        raise ConfigError(
            "fit_thresholds needs scores and solved outcomes for the same questions; "
            f"got {len(scores)} scores and {len(solved)} outcomes with no id in common"
        )
    if not 0.0 < resolution <= 0.5:
        raise ConfigError(f"resolution must be in (0, 0.5], got {resolution!r}")
    _check_thresholds(easy, hard)
    for pid in common:  # p_solve is a probability: anything else is a broken record
        v = scores[pid]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v <= 1.0:
            raise ConfigError(f"scores[{pid!r}] must be a p_solve in [0, 1], got {v!r}")
    groups: dict[float, list[float]] = {}
    for pid in common:
        x = round(round(float(scores[pid]) / resolution) * resolution, 6)
        groups.setdefault(x, []).append(float(bool(solved[pid])))
    blocks: list[list[float]] = []  # [sum, count, lowest score of the block]
    for x in sorted(groups):
        blocks.append([sum(groups[x]), len(groups[x]), x])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            tail = blocks.pop()
            blocks[-1][0] += tail[0]
            blocks[-1][1] += tail[1]
    above_all = min(1.0, round(max(groups) + resolution, 6))

    def cut(level: float) -> float:
        low = next((b[2] for b in blocks if b[0] / b[1] >= level), None)
        return above_all if low is None else max(0.0, round(low - resolution / 2, 6))

    fitted = ", ".join(f"{b[2]:g}+: {b[0] / b[1]:.2f}" for b in blocks)
    return BinThresholds(
        easy=cut(easy),
        hard=min(cut(hard), cut(easy)),
        note=(
            f"fitted on {len(common)} questions: P(solved) >= {easy} from score "
            f"{cut(easy):g}, >= {hard} from {cut(hard):g} (isotonic fit: {fitted})"
        ),
    )


class DifficultyEstimate(BaseModel):
    """What an estimator found: ``p_solve``, its bin, how, at what cost, and its samples."""

    p_solve: float = Field(ge=0.0, le=1.0, description="estimated Pass@1 of the policy")
    bin: Bin
    method: str = Field(description="probe | probe+prm | verifier | classifier | ...")
    usage: Usage = Field(default_factory=Usage, description="compute the estimate spent")
    candidates: list[Trajectory] = Field(
        default_factory=list, description="the probe's whole solutions (scored if a PRM ran)"
    )
    answer: str | None = Field(None, description="the probe's majority / first-attempt answer")
    agreement: float | None = Field(
        None, description="fraction of samples with the majority answer (probe)"
    )
    prm_score: float | None = Field(None, description="mean aggregated PRM score of the samples")
    temperature: float | None = Field(None, description="temperature the candidates used")
    max_step_tokens: int | None = Field(None, description="token cap the candidates used")

    @property
    def mean_steps(self) -> float:
        """Mean number of steps of the probe's solutions (0 without candidates)."""
        if not self.candidates:
            return 0.0
        return sum(len(c.steps) for c in self.candidates) / len(self.candidates)


class DifficultyEstimator(ABC):
    """Common interface: ``await aestimate(question)`` -> :class:`DifficultyEstimate`.

    Subclasses implement :meth:`aestimate`. :meth:`with_models` lets the router wrap the
    estimator's policy/PRM (to meter a compute budget) without knowing the subclass, and
    :meth:`max_cost` gives a question-independent upper bound of its cost (to reject a
    budget the probe alone would overrun, at build time).
    """

    easy: float = EASY_THRESHOLD
    hard: float = HARD_THRESHOLD

    @abstractmethod
    async def aestimate(self, question: str) -> DifficultyEstimate: ...

    def estimate(self, question: str) -> DifficultyEstimate:
        """Sync :meth:`aestimate`."""
        return run_sync(self.aestimate(question))

    def bin_of(self, p: float) -> Bin:
        return bin_of(p, easy=self.easy, hard=self.hard)

    def with_thresholds(self, thresholds: BinThresholds) -> DifficultyEstimator:
        """A copy that bins its ``p_solve`` with ``thresholds`` (e.g. fitted ones)."""
        other = copy.copy(self)
        other.easy, other.hard = thresholds.easy, thresholds.hard
        return other

    def with_models(self, wrap: Callable[[Any], Any]) -> DifficultyEstimator:
        """A copy whose policy and PRM are ``wrap(model)``; no models: ``self``."""
        return self

    def max_cost(self) -> tuple[float, float] | None:
        """``(flops, tokens)`` the estimate can spend at most, prompt aside; None: unknown."""
        return (0.0, 0.0)


class _ModelEstimator(DifficultyEstimator):
    """Shared plumbing of the estimators that call a policy (and maybe a PRM)."""

    policy: StepPolicy
    prm: ProcessRewardModel | None

    def with_models(self, wrap: Callable[[Any], Any]) -> DifficultyEstimator:
        other = copy.copy(self)
        other.policy = wrap(self.policy)
        other.prm = wrap(self.prm) if self.prm is not None else None
        return other

    def _sampling_config(self, temperature: float) -> StrategyConfig:
        try:
            return StrategyConfig(
                temperature=temperature,
                max_step_tokens=self.max_tokens,
                max_total_tokens=max(self.max_tokens, 8192),
                aggregation=self.aggregation,
                seed=getattr(self, "seed", None),
            )
        except ValidationError as e:
            raise ConfigError(f"invalid {type(self).__name__} settings:\n{e}") from None

    def _samples(self) -> int:
        return 1

    def max_cost(self) -> tuple[float, float] | None:
        gen = self._samples() * self.max_tokens
        flops = 2.0 * (self.policy.num_parameters or 0) * gen
        tokens = float(gen)
        if self.prm is not None:
            flops += 2.0 * (self.prm.num_parameters or 0) * gen
            tokens += gen
        return flops, tokens


def _check_models(policy: Any, prm: Any, who: str, *, need_prm: bool) -> None:
    if not isinstance(policy, StepPolicy):
        raise ConfigError(f"{who} needs a StepPolicy, got {type(policy).__name__}")
    if prm is None and need_prm:
        raise ConfigError(f"{who} needs a PRM: pass prm=... (or use ProbeEstimator without one)")
    if prm is not None and not isinstance(prm, ProcessRewardModel):
        raise ConfigError(f"{who}: prm must be a ProcessRewardModel, got {type(prm).__name__}")


def answer_of(t: Trajectory) -> str | None:
    """A sample's answer, or None when a token cap cut it (its last number is no answer)."""
    return None if t.finish_reason in ("length", "max_total_tokens") else t.answer


def _majority(cands: list[Trajectory]) -> tuple[str | None, float]:
    """The modal normalised answer and the fraction of *all* samples that gave it (a
    sample cut by a token cap gives none)."""
    if not cands:
        return None, 0.0
    keys = vote_keys([answer_of(c) for c in cands])  # 0.5, 1/2 and \frac12 vote together
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, 0.0
    top = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == top)  # first seen wins ties
    answer = next(answer_of(c) for c, k in zip(cands, keys) if k == winner)
    return answer, top / len(cands)


class ProbeEstimator(_ModelEstimator):
    """``k`` whole solutions in one policy call; ``p_solve`` from their agreement.

    Without a PRM: ``p_solve = agreement``, the fraction of the ``k`` samples whose
    normalised answer is the modal one (0 when no sample has an answer): self-consistency
    as a Pass@1 proxy. With a PRM (one extra call scoring the ``k`` samples)::

        p_solve = (1 - prm_weight) * agreement + prm_weight * mean_i agg(PRM(sample_i))

    where ``agg`` is ``aggregation`` over step scores; agreement alone cannot tell "always
    the same wrong answer" from "always right", the verifier can.

    ``seed`` makes the probe reproducible. Give it a seed other than the strategies': the
    router counts the probe's samples among a best-of-N's, and samples drawn with the same
    seeds would replay the probe's random draws.
    """

    def __init__(
        self,
        policy: StepPolicy,
        prm: ProcessRewardModel | None = None,
        k: int = 4,
        temperature: float = 0.7,
        *,
        prm_weight: float = 0.5,
        aggregation: Aggregation = "last",
        max_tokens: int = 2048,
        easy: float = EASY_THRESHOLD,
        hard: float = HARD_THRESHOLD,
        seed: int | None = None,
    ):
        _check_models(policy, prm, "ProbeEstimator", need_prm=False)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive number of probe samples, got {k!r}")
        ok = isinstance(prm_weight, (int, float)) and not isinstance(prm_weight, bool)
        if not ok or not 0.0 <= prm_weight <= 1.0:
            raise ConfigError(f"prm_weight must be a number in [0, 1], got {prm_weight!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        _check_thresholds(easy, hard)
        self.policy, self.prm, self.k = policy, prm, k
        self.temperature, self.prm_weight, self.aggregation = temperature, prm_weight, aggregation
        self.max_tokens, self.easy, self.hard = max_tokens, easy, hard
        self.seed = seed
        self._sampling_config(temperature)  # validate temperature / caps now

    def _samples(self) -> int:
        return self.k

    async def aestimate(self, question: str) -> DifficultyEstimate:
        cfg = self._sampling_config(self.temperature)
        cands, usage = await expand(
            self.policy, [Trajectory(question=question)], self.k, cfg, stop_at_step=False
        )
        answer, agreement = _majority(cands)
        p, method, prm_score = agreement, "probe", None
        if self.prm is not None and self.prm_weight > 0:
            cands, prm_usage = await score(self.prm, cands)
            usage = usage + prm_usage
            aggs = [aggregate_scores(c.step_scores, self.aggregation) for c in cands]
            cands = [c.model_copy(update={"score": s}) for c, s in zip(cands, aggs)]
            prm_score = sum(aggs) / len(aggs)
            p = (1 - self.prm_weight) * agreement + self.prm_weight * prm_score
            method = "probe+prm"
        p = min(1.0, max(0.0, p))
        return DifficultyEstimate(
            p_solve=p,
            bin=self.bin_of(p),
            method=method,
            usage=usage,
            candidates=cands,
            answer=answer,
            agreement=agreement,
            prm_score=prm_score,
            temperature=self.temperature,
            max_step_tokens=self.max_tokens,
        )


class VerifierEstimator(_ModelEstimator):
    """One greedy attempt, scored by the PRM: ``p_solve = agg(PRM(attempt))`` (Snell et al.).

    Exactly one policy call (temperature 0, one sample) and one PRM call. Cheaper than the
    probe when ``k > 1``, but it trusts the verifier's calibration.
    """

    def __init__(
        self,
        policy: StepPolicy,
        prm: ProcessRewardModel,
        *,
        aggregation: Aggregation = "last",
        max_tokens: int = 2048,
        easy: float = EASY_THRESHOLD,
        hard: float = HARD_THRESHOLD,
    ):
        _check_models(policy, prm, "VerifierEstimator", need_prm=True)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        _check_thresholds(easy, hard)
        self.policy, self.prm, self.aggregation = policy, prm, aggregation
        self.max_tokens, self.easy, self.hard = max_tokens, easy, hard
        self._sampling_config(0.0)  # validate the aggregation / caps now, not at the first run

    async def aestimate(self, question: str) -> DifficultyEstimate:
        cfg = self._sampling_config(0.0)
        cands, usage = await expand(
            self.policy, [Trajectory(question=question)], 1, cfg, stop_at_step=False
        )
        assert self.prm is not None  # checked in __init__
        cands, prm_usage = await score(self.prm, cands)
        s = aggregate_scores(cands[0].step_scores, self.aggregation)
        cands = [cands[0].model_copy(update={"score": s})]
        return DifficultyEstimate(
            p_solve=s,
            bin=self.bin_of(s),
            method="verifier",
            usage=usage + prm_usage,
            candidates=cands,
            answer=answer_of(cands[0]),
            prm_score=s,
            temperature=0.0,
            max_step_tokens=self.max_tokens,
        )


class ClassifierEstimator(DifficultyEstimator):
    """Any callable ``question -> p_solve`` (a float in [0, 1]) or a bin name.

    Sync or async. Costs no policy call, e.g. ``ClassifierEstimator(lambda q:
    clf.predict_proba(vec.transform([q]))[0, 1])``. A bare bin maps to the bin's midpoint
    (easy 0.75, medium 0.3, hard 0.05) so ``p_solve`` is always a probability.
    """

    def __init__(
        self,
        fn: Callable[[str], Any],
        *,
        easy: float = EASY_THRESHOLD,
        hard: float = HARD_THRESHOLD,
        name: str = "classifier",
    ):
        if not callable(fn):
            raise ConfigError(f"ClassifierEstimator needs a callable, got {type(fn).__name__}")
        _check_thresholds(easy, hard)
        self.fn, self.easy, self.hard, self.name = fn, easy, hard, name

    async def aestimate(self, question: str) -> DifficultyEstimate:
        out = self.fn(question)
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, str):
            b = out.strip().lower()
            if b not in BINS:
                raise ConfigError(
                    f"classifier returned {out!r}; return a probability in [0, 1] or one of "
                    f"{list(BINS)}"
                )
            return DifficultyEstimate(p_solve=_BIN_MIDPOINT[b], bin=b, method=self.name)
        try:
            p = float(out)
        except (TypeError, ValueError):
            raise ConfigError(
                f"classifier returned {out!r}; return a probability in [0, 1] or a bin name"
            ) from None
        if isinstance(out, bool) or math.isnan(p) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"classifier returned {out!r}; p_solve must be in [0, 1]")
        return DifficultyEstimate(p_solve=p, bin=self.bin_of(p), method=self.name)


#: the estimators an ``estimator=`` name or ``{"kind": ...}`` mapping builds
ESTIMATOR_KINDS = ("probe", "verifier")


def make_estimator(
    estimator: str | Mapping[str, Any] | DifficultyEstimator,
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
) -> DifficultyEstimator:
    """``"probe"`` / ``"verifier"`` / a mapping ``{"kind": "verifier", "max_tokens": 256,
    ...}`` (the kind, and keyword arguments of its estimator: plain data, as a config file or
    a server's configuration holds it) / an estimator instance -> an estimator."""
    if isinstance(estimator, DifficultyEstimator):
        return estimator
    options: dict[str, Any] = {}
    if isinstance(estimator, Mapping):
        options = {str(k): v for k, v in estimator.items()}
        estimator = options.pop("kind", None)
        if estimator not in ESTIMATOR_KINDS:
            raise ConfigError(
                f"an estimator mapping needs 'kind': one of {list(ESTIMATOR_KINDS)}, got "
                f"{estimator!r}"
            )
    if estimator == "probe":
        cls: type[_ModelEstimator] = ProbeEstimator
    elif estimator == "verifier":
        if prm is None:
            raise ConfigError("estimator='verifier' needs a PRM; pass prm=... or use 'probe'")
        cls = VerifierEstimator
    else:
        raise ConfigError(
            f"unknown estimator {estimator!r}: use 'probe', 'verifier', a mapping "
            "{'kind': 'verifier', 'max_tokens': 256, ...} or a DifficultyEstimator "
            "(e.g. ClassifierEstimator(fn))"
        )
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "policy", "prm"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} of the {estimator!r} estimator; its options are "
            f"{sorted(known)}"
        )
    return cls(policy, prm, **options)  # type: ignore[arg-type]


async def estimate_bins(
    estimator: DifficultyEstimator,
    questions: Mapping[str, str],
    *,
    concurrency: int = 4,
) -> dict[str, Bin]:
    """``{problem_id: bin}`` for a dataset, e.g. to :func:`~.table.calibrate` on the same
    bins the router will see at run time (``questions``: ``{problem_id: question}``)."""
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(pid: str, q: str) -> tuple[str, Bin]:
        async with sem:
            return str(pid), (await estimator.aestimate(q)).bin

    pairs = await asyncio.gather(*(one(pid, q) for pid, q in questions.items()))
    return dict(pairs)
