"""ChatModelPolicy around LangChain fake / scripted chat models and LLMs."""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from langchain_tts import BackendError, ConfigError, create_tts_graph
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Trajectory
from langchain_tts.policies.chat_model import ChatModelPolicy
from langchain_tts.testing import FakePRM


class ScriptedChat(BaseChatModel):
    """Answers from the prompt: ``STEP<k>.<i>`` after k steps (then a boxed answer)."""

    reject_stop: bool = False
    fail_on: str | None = None
    finish_reason: str = "stop"
    _calls: list[dict] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager=None, **kw
    ) -> ChatResult:
        text = str(messages[-1].content)
        with self._lock:
            self._calls.append({"messages": messages, "stop": stop, "kwargs": kw})
            i = sum(1 for c in self._calls if c["messages"][-1].content == text) - 1
        if self.reject_stop and stop:
            raise ValueError("this provider does not support stop sequences")
        if self.fail_on and self.fail_on in text:
            raise RuntimeError("provider is down")
        k = text.count("STEP")
        reply = f"STEP{k}.{i}\n\nand then more" if k < 2 else "So \\boxed{5}"
        msg = AIMessage(
            content=reply,
            usage_metadata={"input_tokens": 11, "output_tokens": 3, "total_tokens": 14},
            response_metadata={"finish_reason": self.finish_reason},
        )
        return ChatResult(generations=[ChatGeneration(message=msg)])


PREFIXES = [
    Trajectory(question="Start with 3. Add 4."),
    Trajectory(question="Start with 7.", steps=["STEP0.0"]),
]


def test_one_batch_over_prefixes_and_samples():
    llm = ScriptedChat()
    policy = ChatModelPolicy(llm, max_concurrency=4, num_parameters=100)
    result = policy.generate(PREFIXES, n=3, params=SamplingParams(max_step_tokens=50))
    assert len(llm._calls) == 6 and all(c["stop"] == ["\n\n"] for c in llm._calls)
    assert [[s.text.split(".")[0] for s in row] for row in result.steps] == [
        ["STEP0"] * 3,
        ["STEP1"] * 3,
    ]
    assert sorted(s.text for s in result.steps[0]) == ["STEP0.0", "STEP0.1", "STEP0.2"]
    assert all(s.finish_reason == "step" and s.tokens == 3 for row in result.steps for s in row)
    u = result.usage
    assert (u.policy_calls, u.policy_prompt_tokens, u.policy_generated_tokens) == (1, 66, 18)
    assert u.policy_flops == 2.0 * 100 * (66 + 18)
    assert policy.supports_stop is True


def test_prompt_holds_question_and_steps_so_far():
    llm = ScriptedChat()
    policy = ChatModelPolicy(llm, system_prompt="You are careful.")
    messages = policy.render_input(Trajectory(question="Q?", steps=["a=1", "b=2"]))
    assert isinstance(messages[0], SystemMessage) and isinstance(messages[1], HumanMessage)
    text = messages[1].content
    assert "Q?" in text and "a=1\n\nb=2" in text and "next single step" in text
    first = policy.render_input(Trajectory(question="Q?"))[1].content
    assert "(no steps yet)" in first
    whole = policy.render_input(Trajectory(question="Q?"), one_step=False)[1].content
    assert "to the end" in whole
    # a question that holds the text "{steps}" keeps it: the steps go where the template says
    odd = policy.render_input(Trajectory(question="Q {steps}?", steps=["a=1"]))[1].content
    assert "Q {steps}?" in odd and odd.count("a=1") == 1


def test_finish_reasons():
    # A reply cut at the delimiter is a step, whatever the provider says after it.
    policy = ChatModelPolicy(ScriptedChat(finish_reason="length"))
    assert policy.generate(PREFIXES[:1]).steps[0][0].finish_reason == "step"
    # One step without a delimiter (what a chat model is asked for) is a step too.
    short = ChatModelPolicy(FakeListChatModel(responses=["half a st"]))
    assert short.generate(PREFIXES[:1]).steps[0][0].finish_reason == "step"
    empty = ChatModelPolicy(FakeListChatModel(responses=["  "]))
    assert empty.generate(PREFIXES[:1]).steps[0][0].finish_reason == "eos"

    class Truncated(ScriptedChat):
        def _generate(self, messages, stop=None, run_manager=None, **kw):
            msg = AIMessage(content="cut mid", response_metadata={"finish_reason": "length"})
            return ChatResult(generations=[ChatGeneration(message=msg)])

    # No delimiter and a length stop: the step hit the token cap.
    step = ChatModelPolicy(Truncated()).generate(PREFIXES[:1]).steps[0][0]
    assert (step.text, step.finish_reason) == ("cut mid", "length")


def test_fake_list_chat_model_estimates_tokens():
    llm = FakeListChatModel(responses=["12+3=15\n\nmore", "\\boxed{15}"])
    policy = ChatModelPolicy(llm, max_concurrency=1)
    result = policy.generate(PREFIXES[:1], n=2)
    assert [s.text for s in result.steps[0]] == ["12+3=15", "\\boxed{15}"]
    # no usage_metadata: characters / 4, rounded up
    assert [s.tokens for s in result.steps[0]] == [4, 3]
    assert result.usage.policy_prompt_tokens > 0


def test_plain_llm_continues_the_text():
    llm = FakeListLLM(responses=["3+4=7"])
    policy = ChatModelPolicy(llm)
    assert policy.render_input(PREFIXES[1]) == "Start with 7.\n\nSTEP0.0\n\n"
    result = policy.generate(PREFIXES, n=2)
    assert [[s.text for s in row] for row in result.steps] == [["3+4=7"] * 2] * 2


def test_model_without_stop_support_is_called_without_it():
    llm = ScriptedChat(reject_stop=True)
    policy = ChatModelPolicy(llm)
    result = policy.generate(PREFIXES, n=2)
    assert policy.supports_stop is False
    # cut at the delimiter client-side
    assert all(s.text.startswith("STEP0.") and "\n" not in s.text for s in result.steps[0])
    calls = len(llm._calls)
    policy.generate(PREFIXES[:1])
    assert [c["stop"] for c in llm._calls[calls:]] == [None]


def test_sampling_kwargs_are_forwarded_when_asked():
    llm = ScriptedChat()
    params = SamplingParams(temperature=0.3, top_p=0.8, max_step_tokens=64, seed=1)
    ChatModelPolicy(llm, pass_sampling=True).generate(PREFIXES[:1], params=params)
    assert llm._calls[-1]["kwargs"] == {
        "temperature": 0.3,
        "top_p": 0.8,
        "max_tokens": 64,
        "seed": 1,
    }
    ChatModelPolicy(llm).generate(PREFIXES[:1], params=params)
    assert llm._calls[-1]["kwargs"] == {}


def test_failures_raise_backend_error_with_partial_steps():
    llm = ScriptedChat(fail_on="Start with 7.")
    with pytest.raises(BackendError, match="2 of 4 model calls failed.*provider is down") as info:
        ChatModelPolicy(llm).generate(PREFIXES, n=2)
    grid = info.value.partial["steps"]
    assert [s is None for s in grid[0]] == [False, False] and grid[1] == [None, None]
    assert grid[0][0].text.startswith("STEP0.")


def test_a_negative_token_count_is_a_backend_error_not_a_budget_refund():
    class Refunding(ScriptedChat):
        def _generate(self, messages, stop=None, run_manager=None, **kw):
            usage = {"input_tokens": -1000, "output_tokens": 3, "total_tokens": -997}
            msg = AIMessage(content="STEP0.0", usage_metadata=usage)
            return ChatResult(generations=[ChatGeneration(message=msg)])

    with pytest.raises(BackendError, match="input_tokens=-1000"):
        ChatModelPolicy(Refunding()).generate(PREFIXES[:1])


def test_a_model_that_never_answers_ends_in_a_backend_error():
    class Stuck(ScriptedChat):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kw):
            await asyncio.sleep(30)

    assert ChatModelPolicy(ScriptedChat()).timeout == 600.0  # bounded by default
    with pytest.raises(BackendError, match="did not finish within 0.2s"):
        ChatModelPolicy(Stuck(), timeout=0.2).generate(PREFIXES[:1])


def test_rejects_non_models():
    with pytest.raises(ConfigError, match="model must be a LangChain"):
        ChatModelPolicy(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model must be a LangChain"):
        ChatModelPolicy()


def test_model_keyword_and_positional_are_the_same():
    llm = ScriptedChat()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the LangChain spelling warns about nothing
        by_name, by_position = ChatModelPolicy(model=llm), ChatModelPolicy(llm)
    assert by_name.model is by_position.model is llm
    assert by_name.name == "ChatModelPolicy(ScriptedChat)"
    assert by_name.generate(PREFIXES[:1]).steps[0][0].text.startswith("STEP0.")


def test_llm_keyword_still_works_with_a_deprecation_warning():
    llm = ScriptedChat()
    with pytest.warns(DeprecationWarning, match=r"ChatModelPolicy\(model=\.\.\.\)"):
        policy = ChatModelPolicy(llm=llm, max_concurrency=2)
    assert policy.model is llm and policy.max_concurrency == 2
    assert policy.generate(PREFIXES[:1]).steps[0][0].text.startswith("STEP0.")
    with pytest.warns(DeprecationWarning, match="use ChatModelPolicy.model"):
        assert policy.llm is llm
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="once"):
        ChatModelPolicy(llm, llm=llm)


def test_beam_search_graph_with_a_chat_model():
    llm = ScriptedChat()
    prm = FakePRM(lambda t: [0.9] * len(t.steps))
    graph = create_tts_graph(
        ChatModelPolicy(llm), prm, "beam_search", {"n": 4, "beam_width": 2, "max_steps": 5}
    )
    out = graph.invoke({"question": "Start with 3. Add 2."})
    assert out["answer"] == "5"
    assert out["usage"].policy_calls == len(prm.calls) == 3
    assert len(llm._calls) == 4 + 4 + 4  # root x 4, then 2 beams x 2 per step


class _Stuck(BaseChatModel):
    """A sync-only provider that does not answer until ``gate`` opens."""

    _gate: threading.Event = PrivateAttr(default_factory=threading.Event)

    @property
    def _llm_type(self) -> str:
        return "stuck"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any):
        self._gate.wait(30)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="3+4=7"))])


def test_the_timeout_bounds_a_sync_caller_of_a_sync_only_model():
    """LangChain runs a sync-only model on the loop's default executor; the sync bridge
    used to join those threads at the end, so ``invoke`` waited for the stuck call that its
    timeout had given up on."""
    import time

    model = _Stuck()
    policy = ChatModelPolicy(model, timeout=0.2)
    t0 = time.perf_counter()
    try:
        with pytest.raises(BackendError, match="did not finish within 0.2s"):
            policy.invoke({"question": "Start with 3. Add 4."})
        assert time.perf_counter() - t0 < 20  # not the 30 s the call stays stuck
    finally:
        model._gate.set()


def test_runnable_input_of_a_policy_and_a_prm_is_checked():
    """``temperature`` at the top of a policy's input was ignored (the call ran at 0.7), a
    blank question was sampled, and a bad input raised pydantic's error: each is now an
    InputError naming the field."""
    from langchain_tts import InputError
    from langchain_tts.testing import FakePolicy

    policy = FakePolicy(lambda p, i: "3+4=7")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    for bad, field in (
        ({"question": "q", "temperature": 0.0}, "temperature"),
        ({"question": "   "}, "question"),
        ({}, "question"),
    ):
        with pytest.raises(InputError, match=f"(?s)invalid policy input.*{field}"):
            policy.invoke(bad)
    with pytest.raises(InputError, match="(?s)invalid PRM input.*aggregation"):
        prm.invoke({"question": "q", "steps": ["a"], "aggregation": "min"})
    assert policy.invoke({"question": "q", "sampling": {"temperature": 0.0}})[0].text == "3+4=7"


def test_the_samples_do_not_stream_as_chat_messages():
    """``stream_mode="messages"`` streams the reply, not the policy's samples: the wrapped
    chat model's calls are tagged ``nostream`` (the policy run's tag is not inherited), on
    its own and from a parent streaming its subgraphs."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessageChunk
    from langgraph.graph import END, START, MessagesState, StateGraph

    reply = AIMessage(content="SAMPLE: the answer is \\boxed{13}")
    model = GenericFakeChatModel(messages=iter([reply] * 20))
    tts = create_tts_graph(
        ChatModelPolicy(model), FakePRM(lambda t: [0.9] * len(t.steps)), "best_of_n", {"n": 3}
    )
    parent = StateGraph(MessagesState)
    parent.add_node("tts", tts)
    parent.add_edge(START, "tts")
    parent.add_edge("tts", END)
    app = parent.compile()
    inp = {"messages": [("human", "Start with 9. Add 4.")]}
    for stream in (
        tts.stream(inp, stream_mode="messages"),
        app.stream(inp, stream_mode="messages", subgraphs=True),
    ):
        items = [item[-1] if isinstance(item[0], tuple) else item for item in stream]
        ai = [(m, meta) for m, meta in items if isinstance(m, (AIMessage, AIMessageChunk))]
        assert [meta["langgraph_node"] for _, meta in ai] == ["finalize"]
        assert "13" in ai[0][0].content
