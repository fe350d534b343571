"""EquationPRM: a calculator LM checking each equation step (the embedded ``calculator``)."""

from __future__ import annotations

import pytest

from langchain_tts import create_tts_graph
from langchain_tts.core.types import Trajectory
from langchain_tts.eval.synthetic import make_split
from langchain_tts.models import load_default_policy, load_default_prm

pytestmark = pytest.mark.slow
Q = "Start with 537. Subtract 48. Add 21."


@pytest.fixture(scope="module")
def calc():
    return load_default_prm("calculator")


def test_right_results_score_higher_and_scores_cumulate(calc):
    right = Trajectory(question=Q, steps=["537-48=489", "489+21=510", "\\boxed{510}"])
    slip = Trajectory(question=Q, steps=["537-48=499", "499+21=520", "\\boxed{520}"])
    late = Trajectory(question=Q, steps=["537-48=489", "489+21=520", "\\boxed{520}"])
    spaced = Trajectory(question=Q, steps=["537 - 48 = 489", "489 + 21 = 510"])
    none = Trajectory(question=Q, steps=["I think it is big.", "\\boxed{9}"])
    res = calc.score([right, slip, late, spaced, none])
    r, s, lt, sp, nn = res.scores
    assert r[-1] > 0.5 and s[0] < 0.01 and s[-1] < 0.01
    assert lt[0] == pytest.approx(r[0]) and lt[1] < 0.01  # the slip is in step 2
    assert all(a >= b for a, b in zip(r, r[1:]))  # cumulative: never rises
    assert r[2] == r[1]  # a boxed answer is no equation: it adds nothing
    assert sp[:2] == pytest.approx(r[:2])  # spaces around operators do not matter
    assert nn == [1.0, 1.0]  # nothing to check
    assert res.usage.prm_calls == 1 and res.usage.prm_tokens > 0 and res.usage.prm_flops > 0


def test_best_of_n_with_the_calculator_end_to_end(calc):
    policy = load_default_policy("small")
    problems = make_split("test", 2)
    graph = create_tts_graph(policy, calc, "best_of_n", {"n": 4, "seed": 0})
    outs = graph.batch([{"question": p.question} for p in problems])
    for out in outs:
        assert out["answer"] is not None and len(out["candidates"]) == 4
        assert out["usage"].prm_calls == 1 and out["usage"].policy_calls == 1
