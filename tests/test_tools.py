"""A TTS graph as an agent's tool: one ``question`` argument, plain JSON back, the tool
call's config passed on; through ``create_react_agent`` and on the embedded models."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from langchain_tts import ConfigError, create_tts_graph, create_tts_tool
from langchain_tts.testing import FakePolicy, FakePRM

QUESTION = "Start with 3. Add 4."


def graph(**kw: Any):
    policy = FakePolicy(lambda p, i: "\\boxed{7}" if p.steps else "3+4=7")
    return policy, create_tts_graph(
        policy, FakePRM(lambda t: [0.5] * len(t.steps)), "best_of_n", {"n": 2}, **kw
    )


def test_the_tool_takes_a_question_and_returns_plain_json():
    """``graph.as_tool()`` required question, messages and prefix_steps, and returned the
    str() of the whole state; this tool takes the question alone and returns JSON."""
    policy, g = graph(name="solver")
    tool = create_tts_tool(g)
    assert tool.name == "solver" and set(tool.args) == {"question"}
    out = json.loads(tool.invoke({"question": QUESTION}))
    assert out["answer"] == "7" and out["stop_reason"] == "sampled"
    assert out["solution"].endswith("\\boxed{7}") and out["usage"]["policy_calls"] == 1
    assert json.loads(asyncio.run(tool.ainvoke({"question": QUESTION})))["answer"] == "7"

    class Seen(BaseCallbackHandler):
        calls: list[str] = []

        def on_llm_start(self, *args: Any, **kwargs: Any) -> None:
            self.calls.append("policy")

    seen = Seen()  # the tool call's config reaches the graph: callbacks and knobs
    tool.invoke({"question": QUESTION}, {"callbacks": [seen], "configurable": {"n": 3}})
    assert seen.calls == ["policy"] and policy.calls[-1][1] == 3
    with pytest.raises(ConfigError, match="runnable"):
        create_tts_tool("not a graph")  # type: ignore[arg-type]


class ToolCaller(BaseChatModel):
    """Calls the tool once with the user's question, then answers with its result."""

    @property
    def _llm_type(self) -> str:
        return "tool-caller"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ToolCaller:
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):
        last = messages[-1]
        if isinstance(last, ToolMessage):
            msg = AIMessage(content=json.loads(last.content)["answer"])
        else:
            call = {"name": "solver", "args": {"question": last.content}, "id": "call-1"}
            msg = AIMessage(content="", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=msg)])


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_an_agent_calls_it_and_reads_the_answer():
    from langgraph.prebuilt import create_react_agent

    _, g = graph(name="solver")
    agent = create_react_agent(ToolCaller(), [create_tts_tool(g)])
    out = agent.invoke({"messages": [("human", QUESTION)]})
    tool_reply = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert json.loads(tool_reply.content)["answer"] == "7"
    assert out["messages"][-1].content == "7"


def test_a_graph_built_with_output_key_is_a_tool_too():
    """A graph built for a parent (``output_key``) reads the chat: the tool hands it the
    question as a human message and reads the result under the key. A runnable that is no
    TTS graph is refused when the tool is made."""
    from langchain_core.runnables import RunnableLambda

    from langchain_tts import create_router_graph

    policy = FakePolicy(lambda p, i: "\\boxed{7}" if p.steps else "3+4=7")
    prm = FakePRM(lambda t: [0.9] * len(t.steps))
    for g in (
        create_tts_graph(policy, prm, "best_of_n", {"n": 2}, output_key="tts"),
        create_router_graph(policy, prm, output_key="result"),
    ):
        out = json.loads(create_tts_tool(g).invoke({"question": QUESTION}))
        assert out["answer"] == "7" and out["usage"]["policy_calls"] >= 1, out
    with pytest.raises(ConfigError, match="takes a TTS graph"):
        create_tts_tool(RunnableLambda(lambda x: x, name="echo").with_types(input_type=dict))


class BlankCaller(ToolCaller):
    """Calls the tool with a blank question first, then with the user's."""

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):
        last = messages[-1]
        if isinstance(last, ToolMessage) and last.status == "error":
            call = {"name": "solver", "args": {"question": messages[0].content}, "id": "call-2"}
            msg = AIMessage(content="", tool_calls=[call])
            return ChatResult(generations=[ChatGeneration(message=msg)])
        if not isinstance(last, ToolMessage):
            call = {"name": "solver", "args": {"question": "  "}, "id": "call-1"}
            msg = AIMessage(content="", tool_calls=[call])
            return ChatResult(generations=[ChatGeneration(message=msg)])
        return super()._generate(messages, stop, run_manager, **kw)


@pytest.mark.filterwarnings("ignore:create_react_agent has been moved")
def test_a_question_the_graph_refuses_is_the_tools_error_not_the_agents_end():
    """The LLM's blank question is an InputError: the agent gets it as the tool's error
    message and asks again, instead of its whole run ending."""
    from langgraph.prebuilt import create_react_agent

    _, g = graph(name="solver")
    agent = create_react_agent(BlankCaller(), [create_tts_tool(g)])
    out = agent.invoke({"messages": [("human", QUESTION)]})
    replies = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert replies[0].status == "error" and "question" in replies[0].content
    assert json.loads(replies[1].content)["answer"] == "7"
    assert out["messages"][-1].content == "7"


@pytest.mark.slow
def test_on_the_embedded_models():
    from langchain_tts import load_default

    policy, prm = load_default()
    tool = create_tts_tool(create_tts_graph(policy, prm, "beam_search", {"n": 4, "seed": 0}))
    out = json.loads(tool.invoke({"question": "Start with 12. Add 7. Multiply by 2."}))
    assert out["answer"] == "38" and out["usage"]["flops"] > 0
