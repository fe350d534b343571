"""A TTS graph as a tool for an agent: ``question`` in, plain JSON out.

``graph.as_tool()`` would not do: LangChain builds its arguments from the graph's input
TypedDict with every key required (``question``, ``messages`` and ``prefix_steps``), and its
result is the ``str()`` of the whole state, pydantic objects and all, that an LLM then reads.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

from langchain_tts.core.errors import ConfigError, InputError

__all__ = ["create_tts_tool"]

#: the result keys a tool returns (the search's beams and trees stay in the graph)
RESULT_KEYS = ("answer", "solution", "stop_reason", "warnings")


class TTSToolInput(BaseModel):
    question: str = Field(description="the problem to solve, in full, as plain text")


def create_tts_tool(
    graph: Runnable,
    *,
    name: str | None = None,
    description: str | None = None,
) -> BaseTool:
    """A tool that answers one ``question`` with ``graph`` (a strategy graph or the router,
    built with or without ``output_key``).

    It returns JSON text with ``answer``, ``solution``, ``stop_reason`` and ``warnings``
    (plus ``usage``, the run's :meth:`~langchain_tts.Usage.summary`), what an agent's LLM
    can read. A question the graph refuses (blank, too long for the models) comes back as
    the tool's error message, which the agent can correct, instead of ending its run. The
    tool call's config (callbacks, ``configurable`` knobs, the run context) reaches the
    graph. ``name`` defaults to the graph's name.
    """
    if not isinstance(graph, Runnable):
        raise ConfigError(f"graph must be a runnable (a TTS graph), got {type(graph).__name__}")
    tool_name = name or getattr(graph, "name", None) or "tts"
    inputs = set(graph.get_input_jsonschema().get("properties") or {})
    if "question" in inputs:
        result_key = None
    else:  # built with output_key: it reads the chat and publishes under its key
        outputs = set(graph.get_output_jsonschema().get("properties") or {})
        keys = sorted(outputs - {"messages", "tts_usage"})
        if "messages" not in inputs or len(keys) != 1:
            raise ConfigError(
                f"create_tts_tool takes a TTS graph (input 'question', or 'messages' with one "
                f"output_key); {tool_name!r} takes {sorted(inputs)} and writes {sorted(outputs)}"
            )
        result_key = keys[0]

    def call_input(question: str) -> dict[str, Any]:
        if result_key is None:
            return {"question": question}
        return {"messages": [HumanMessage(content=question)]}

    def reply(out: dict[str, Any]) -> str:
        if result_key is not None:
            out = out.get(result_key) or {}
        result = {k: out.get(k) for k in RESULT_KEYS}
        usage = out.get("usage")
        result["usage"] = usage.summary() if hasattr(usage, "summary") else usage
        return json.dumps(result, ensure_ascii=False)

    def run(question: str, config: RunnableConfig) -> str:
        try:
            return reply(graph.invoke(call_input(question), config))
        except InputError as e:  # the LLM's argument: tell it, so it can ask again
            raise ToolException(str(e)) from e

    async def arun(question: str, config: RunnableConfig) -> str:
        try:
            return reply(await graph.ainvoke(call_input(question), config))
        except InputError as e:
            raise ToolException(str(e)) from e

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=tool_name,
        description=description
        or "Solves a math or reasoning problem step by step, checking each step, and "
        "returns the answer (JSON: answer, solution, stop_reason).",
        args_schema=TTSToolInput,
        handle_tool_error=True,  # a ToolException becomes the tool's reply
    )
