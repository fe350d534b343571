"""``create_tts_graph``: the one entry point that turns a policy + PRM into a LangGraph graph.

Strategies are looked up in the registry (:mod:`langchain_tts.strategies.registry`);
``STRATEGIES`` is a live, read-only view of it: name -> ``(config class, graph builder)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.errors import ConfigError
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies import (
    STRATEGY_SPECS,
    StrategyName,
    get_strategy,
    strategy_config,
)
from langchain_tts.strategies.registry import Builder

__all__ = ["STRATEGIES", "StrategyName", "create_tts_graph", "strategy_config"]


class _Strategies(Mapping[str, tuple[type[StrategyConfig], Builder]]):
    """name -> (config class, graph builder) of every registered strategy, registrations
    made later included (the full records: ``langchain_tts.strategies.STRATEGY_SPECS``)."""

    def __getitem__(self, name: str) -> tuple[type[StrategyConfig], Builder]:
        spec = STRATEGY_SPECS[name]
        return spec.config, spec.build

    def __iter__(self) -> Iterator[str]:
        return iter(STRATEGY_SPECS)

    def __len__(self) -> int:
        return len(STRATEGY_SPECS)

    def __repr__(self) -> str:
        return f"STRATEGIES({list(STRATEGY_SPECS)})"


#: strategy name -> (config class, graph builder), read from the registry
STRATEGIES: Mapping[str, tuple[type[StrategyConfig], Builder]] = _Strategies()


def create_tts_graph(
    policy: StepPolicy,
    prm: ProcessRewardModel | None = None,
    strategy: StrategyName | str = "beam_search",
    config: StrategyConfig | dict | None = None,
    *,
    checkpointer: Checkpointer = None,
    name: str | None = None,
) -> CompiledStateGraph:
    """A compiled LangGraph graph running ``strategy`` with ``policy`` (and ``prm``).

    ``strategy``: a built-in (:data:`StrategyName`) or any name given to
    ``register_strategy``. The result is a LangChain runnable: ``invoke({"question": ...})``
    returns ``answer``, ``solution``, ``candidates`` and ``usage``; it also accepts
    ``{"messages": [...]}`` and can be added as a node of another graph. Knobs can be
    overridden per call through ``config={"configurable": {...}}``.
    """
    if not isinstance(policy, StepPolicy):
        raise ConfigError(
            f"policy must be a StepPolicy (HFPolicy, OpenAIPolicy, ...), got {type(policy).__name__}"
        )
    if prm is not None and not isinstance(prm, ProcessRewardModel):
        raise ConfigError(
            f"prm must be a ProcessRewardModel (QwenPRM, ...) or None, got {type(prm).__name__}"
        )
    return get_strategy(strategy).compile(policy, prm, config, checkpointer=checkpointer, name=name)
