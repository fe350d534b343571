"""Composition example: an agent that spends test-time compute only where it pays.

A planner node looks at the question and decides whether it needs careful reasoning. Easy
questions are answered directly (one greedy chain of thought); hard ones go to the PRM beam
search graph, used as a subgraph. Both answer paths are ordinary compiled TTS graphs added as
nodes, so the agent is itself a LangGraph graph (checkpointable, streamable, servable).

The planner is a rule, offline and free: it counts the operations a question asks for. On
the embedded task greedy accuracy falls with the number of operations (about 100% at one,
under 60% at four), which is where search pays; swap in a classifier or a difficulty probe
(PRM score of a first attempt) for other tasks.

Run it offline on the embedded models::

    python integrations/agent_example.py
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_core.messages import HumanMessage  # noqa: E402
from langgraph.graph import END, START, MessagesState, StateGraph  # noqa: E402
from langgraph.graph.state import CompiledStateGraph  # noqa: E402
from langgraph.types import Checkpointer  # noqa: E402

from langchain_tts import ProcessRewardModel, StepPolicy, Usage, create_tts_graph  # noqa: E402

Route = Literal["direct", "careful"]
_OPERATION = re.compile(
    r"\b(add|subtract|multiply|divide|plus|minus|times|sum|difference|product|quotient)\b",
    re.I,
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class AgentState(MessagesState, total=False):
    route: Route
    answer: str | None
    usage: Usage


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
) -> CompiledStateGraph:
    """The agent: planner -> (direct CoT | PRM beam search subgraph) -> end."""
    direct = create_tts_graph(policy, None, "cot", name="direct_cot")
    careful = create_tts_graph(
        policy, prm, "beam_search", beam_config or {"n": 8, "beam_width": 4}, name="beam_search"
    )

    def planner(state: AgentState) -> dict:
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


if __name__ == "__main__":
    main()
