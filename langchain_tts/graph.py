"""``create_tts_graph``: the one entry point that turns a policy + PRM into a LangGraph graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from pydantic import ValidationError

from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.errors import ConfigError
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.beam_search import BeamSearchConfig, build_beam_search_graph
from langchain_tts.strategies.best_of_n import (
    BestOfNConfig,
    CoTConfig,
    MajorityVoteConfig,
    WeightedVoteConfig,
    build_best_of_n_graph,
)
from langchain_tts.strategies.dvts import DVTSConfig, build_dvts_graph
from langchain_tts.strategies.hybrid import HybridConfig, build_hybrid_graph
from langchain_tts.strategies.mcts import MCTSConfig, build_mcts_graph
from langchain_tts.strategies.revision import RevisionConfig, build_revision_graph

Builder = Callable[[StepPolicy, ProcessRewardModel | None, Any], StateGraph]

#: strategy name -> (config class, graph builder)
STRATEGIES: dict[str, tuple[type[StrategyConfig], Builder]] = {
    "cot": (CoTConfig, build_best_of_n_graph),
    "best_of_n": (BestOfNConfig, build_best_of_n_graph),
    "majority_vote": (MajorityVoteConfig, build_best_of_n_graph),
    "weighted_vote": (WeightedVoteConfig, build_best_of_n_graph),
    "beam_search": (BeamSearchConfig, build_beam_search_graph),
    "dvts": (DVTSConfig, build_dvts_graph),
    "mcts": (MCTSConfig, build_mcts_graph),
    "revision": (RevisionConfig, build_revision_graph),
    "hybrid": (HybridConfig, build_hybrid_graph),
}


def strategy_config(strategy: str, config: StrategyConfig | dict | None = None) -> StrategyConfig:
    """The validated pydantic config of ``strategy`` (defaults from the papers)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; available: {sorted(STRATEGIES)}")
    cls = STRATEGIES[strategy][0]
    if isinstance(config, cls):
        return config
    if isinstance(config, StrategyConfig):
        config = config.model_dump(exclude_unset=True)
    try:
        return cls.model_validate(config or {})
    except ValidationError as e:
        raise ConfigError(f"invalid config for strategy {strategy!r}:\n{e}") from e


def create_tts_graph(
    policy: StepPolicy,
    prm: ProcessRewardModel | None = None,
    strategy: str = "beam_search",
    config: StrategyConfig | dict | None = None,
    *,
    checkpointer: Checkpointer = None,
    name: str | None = None,
) -> CompiledStateGraph:
    """A compiled LangGraph graph running ``strategy`` with ``policy`` (and ``prm``).

    The result is a LangChain runnable: ``invoke({"question": ...})`` returns ``answer``,
    ``solution``, ``candidates`` and ``usage``; it also accepts ``{"messages": [...]}`` and
    can be added as a node of another graph. Knobs can be overridden per call through
    ``config={"configurable": {...}}``.
    """
    if not isinstance(policy, StepPolicy):
        raise ConfigError(
            f"policy must be a StepPolicy (HFPolicy, OpenAIPolicy, ...), got {type(policy).__name__}"
        )
    if prm is not None and not isinstance(prm, ProcessRewardModel):
        raise ConfigError(
            f"prm must be a ProcessRewardModel (QwenPRM, ...) or None, got {type(prm).__name__}"
        )
    cfg = strategy_config(strategy, config)
    builder = STRATEGIES[strategy][1](policy, prm, cfg)
    return builder.compile(checkpointer=checkpointer, name=name or f"tts_{strategy}")
