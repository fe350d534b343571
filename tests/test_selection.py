"""Best-of-N, majority and PRM-vote selection on hand-built candidates."""

from __future__ import annotations

import pytest

from langchain_tts import ConfigError, create_tts_graph
from langchain_tts.core.answers import extract_answer, normalize_answer
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.aggregate import aggregate_scores
from langchain_tts.strategies.selection import select_answer
from langchain_tts.testing import FakePolicy, FakePRM


def traj(answer: str | None, scores: list[float]) -> Trajectory:
    steps = [f"step {i}" for i in range(len(scores) - 1)]
    steps.append(f"\\boxed{{{answer}}}" if answer is not None else "I give up")
    return Trajectory(question="q", steps=steps, step_scores=scores, finished=True)


def test_prm_max_picks_highest_aggregate():
    cands = [traj("1", [0.9, 0.2]), traj("2", [0.5, 0.6]), traj("3", [0.1, 0.95])]
    assert select_answer(cands, "prm_max", "last")[1] == "3"
    assert select_answer(cands, "prm_max", "min")[1] == "2"
    # mean: 0.55, 0.55, 0.525 -> the tie between 1 and 2 goes to the first
    assert select_answer(cands, "prm_max", "mean")[1] == "1"


def test_majority_counts_normalised_answers_and_breaks_ties_by_score():
    cands = [
        traj("\\frac{1}{2}", [0.1]),
        traj("1/2", [0.2]),
        traj("7", [0.9]),
        traj("7.0", [0.3]),
        traj(None, [0.99]),
    ]
    chosen, answer, scored = select_answer(cands, "majority")
    # 1/2 and 7 both have 2 votes; 7's best score (0.9) wins the tie.
    assert normalize_answer(answer) == "7"
    assert chosen.score == pytest.approx(0.9)
    assert len(scored) == 5


def test_prm_vote_sums_scores_per_answer():
    cands = [traj("5", [0.4]), traj("5", [0.4]), traj("6", [0.7]), traj("5", [0.1])]
    assert select_answer(cands, "prm_vote")[1] == "5"  # 0.9 vs 0.7
    assert select_answer(cands, "prm_max")[1] == "6"


def test_no_answer_found_returns_best_trajectory_and_none():
    cands = [traj(None, [0.2]), traj(None, [0.8])]
    for method in ("majority", "prm_vote"):
        chosen, answer, _ = select_answer(cands, method)
        assert answer is None and chosen.step_scores == [0.8]
    assert select_answer([], "prm_max") == (None, None, [])
    with pytest.raises(ConfigError):
        select_answer(cands, "best")


@pytest.mark.parametrize(
    ("how", "expected"),
    [("min", 0.25), ("last", 1.0), ("mean", 1.75 / 3), ("prod", 0.125), ("geo_mean", 0.5)],
)
def test_aggregations(how: str, expected: float):
    assert aggregate_scores([0.5, 0.25, 1.0], how) == pytest.approx(expected)
    assert aggregate_scores([], how) == 0.0


def test_geo_mean_does_not_underflow():
    assert aggregate_scores([1e-5] * 400, "geo_mean") == pytest.approx(1e-5)
    assert aggregate_scores([0.0, 1.0], "geo_mean") == 0.0


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("the answer is 42.", "42"),
        ("no numbers", None),
        ("cut off \\boxed{12", "12"),
    ],
)
def test_extract_answer(text: str, answer: str | None):
    assert extract_answer(text) == answer


def test_normalize_answer():
    assert normalize_answer("x = \\dfrac{3}{4}") == "3/4"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("\\text{ 5 }") == "5"
    assert normalize_answer("2.00") == "2"
    assert normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"


def _sampler(answers: list[str]) -> FakePolicy:
    return FakePolicy(lambda p, i: f"work\n\n\\boxed{{{answers[i]}}}")


def test_best_of_n_graph_one_policy_call_one_prm_call():
    policy = _sampler(["3", "4", "4", "5"])
    prm = FakePRM(lambda t: [0.5, {"3": 0.9, "4": 0.3, "5": 0.1}[t.answer]])
    out = create_tts_graph(policy, prm, "best_of_n", {"n": 4}).invoke({"question": "q"})
    assert out["answer"] == "3"
    assert len(policy.calls) == 1 and policy.calls[0][:2] == (1, 4)
    assert not policy.calls[0][2].stop_at_step
    assert prm.calls == [3]  # the two identical "4" samples are scored once
    assert [len(c.steps) for c in out["candidates"]] == [2] * 4
    out = create_tts_graph(policy, prm, "weighted_vote", {"n": 4}).invoke({"question": "q"})
    assert out["answer"] == "3"  # 0.9 > 0.6
    out = create_tts_graph(policy, None, "majority_vote", {"n": 4}).invoke({"question": "q"})
    assert out["answer"] == "4"


def test_cot_is_one_greedy_sample_without_prm():
    policy = _sampler(["8"])
    out = create_tts_graph(policy, None, "cot").invoke({"question": "q"})
    assert out["answer"] == "8"
    assert policy.calls[0][2].temperature == 0.0 and policy.calls[0][1] == 1
    with pytest.raises(ConfigError, match="n"):
        create_tts_graph(policy, None, "cot", {"n": 2})
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_tts_graph(policy, None, "best_of_n")


# -- canonical votes: equal answers vote together -----------------------------------------


def test_equal_numbers_in_any_spelling_are_one_vote_key():
    from langchain_tts.core.answers import canonical_answer, numeric_value, vote_keys

    halves = ["0.5", "1/2", "\\frac12", "\\frac{1}{2}", "\\dfrac{1}{2}", "0.50", "2/4"]
    assert {canonical_answer(a) for a in halves} == {"1/2"}
    assert vote_keys(["-\\frac{3}{4}", "-0.75", "\\frac{-3}{4}", "1,000", "1000.0"]) == [
        "-3/4",
        "-3/4",
        "-3/4",
        "1000",
        "1000",
    ]
    assert numeric_value("x = 7") == 7 and numeric_value("\\sqrt{2}") is None
    assert numeric_value("1/0") is None and canonical_answer("1/0") == "1/0"
    assert vote_keys([None, "x", "y"]) == [None, "x", "y"]


def test_math_verify_merges_equal_symbolic_answers():
    pytest.importorskip("math_verify")
    from langchain_tts.core.answers import vote_keys

    keys = vote_keys(["\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}", "\\sqrt{3}", "\\frac{1}{\\sqrt{2}}"])
    assert keys[0] == keys[1] == keys[3] != keys[2]


@pytest.mark.parametrize("method", ["majority", "prm_vote"])
def test_votes_pool_equal_answers_written_differently(method: str):
    # 1/2 in three spellings (0.2 + 0.2 + 0.2) beats 3 twice (0.25 + 0.25) and 0.3 once.
    cands = [
        traj("0.5", [0.2]),
        traj("3", [0.25]),
        traj("\\frac12", [0.2]),
        traj("3", [0.25]),
        traj("1/2", [0.2]),
        traj("4", [0.3]),
    ]
    chosen, answer, _ = select_answer(cands, method)
    assert answer == "0.5" and chosen is not None  # the group's first, best-scored member


def test_weighted_vote_graph_pools_equal_answers():
    answers = ["0.5", "1/2", "\\frac{1}{2}", "7", "7"]
    policy = FakePolicy(lambda p, i: f"\\boxed{{{answers[i]}}}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    for strategy in ("majority_vote", "weighted_vote"):
        out = create_tts_graph(policy, prm, strategy, {"n": 5}).invoke({"question": "q"})
        assert out["answer"] == "0.5", strategy


def test_router_probe_agreement_pools_equal_answers():
    from langchain_tts.routing.difficulty import _majority

    cands = [traj("3", [0.5]), traj("0.5", [0.5]), traj("\\frac12", [0.5]), traj("1/2", [0.5])]
    assert _majority(cands) == ("0.5", pytest.approx(0.75))
