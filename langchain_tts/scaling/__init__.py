"""Test-time scaling analysis: FLOPs accounting, the ``Q(T) = Q0 + gamma ln T`` law,
crossovers between models and compute-optimal model/budget choice. See ``docs/scaling.md``.

Torch- and numpy-free at import time.
"""

from langchain_tts.scaling.flops import (
    count_parameters,
    flops_of_usage,
    flops_without_cache,
    inference_flops,
    model_flops,
)
from langchain_tts.scaling.law import (
    ComputeOptimalAllocation,
    ScalingFit,
    best_allocation,
    compute_optimal_tokens,
    crossover_between,
    crossover_tokens,
    fit_scaling_law,
    rank_allocations,
)

__all__ = [
    "ComputeOptimalAllocation",
    "ScalingFit",
    "best_allocation",
    "compute_optimal_tokens",
    "count_parameters",
    "crossover_between",
    "crossover_tokens",
    "fit_scaling_law",
    "flops_of_usage",
    "flops_without_cache",
    "inference_flops",
    "model_flops",
    "rank_allocations",
]
