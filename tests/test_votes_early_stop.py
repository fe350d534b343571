"""Early-stopping votes (adaptive consistency): rounds of samples until the vote is decided."""

from __future__ import annotations

import math
from itertools import count

import pytest

from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.graph import create_tts_graph
from langchain_tts.strategies.best_of_n import (
    MajorityVoteConfig,
    WeightedVoteConfig,
    beta_lead_probability,
    votes_decided,
)
from langchain_tts.testing import FakePolicy, FakePRM


def _exact_beta_tail(a: int, b: int) -> float:
    """P(p > 1/2), p ~ Beta(a, b), integers: P(Binomial(a + b - 1, 1/2) < a)."""
    n = a + b - 1
    return sum(math.comb(n, k) for k in range(a)) / 2**n


@pytest.mark.parametrize(("lead", "second"), [(0, 0), (4, 0), (3, 1), (10, 3), (7, 6)])
def test_beta_lead_probability_matches_the_closed_form(lead: int, second: int) -> None:
    got = beta_lead_probability(lead, second)
    assert got == pytest.approx(_exact_beta_tail(lead + 1, second + 1), abs=1e-9)


def _sols(*answers: str) -> list[Trajectory]:
    return [
        Trajectory(question="q", steps=[f"\\boxed{{{a}}}"], finished=True, step_scores=[0.9])
        for a in answers
    ]


def test_a_vote_is_decided_when_the_rest_cannot_overtake_the_leader() -> None:
    strict = MajorityVoteConfig(n=8, early_stop=True, stop_confidence=1.0)
    assert votes_decided(_sols("1", "1", "1", "1", "2"), strict, remaining=3) is False
    assert votes_decided(_sols("1", "1", "1", "1", "1"), strict, remaining=3) is True
    # the Beta criterion stops earlier: 4 of 4 agreeing is P = 1 - 2^-5 > 0.95
    beta = MajorityVoteConfig(n=16, early_stop=True)
    assert votes_decided(_sols("1", "1", "1", "1"), beta, remaining=12) is True
    assert votes_decided(_sols("1", "1", "1", "2"), beta, remaining=12) is False


def test_equal_answers_written_differently_count_as_one_in_the_stop_rule() -> None:
    strict = MajorityVoteConfig(n=8, early_stop=True, stop_confidence=1.0)
    # 0.5, 1/2 and \\frac12 are one answer with 5 votes: 3 more cannot overtake it
    assert votes_decided(_sols("0.5", "1/2", "\\frac12", "0.5", "1/2"), strict, remaining=3)
    assert not votes_decided(_sols("0.5", "1/2", "\\frac12", "2", "2"), strict, remaining=3)


def _policy(answers: dict[int, str] | None = None) -> FakePolicy:
    n = count()

    def step(_t: Trajectory, _i: int) -> str:
        k = next(n)
        return f"2 + 2 = 4\n\n\\boxed{{{(answers or {}).get(k, '4')}}}"

    return FakePolicy(step)


def test_majority_vote_stops_after_the_first_unanimous_round() -> None:
    policy = _policy()
    graph = create_tts_graph(policy, None, "majority_vote", {"n": 16, "early_stop": True})
    out = graph.invoke({"question": "What is 2 + 2?"})
    assert out["answer"] == "4"
    assert [n for _, n, _ in policy.calls] == [4]  # one round of round_size samples
    assert len(out["candidates"]) == 4


def test_a_split_vote_samples_on_and_never_exceeds_n() -> None:
    policy = _policy({k: "5" for k in range(0, 16, 2)})  # half the samples disagree
    graph = create_tts_graph(
        policy, None, "majority_vote", {"n": 10, "early_stop": True, "round_size": 4}
    )
    out = graph.invoke({"question": "What is 2 + 2?"})
    assert [n for _, n, _ in policy.calls] == [4, 4, 2]
    assert len(out["candidates"]) == 10


def test_without_early_stop_all_samples_come_in_one_call() -> None:
    policy = _policy()
    create_tts_graph(policy, None, "majority_vote", {"n": 16}).invoke({"question": "2 + 2?"})
    assert [n for _, n, _ in policy.calls] == [16]


def test_weighted_vote_scores_each_round_once() -> None:
    policy = _policy()
    prm = FakePRM(lambda t: [0.9] * len(t.steps))
    cfg = WeightedVoteConfig(n=16, early_stop=True)
    out = create_tts_graph(policy, prm, "weighted_vote", cfg).invoke({"question": "2 + 2?"})
    assert out["answer"] == "4"
    # Beta(0.9 * 4 + 1, 1): P = 1 - 2^-4.6 ~ 0.96: one round, scored in the round only
    assert [n for _, n, _ in policy.calls] == [4]
    assert prm.calls == [1]  # four identical samples: scored once
    assert out["usage"].prm_calls == 1


def test_early_stop_with_prm_max_is_a_config_error() -> None:
    policy = _policy()
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    with pytest.raises(ConfigError, match="early_stop applies to votes"):  # when built
        create_tts_graph(policy, prm, "best_of_n", {"n": 8, "early_stop": True})
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 8})
    with pytest.raises(ConfigError, match="early_stop applies to votes"):  # or per run
        graph.invoke({"question": "2 + 2?"}, context={"early_stop": True})


@pytest.mark.slow
def test_early_stop_on_the_embedded_models_samples_fewer_and_answers_the_same() -> None:
    from langchain_tts import load_default

    policy, prm = load_default()
    q = {"question": "Start with 5. Add 6."}  # easy: the first round agrees
    full = create_tts_graph(policy, prm, "weighted_vote", {"n": 16, "seed": 0}).invoke(q)
    early = create_tts_graph(
        policy, prm, "weighted_vote", {"n": 16, "seed": 0, "early_stop": True}
    ).invoke(q)
    assert full["answer"] == early["answer"] == "11"
    assert len(early["candidates"]) < len(full["candidates"]) == 16
    assert early["usage"].policy_generated_tokens < full["usage"].policy_generated_tokens
