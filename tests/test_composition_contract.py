"""The composition contract: a TTS graph built with ``output_key`` reads only ``messages`` from
its parent and writes only ``messages``, its result key (plain JSON data) and ``tts_usage``;
two TTS nodes of one app take different knobs; docs/composition.md runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from langchain_tts.checkpoint import serializer
from langchain_tts.core.errors import ConfigError, InputError
from langchain_tts.core.types import Trajectory, Usage, add_usage
from langchain_tts.graph import create_tts_graph
from langchain_tts.models import WEIGHTS_DIR
from langchain_tts.strategies.core import TTSUsageState
from langchain_tts.testing import FakePolicy, FakePRM

ROOT = Path(__file__).resolve().parent.parent
Q = "Start with 5. Add 6."


def adder(prefix: Trajectory, i: int) -> str:
    nums = [int(x) for x in re.findall(r"-?\d+", prefix.question)]
    return f"The answer is \\boxed{{{sum(nums)}}}"


def models() -> tuple[FakePolicy, FakePRM]:
    return FakePolicy(adder), FakePRM(lambda t: [0.9] * len(t.steps))


def test_an_output_key_graph_declares_messages_in_and_three_keys_out():
    graph = create_tts_graph(*models(), "beam_search", {"n": 4, "beam_width": 2}, output_key="tts")
    assert set(graph.get_input_jsonschema()["properties"]) == {"messages"}
    assert set(graph.get_output_jsonschema()["properties"]) == {"messages", "tts", "tts_usage"}
    out = graph.invoke({"messages": [("human", Q)], "question": "ignored: not read"})
    assert set(out) == {"messages", "tts", "tts_usage"}
    result = out["tts"]
    assert json.loads(json.dumps(result)) == result  # plain JSON data
    assert result["question"] == Q and result["answer"] == "11"
    assert result["strategy"] == "beam_search" and result["stop_reason"]
    assert result["usage"] == out["tts_usage"] and result["usage"]["policy_calls"] == 1
    assert result["candidates"][0] == {
        "answer": "11",
        "score": 0.9,
        "steps": 1,
        "tokens": result["candidates"][0]["tokens"],
        "finished": True,
        "finish_reason": "answer",
    }
    assert isinstance(out["messages"][-1], AIMessage)
    assert out["messages"][-1].content == result["solution"]


def test_an_output_key_graph_without_messages_says_it_reads_only_messages():
    graph = create_tts_graph(*models(), "best_of_n", {"n": 2}, output_key="tts")
    with pytest.raises(InputError, match=r"output_key='tts' reads the question from messages"):
        graph.invoke({"question": Q})  # dropped by the input schema: the advice must not be it


def test_an_output_key_result_carries_the_warnings():
    """A question unlike the policy's training gets an answer that means nothing: the
    warning travels in the result (it used to be only logged)."""
    from langchain_tts.models import load_default

    if not (WEIGHTS_DIR / "prm" / "model.safetensors").exists():
        pytest.skip("embedded weights not built yet")
    policy, prm = load_default()
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 2, "seed": 0}, output_key="tts")
    out = graph.invoke({"messages": [("human", "What is the capital of France?")]})
    assert out["tts"]["warnings"] and "means nothing" in out["tts"]["warnings"][0]
    ok = graph.invoke({"messages": [("human", "Start with 3. Add 4.")]})
    assert ok["tts"]["warnings"] == []


class Parent(MessagesState, TTSUsageState, total=False):
    """A parent whose own keys share the default TTS output's names."""

    question: dict
    usage: dict
    route: str
    answer: int
    tts: dict


def test_the_parents_own_keys_are_neither_read_nor_written():
    tts = create_tts_graph(*models(), "best_of_n", {"n": 2}, output_key="tts")

    def front(state: Parent) -> dict:
        return {"question": {"topic": "math"}, "usage": {"dollars": 1}, "route": "tts", "answer": 7}

    g = StateGraph(Parent)
    g.add_node("front", front)
    g.add_node("tts", tts)
    g.add_edge(START, "front")
    g.add_edge("front", "tts")
    g.add_edge("tts", END)
    out = g.compile().invoke({"messages": [("human", Q)]})
    assert out["question"] == {"topic": "math"} and out["usage"] == {"dollars": 1}
    assert out["route"] == "tts" and out["answer"] == 7
    assert out["tts"]["answer"] == "11" and out["tts_usage"]["policy_calls"] == 1
    assert [type(m) for m in out["messages"]] == [HumanMessage, AIMessage]


class TwoNodes(MessagesState, TTSUsageState, total=False):
    beam: dict
    bon: dict


def _two_node_app(policy: FakePolicy, prm: FakePRM, checkpointer: Any = None) -> Any:
    beam = create_tts_graph(
        policy, prm, "beam_search", {"n": 8, "beam_width": 4}, name="tts_beam", output_key="beam"
    )
    bon = create_tts_graph(policy, prm, "best_of_n", {"n": 8}, name="tts_bon", output_key="bon")
    g = StateGraph(TwoNodes)
    g.add_node("beam", beam)
    g.add_node("bon", bon)
    g.add_edge(START, "beam")
    g.add_edge("beam", "bon")
    g.add_edge("bon", END)
    return g.compile(checkpointer=checkpointer)


def test_two_tts_nodes_take_their_own_knobs_and_their_usage_adds_up():
    policy, prm = models()
    app = _two_node_app(policy, prm)
    msg = {"messages": [("human", Q)]}
    # a shared n=6 fits best_of_n but not the beam search's beam_width 4: namespace it
    with pytest.raises(ConfigError, match="multiple of beam_width"):
        app.invoke(msg, {"configurable": {"n": 6}})
    policy.calls.clear()
    out = app.invoke(msg, {"configurable": {"tts_bon": {"n": 6}, "tts_beam": {"n": 4}}})
    assert [p * n for p, n, _ in policy.calls] == [4, 6]
    policy.calls.clear()
    out = app.invoke(msg, context={"tts_bon": {"n": 3}, "tts_beam": {"beam_width": 2}})
    assert [p * n for p, n, _ in policy.calls] == [8, 3]
    beam, bon = out["beam"]["usage"], out["bon"]["usage"]
    assert out["tts_usage"] == {k: beam[k] + bon[k] for k in beam}
    assert out["beam"]["answer"] == out["bon"]["answer"] == "11"


def test_tts_usage_sums_over_the_runs_of_a_parent_thread():
    policy, prm = models()
    app = _two_node_app(policy, prm, InMemorySaver(serde=serializer()))
    rc = {"configurable": {"thread_id": "t"}}
    first = app.invoke({"messages": [("human", Q)]}, rc)
    second = app.invoke({"messages": [("human", "Start with 1. Add 2.")]}, rc)
    assert second["beam"]["question"] == "Start with 1. Add 2." and second["bon"]["answer"] == "3"
    per_turn = second["beam"]["usage"]["policy_calls"] + second["bon"]["usage"]["policy_calls"]
    assert second["tts_usage"]["policy_calls"] == first["tts_usage"]["policy_calls"] + per_turn


class SharedUsage(MessagesState, total=False):
    answer: str | None
    usage: Annotated[Usage, add_usage]


def test_the_default_contract_shares_its_keys_and_a_usage_reducer_sums_them():
    """Without ``output_key`` the graph shares ``question`` / ``answer`` / ``usage`` / ...
    with its parent by name (LangGraph maps subgraph keys by name)."""
    policy, prm = models()
    g = StateGraph(SharedUsage)
    g.add_node("a", create_tts_graph(policy, prm, "best_of_n", {"n": 2}, name="a"))
    g.add_node("b", create_tts_graph(policy, prm, "best_of_n", {"n": 3}, name="b"))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    out = g.compile().invoke({"messages": [("human", Q)]})
    assert out["usage"].policy_calls == 2 and out["answer"] == "11"
    assert len(out["messages"]) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_key": "usage"}, "output_key 'usage' is a key of the TTS state"),
        ({"output_key": "tts_usage"}, "is a key of the TTS state"),
        ({"output_key": ""}, "output_key must be a non-empty string"),
        ({"name": "n"}, "name 'n' is a knob of BeamSearchConfig"),
        ({"name": 3}, "name must be a non-empty string"),
    ],
)
def test_bad_names_are_config_errors(kwargs: dict, match: str):
    with pytest.raises(ConfigError, match=match):
        create_tts_graph(*models(), "beam_search", {"n": 4, "beam_width": 2}, **kwargs)


HAS_WEIGHTS = (WEIGHTS_DIR / "prm" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WEIGHTS, reason="embedded weights not built yet")
def test_composition_doc_examples_run():
    text = (ROOT / "docs" / "composition.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"composition.md[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message names the failing block
            raise AssertionError(f"composition.md block {i} failed: {e!r}\n{block}") from e
