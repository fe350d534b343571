"""Shared helpers of the benchmarks: timing on a busy machine, slopes, tables."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


async def timed(coro: Awaitable[T]) -> tuple[float, T]:
    """Seconds spent awaiting ``coro`` (event-loop start-up excluded) and its result."""
    t0 = time.perf_counter()
    out = await coro
    return time.perf_counter() - t0, out


def per_unit(run: Callable[[], Awaitable[int | tuple[int, object]]]) -> float:
    """Seconds per unit of one fresh run: ``run()`` returns how many units it did (or a
    ``(units, result)`` pair)."""
    seconds, out = asyncio.run(timed(run()))
    units = out[0] if isinstance(out, tuple) else out
    return seconds / max(units, 1)


def best_of(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` interleaved runs of every variant.

    Interleaving spreads background load evenly over the variants, and the minimum is the
    measurement least disturbed by it (``timeit``'s rule): the benchmarks run on shared CPUs.
    """
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            samples[name].append(fn())
    return {k: min(v) for k, v in samples.items()}


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line ``y = a + b x``: returns ``(b, r2)``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx else 0.0
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (my + b * (x - mx))) ** 2 for x, y in zip(xs, ys))
    return b, (1.0 - ss_res / ss_tot) if ss_tot else 1.0


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Exponent ``k`` of ``y ~ x^k`` (1.0: linear, 2.0: quadratic)."""
    return slope([math.log(x) for x in xs], [math.log(max(y, 1e-12)) for y in ys])[0]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A right-aligned plain-text table."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(" ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)
