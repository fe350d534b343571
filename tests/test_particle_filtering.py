"""Particle filtering: weights and resampling by hand, the search step by step, budgets."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from langchain_tts import ConfigError, create_tts_graph
from langchain_tts.core.types import Trajectory
from langchain_tts.strategies.particle_filtering import (
    ParticleFilteringConfig,
    resample,
    weights,
)
from langchain_tts.testing import FakePolicy, FakePRM


def scored(*scores: float, finished: bool = False) -> Trajectory:
    steps = [f"s{i}" for i in range(len(scores))]
    return Trajectory(question="q", steps=steps, step_scores=list(scores), finished=finished)


def test_weights_are_a_softmax_of_score_logits():
    # logit(.9) = 2.197225, logit(.5) = 0, logit(.1) = -2.197225
    ps = [scored(0.2, 0.9), scored(0.5), scored(0.1)]
    e = [math.exp(2.197225), 1.0, math.exp(-2.197225)]
    assert weights(ps, ParticleFilteringConfig()) == pytest.approx([x / sum(e) for x in e])
    # temperature 2 halves the logits; aggregation picks the score the logit is taken of
    e2 = [math.exp(1.098612), 1.0, math.exp(-1.098612)]
    hot = ParticleFilteringConfig(weight_temperature=2.0)
    assert weights(ps, hot) == pytest.approx([x / sum(e2) for x in e2])
    mins = weights(ps, ParticleFilteringConfig(aggregation="min"))  # .2, .5, .1
    assert mins[1] > mins[0] > mins[2]
    # scores of exactly 0 and 1 are clipped, not infinite
    assert sum(weights([scored(1.0), scored(0.0)], ParticleFilteringConfig())) == 1.0


class FixedRandom(random.Random):
    def random(self) -> float:
        return 0.5


def test_systematic_resampling_by_hand():
    # k = 4 points at (0.5 + j) / 4 = .125 .375 .625 .875 through cumulative .1 .4 .9 1.0
    assert resample([0.1, 0.3, 0.5, 0.1], 4, "systematic", FixedRandom()) == [1, 1, 2, 2]
    assert resample([1.0], 3, "systematic", FixedRandom()) == [0, 0, 0]
    assert resample([0.0, 1.0], 2, "systematic", FixedRandom()) == [1, 1]


@pytest.mark.parametrize("how", ["multinomial", "systematic"])
def test_resampling_follows_the_weights(how: str):
    ws = [0.1, 0.6, 0.3]
    counts: Counter[int] = Counter()
    rng = random.Random(0)
    for _ in range(2000):
        counts.update(resample(ws, 5, how, rng))
    total = sum(counts.values())
    for i, w in enumerate(ws):
        assert counts[i] / total == pytest.approx(w, abs=0.02)
    assert resample(ws, 5, how, random.Random(7)) == resample(ws, 5, how, random.Random(7))


# -- the search on a scripted policy -----------------------------------------------------


def adder(p: Trajectory, i: int) -> str:
    """Sample i under a prefix: two working steps, then an answer; good paths start with 'g'."""
    k = len(p.steps)
    if k == 0:
        return "good" if i % 2 == 0 else "bad"
    if k < 3:
        return f"{p.steps[0]}{k}.{i}"
    return "\\boxed{1}" if p.steps[0] == "good" else "\\boxed{2}"


def good_prm() -> FakePRM:
    return FakePRM(lambda t: [0.9 if t.steps[0] == "good" else 0.2 for _ in t.steps])


def test_one_policy_and_one_prm_call_per_step_until_every_particle_finished():
    policy, prm = FakePolicy(adder), good_prm()
    g = create_tts_graph(policy, prm, "particle_filtering", {"n": 6, "seed": 0})
    updates = [u["step"] for u in g.stream({"question": "q"}, stream_mode="updates") if "step" in u]
    assert [u["step"] for u in updates] == [1, 2, 3, 4]  # 3 working steps + the answer
    assert policy.calls[0][:2] == (1, 6)  # the first step samples n particles
    assert all(c[:2] == (6, 1) for c in policy.calls[1:])  # then one step per particle
    assert prm.calls == [2, 1, 1, 1]  # one PRM call a step; identical particles scored once
    assert all(len(u["active"]) == 6 for u in updates)
    last = updates[-1]["active"]
    assert all(p.finished for p in last)
    # weights .9 vs .2 (logits 2.2 vs -1.4): "bad" particles die out within a few draws
    assert sum(p.steps[0] == "good" for p in last) >= 5
    out = g.invoke({"question": "q"})
    assert out["answer"] == "1" and out["stop_reason"] == "all_finished"
    assert len({id(c) for c in out["candidates"]}) == len(out["candidates"])


def test_finished_particles_stay_and_are_not_expanded():
    # sample 0 answers at once; the others think for two steps first
    def policy_fn(p: Trajectory, i: int) -> str:
        if not p.steps:
            return "\\boxed{7}" if i == 0 else f"t{i}"
        return "\\boxed{3}" if len(p.steps) >= 2 else p.steps[0] + "+"

    policy = FakePolicy(policy_fn)
    prm = FakePRM(lambda t: [0.99 if t.steps[-1] == "\\boxed{7}" else 0.5 for _ in t.steps])
    cfg = {"n": 4, "seed": 1, "weight_temperature": 0.05}  # nearly greedy: all copy boxed 7
    out = create_tts_graph(policy, prm, "particle_filtering", cfg).invoke({"question": "q"})
    assert out["answer"] == "7" and out["stop_reason"] == "all_finished"
    assert [c[:2] for c in policy.calls] == [(1, 4)]  # nothing unfinished was left
    assert len(out["candidates"]) == 1  # four copies of one particle: one candidate


def test_seeded_runs_repeat_and_seeds_differ():
    def run(seed: int, how: str) -> list[list[str]]:
        prm = FakePRM(lambda t: [(hash(s) % 97) / 100 + 0.01 for s in t.steps])
        cfg = {"n": 5, "seed": seed, "resampling": how}
        out = create_tts_graph(FakePolicy(adder), prm, "particle_filtering", cfg).invoke(
            {"question": "q"}
        )
        return [c.steps for c in out["candidates"]]

    for how in ("multinomial", "systematic"):
        assert run(3, how) == run(3, how)
    assert len({str(run(s, "multinomial")) for s in range(6)}) > 1


def test_max_steps_stops_the_search():
    policy = FakePolicy(lambda p, i: f"step{len(p.steps)}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    out = create_tts_graph(policy, prm, "particle_filtering", {"n": 3, "max_steps": 5}).invoke(
        {"question": "q"}
    )
    assert out["stop_reason"] in {"max_steps", "all_finished"}
    assert len(policy.calls) == 5 and all(len(c.steps) == 5 for c in out["candidates"])


async def test_messages_input_and_usage():
    policy, prm = FakePolicy(adder), good_prm()
    g = create_tts_graph(policy, prm, "particle_filtering", {"n": 4, "seed": 0})
    out = await g.ainvoke({"messages": [("human", "what?")]})
    assert out["messages"][-1].type == "ai" and out["messages"][-1].content == out["solution"]
    assert out["question"] == "what?"
    u = out["usage"]
    assert u.policy_calls == u.prm_calls == 4 and u.flops > 0


def test_a_budget_stops_the_search_gracefully():
    policy, prm = FakePolicy(adder), good_prm()
    g = create_tts_graph(policy, prm, "particle_filtering", {"n": 4, "seed": 0})
    free = g.invoke({"question": "q"})
    # each step reserves 64 tokens per sample up front: 350 pays for three of the 4 steps
    cap = 350
    out = g.invoke({"question": "q"}, {"configurable": {"max_tokens": cap}})
    assert out["stop_reason"] == "budget" and out["usage"].tokens <= cap
    assert out["usage"].policy_calls == 3 < free["usage"].policy_calls
    assert out["candidates"] and out["answer"] is not None  # from the best partial particles


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"n": 0}, "n"),
        ({"weight_temperature": 0.0}, "weight_temperature"),
        ({"resampling": "stratified"}, "resampling"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_is_a_clear_error(cfg: dict, field: str):
    with pytest.raises(ConfigError, match=field):
        create_tts_graph(FakePolicy(adder), good_prm(), "particle_filtering", cfg)
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_tts_graph(FakePolicy(adder), None, "particle_filtering")


def test_registered_with_a_route_and_a_budget_knob():
    from langchain_tts.strategies import STRATEGY_SPECS, budget_config

    spec = STRATEGY_SPECS["particle_filtering"]
    assert budget_config("particle_filtering", 8) == {"n": 8}
    gens, scored_ = spec.cost_units(spec.validated({"n": 4}), 5.0, 0)
    assert gens == 24 and scored_ == 12


@pytest.mark.slow
def test_embedded_models_solve_with_particle_filtering():
    from langchain_tts import load_default
    from langchain_tts.eval.synthetic import make_split

    policy, prm = load_default()
    g = create_tts_graph(policy, prm, "particle_filtering", {"n": 4, "seed": 0})
    problems = make_split("test", 2)
    outs = g.batch([{"question": p.question} for p in problems])
    assert outs[0]["answer"] == problems[0].answer  # one operation: always solved
    for o in outs:
        assert o["stop_reason"] == "all_finished" and o["answer"] is not None
        assert all(c.finished for c in o["candidates"])
        assert o["usage"].policy_calls == o["usage"].prm_calls >= 2
