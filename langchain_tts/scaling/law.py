"""The test-time scaling law ``Q(T) = Q0 + gamma * ln(T)``, crossovers and compute optimality.

``Q`` is accuracy (any unit; ``q0`` and ``gamma`` come out in the same unit), ``T`` the
thinking-token budget (> 0) and ``gamma`` the gain per natural-log unit of ``T``. Pure Python:
importing this module pulls in neither numpy nor torch. Conventions: ``docs/scaling.md``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import overload

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ComputeOptimalAllocation",
    "ScalingFit",
    "best_allocation",
    "compute_optimal_tokens",
    "crossover_between",
    "crossover_tokens",
    "fit_scaling_law",
    "rank_allocations",
]


class ScalingFit(BaseModel):
    """A fitted ``Q(T) = q0 + gamma * ln(T)`` with its goodness of fit on the data.

    ``r2`` is ``1 - SS_res / SS_tot`` around the mean accuracy, so a fit with a fixed
    ``q0`` can score below 0 when the forced intercept is far off; ``rmse`` is in accuracy
    units. ``t_min``/``t_max`` are the fitted budgets: predictions outside them extrapolate.
    """

    model_config = ConfigDict(frozen=True)

    # finite: a NaN curve would win or lose every comparison by its place in a dict
    q0: float = Field(allow_inf_nan=False)
    gamma: float = Field(allow_inf_nan=False)
    r2: float
    rmse: float
    n: int
    fixed_q0: bool = False
    t_min: float = 1.0
    t_max: float = 1.0

    @overload
    def predict(self, tokens: float) -> float: ...

    @overload
    def predict(self, tokens: Sequence[float]) -> list[float]: ...

    def predict(self, tokens: float | Sequence[float]) -> float | list[float]:
        """Predicted accuracy at ``tokens`` thinking tokens (one budget or a list)."""
        if isinstance(tokens, numbers.Real) and not isinstance(tokens, bool):
            return self.q0 + self.gamma * math.log(_positive("tokens", tokens))
        if hasattr(tokens, "tolist"):  # numpy arrays / scalars
            return self.predict(tokens.tolist())
        return [self.predict(float(t)) for t in tokens]

    def tokens_for(self, accuracy: float) -> float:
        """Smallest budget ``T >= 1`` whose predicted accuracy reaches ``accuracy``.

        Why: "how much thinking buys this accuracy" is the inverse question a router asks.
        Returns ``1.0`` when ``q0`` already reaches it and ``inf`` when it never does.
        """
        return crossover_tokens(self, accuracy)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


def _as_floats(name: str, values: Sequence[float]) -> list[float]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence of numbers, got {type(values).__name__}.")
    out = []
    for i, v in enumerate(values):
        # numbers.Real: numpy scalars too (what list(df["budget"]) gives)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name}[{i}] must be a finite number, got {v!r}.")
        out.append(float(v))
    return out


def fit_scaling_law(
    budgets: Sequence[float],
    accuracies: Sequence[float],
    q0: float | None = None,
) -> ScalingFit:
    """Fit ``Q(T) = q0 + gamma * ln(T)`` to measured (budget, accuracy) points.

    Why: one ``gamma`` per model summarises how much it gains from thinking, which is what
    crossovers and compute-optimal allocation need.

    * ``q0`` given (e.g. the direct-generation accuracy): fit ``gamma`` alone by least
      squares through that intercept, ``gamma = <ln T, Q - q0> / <ln T, ln T>`` (the blog's
      estimator).
    * ``q0=None``: ordinary least squares of ``Q`` on ``ln T`` for both.

    Raises ``ValueError`` on mismatched lengths, fewer than two points, non-positive or
    non-finite budgets, non-finite accuracies, or budgets that cannot identify the fit.

    With ``q0`` given this is bit-for-bit the reference blog's numpy code: on the blog's
    MATH-500 table (accuracies in percent) it gives 1B 5.1000, 8B 3.0995, 70B 1.6993, 405B
    1.0295 percentage points per ln-token. The blog *prints* 0.0920 / 0.0570 / 0.0318 /
    0.0205, which no unit convention reproduces (``docs/scaling.md``). The blog's
    direct-generation base is accuracy at ``T = 0``; using it as ``q0`` (the value at ``T =
    1``) is the blog's approximation.
    """
    ts = _as_floats("budgets", budgets)
    qs = _as_floats("accuracies", accuracies)
    if len(ts) != len(qs):
        raise ValueError(
            f"budgets and accuracies must have the same length, got {len(ts)} budgets and "
            f"{len(qs)} accuracies."
        )
    if len(ts) < 2:
        raise ValueError(f"fitting the scaling law needs at least 2 points, got {len(ts)}.")
    for i, t in enumerate(ts):
        if t <= 0:
            raise ValueError(
                f"budgets[{i}] = {t!r}: budgets must be > 0 thinking tokens (ln T is "
                "undefined at 0; pass a direct-generation accuracy as q0 instead)."
            )
    xs = [math.log(t) for t in ts]
    n = len(xs)

    if q0 is not None:
        if isinstance(q0, bool) or not isinstance(q0, numbers.Real) or not math.isfinite(q0):
            raise ValueError(f"q0 must be a finite number or None, got {q0!r}.")
        intercept = float(q0)
        sxx = math.fsum(x * x for x in xs)
        if sxx == 0:
            raise ValueError(
                "every budget is 1 token (ln T = 0), so gamma is not identified; "
                "measure at least one budget other than 1."
            )
        gamma = math.fsum(x * (q - intercept) for x, q in zip(xs, qs)) / sxx
    else:
        mx = math.fsum(xs) / n
        my = math.fsum(qs) / n
        sxx = math.fsum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            raise ValueError(
                "all budgets are equal, so q0 and gamma cannot both be fitted; measure at "
                "least two different budgets or pass q0."
            )
        gamma = math.fsum((x - mx) * (q - my) for x, q in zip(xs, qs)) / sxx
        intercept = my - gamma * mx

    residuals = [q - (intercept + gamma * x) for x, q in zip(xs, qs)]
    ss_res = math.fsum(r * r for r in residuals)
    mean_q = math.fsum(qs) / n
    ss_tot = math.fsum((q - mean_q) ** 2 for q in qs)
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:  # constant accuracies: perfect if reproduced exactly, otherwise undefined
        r2 = 1.0 if ss_res == 0 else float("nan")
    return ScalingFit(
        q0=intercept,
        gamma=gamma,
        r2=r2,
        rmse=math.sqrt(ss_res / n),
        n=n,
        fixed_q0=q0 is not None,
        t_min=min(ts),
        t_max=max(ts),
    )


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def crossover_tokens(small_fit: ScalingFit, large_accuracy: float) -> float:
    """Thinking tokens at which ``small_fit``'s curve reaches ``large_accuracy``.

    Why: "how much must the small model think to match the large model answering
    directly" is the blog's crossover question. Returns ``exp((large - q0) / gamma)``,
    the exact (non-integer) solution; ``1.0`` when ``q0`` already reaches the target
    (the blog returns 1 too), and ``inf`` when ``gamma <= 0`` (thinking never closes the
    gap) or the answer overflows a float.
    """
    if not isinstance(small_fit, ScalingFit):
        raise ValueError(f"small_fit must be a ScalingFit, got {type(small_fit).__name__}.")
    if isinstance(large_accuracy, bool) or not isinstance(large_accuracy, numbers.Real):
        raise ValueError(f"large_accuracy must be a number, got {large_accuracy!r}.")
    if not math.isfinite(large_accuracy):
        raise ValueError(f"large_accuracy must be finite, got {large_accuracy!r}.")
    gap = large_accuracy - small_fit.q0
    if gap <= 0:
        return 1.0
    if small_fit.gamma <= 0:
        return math.inf
    return _exp(gap / small_fit.gamma)


def crossover_between(fit_a: ScalingFit, fit_b: ScalingFit) -> float:
    """Budget ``T`` at which the two fitted curves intersect (same ``T`` for both).

    Why: at equal thinking budgets, the model with the larger ``gamma`` is ahead above this
    ``T`` and behind below it. Returns ``exp((q0_b - q0_a) / (gamma_a - gamma_b))``, which
    can be below 1 (the curves meet before the first token: one model leads throughout),
    ``inf`` for parallel curves (equal gammas) and ``nan`` for identical ones.
    """
    for name, fit in (("fit_a", fit_a), ("fit_b", fit_b)):
        if not isinstance(fit, ScalingFit):
            raise ValueError(f"{name} must be a ScalingFit, got {type(fit).__name__}.")
    d_gamma = fit_a.gamma - fit_b.gamma
    d_q0 = fit_b.q0 - fit_a.q0
    if d_gamma == 0:
        return math.nan if d_q0 == 0 else math.inf
    return _exp(d_q0 / d_gamma)


def _check_count(name: str, value: float, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}.")
    return float(value)


def compute_optimal_tokens(
    params: float,
    flops_budget: float,
    *,
    prompt_tokens: float = 0,
    prm_params: float = 0,
    prm_passes: float = 1.0,
) -> float:
    """Thinking tokens a model of ``params`` parameters can afford under ``flops_budget``.

    Why: at a fixed compute budget a smaller model can think proportionally longer, which
    is the whole case for small-model test-time scaling. Cost model::

        flops = 2 * (params + prm_passes * prm_params) * (prompt_tokens + T)

    i.e. the prompt is read once and each token is read by the PRM ``prm_passes`` times
    (1 with an incrementally-cached PRM; more when prefixes are re-scored every step).
    Returns ``T`` exactly (not rounded), or ``0.0`` when the budget does not even cover the
    prompt. With ``prompt_tokens=500`` this reproduces the blog's ``find_optimal_T``
    budgets (``4.86e13`` FLOPs buys a 1B model ``23_800`` tokens).
    """
    params = _check_count("params", params, positive=True)
    flops_budget = _check_count("flops_budget", flops_budget)
    prompt_tokens = _check_count("prompt_tokens", prompt_tokens)
    prm_params = _check_count("prm_params", prm_params)
    prm_passes = _check_count("prm_passes", prm_passes)
    per_token = 2.0 * (params + prm_passes * prm_params)
    return max(0.0, flops_budget / per_token - prompt_tokens)


class ComputeOptimalAllocation(BaseModel):
    """One model's best use of a FLOPs budget: its budget ``tokens`` and predicted accuracy."""

    model_config = ConfigDict(frozen=True)

    name: str
    params: float
    tokens: float
    predicted_accuracy: float
    flops: float


def rank_allocations(
    fits: Mapping[str, tuple[ScalingFit, float]],
    flops_budget: float,
    *,
    prompt_tokens: float = 0,
    prm_params: float = 0,
    prm_passes: float = 1.0,
    min_tokens: float = 1.0,
    max_tokens: float | None = None,
) -> list[ComputeOptimalAllocation]:
    """Every model that can afford ``min_tokens`` under the budget, best accuracy first.

    Why: :func:`best_allocation` gives the winner; this shows the margin over the others.
    Each model gets a whole number of tokens ``T`` in ``[min_tokens, min(affordable,
    max_tokens)]``, at whichever end its curve is higher (the largest affordable ``T`` when
    ``gamma > 0``). Set ``max_tokens`` (e.g. to the fits' ``t_max``) to refuse extrapolating
    ``ln T`` far beyond the measured budgets. Ties go to fewer FLOPs, then to the name.
    """
    if not isinstance(fits, Mapping) or not fits:
        raise ValueError("fits must be a non-empty mapping of name -> (ScalingFit, params).")
    min_tokens = _check_count("min_tokens", min_tokens, positive=True)
    if max_tokens is not None:
        max_tokens = _check_count("max_tokens", max_tokens, positive=True)
        if max_tokens < min_tokens:
            raise ValueError(f"max_tokens ({max_tokens}) must be >= min_tokens ({min_tokens}).")
    out: list[ComputeOptimalAllocation] = []
    for name, entry in fits.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], ScalingFit)):
            raise ValueError(f"fits[{name!r}] must be a (ScalingFit, params) tuple, got {entry!r}.")
        fit, params = entry
        afford = compute_optimal_tokens(
            params,
            flops_budget,
            prompt_tokens=prompt_tokens,
            prm_params=prm_params,
            prm_passes=prm_passes,
        )
        top = math.floor(afford + 1e-9)  # whole tokens; absorb float round-off
        if max_tokens is not None:
            top = min(top, math.floor(max_tokens))
        if top < min_tokens:
            continue
        low = float(math.ceil(min_tokens))
        tokens = float(top) if fit.predict(float(top)) >= fit.predict(low) else low
        flops = 2.0 * (params + prm_passes * prm_params) * (prompt_tokens + tokens)
        out.append(
            ComputeOptimalAllocation(
                name=name,
                params=float(params),
                tokens=tokens,
                predicted_accuracy=fit.predict(tokens),
                flops=flops,
            )
        )
    out.sort(key=lambda a: (-a.predicted_accuracy, a.flops, a.name))
    return out


def best_allocation(
    fits: Mapping[str, tuple[ScalingFit, float]],
    flops_budget: float,
    *,
    prompt_tokens: float = 0,
    prm_params: float = 0,
    prm_passes: float = 1.0,
    min_tokens: float = 1.0,
    max_tokens: float | None = None,
) -> ComputeOptimalAllocation:
    """The model and thinking budget with the highest predicted accuracy under the budget.

    Why: the test-time analogue of Chinchilla: given ``name -> (fit, params)`` and a FLOPs
    budget per query, pick the model to serve and how long to let it think. Options as in
    :func:`rank_allocations`. Raises ``ValueError`` when no model affords ``min_tokens``.
    """
    ranked = rank_allocations(
        fits,
        flops_budget,
        prompt_tokens=prompt_tokens,
        prm_params=prm_params,
        prm_passes=prm_passes,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
    )
    if not ranked:
        raise ValueError(
            f"no model affords {min_tokens:g} thinking tokens within {flops_budget:.3g} FLOPs "
            f"(prompt_tokens={prompt_tokens:g}); raise the budget or add a smaller model."
        )
    return ranked[0]
