"""``create_tts_graph``: the one entry point that turns a policy + PRM into a LangGraph graph.

Strategies are looked up in the registry (:mod:`langchain_tts.strategies.registry`);
``STRATEGIES`` is a live, read-only view of it: name -> ``(config class, graph builder)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from langchain_tts.limits import ServeLimits

__all__ = [
    "STRATEGIES",
    "StrategyName",
    "create_tts_graph",
    "embedded_policies",
    "strategy_config",
]


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


def served_limits(limits: ServeLimits) -> ServeLimits:
    """``limits`` if it is a :class:`~langchain_tts.limits.ServeLimits` (by its methods:
    the serving layer sits above this one), else a :class:`ConfigError`."""
    if not all(callable(getattr(limits, m, None)) for m in ("limited", "knob_check")):
        raise ConfigError(f"limits must be a ServeLimits, got {type(limits).__name__}")
    return limits


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
    output_key: str | None = None,
    limits: ServeLimits | None = None,
) -> CompiledStateGraph:
    """A compiled LangGraph graph running ``strategy`` with ``policy`` (and ``prm``).

    ``strategy``: a built-in (:data:`StrategyName`) or any name given to
    ``register_strategy``. The result is a LangChain runnable: ``invoke({"question": ...})``
    returns ``answer``, ``solution``, ``candidates`` and ``usage`` (this run's); it also
    accepts ``{"messages": [...]}`` (the newest human message is the question) and can be
    added as a node of another graph. Each run of a checkpointer thread answers that run's
    question.

    Knobs (fields of the strategy's config) can be set per run through the run context,
    ``invoke(..., context={"n": 8})`` (the graph's ``context_schema``), or
    ``config={"configurable": {"n": 8}}``; under the graph's ``name``
    (``{"tts_beam_search": {"n": 8}}``) they apply to this graph only.

    ``output_key``: the graph as a node of a parent graph with keys of its own. It reads only
    ``messages`` and writes only ``messages`` (the answer as an AI message), ``output_key``
    (the result as plain JSON data: question, answer, solution, stop_reason, usage,
    candidates) and ``tts_usage`` (summed over TTS nodes by :class:`TTSUsageState`).

    ``limits``: for a graph that strangers call (``langgraph.json``, an app of your own). The
    graph refuses a run whose knobs (``context`` or ``configurable``) are over
    ``limits``' maxima with a :class:`LimitError` before any compute, and gives a run with
    no budget of a kind the default one (``ServeLimits()``: the served defaults).
    """
    if not isinstance(policy, StepPolicy):
        raise ConfigError(
            f"policy must be a StepPolicy (HFPolicy, OpenAIPolicy, ...), got {type(policy).__name__}"
        )
    if prm is not None and not isinstance(prm, ProcessRewardModel):
        raise ConfigError(
            f"prm must be a ProcessRewardModel (QwenPRM, ...) or None, got {type(prm).__name__}"
        )
    if limits is not None:
        config = served_limits(limits).limited(strategy_config(strategy, config), str(strategy))
    return get_strategy(strategy).compile(
        policy, prm, config, checkpointer=checkpointer, name=name, output_key=output_key
    )


def embedded_policies(
    strategies: Iterable[str],
    backend: str = "native",
    loaded: Mapping[str, StepPolicy] | None = None,
) -> dict[str, StepPolicy]:
    """strategy -> the embedded policy it runs on by default (``StrategySpec.embedded_policy``:
    ``small``, or ``small-revise`` for the strategies that revise through a prompt). Each
    model is loaded once and shared by the strategies that use it; ``loaded``: models
    already loaded, by name (e.g. ``{"small": policy}``)."""
    from langchain_tts.models import load_default_policy

    loaded = dict(loaded or {})
    out: dict[str, StepPolicy] = {}
    for name in strategies:
        size = get_strategy(name).embedded_policy
        if size not in loaded:
            loaded[size] = load_default_policy(size, backend)  # type: ignore[arg-type]
        out[name] = loaded[size]
    return out
