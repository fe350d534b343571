"""The embedded models say when a question is outside what they were trained on."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import langchain_tts.eval.synthetic as synthetic
from langchain_tts import create_tts_graph, load_default
from langchain_tts.models import task
from langchain_tts.models.task import (
    EMBEDDED_ARITHMETIC,
    domain_of,
    domain_warnings,
    in_embedded_domain,
    out_of_domain_reason,
)
from langchain_tts.testing import FakePolicy

FRANCE = "What is the capital of France?"
IN_DOMAIN = "Start with 14. Add 9. Multiply by 3. Subtract 17."


# -- the grammar checker ---------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_every_generated_question_is_in_the_domain(split: str):
    problems = synthetic.make_split(split, 400)
    assert {p.difficulty for p in problems} == set(range(task.MIN_OPS, task.MAX_OPS + 1))
    outside = [(p.question, out_of_domain_reason(p.question)) for p in problems]
    assert [o for o in outside if o[1] is not None] == []


@pytest.mark.parametrize(
    ("question", "why"),
    [
        (FRANCE, "does not begin with 'Start with N.'"),
        ("Compute 14 + 9 * 3.", "does not begin"),
        ("start with 14. add 9.", "does not begin"),
        ("Start with 14 and add 9.", "does not begin"),
        ("Start with 14.", "it has 0 operations"),
        ("Start with 14. Add 9", "'Add 9' is not an operation"),
        ("Start with 14. Add 9. What is the result?", "'What is the result?' is not an"),
        (IN_DOMAIN + " Then tell me a joke.", "'Then tell me a joke.' is not an"),
        ("Start with 14.  Add 9.", "'Add 9.' is not an operation"),
        ("Start with 14.\nAdd 9.", "'Add 9.' is not an operation"),
        ("Start with 14. Add 9. Square it.", "'Square it.' is not an"),
        ("Start with 2." + " Add 2." * 9, "it has 9 operations; the models were trained on 1 to 8"),
        ("Start with 14. Multiply by 7.", "'Multiply by 7.' is outside the trained operands"),
        ("Start with 14. Add 51.", "'Add 51.' is outside the trained operands (2 to 50 for +)"),
        ("Start with 14. Add 1.", "'Add 1.' is outside the trained operands"),
        ("Start with 14. Divide by 3.", "'Divide by 3.' does not divide 14 exactly"),
        ("Start with 14. Subtract 20.", "a running value (-6) leaves 0..999"),
        ("Start with 500. Multiply by 2.", "a running value (1000) leaves 0..999"),
        ("Start with 1000. Subtract 2.", "its start value 1000 is above 999"),
    ],
)
def test_questions_outside_the_grammar_say_why(question: str, why: str):
    reason = out_of_domain_reason(question)
    assert reason is not None and why in reason, reason
    assert not in_embedded_domain(question)


@pytest.mark.parametrize(
    "question",
    [
        IN_DOMAIN,
        "  Start with 3. Add 4.\n",  # graphs strip the question
        "Start with 0. Add 50. Multiply by 5. Divide by 2.",
        "Start with 999. Subtract 50.",
        "Start with 7." + " Add 2." * 8,
    ],
)
def test_questions_of_the_grammar_are_in_the_domain(question: str):
    assert out_of_domain_reason(question) is None and in_embedded_domain(question)


def test_synthetic_keeps_its_names_on_the_models_layer():
    for name in ("ArithmeticProblem", "Operation", "parse_question", "STEP_DELIMITER"):
        assert getattr(synthetic, name) is getattr(task, name)
    p = synthetic.make_split("test", 1)[0]
    assert synthetic.parse_question(p.question) == task.ArithmeticProblem(p.start, p.ops)
    assert synthetic.parse_question(FRANCE) is None


def test_the_models_layer_does_not_import_eval():
    tree = ast.parse(Path(task.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [
        m
        for m in imported
        if m.startswith("langchain_tts.") and not m.startswith("langchain_tts.core")
    ], imported


def test_warnings_need_a_marked_model(caplog: pytest.LogCaptureFixture):
    unmarked = FakePolicy(lambda p, i: "\\boxed{1}", name="mine")
    with caplog.at_level(logging.WARNING, logger="langchain_tts"):
        assert domain_warnings(FRANCE, unmarked) == []
        task.mark_domain(unmarked, EMBEDDED_ARITHMETIC)
        assert domain_of(unmarked) is EMBEDDED_ARITHMETIC
        assert domain_warnings(IN_DOMAIN, unmarked) == []
        (warning,) = domain_warnings(FRANCE, unmarked)
    assert warning.startswith("mine was trained only on arithmetic chains like 'Start with")
    assert [r.getMessage() for r in caplog.records] == [warning]


# -- through the embedded models -------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    return load_default()


def _warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "langchain_tts"]


@pytest.mark.slow
def test_embedded_models_are_marked(models):
    policy, prm = models
    assert domain_of(policy) is EMBEDDED_ARITHMETIC and domain_of(prm) is EMBEDDED_ARITHMETIC


@pytest.mark.slow
def test_in_domain_question_gets_no_warning(models, caplog: pytest.LogCaptureFixture):
    graph = create_tts_graph(*models, "best_of_n", {"n": 4, "seed": 0})
    with caplog.at_level(logging.WARNING, logger="langchain_tts"):
        out = graph.invoke({"question": IN_DOMAIN})
    assert out["warnings"] == [] and _warnings_logged(caplog) == []
    assert out["answer"] is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "config"),
    [
        ("cot", {}),
        ("best_of_n", {"n": 4, "seed": 0}),
        ("beam_search", {"n": 4, "beam_width": 2, "seed": 0, "max_steps": 6}),
        ("dvts", {"n": 4, "beam_width": 2, "seed": 0, "max_steps": 6}),
        ("mcts", {"seed": 0}),
        ("revision", {"seed": 0, "revise": "backtrack"}),
    ],
)
def test_out_of_domain_question_is_answered_with_a_warning(
    models, caplog: pytest.LogCaptureFixture, strategy: str, config: dict
):
    graph = create_tts_graph(*models, strategy, config)
    with caplog.at_level(logging.WARNING, logger="langchain_tts"):
        out = graph.invoke({"question": FRANCE})
    (warning,) = out["warnings"]
    assert "embedded-policy-small was trained only on arithmetic chains like" in warning
    assert "does not begin with 'Start with N.'" in warning
    assert "pass your own models to create_tts_graph" in warning
    assert _warnings_logged(caplog) == [warning]
    assert out["solution"]  # a warning, not a refusal


@pytest.mark.slow
def test_warning_reaches_chat_input_and_resets_on_a_reused_thread(models):
    from langgraph.checkpoint.memory import InMemorySaver

    graph = create_tts_graph(*models, "cot", checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t"}}
    out = graph.invoke({"messages": [("human", FRANCE)]}, thread)
    assert len(out["warnings"]) == 1 and out["messages"][-1].content == out["solution"]
    out = graph.invoke({"question": IN_DOMAIN}, thread)
    assert out["warnings"] == []


@pytest.mark.slow
def test_a_custom_policy_never_gets_the_warning(
    models, tiny_policy_dir: Path, caplog: pytest.LogCaptureFixture
):
    from langchain_tts.models.native import load_native
    from langchain_tts.policies.hf import HFPolicy

    _, embedded_prm = models
    fake = FakePolicy(lambda p, i: "\\boxed{Paris}")
    tiny = HFPolicy(*load_native(tiny_policy_dir))  # the embedded policy's class, not its weights
    with caplog.at_level(logging.WARNING, logger="langchain_tts"):
        for policy, prm in [(fake, None), (fake, embedded_prm), (tiny, None)]:
            out = create_tts_graph(policy, prm, "cot", {"max_step_tokens": 8}).invoke(
                {"question": FRANCE}
            )
            assert out["warnings"] == []
    assert _warnings_logged(caplog) == []
    assert domain_of(tiny) is None


@pytest.mark.slow
def test_router_graph_warns_too(models):
    from langchain_tts.routing.router import create_router_graph

    graph = create_router_graph(*models)
    (warning,) = graph.invoke({"question": FRANCE})["warnings"]
    assert "does not begin with 'Start with N.'" in warning
    assert graph.invoke({"question": "Start with 3. Add 4."})["warnings"] == []
