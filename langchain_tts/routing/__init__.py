"""Routing: difficulty estimation, the budget table, and the router graph.

``create_router_graph(policy, prm)`` estimates each question's difficulty (a cheap probe),
looks the bin up in a :class:`BudgetTable` (defaults from Liu et al. and Snell et al., or
calibrated from eval records with :func:`calibrate`) and runs that strategy. See
``docs/router.md``.
"""

from langchain_tts.routing.difficulty import (
    BINS,
    Bin,
    BinThresholds,
    ClassifierEstimator,
    DifficultyEstimate,
    DifficultyEstimator,
    ProbeEstimator,
    VerifierEstimator,
    bin_of,
    estimate_bins,
    fit_thresholds,
    make_estimator,
)
from langchain_tts.routing.router import (
    DIRECT_TIERS,
    REASONING_TIERS,
    ROUTER_STATE_TYPES,
    Route,
    RouterConfig,
    RouterOutput,
    RouterState,
    allocation_cost,
    create_router_graph,
    embedded_router_kwargs,
    verified_prefix,
)
from langchain_tts.routing.table import PRESETS, BudgetTable, RouteAllocation, calibrate

__all__ = [
    "BINS",
    "DIRECT_TIERS",
    "PRESETS",
    "REASONING_TIERS",
    "ROUTER_STATE_TYPES",
    "Bin",
    "BinThresholds",
    "BudgetTable",
    "ClassifierEstimator",
    "DifficultyEstimate",
    "DifficultyEstimator",
    "ProbeEstimator",
    "Route",
    "RouteAllocation",
    "RouterConfig",
    "RouterOutput",
    "RouterState",
    "VerifierEstimator",
    "allocation_cost",
    "bin_of",
    "calibrate",
    "create_router_graph",
    "embedded_router_kwargs",
    "verified_prefix",
    "estimate_bins",
    "fit_thresholds",
    "make_estimator",
]
