"""Composition: the agent example (planner -> CoT | beam search subgraph) routes and answers
synthetic questions; the docs' deployment page runs as written on the embedded models."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.eval.synthetic import make_split, parse_question
from langchain_tts.models import WEIGHTS_DIR
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.testing import FakePRM

ROOT = Path(__file__).resolve().parent.parent
HAS_WEIGHTS = (WEIGHTS_DIR / "prm" / "model.safetensors").exists()
requires_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="embedded weights not built yet")


def load_example() -> ModuleType:
    """``integrations/agent_example.py`` is a script, not a package module: load it by path."""
    if "agent_example" in sys.modules:
        return sys.modules["agent_example"]
    spec = importlib.util.spec_from_file_location(
        "agent_example", ROOT / "integrations" / "agent_example.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_example"] = module  # its state annotations resolve through it
    spec.loader.exec_module(module)
    return module


class OraclePolicy(StepPolicy):
    """Writes the gold solution of a synthetic question: the next step, or all the rest."""

    name = "oracle"

    def __init__(self) -> None:
        self.calls = 0

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self.calls += 1
        rows = []
        for p in prefixes:
            rest = parse_question(p.question).gold_steps[len(p.steps) :]
            text = rest[0] if params.stop_at_step else "\n\n".join(rest)
            reason = "step" if params.stop_at_step else "eos"
            rows.append([Step(text=text, tokens=len(text), finish_reason=reason)] * n)
        return PolicyResult(steps=rows, usage=Usage(policy_calls=1))


@pytest.fixture
def one_torch_thread():
    """Two cores shared with background jobs: torch's default two threads then contend and
    run 10x+ slower; one thread keeps these end-to-end tests steady (restored after)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_planner_rule():
    ex = load_example()
    assert ex.count_operations("Start with 3. Add 4. Multiply by 2. Subtract 1.") == 3
    assert ex.count_operations("What is 12 plus 7?") == 1
    assert ex.count_operations("Compute 3, 4, 5 and 6 together") == 3  # numbers - 1
    assert ex.plan("Start with 3. Add 4.") == "direct"
    assert ex.plan("Start with 3. Add 4. Add 5. Divide by 2.") == "careful"
    for p in make_split("test", 8):
        assert ex.count_operations(p.question) == p.difficulty


def test_agent_routes_and_answers_synthetic_questions():
    ex = load_example()
    prm = FakePRM(lambda t: [0.9] * len(t.steps))
    agent = ex.build_agent(OraclePolicy(), prm, threshold=3)
    for p in make_split("test", 8):
        out = agent.invoke({"messages": [("human", p.question)]})
        assert out["answer"] == p.answer, p.question
        assert out["route"] == ("careful" if p.difficulty >= 3 else "direct")
        # Only the careful route pays for verification: one PRM call per search step.
        assert (out["usage"].prm_calls > 0) == (out["route"] == "careful")
        assert out["messages"][-1].type == "ai" and f"\\boxed{{{p.answer}}}" in (
            out["messages"][-1].content
        )


def test_agent_with_limits_refuses_absurd_knobs_and_a_turn_with_no_question():
    """Deployed for strangers, the agent's subgraphs refuse knobs over the server's limits
    and get its default budget; a turn with no new human message is an error, not the
    thread's last question answered again."""
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_tts import InputError, LimitError, ServeLimits

    ex = load_example()
    policy = OraclePolicy()
    agent = ex.build_agent(
        policy, FakePRM(lambda t: [0.9] * len(t.steps)), checkpointer=InMemorySaver(),
        limits=ServeLimits(),
    )  # fmt: skip
    hard = next(p for p in make_split("test", 16) if p.difficulty >= 3)
    cfg = {"configurable": {"thread_id": "t", "beam_search": {"n": 10**9}}}
    with pytest.raises(LimitError, match="n <= 256"):
        agent.invoke({"messages": [("human", hard.question)]}, cfg)
    assert policy.calls == 0
    cfg = {"configurable": {"thread_id": "t"}}
    out = agent.invoke({"messages": [("human", hard.question)]}, cfg)
    assert out["answer"] == hard.answer
    snap = agent.get_state(cfg, subgraphs=True)
    assert snap.values["usage"].policy_calls > 0
    with pytest.raises(InputError, match="new human message"):
        agent.invoke({"messages": []}, cfg)
    assert len(agent.get_state(cfg).values["messages"]) == len(out["messages"])


def test_router_agent_keeps_its_route_and_answers_each_turn():
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_tts.checkpoint import serializer
    from langchain_tts.routing import ROUTER_STATE_TYPES

    ex = load_example()
    prm = FakePRM(lambda t: [0.9] * len(t.steps))
    saver = InMemorySaver(serde=serializer(extra=ROUTER_STATE_TYPES))
    chat = ex.build_router_agent(OraclePolicy(), prm, checkpointer=saver, reuse_probe=False)
    cfg = {"configurable": {"thread_id": "chat"}}
    spent = 0.0
    for k, p in enumerate(make_split("test", 3)):
        out = chat.invoke({"messages": [("human", p.question)]}, cfg)
        assert out["route"] == "math"  # the app's own key, not the router's Route
        tts = out["tts"]
        assert tts["question"] == p.question and tts["answer"] == p.answer
        assert tts["route"]["node"] == f"{tts['difficulty']['bin']}_{tts['route']['strategy']}"
        assert out["messages"][-1].content == tts["solution"] and len(out["messages"]) == 2 * k + 2
        spent += tts["usage"]["flops"]
    assert out["tts_usage"]["flops"] == pytest.approx(spent)  # summed over the turns
    out = chat.invoke({"messages": [("human", "Hello there")]}, cfg)
    assert out["route"] == "other" and out["messages"][-1].content.startswith("I only")
    assert out["tts"]["question"] == make_split("test", 3)[-1].question  # the last math turn's


@pytest.mark.slow
@requires_weights
def test_agent_on_the_embedded_models(one_torch_thread: None):
    from langchain_tts.models import load_default

    ex = load_example()
    agent = ex.build_agent(*load_default(), beam_config={"n": 8, "beam_width": 4, "seed": 0})
    probs = make_split("test", 8)
    easy = probs[0]
    assert easy.difficulty == 1
    out = agent.invoke({"messages": [("human", easy.question)]})
    assert out["route"] == "direct" and out["answer"] == easy.answer
    assert out["usage"].prm_calls == 0
    hard = next(p for p in probs if p.difficulty >= 3)
    out = agent.invoke({"messages": [("human", hard.question)]})
    assert out["route"] == "careful" and out["answer"] is not None
    # searched step by step: one policy and one PRM call per search step
    assert out["usage"].prm_calls == out["usage"].policy_calls >= 2


@pytest.mark.slow
@requires_weights
def test_deployment_doc_python_blocks_run(one_torch_thread: None):
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "deployment_doc"}
    for i, block in enumerate(blocks):
        try:
            # dont_inherit: this file's `from __future__ import annotations` must not turn
            # the doc's annotations into strings (users run the blocks without it).
            code = compile(block, f"deployment.md[block {i}]", "exec", dont_inherit=True)
            exec(code, namespace)
        except Exception as e:  # pragma: no cover - the message names the failing block
            raise AssertionError(f"deployment.md block {i} failed: {e!r}\n{block}") from e


def test_doc_agent_matches_the_example():
    """The docs show the example's rule and graph shape; keep them from drifting apart."""
    doc = (ROOT / "docs" / "deployment.md").read_text()
    example = (ROOT / "integrations" / "agent_example.py").read_text()
    for needle in ['"planner"', '"direct"', '"careful"', "threshold: int = 3", '"cot"']:
        assert needle in doc and needle in example, needle
    assert "add|subtract|multiply|divide|plus|minus|times|sum|difference|product|quotient" in (doc)
