"""Step scores -> one trajectory score (min / last / mean / prod / geo-mean)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from langchain_tts.core.config import Aggregation
from langchain_tts.core.errors import ConfigError


def _prod(xs: Sequence[float]) -> float:
    return math.prod(xs)


def _geo_mean(xs: Sequence[float]) -> float:
    # log-space so long trajectories do not underflow; a zero score gives 0.
    if any(x <= 0.0 for x in xs):
        return 0.0
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


AGGREGATORS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,
    "last": lambda xs: xs[-1],
    "mean": lambda xs: sum(xs) / len(xs),
    "prod": _prod,
    "geo_mean": _geo_mean,
}


def aggregate_scores(scores: Sequence[float], how: Aggregation | str = "last") -> float:
    """One score for a trajectory; an unscored (empty) trajectory scores 0."""
    try:
        fn = AGGREGATORS[how]
    except KeyError:
        raise ConfigError(
            f"unknown aggregation {how!r}; use one of {sorted(AGGREGATORS)}"
        ) from None
    return float(fn(scores)) if scores else 0.0
