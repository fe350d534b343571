"""Composition example: an agent that spends test-time compute only where it pays.

A planner node looks at the question and decides whether it needs careful reasoning. Easy
questions are answered directly (one greedy chain of thought); hard ones go to the PRM beam
search graph, used as a subgraph. Both answer paths are ordinary compiled TTS graphs added as
nodes, so the agent is itself a LangGraph graph (checkpointable, streamable, servable).

The planner is a rule, offline and free: it counts the operations a question asks for. On
the embedded task greedy accuracy falls with the number of operations (about 100% at one,
under 60% at four), which is where search pays; swap in a classifier or a difficulty probe
(PRM score of a first attempt) for other tasks.

:func:`build_router_agent` lets the package's router decide instead (a difficulty probe,
then the budget table's strategy), as a node of a chat app with keys of its own: the
router runs with ``output_key``, so the app's own ``route`` stays the app's.

Run it offline on the embedded models::

    python integrations/agent_example.py
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langgraph.graph import END, START, MessagesState, StateGraph  # noqa: E402
from langgraph.graph.state import CompiledStateGraph  # noqa: E402
from langgraph.types import Checkpointer  # noqa: E402

from langchain_tts import (  # noqa: E402
    InputError,
    ProcessRewardModel,
    ServeLimits,
    StepPolicy,
    Usage,
    create_tts_graph,
)
from langchain_tts.core.channels import PlainValue  # noqa: E402
from langchain_tts.routing import create_router_graph  # noqa: E402
from langchain_tts.strategies.core import TTSUsageState  # noqa: E402

Route = Literal["direct", "careful"]
_OPERATION = re.compile(
    r"\b(add|subtract|multiply|divide|plus|minus|times|sum|difference|product|quotient)\b",
    re.I,
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class AgentState(MessagesState, total=False):
    route: Route
    answer: str | None
    # checkpointed as plain data: a saver with LangGraph's default serializer needs no types
    usage: Annotated[Usage, PlainValue(Usage)]


def count_operations(question: str) -> int:
    """How many operations a question asks for: operation words, else numbers minus one."""
    words = len(_OPERATION.findall(question))
    return words if words else max(0, len(_NUMBER.findall(question)) - 1)


def plan(question: str, threshold: int = 3) -> Route:
    """``careful`` (beam search) from ``threshold`` operations on, else ``direct`` (CoT)."""
    return "careful" if count_operations(question) >= threshold else "direct"


def _last_question(state: AgentState) -> str:
    for m in reversed(state.get("messages") or []):
        if isinstance(m, HumanMessage):
            return m.content if isinstance(m.content, str) else str(m.content)
    return ""


def build_agent(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    *,
    threshold: int = 3,
    beam_config: dict[str, Any] | None = None,
    checkpointer: Checkpointer = None,
    limits: ServeLimits | None = None,
) -> CompiledStateGraph:
    """The agent: planner -> (direct CoT | PRM beam search subgraph) -> end. ``limits``
    bound the knobs a run may set (a deployment that strangers call passes them)."""
    direct = create_tts_graph(policy, None, "cot", name="direct_cot", limits=limits)
    careful = create_tts_graph(
        policy,
        prm,
        "beam_search",
        beam_config or {"n": 8, "beam_width": 4},
        name="beam_search",
        limits=limits,
    )

    def planner(state: AgentState) -> dict:
        messages = state.get("messages") or []
        if not messages or not isinstance(messages[-1], HumanMessage):
            # a turn with no new question would answer the thread's last one again
            raise InputError("a turn needs a new human message: the question to answer")
        return {"route": plan(_last_question(state), threshold)}

    def route(state: AgentState) -> Route:
        return state["route"]

    g = StateGraph(AgentState)
    g.add_node("planner", planner)
    g.add_node("direct", direct)  # compiled graphs are nodes: they read and append messages
    g.add_node("careful", careful)
    g.add_edge(START, "planner")
    g.add_conditional_edges("planner", route, ["direct", "careful"])
    g.add_edge("direct", END)
    g.add_edge("careful", END)
    return g.compile(checkpointer=checkpointer, name="tts_agent")


class ChatState(MessagesState, TTSUsageState, total=False):
    route: Literal["math", "other"]  # the app's own key: the router's route is in tts
    tts: dict  # the router's result, plain JSON: answer, route, difficulty, usage, ...


def triage(state: ChatState) -> dict:
    """The app's own routing: arithmetic goes to the TTS router, anything else is declined."""
    return {"route": "math" if _NUMBER.search(_last_question(state)) else "other"}


def decline(state: ChatState) -> dict:
    return {"messages": [AIMessage(content="I only answer arithmetic questions.")]}


def build_router_agent(
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    *,
    checkpointer: Checkpointer = None,
    **router_kwargs: Any,
) -> CompiledStateGraph:
    """A chat app: triage -> (the TTS router | decline) -> end. ``router_kwargs`` go to
    ``create_router_graph`` (``table``, ``max_flops``, ...)."""
    router = create_router_graph(policy, prm, name="tts_router", output_key="tts", **router_kwargs)
    g = StateGraph(ChatState)
    g.add_node("triage", triage)
    g.add_node("router", router)  # reads messages; writes messages, tts and tts_usage
    g.add_node("decline", decline)
    g.add_edge(START, "triage")
    g.add_conditional_edges("triage", lambda s: s["route"], {"math": "router", "other": "decline"})
    g.add_edge("router", END)
    g.add_edge("decline", END)
    return g.compile(checkpointer=checkpointer, name="tts_router_agent")


def main(n: int = 8) -> None:
    from langchain_tts.eval.synthetic import make_split
    from langchain_tts.models import load_default

    agent = build_agent(*load_default())
    for p in make_split("test", n):
        out = agent.invoke({"messages": [("human", p.question)]})
        ok = "ok " if out["answer"] == p.answer else "bad"
        print(
            f"{ok} {out['route']:>7} ({p.difficulty} ops): answer {out['answer']!s:>4} gold "
            f"{p.answer:>4}  {out['usage'].flops:9.3g} FLOPs  {p.question}"
        )
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_tts.checkpoint import serializer
    from langchain_tts.routing import ROUTER_STATE_TYPES

    saver = InMemorySaver(serde=serializer(extra=ROUTER_STATE_TYPES))
    chat = build_router_agent(*load_default(), checkpointer=saver)
    cfg = {"configurable": {"thread_id": "chat"}}
    for p in make_split("test", 3):  # several turns on one thread: each answers its own
        out = chat.invoke({"messages": [("human", p.question)]}, cfg)
        tts = out["tts"]
        print(
            f"router: {tts['route']['node']:>18} answer {tts['answer']!s:>4} gold "
            f"{p.answer:>4}  {tts['usage']['flops']:9.3g} FLOPs  {p.question}"
        )


if __name__ == "__main__":
    main()
