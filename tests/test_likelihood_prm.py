"""LikelihoodPRM: a causal LM's token likelihoods as cumulative step scores."""

import random

import pytest

from langchain_tts import create_tts_graph
from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.eval.synthetic import corrupt_steps, make_split
from langchain_tts.models import load_default_policy, load_default_prm
from langchain_tts.prms.likelihood import LikelihoodPRM, _cumulative_min


def test_cumulative_min_is_the_least_likely_token_so_far():
    # owner[0] is the first token, never predicted; -1 marks the prompt
    owner = [-1, -1, 0, 0, 1, 1, 2]
    logprobs = [-0.1, -0.2, -0.5, -3.0, -0.1, -1.0]  # one per token after the first
    import math

    assert _cumulative_min(logprobs, owner, 3) == pytest.approx(
        [math.exp(-0.5), math.exp(-3.0), math.exp(-3.0)]
    )


@pytest.fixture(scope="module")
def lik() -> LikelihoodPRM:
    prm = load_default_prm("likelihood")
    assert isinstance(prm, LikelihoodPRM)
    return prm


@pytest.mark.slow
def test_embedded_likelihood_prm_finds_the_nudged_result(lik):
    hard = [p for p in make_split("validation", 200) if p.difficulty >= 3][:20]
    trajs = []
    for i, p in enumerate(hard):
        trajs += [
            Trajectory(question=p.question, steps=p.gold_steps),
            Trajectory(question=p.question, steps=corrupt_steps(p, random.Random(i))),
        ]
    res = lik.score([*trajs, Trajectory(question="no steps yet")])
    assert res.usage.prm_calls == 1 and res.usage.prm_flops > 0
    assert res.scores[-1] == []
    for s in res.scores[:-1]:  # cumulative: never rises along a solution
        assert all(0 < b <= a <= 1 for a, b in zip(s, s[1:]))
    wins = sum(res.scores[2 * i][-1] > res.scores[2 * i + 1][-1] for i in range(len(hard)))
    assert wins >= 17  # 97/100 measured on the validation split


@pytest.mark.slow
def test_likelihood_prm_drives_a_search_graph(lik):
    policy = load_default_policy()
    graph = create_tts_graph(policy, lik, "beam_search", {"n": 4, "beam_width": 2, "seed": 0})
    out = graph.invoke({"question": "Start with 12. Add 7. Multiply by 2."})
    assert out["answer"] is not None
    assert out["usage"].prm_calls == out["usage"].policy_calls >= 2


def test_bad_construction_is_a_clear_error(lik):
    with pytest.raises(ConfigError, match="batch_size"):
        LikelihoodPRM(lik.model, lik.tokenizer, batch_size=0)
    with pytest.raises(ConfigError, match="step_delimiter"):
        LikelihoodPRM(lik.model, lik.tokenizer, step_delimiter="")
