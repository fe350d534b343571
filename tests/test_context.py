"""Knobs at run time: LangGraph's run context (each graph's ``context_schema``) and
``configurable``, namespaced by the graph's name; unknown knobs are errors that name the
valid ones."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from langgraph.graph import END, START, MessagesState, StateGraph

from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.graph import STRATEGIES, create_tts_graph, strategy_config
from langchain_tts.testing import FakePolicy, FakePRM

Q = "Start with 5. Add 6."


def adder(prefix: Trajectory, i: int) -> str:
    nums = [int(x) for x in re.findall(r"-?\d+", prefix.question)]
    return f"The answer is \\boxed{{{sum(nums)}}}"


def models() -> tuple[FakePolicy, FakePRM]:
    return FakePolicy(adder), FakePRM(lambda t: [0.9] * len(t.steps))


def samples_of(policy: FakePolicy) -> int:
    """Samples the last policy call drew (prefixes x n)."""
    prefixes, n, _ = policy.calls[-1]
    return prefixes * n


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_graph_has_its_knobs_as_context_schema(strategy: str):
    policy, prm = models()
    built = {"seed": 3, "temperature": 0.5}
    graph = create_tts_graph(policy, prm, strategy, built)
    schema = graph.get_context_jsonschema()
    assert schema is not None
    cfg = strategy_config(strategy, built)
    props = schema["properties"]
    assert set(props) == set(type(cfg).model_fields)
    assert props["seed"]["default"] == 3 and props["temperature"]["default"] == 0.5
    assert props["max_steps"]["default"] == cfg.max_steps


def test_context_sets_knobs_in_process():
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 8})
    graph.invoke({"question": Q})
    assert samples_of(policy) == 8
    out = graph.invoke({"question": Q}, context={"n": 3})
    assert samples_of(policy) == 3 and out["answer"] == "11"
    graph.invoke({"question": Q}, {"configurable": {"n": 5}})  # configurable keeps working
    assert samples_of(policy) == 5


async def test_context_under_ainvoke_and_stream():
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 8, "beam_width": 4})
    await graph.ainvoke({"question": Q}, context={"n": 4, "beam_width": 2})
    assert samples_of(policy) == 4
    list(graph.stream({"question": Q}, context={"n": 2, "beam_width": 2}))
    assert samples_of(policy) == 2


def test_precedence_configurable_then_context_then_the_graphs_own():
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 8}, name="bon")
    graph.invoke({"question": Q}, {"configurable": {"n": 5}}, context={"n": 4})
    assert samples_of(policy) == 4  # context over configurable
    graph.invoke({"question": Q}, {"configurable": {"bon": {"n": 3}}}, context={"n": 4})
    assert samples_of(policy) == 3  # the graph's own over shared knobs
    graph.invoke({"question": Q}, {"configurable": {"bon": {"n": 3}}}, context={"bon": {"n": 2}})
    assert samples_of(policy) == 2


def test_combinations_are_checked_once_all_knobs_are_merged():
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 8, "beam_width": 4})
    # n=6 alone is no multiple of the built beam_width 4; with beam_width=2 it is
    graph.invoke({"question": Q}, context={"n": 6, "tts_beam_search": {"beam_width": 2}})
    assert samples_of(policy) == 6
    with pytest.raises(ConfigError, match=r"(?s)n \(6\) must be a multiple of beam_width"):
        graph.invoke({"question": Q}, context={"n": 6})


@pytest.mark.parametrize(
    ("context", "match"),
    [
        ({"beamwidth": 2}, r"unknown knob 'beamwidth'.*did you mean 'beam_width'"),
        ({"bogus": 1}, r"unknown knob 'bogus'.*valid knobs: \['aggregation', 'beam_width'"),
        ({"tts_beam_search": {"beam_widht": 2}}, r"'beam_widht'.*did you mean 'beam_width'"),
        ({"tts_beam_search": 4}, r"must be a dict of BeamSearchConfig knobs, got int"),
        ({"n": "many"}, r"(?s)invalid run context.*\bn\b"),
        ({"n": 0}, r"(?s)invalid run context.*greater than or equal to 1"),
    ],
)
def test_unknown_or_invalid_context_knobs_are_config_errors(context: dict, match: str):
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 8, "beam_width": 4})
    with pytest.raises(ConfigError, match=match):
        graph.invoke({"question": Q}, context=context)
    assert not policy.calls  # refused before any model call


def test_configurable_rejects_only_close_misspellings_of_a_knob():
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    with pytest.raises(ConfigError, match=r"'beamwidth'.*did you mean 'beam_width'"):
        graph.invoke({"question": Q}, {"configurable": {"beamwidth": 2}})
    with pytest.raises(ConfigError, match=r"'temprature'.*did you mean 'temperature'"):
        graph.invoke({"question": Q}, {"configurable": {"temprature": 0.1}})
    # LangGraph's keys, the user's own keys and other strategies' knobs pass through
    shared = {
        "thread_id": "t",
        "user_id": "u1",
        "bogus": 1,
        "n_subtrees": 2,
        "simulations": 3,
        "chains": 2,
        "revisions": 1,
    }
    out = graph.invoke({"question": Q}, {"configurable": shared})
    assert out["answer"] == "11"
    with pytest.raises(ConfigError, match=r"unknown knob 'nn'.*did you mean 'n'"):
        graph.invoke({"question": Q}, {"configurable": {"tts_beam_search": {"nn": 2}}})


@dataclass
class AppContext:
    """A parent app's own run context: only the attribute named like a TTS graph is read."""

    user: str = "ada"
    n: int = 99  # the app's own field, no knob of the TTS graph
    bon: dict[str, Any] = field(default_factory=dict)


class ChatState(MessagesState, total=False):
    answer: str | None


def _chat_app(graph: Any, context_schema: Any = None) -> Any:
    g = StateGraph(ChatState, context_schema)
    g.add_node("tts", graph)
    g.add_edge(START, "tts")
    g.add_edge("tts", END)
    return g.compile()


def test_a_parents_context_reaches_the_subgraph():
    policy, prm = models()
    tts = create_tts_graph(policy, prm, "best_of_n", {"n": 8}, name="bon")
    msg = {"messages": [("human", Q)]}
    # a parent without a schema: its context dict is shared with the TTS graph
    app = _chat_app(tts)
    assert app.invoke(msg, context={"n": 3, "users_key": 1})["answer"] == "11"
    assert samples_of(policy) == 3
    app.invoke(msg, context={"bon": {"n": 2}})
    assert samples_of(policy) == 2
    with pytest.raises(ConfigError, match="did you mean 'n'"):
        app.invoke(msg, context={"bon": {"nn": 2}})
    # a parent with its own dataclass context: only its ``bon`` attribute is the graph's
    app = _chat_app(tts, AppContext)
    app.invoke(msg, context=AppContext(bon={"n": 4}))
    assert samples_of(policy) == 4
    app.invoke(msg, context=AppContext())
    assert samples_of(policy) == 8


def test_the_chat_reply_keeps_the_graph_name_when_knobs_come_from_the_context():
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 2}, name="bon")
    for context in (None, {"n": 3}, {"bon": {"n": 4}}):
        out = graph.invoke({"messages": [("human", Q)]}, context=context)
        reply = out["messages"][-1]
        assert reply.name == "bon" and reply.usage_metadata["total_tokens"] > 0, context


@pytest.mark.parametrize("knob", ["max_tokens", "max_flops", "n", "seed", "temperature"])
@pytest.mark.parametrize("where", ["configurable", "context"])
def test_a_bool_is_no_number_for_any_knob_on_any_path(knob: str, where: str):
    """pydantic reads True as 1: n=True would draw one sample, max_tokens=True a budget of
    one token. Every path refuses it, naming the knob, also after the same value as a
    number was accepted (the resolved-config memo keys on the value's type)."""
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 2})
    kwargs: dict[str, Any] = (
        {"context": {knob: 1}} if where == "context" else {"config": {"configurable": {knob: 1}}}
    )
    if knob.startswith("max_"):  # validated and memoised, then too small to run on
        with pytest.raises(ConfigError, match="cannot pay for even the first model call"):
            graph.invoke({"question": Q}, **kwargs)
    else:
        graph.invoke({"question": Q}, **kwargs)
    bad = {k: {knob: True} if k == "context" else {"configurable": {knob: True}} for k in kwargs}
    calls = len(policy.calls)
    with pytest.raises(ConfigError, match=rf"(?s){knob} must be a number, got True"):
        graph.invoke({"question": Q}, **bad)
    assert len(policy.calls) == calls


def test_a_close_key_in_a_parent_apps_configurable_is_the_apps_own():
    """Inside a parent graph, ``configurable`` and the context belong to the whole app: a
    key of its own that looks like a misspelled knob (a retriever's ``top_k``, close to
    ``top_p``) is a warning there, not an error; at the top level it is an error."""
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 2})
    with pytest.raises(ConfigError, match=r"'top_k'.*did you mean 'top_p'"):
        graph.invoke({"question": Q}, {"configurable": {"top_k": 5}})
    app = _chat_app(graph)
    with pytest.warns(UserWarning, match=r"'top_k'.*did you mean 'top_p'.*ignored"):
        out = app.invoke({"messages": [("human", Q)]}, {"configurable": {"top_k": 5}})
    assert out["answer"] == "11"
    out = app.invoke({"messages": [("human", Q)]}, context={"top_k": 5})  # warned once
    assert out["answer"] == "11"


def test_a_lower_total_token_cap_brings_the_step_cap_down_with_it():
    """``max_total_tokens=64`` alone (OpenAI's ``max_tokens``) is below the built per-step
    cap (2048): the step cap follows it; a step cap the run sets itself is kept, and a
    contradiction is still an error."""
    policy, prm = models()
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 2})
    graph.invoke({"question": Q}, context={"max_total_tokens": 64})
    assert policy.calls[-1][2].max_step_tokens == 64
    graph.invoke({"question": Q}, context={"max_total_tokens": 64, "max_step_tokens": 32})
    assert policy.calls[-1][2].max_step_tokens == 32
    with pytest.raises(ConfigError, match=r"max_step_tokens \(128\) exceeds max_total_tokens"):
        graph.invoke({"question": Q}, context={"max_total_tokens": 64, "max_step_tokens": 128})


def test_a_long_unknown_configurable_key_is_no_misspelling_and_not_memoised():
    """A 1 MB key sent over HTTP was compared with every knob and kept in the memo of
    misspellings (1,024 of them: gigabytes)."""
    from langchain_tts.strategies import core

    policy, prm = models()
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 2})
    key = "top_" + "p" * 100_000
    out = graph.invoke({"question": Q}, {"configurable": {key: 1}})
    assert out["answer"] == "11" and not any(k == key for _, k in core._LOOSE)
