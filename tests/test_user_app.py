"""A user's own chat app with a TTS node, end to end on the embedded models: several turns on
one thread, a parent whose own ``question`` / ``usage`` / ``route`` keys mean other things,
per-step events streamed from inside, knobs per node through ``context=``, and a misspelled
knob."""

from __future__ import annotations

from typing import Annotated

import pytest
from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from langchain_tts import ConfigError, create_tts_graph, load_default
from langchain_tts.strategies.core import TTSUsageState

pytestmark = pytest.mark.slow


class AppState(TTSUsageState, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    question: dict  # the app's own keys, with other meanings than the TTS graph's
    usage: dict
    route: str
    tts: dict


def planner(state: AppState) -> dict:
    return {"route": "search", "question": {"id": len(state["messages"])}, "usage": {"mine": 1}}


@pytest.fixture(scope="module")
def app():
    policy, prm = load_default()
    beam = create_tts_graph(
        policy, prm, "beam_search", {"n": 8, "beam_width": 4}, name="beam", output_key="tts"
    )
    g = StateGraph(AppState)
    g.add_node("planner", planner)
    g.add_node("beam", beam)
    g.add_edge(START, "planner")
    g.add_edge("planner", "beam")
    g.add_edge("beam", END)
    return g.compile(checkpointer=InMemorySaver())


def test_three_turns_keep_the_apps_keys_and_stream_steps(app):
    cfg = {"configurable": {"thread_id": "chat-1"}}
    turns = [("Start with 5. Add 6.", "11"), ("Start with 7. Multiply by 3.", "21")]
    turns.append(("Start with 20. Subtract 4.", "16"))
    for k, (question, answer) in enumerate(turns):
        events = []
        for _, mode, chunk in app.stream(
            {"messages": [HumanMessage(question)]},
            cfg,
            stream_mode=["updates", "custom"],
            subgraphs=True,
            context={"beam": {"n": 4}},
        ):
            if mode == "custom":
                events.append(chunk)
        state = app.get_state(cfg).values
        assert state["tts"]["question"] == question and state["tts"]["answer"] == answer
        assert state["route"] == "search" and state["usage"] == {"mine": 1}
        assert state["question"] == {"id": 2 * k + 1}
        steps = [e for e in events if e["event"] == "tts_step"]
        assert steps and all(e["graph"] == "beam" for e in steps)
        reply = state["messages"][-1]
        assert len(state["messages"]) == 2 * k + 2 and reply.name == "beam"
        assert reply.usage_metadata["total_tokens"] > 0
    assert state["tts_usage"]["policy_calls"] > state["tts"]["usage"]["policy_calls"]


def test_a_misspelled_knob_is_a_clear_error(app):
    with pytest.raises(ConfigError, match="did you mean 'beam_width'"):
        app.invoke(
            {"messages": [HumanMessage("Start with 1. Add 1.")]},
            {"configurable": {"thread_id": "typo"}},
            context={"beam": {"beamwidth": 2}},
        )
