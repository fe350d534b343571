"""Search strategies, one module each, and the registry that names them.

``STRATEGY_SPECS`` maps every registered name to its :class:`StrategySpec`; a strategy of
your own becomes available everywhere (``create_tts_graph``, sweeps, the router, ``tts
serve``) with one :func:`register_strategy` call.
"""

from langchain_tts.strategies import (
    beam_search,
    best_of_n,
    dvts,
    hybrid,
    mcts,
    particle_filtering,
    revision,
    step_repair,
)
from langchain_tts.strategies.registry import (
    STRATEGY_SPECS,
    StrategyName,
    StrategySpec,
    budget_config,
    get_strategy,
    register_strategy,
    strategy_config,
)

__all__ = [
    "STRATEGY_SPECS",
    "StrategyName",
    "StrategySpec",
    "budget_config",
    "get_strategy",
    "register_strategy",
    "strategy_config",
]

for _spec in (
    *best_of_n.SPECS,
    beam_search.SPEC,
    dvts.SPEC,
    mcts.SPEC,
    particle_filtering.SPEC,
    revision.SPEC,
    hybrid.SPEC,
    step_repair.SPEC,
):
    register_strategy(_spec)
