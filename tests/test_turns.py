"""Turn semantics: every run of a checkpointer thread answers that run's question with a fresh
search and its own usage; a crashed run resumes where it stopped."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages

from langchain_tts.checkpoint import serializer, sqlite_saver
from langchain_tts.core.errors import BackendError, InputError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.graph import STRATEGIES, create_tts_graph
from langchain_tts.testing import FakePolicy, FakePRM

TURNS = ["Start with 5. Add 6.", "Start with 50. Add 6.", "Start with 7. Add 1."]
ANSWERS = ["11", "56", "8"]
CONFIGS: dict[str, dict[str, Any]] = {
    "cot": {},
    "best_of_n": {"n": 4},
    "majority_vote": {"n": 4},
    "weighted_vote": {"n": 4},
    "beam_search": {"n": 4, "beam_width": 2},
    "dvts": {"n": 4, "beam_width": 2},
    "mcts": {"simulations": 3, "parallel": 1},  # one rollout a step: three steps
    "particle_filtering": {"n": 4},
    "revision": {"revisions": 1},
    "hybrid": {"chains": 2, "revisions": 1},
    "step_repair": {"n": 4},
}


def adder(prefix: Trajectory, i: int) -> str:
    """Two steps: restate the numbers, then box their sum (a wrong one for odd samples)."""
    nums = [int(x) for x in re.findall(r"-?\d+", prefix.question.split("\n\n")[0])]
    if not prefix.steps:
        return f"Numbers: {nums}"
    return f"The answer is \\boxed{{{sum(nums) + (i % 2) * 100}}}"


def prefer_right(t: Trajectory) -> list[float]:
    nums = [int(x) for x in re.findall(r"-?\d+", t.question)]
    return [0.9 if str(sum(nums)) in s or s.startswith("Numbers") else 0.1 for s in t.steps]


@pytest.fixture(params=["memory", "sqlite"])
def saver(request) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemorySaver(serde=serializer())
    else:
        with sqlite_saver() as s:
            yield s


def pipeline(state: Any, nodes: dict[str, Any], checkpointer: Any = None) -> Any:
    """A parent app: ``nodes`` in order between START and END, compiled."""
    g = StateGraph(state)
    names = list(nodes)
    for name in names:
        g.add_node(name, nodes[name])
    for a, b in zip([START, *names], [*names, END]):
        g.add_edge(a, b)
    return g.compile(checkpointer=checkpointer)


def test_config_table_covers_every_strategy():
    assert set(CONFIGS) == set(STRATEGIES)


def test_three_chat_turns_on_one_thread_answer_each_turn(saver):
    policy, prm = FakePolicy(adder), FakePRM(prefer_right)
    graph = create_tts_graph(policy, prm, "beam_search", CONFIGS["beam_search"], checkpointer=saver)
    rc = {"configurable": {"thread_id": "chat-1"}}
    outs = []
    for q, a in zip(TURNS, ANSWERS):
        out = graph.invoke({"messages": [("human", q)]}, rc)
        assert out["question"] == q and out["answer"] == a
        assert all(t.question == q for t in out["candidates"])  # this run's search only
        assert out["messages"][-1].content == out["solution"]
        outs.append(out)
    # usage is each run's own (what the question costs on a fresh graph); the thread total
    # sums them
    fresh = create_tts_graph(policy, prm, "beam_search", CONFIGS["beam_search"])
    for q, out in zip(TURNS, outs):
        assert out["usage"] == fresh.invoke({"question": q})["usage"]
        assert out["usage"].policy_calls == 2
    total = graph.get_state(rc).values["thread_usage"]
    assert total == outs[0]["usage"] + outs[1]["usage"] + outs[2]["usage"]
    assert [type(m) for m in outs[-1]["messages"]] == [HumanMessage, AIMessage] * 3


def test_a_question_passed_in_wins_and_does_not_stick(saver):
    graph = create_tts_graph(
        FakePolicy(adder), FakePRM(prefer_right), "dvts", CONFIGS["dvts"], checkpointer=saver
    )
    rc = {"configurable": {"thread_id": "mixed"}}
    out = graph.invoke({"question": TURNS[0], "messages": [("human", TURNS[2])]}, rc)
    assert out["question"] == TURNS[0] and out["answer"] == ANSWERS[0]
    out = graph.invoke({"messages": [("human", TURNS[1])]}, rc)  # no question: newest message
    assert out["question"] == TURNS[1] and out["answer"] == ANSWERS[1]
    out = graph.invoke({"question": TURNS[2]}, rc)
    assert out["question"] == TURNS[2] and out["answer"] == ANSWERS[2]
    # the chat shows each question a turn answered, also one sent as {"question": ...}
    chat = [(m.type, m.content) for m in out["messages"]]
    asked = [c for t, c in chat if t == "human"]
    assert asked == [TURNS[2], TURNS[0], TURNS[1], TURNS[2]]
    assert [t for t, _ in chat] == ["human", "human", "ai", "human", "ai", "human", "ai"]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_every_strategy_starts_each_run_fresh(strategy: str):
    policy = FakePolicy(adder)
    prm = FakePRM(prefer_right)
    cfg = {**CONFIGS[strategy], "selection": "majority"} if strategy == "cot" else CONFIGS[strategy]
    graph = create_tts_graph(
        policy, prm, strategy, cfg, checkpointer=InMemorySaver(serde=serializer())
    )
    rc = {"configurable": {"thread_id": f"t-{strategy}"}}
    outs = [await graph.ainvoke({"messages": [("human", q)]}, rc) for q in TURNS[:2]]
    fresh = await create_tts_graph(policy, prm, strategy, cfg).ainvoke({"question": TURNS[1]})
    second = outs[1]
    assert second["question"] == TURNS[1]
    assert all(t.question.startswith(TURNS[1]) for t in second["candidates"])
    for key in ("answer", "solution", "stop_reason", "usage"):
        assert second[key] == fresh[key], key
    state = graph.get_state(rc).values
    assert state["step"] == fresh_step(strategy, graph, TURNS[1])
    assert state["thread_usage"] == outs[0]["usage"] + outs[1]["usage"]


def fresh_step(strategy: str, graph: Any, question: str) -> int:
    """The ``step`` a run of ``question`` on a fresh thread ends at."""
    rc = {"configurable": {"thread_id": f"fresh-{strategy}"}}
    graph.invoke({"question": question}, rc)
    return graph.get_state(rc).values["step"]


def test_a_crashed_run_resumes_with_its_question_and_usage():
    state = {"calls": 0, "fail_at": None}

    def flaky(prefix: Trajectory, i: int) -> str:
        if i == 0:
            state["calls"] += 1
            if state["calls"] == state["fail_at"]:
                raise RuntimeError("server went away")
        return adder(prefix, i)

    policy = FakePolicy(flaky)
    graph = create_tts_graph(
        policy,
        FakePRM(prefer_right),
        "beam_search",
        CONFIGS["beam_search"],
        checkpointer=InMemorySaver(serde=serializer()),
    )
    rc = {"configurable": {"thread_id": "crash"}}
    first = graph.invoke({"messages": [("human", TURNS[0])]}, rc)
    state["fail_at"] = state["calls"] + 2  # the second search step of the next run
    with pytest.raises(BackendError):
        graph.invoke({"messages": [("human", TURNS[1])]}, rc)
    calls = len(policy.calls)
    out = graph.invoke(None, rc)  # resume: the failed step only
    assert len(policy.calls) == calls + 1
    assert out["question"] == TURNS[1] and out["answer"] == ANSWERS[1]
    # the whole run's usage, the steps before the crash included
    fresh = create_tts_graph(policy, FakePRM(prefer_right), "beam_search", CONFIGS["beam_search"])
    assert out["usage"] == fresh.invoke({"question": TURNS[1]})["usage"]
    assert first["usage"].policy_calls == out["usage"].policy_calls == 2
    # and the next turn after a resumed one is fresh again
    out = graph.invoke({"messages": [("human", TURNS[2])]}, rc)
    assert out["question"] == TURNS[2] and out["answer"] == ANSWERS[2]


def test_a_crashed_run_abandoned_for_a_new_message_answers_the_new_one():
    boom = {"on": True}

    def flaky(prefix: Trajectory, i: int) -> str:
        if prefix.steps and boom["on"]:
            raise RuntimeError("server went away")
        return adder(prefix, i)

    graph = create_tts_graph(
        FakePolicy(flaky),
        FakePRM(prefer_right),
        "beam_search",
        CONFIGS["beam_search"],
        checkpointer=InMemorySaver(serde=serializer()),
    )
    rc = {"configurable": {"thread_id": "abandon"}}
    with pytest.raises(BackendError):
        graph.invoke({"question": TURNS[0]}, rc)
    spent = graph.get_state(rc).values["usage"]  # the crashed run's steps before the crash
    assert spent.policy_calls == 1
    boom["on"] = False
    out = graph.invoke({"messages": [("human", TURNS[1])]}, rc)
    assert out["question"] == TURNS[1] and out["answer"] == ANSWERS[1]
    assert out["usage"].policy_calls == 2
    # the thread's total counts what the abandoned run spent too (finalize never booked it)
    assert graph.get_state(rc).values["thread_usage"] == spent + out["usage"]


class ChatApp(MessagesState, total=False):
    question: str  # the parent's own: what its front-end node extracted this turn
    answer: str | None
    usage: Usage


def test_parent_chat_app_with_its_own_question_key(saver):
    """A ``MessagesState`` app that shares ``question`` with the TTS subgraph (default
    contract) and writes it itself each turn; the subgraph keeps its own thread state."""
    tts = create_tts_graph(
        FakePolicy(adder),
        FakePRM(prefer_right),
        "beam_search",
        CONFIGS["beam_search"],
        checkpointer=True,
    )

    def front(state: ChatApp) -> dict:
        last = [m for m in state["messages"] if isinstance(m, HumanMessage)][-1]
        return {"question": last.content.removeprefix("Please: ")}

    app = pipeline(ChatApp, {"front": front, "tts": tts}, saver)
    rc = {"configurable": {"thread_id": "app-1"}}
    for q, a in zip(TURNS, ANSWERS):
        out = app.invoke({"messages": [("human", "Please: " + q)]}, rc)
        assert out["question"] == q and out["answer"] == a
        assert out["usage"].policy_calls == 2  # this turn's search only
    assert len(out["messages"]) == 6


def test_parent_messages_app_whose_question_key_is_not_the_tts_graphs(saver):
    """The parent's ``question`` means something else (a dict): with ``output_key`` the
    subgraph (checkpointer=True, so it keeps a thread of its own) reads only messages."""
    from langchain_tts.strategies.core import TTSUsageState

    class App(MessagesState, TTSUsageState, total=False):
        question: dict
        tts: dict

    tts = create_tts_graph(
        FakePolicy(adder),
        FakePRM(prefer_right),
        "beam_search",
        CONFIGS["beam_search"],
        output_key="tts",
        checkpointer=True,
    )
    note = lambda s: {"question": {"turns": len(s["messages"])}}  # noqa: E731
    app = pipeline(App, {"note": note, "tts": tts}, saver)
    rc = {"configurable": {"thread_id": "app-2"}}
    for i, (q, a) in enumerate(zip(TURNS, ANSWERS)):
        out = app.invoke({"messages": [("human", q)]}, rc)
        assert out["tts"]["question"] == q and out["tts"]["answer"] == a
        assert out["question"] == {"turns": 2 * i + 1}
        assert out["messages"][-1].content == out["tts"]["solution"]
    assert out["tts_usage"]["policy_calls"] == 3 * out["tts"]["usage"]["policy_calls"]


@pytest.mark.slow
def test_three_turns_on_the_embedded_models_with_sqlite():
    from langchain_tts import load_default

    policy, prm = load_default()
    graph_cfg = {"n": 2, "seed": 0, "max_steps": 8}
    with sqlite_saver() as saver:
        graph = create_tts_graph(policy, prm, "best_of_n", graph_cfg, checkpointer=saver)
        rc = {"configurable": {"thread_id": "embedded"}}
        outs = [graph.invoke({"messages": [("human", q)]}, rc) for q in TURNS]
    fresh = create_tts_graph(policy, prm, "best_of_n", graph_cfg)
    for q, out in zip(TURNS, outs):
        assert out["question"] == q
        assert all(t.question == q for t in out["candidates"])
        assert out["usage"].policy_calls == 1 and out["usage"].prm_calls == 1
        alone = fresh.invoke({"question": q})
        assert out["answer"] == alone["answer"] and out["solution"] == alone["solution"]


def test_a_turn_without_a_new_human_message_is_an_input_error(saver):
    """``{"messages": []}`` on a thread, or a turn that adds only an AI note, asks nothing
    new: it used to answer the thread's last question again (and pay for it) and append
    another reply. A ``question`` passed in still asks, whatever the chat ends with."""
    from langchain_tts.core.errors import InputError

    policy = FakePolicy(adder)
    graph = create_tts_graph(policy, FakePRM(prefer_right), "best_of_n", {"n": 2},
                             checkpointer=saver)  # fmt: skip
    rc = {"configurable": {"thread_id": "no-new-question"}}
    graph.invoke({"messages": [("human", TURNS[0])]}, rc)
    calls = len(policy.calls)
    for turn in ({"messages": []}, {"messages": [AIMessage("a note of the app's")]}):
        with pytest.raises(InputError, match="newest message is an AI message.*no new question"):
            graph.invoke(turn, rc)
    assert len(policy.calls) == calls
    out = graph.invoke({"question": TURNS[1]}, rc)
    assert out["answer"] == ANSWERS[1]


def test_a_parent_question_left_from_an_earlier_turn_is_answered_with_a_warning(saver):
    """A default-contract parent that declares ``question`` but does not write it each turn
    keeps turn 1's (the TTS node writes it back): the node says so instead of answering
    the old question silently."""

    class App(MessagesState):
        question: str
        answer: str | None

    tts = create_tts_graph(FakePolicy(adder), FakePRM(prefer_right), "best_of_n", {"n": 2})
    app = pipeline(App, {"tts": tts}, saver)
    rc = {"configurable": {"thread_id": "stale-question"}}
    assert app.invoke({"messages": [("human", TURNS[0])]}, rc)["answer"] == ANSWERS[0]
    with pytest.warns(UserWarning, match="again: the chat's reply before its newest human"):
        app.invoke({"messages": [("human", TURNS[1])]}, rc)


def test_a_parent_that_rewrites_the_question_each_turn_gets_no_warning(saver):
    """A parent that writes ``question`` each turn in its own words (not the chat's) is
    answering a new question: no warning that it is an old one."""
    import re
    import warnings

    class App(MessagesState):
        question: str
        answer: str | None

    def rewrite(state: App) -> dict:  # "what is 9 plus 4?" -> "Start with 9. Add 4."
        a, b = re.findall(r"\d+", state["messages"][-1].content)
        return {"question": f"Start with {a}. Add {b}."}

    tts = create_tts_graph(FakePolicy(adder), FakePRM(prefer_right), "best_of_n", {"n": 2})
    app = pipeline(App, {"rewrite": rewrite, "tts": tts}, saver)
    rc = {"configurable": {"thread_id": "rewritten"}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for msg, answer in (("what is 9 plus 4?", "13"), ("and 20 plus 6?", "26")):
            out = app.invoke({"messages": [("human", msg)]}, rc)
            assert out["answer"] == answer
    assert out["messages"][-1].response_metadata["tts_question"] == "Start with 20. Add 6."


def test_a_parent_whose_question_defaults_to_empty_reads_the_chat():
    """A pydantic parent state with ``question: str = ""`` hands the node an empty question
    before anything wrote it: the chat's question is the one, not an "empty question"."""
    from pydantic import BaseModel

    class App(BaseModel):
        messages: Annotated[list[AnyMessage], add_messages] = []
        question: str = ""
        answer: str | None = None

    tts = create_tts_graph(FakePolicy(adder), FakePRM(prefer_right), "best_of_n", {"n": 2})
    out = pipeline(App, {"tts": tts}).invoke({"messages": [("human", TURNS[0])]})
    assert out["answer"] == ANSWERS[0] and out["question"] == TURNS[0]
    with pytest.raises(InputError, match="question is empty"):
        tts.invoke({"question": "   "})
