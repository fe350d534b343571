"""The composition contract: how a strategy's graph sits inside someone else's LangGraph app.

A compiled strategy graph carries its knobs as ``context_schema``; with ``output_key`` it reads
only ``messages`` from its parent and writes only ``messages``, ``output_key`` and
``tts_usage``, so a parent's own keys are never touched (``docs/composition.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from langchain_core.messages import AnyMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from pydantic import BaseModel
from typing_extensions import TypedDict

from langchain_tts.core.config import StrategyConfig, knobs_model
from langchain_tts.core.errors import ConfigError, InputError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.strategies.core import TTSState, resolve_config
from langchain_tts.tracing import TracedFinalize, graph_run_config

__all__ = [
    "RESERVED_KEYS",
    "AfterNode",
    "TTSMessagesInput",
    "check_name",
    "compile_strategy_graph",
    "title_of",
    "with_contract",
]


def compile_strategy_graph(
    build: Any,
    strategy: str,
    policy: Any,
    prm: Any,
    cfg: StrategyConfig,
    *,
    checkpointer: Checkpointer = None,
    name: str | None = None,
    output_key: str | None = None,
) -> CompiledStateGraph:
    """``build(policy, prm, cfg)`` compiled with the contract: knobs as ``context_schema``,
    ``name`` as the knobs namespace, and (with ``output_key``) namespaced output."""
    # This graph's own copy: it carries the graph's name (its knobs namespace).
    cfg = cfg.model_copy()
    name = f"tts_{strategy}" if name is None else name
    check_name(name, "name", cfg)
    if output_key is not None:
        check_name(output_key, "output_key", cfg)
        if output_key in RESERVED_KEYS:
            raise ConfigError(
                f"output_key {output_key!r} is a key of the TTS state; pick a key of your own "
                "graph's, e.g. output_key='tts'"
            )
    knobs = knobs_model(cfg, title=title_of(name) + "Knobs")
    cfg._graph_name, cfg._knobs = name, knobs
    g = build(policy, prm, cfg)
    spec = g.nodes.get("finalize")
    if spec is not None:  # stop reason, FLOPs: known at the end, a ``tts_summary`` run
        resolve = partial(resolve_config, cfg)
        g.nodes["finalize"] = replace(
            spec, runnable=TracedFinalize(spec.runnable, strategy, resolve)
        )
    builder = with_contract(g, knobs, strategy, output_key)
    graph = builder.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(graph_run_config(strategy, cfg))


#: keys a parent must not be handed as ``output_key``: the graph's own state keys
RESERVED_KEYS = frozenset(TTSState.__annotations__) | {"tts_usage", "subtrees", "tree"}


def check_name(value: object, what: str, cfg: StrategyConfig) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    if value in type(cfg).model_fields:
        raise ConfigError(
            f"{what} {value!r} is a knob of {type(cfg).__name__}; pick another (knobs under "
            "the graph's name would be read as that knob)"
        )


def title_of(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


class TTSMessagesInput(TypedDict, total=False):
    """Input of a graph built with ``output_key``: only the parent's chat messages."""

    messages: list[AnyMessage]


def with_contract(
    g: StateGraph, knobs: type[BaseModel], strategy: str, output_key: str | None
) -> StateGraph:
    """``g`` with the knobs as its ``context_schema``; with ``output_key``, also reading only
    ``messages`` and writing only ``messages``, ``output_key`` and ``tts_usage``."""
    if output_key is None:
        g.context_schema = knobs
        return g
    output = TypedDict(  # type: ignore[misc]
        f"{title_of(output_key)}Output",
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
            runnable = AfterNode(runnable, _publisher(output_key, strategy))
        elif key == "prepare":
            runnable = BeforeNode(runnable, partial(_needs_messages, output_key))
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


class AfterNode(Runnable[Any, Any]):
    """A graph node whose update then goes through ``after(state, update)``, sync and async
    (how a contract adds its keys to a strategy's ``finalize``)."""

    def __init__(self, node: Runnable, after: Callable[[Mapping[str, Any], dict], dict]):
        self.node, self.after = node, after
        self.name = getattr(node, "name", None) or "finalize"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self.after(input, self.node.invoke(input, config))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self.after(input, await self.node.ainvoke(input, config))


class BeforeNode(Runnable[Any, Any]):
    """A graph node whose input first goes through ``before(state)`` (a check that raises),
    sync and async."""

    def __init__(self, node: Runnable, before: Callable[[Mapping[str, Any]], None]):
        self.node, self.before = node, before
        self.name = getattr(node, "name", None) or "prepare"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        self.before(input)
        return self.node.invoke(input, config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        self.before(input)
        return await self.node.ainvoke(input, config)


def _needs_messages(output_key: str, state: Mapping[str, Any]) -> None:
    """A graph built with ``output_key`` reads only ``messages`` (its input schema drops a
    ``question``): say so, instead of advising a ``question`` it would drop again."""
    if not any(isinstance(m, HumanMessage) for m in state.get("messages") or []):
        raise InputError(
            f"no question: a graph built with output_key={output_key!r} reads the question "
            "from messages only, the newest human message (a parent's chat); pass "
            "{'messages': [('human', '...')]}, or build the graph without output_key to pass "
            "{'question': '...'}"
        )


def _publisher(output_key: str, strategy: str) -> Callable[[Mapping[str, Any], dict], dict]:
    """``finalize``'s update plus the result as plain data under ``output_key`` and the
    run's usage under ``tts_usage``."""

    def publish(state: Mapping[str, Any], update: dict) -> dict:
        usage = (state.get("usage") or Usage()) + update.get("usage")
        summary = usage.summary()
        result = {
            "strategy": strategy,
            "question": update.get("question") or state.get("run_question"),
            "answer": update.get("answer"),
            "solution": update.get("solution", ""),
            "stop_reason": update.get("stop_reason", ""),
            "usage": summary,
            "candidates": [_summary(t) for t in update.get("candidates") or []],
            # why the answer may mean nothing (a question unlike the policy's training)
            "warnings": list(update.get("warnings") or state.get("warnings") or []),
        }
        return {**update, output_key: result, "tts_usage": summary}

    return publish


def _summary(t: Trajectory) -> dict[str, Any]:
    return {
        "answer": t.answer,
        "score": t.score,
        "steps": len(t.steps),
        "tokens": t.tokens,
        "finished": t.finished,
        "finish_reason": t.finish_reason,
    }
