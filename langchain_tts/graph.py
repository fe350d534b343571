"""``create_tts_graph``: the one entry point that turns a policy + PRM into a LangGraph graph.

The graph is a good citizen inside another LangGraph app (docs/composition.md): every run
answers its own question, its knobs come from the run context (``context_schema``) or
``configurable``, namespaced by the graph's ``name``, and with ``output_key`` it reads only
``messages`` and writes only ``messages`` plus one key of plain JSON data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from langchain_core.messages import AnyMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from pydantic import BaseModel, ValidationError
from typing_extensions import TypedDict

from langchain_tts.core.config import StrategyConfig, knobs_model
from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory, Usage
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
from langchain_tts.strategies.core import TTSState
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
    output_key: str | None = None,
) -> CompiledStateGraph:
    """A compiled LangGraph graph running ``strategy`` with ``policy`` (and ``prm``).

    The result is a LangChain runnable: ``invoke({"question": ...})`` returns ``answer``,
    ``solution``, ``candidates`` and ``usage`` (this run's); it also accepts
    ``{"messages": [...]}`` (the newest human message is the question) and can be added as a
    node of another graph. Each run of a checkpointer thread answers that run's question.

    Knobs (fields of the strategy's config) can be set per run through the run context,
    ``invoke(..., context={"n": 8})`` (the graph's ``context_schema``), or
    ``config={"configurable": {"n": 8}}``; under the graph's ``name``
    (``{"tts_beam_search": {"n": 8}}``) they apply to this graph only.

    ``output_key``: the graph as a node of a parent graph with keys of its own. It reads only
    ``messages`` and writes only ``messages`` (the answer as an AI message), ``output_key``
    (the result as plain JSON data: question, answer, solution, stop_reason, usage,
    candidates) and ``tts_usage`` (summed over TTS nodes by :class:`TTSUsageState`).
    """
    if not isinstance(policy, StepPolicy):
        raise ConfigError(
            f"policy must be a StepPolicy (HFPolicy, OpenAIPolicy, ...), got {type(policy).__name__}"
        )
    if prm is not None and not isinstance(prm, ProcessRewardModel):
        raise ConfigError(
            f"prm must be a ProcessRewardModel (QwenPRM, ...) or None, got {type(prm).__name__}"
        )
    # This graph's own copy: it carries the graph's name (its knobs namespace).
    cfg = strategy_config(strategy, config).model_copy()
    name = f"tts_{strategy}" if name is None else name
    _check_name(name, "name", cfg)
    if output_key is not None:
        _check_name(output_key, "output_key", cfg)
        if output_key in _RESERVED_KEYS:
            raise ConfigError(
                f"output_key {output_key!r} is a key of the TTS state; pick a key of your own "
                "graph's, e.g. output_key='tts'"
            )
    knobs = knobs_model(cfg, title=_title(name) + "Knobs")
    cfg._graph_name, cfg._knobs = name, knobs
    builder = STRATEGIES[strategy][1](policy, prm, cfg)
    builder = _with_contract(builder, knobs, strategy, output_key)
    return builder.compile(checkpointer=checkpointer, name=name)


#: keys a parent must not be handed as ``output_key``: the graph's own state keys
_RESERVED_KEYS = frozenset(TTSState.__annotations__) | {"tts_usage", "subtrees", "tree"}


def _check_name(value: object, what: str, cfg: StrategyConfig) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    if value in type(cfg).model_fields:
        raise ConfigError(
            f"{what} {value!r} is a knob of {type(cfg).__name__}; pick another (knobs under "
            "the graph's name would be read as that knob)"
        )


def _title(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


class TTSMessagesInput(TypedDict, total=False):
    """Input of a graph built with ``output_key``: only the parent's chat messages."""

    messages: list[AnyMessage]


def _with_contract(
    g: StateGraph, knobs: type[BaseModel], strategy: str, output_key: str | None
) -> StateGraph:
    """``g`` with the knobs as its ``context_schema``; with ``output_key``, also reading only
    ``messages`` and writing only ``messages``, ``output_key`` and ``tts_usage``."""
    if output_key is None:
        g.context_schema = knobs
        return g
    output = TypedDict(  # type: ignore[misc]
        f"{_title(output_key)}Output",
        {
            "messages": list[AnyMessage],
            output_key: dict[str, Any],
            "tts_usage": dict[str, float],
        },
        total=False,
    )
    out = StateGraph(g.state_schema, knobs, input_schema=TTSMessagesInput, output_schema=output)
    for key, spec in g.nodes.items():
        runnable = spec.runnable
        if key == "finalize":
            runnable = _Publish(runnable, output_key, strategy)
        out.add_node(
            key,
            runnable,
            defer=spec.defer,
            metadata=spec.metadata,
            input_schema=spec.input_schema,
            retry_policy=spec.retry_policy,
            cache_policy=spec.cache_policy,
            destinations=spec.ends,
        )
    for start, end in g.edges:
        out.add_edge(start, end)
    for starts, end in g.waiting_edges:
        out.add_edge(list(starts), end)
    for source, branches in g.branches.items():
        out.branches[source].update(branches)
    return out


class _Publish(Runnable[Any, Any]):
    """The ``finalize`` node of an ``output_key`` graph: its update plus the result as plain
    data under ``output_key`` and the run's usage under ``tts_usage``."""

    def __init__(self, finalize: Runnable, output_key: str, strategy: str):
        self.finalize, self.output_key, self.strategy = finalize, output_key, strategy
        self.name = getattr(finalize, "name", None) or "finalize"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._publish(input, self.finalize.invoke(input, config))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._publish(input, await self.finalize.ainvoke(input, config))

    def _publish(self, state: Mapping[str, Any], update: dict) -> dict:
        usage = (state.get("usage") or Usage()) + update.get("usage")
        summary = usage.summary()
        result = {
            "strategy": self.strategy,
            "question": update.get("question") or state.get("run_question"),
            "answer": update.get("answer"),
            "solution": update.get("solution", ""),
            "stop_reason": update.get("stop_reason", ""),
            "usage": summary,
            "candidates": [_summary(t) for t in update.get("candidates") or []],
        }
        return {**update, self.output_key: result, "tts_usage": summary}


def _summary(t: Trajectory) -> dict[str, Any]:
    return {
        "answer": t.answer,
        "score": t.score,
        "steps": len(t.steps),
        "tokens": t.tokens,
        "finished": t.finished,
        "finish_reason": t.finish_reason,
    }
