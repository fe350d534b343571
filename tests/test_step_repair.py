"""Step repair: drafts, repairs of the rejected step, the stops, prefixes, the registry."""

from __future__ import annotations

import pytest

from langchain_tts import ConfigError, create_tts_graph
from langchain_tts.core.types import Trajectory
from langchain_tts.strategies.core import first_rejected
from langchain_tts.strategies.step_repair import cut_before
from langchain_tts.testing import FakePolicy, FakePRM


def slips(right_sample: int | None):
    """Three steps: ``a=1``, ``b=2`` and the boxed answer. Sample 0 (the greedy draft's
    index) slips to ``b=9`` at the second step; sample ``right_sample`` of a repair writes
    it right (None: every sample slips)."""

    def fn(p: Trajectory, i: int) -> str:
        k = len(p.steps)
        if k == 0:
            return "a=1"
        if k == 1:
            return "b=2" if i == right_sample else "b=9"
        return "\\boxed{" + p.steps[1][-1] + "}"

    return fn


def checker() -> FakePRM:
    """Scores like a verifier of each step: high until the first slip, low from there."""

    def fn(t: Trajectory) -> list[float]:
        out, ok = [], True
        for s in t.steps:
            ok = ok and "9" not in s
            out.append(0.9 if ok else 0.05)
        return out

    return FakePRM(fn)


def test_first_rejected_and_cut():
    t = Trajectory(question="q", steps=["x", "y", "z"], step_scores=[0.9, 0.2, 0.8])
    assert first_rejected(t, 0.5) == 1
    assert first_rejected(t, 0.5, start=2) is None  # steps before ``start`` are trusted
    head = cut_before(t, 1)
    assert head.steps == ["x"] and head.step_scores == [0.9] and not head.finished


def test_a_slip_is_repaired_in_one_call_and_the_rest_redrafted():
    policy, prm = FakePolicy(slips(right_sample=2)), checker()
    g = create_tts_graph(policy, prm, "step_repair", {"n": 4, "first_round": 4})
    steps = [u["step"] for u in g.stream({"question": "q"}, stream_mode="updates") if "step" in u]
    assert [s["phase"] for s in steps] == ["repair", "draft", "done"]
    # draft (whole rest, greedy), repair (n samples of one step), draft again
    assert [(c[0], c[1], c[2].stop_at_step) for c in policy.calls] == [
        (1, 1, False),
        (1, 4, True),
        (1, 1, False),
    ]
    assert policy.calls[0][2].temperature == 0.0 and policy.calls[1][2].temperature == 1.3
    assert prm.calls == [1, 2, 1]  # one PRM call a step; the repeated slip scored once
    out = g.invoke({"question": "q"})
    assert out["answer"] == "2" and out["stop_reason"] == "accepted"
    assert out["solution"].split("\n\n")[:2] == ["a=1", "b=2"]
    assert out["usage"].policy_calls == out["usage"].prm_calls == 3


def test_a_rejected_step_is_sampled_again_with_as_many_samples_as_so_far():
    policy, prm = FakePolicy(slips(right_sample=1)), checker()
    g = create_tts_graph(policy, prm, "step_repair", {"n": 16, "seed": 3})
    steps = [u["step"] for u in g.stream({"question": "q"}, stream_mode="updates") if "step" in u]
    assert [s["phase"] for s in steps] == ["repair", "repair", "repair", "draft", "done"]
    # 1 sample, 1 more (2 so far), 2 more (4 so far): the third call's second sample is right
    assert [c[1] for c in policy.calls] == [1, 1, 1, 2, 1]
    assert [s["tried"] for s in steps] == [0, 1, 2, 0, 0]
    assert len({c[2].seed for c in policy.calls[1:4]}) == 3  # each call draws new samples
    assert steps[-1]["repaired"] == 1
    out = g.invoke({"question": "q"})
    assert out["answer"] == "2" and out["stop_reason"] == "accepted"


def test_right_the_first_time_costs_one_greedy_solution():
    policy, prm = FakePolicy(slips(right_sample=0)), checker()
    out = create_tts_graph(policy, prm, "step_repair").invoke({"question": "q"})
    assert out["answer"] == "2" and out["stop_reason"] == "accepted"
    assert len(policy.calls) == 1 and prm.calls == [1]
    assert len(out["candidates"]) == 1


def test_a_step_no_sample_fixes_ends_the_search_after_n_samples():
    policy, prm = FakePolicy(slips(right_sample=None)), checker()
    out = create_tts_graph(policy, prm, "step_repair", {"n": 6}).invoke({"question": "q"})
    assert out["stop_reason"] == "unrepaired" and out["answer"] == "9"  # the draft's
    assert [c[1] for c in policy.calls] == [1, 1, 1, 2, 2]  # 1 + 1 + 2 + 2 (capped at n) = 6
    # repairs=0: greedy decoding that the PRM may reject but not repair
    out = create_tts_graph(policy, prm, "step_repair", {"repairs": 0}).invoke({"question": "q"})
    assert out["stop_reason"] == "max_repairs" and out["answer"] == "9"


def test_repairs_caps_the_steps_repaired():
    def two_slips(p: Trajectory, i: int) -> str:  # the draft slips at every step
        k = len(p.steps)
        if k == 3:
            return "\\boxed{" + p.steps[-1][-1] + "}"
        return f"s{k}=1" if i == 1 else f"s{k}=9"

    def repaired(cfg: dict) -> tuple[dict, int]:
        g = create_tts_graph(FakePolicy(two_slips), checker(), "step_repair", cfg)
        steps = [
            u["step"] for u in g.stream({"question": "q"}, stream_mode="updates") if "step" in u
        ]
        return g.invoke({"question": "q"}), steps[-1]["repaired"]

    out, n_repaired = repaired({"repairs": 2})
    assert out["stop_reason"] == "max_repairs" and n_repaired == 2
    out, n_repaired = repaired({"repairs": 3})
    assert out["stop_reason"] == "accepted" and n_repaired == 3
    assert out["solution"].split("\n\n")[:3] == ["s0=1", "s1=1", "s2=1"]


def test_prefix_steps_are_trusted_and_continued():
    policy, prm = FakePolicy(slips(right_sample=1)), checker()
    g = create_tts_graph(policy, prm, "step_repair", {"n": 2, "first_round": 2})
    out = g.invoke({"question": "q", "prefix_steps": ["a=1"]})
    assert out["answer"] == "2" and out["stop_reason"] == "accepted"
    assert out["solution"].startswith("a=1\n\nb=2")
    # a prefix step the PRM doubts is the caller's: it is not rejected
    out = g.invoke({"question": "q", "prefix_steps": ["a=9"]})
    assert out["stop_reason"] == "unrepaired"  # every later step scores low after it
    assert all(c.steps[0] == "a=9" for c in out["candidates"])


def test_start_repair_samples_the_step_after_the_prefix_without_a_draft():
    policy, prm = FakePolicy(slips(right_sample=0)), checker()
    cfg = {"start": "repair", "first_round": 2}
    out = create_tts_graph(policy, prm, "step_repair", cfg).invoke(
        {"question": "q", "prefix_steps": ["a=1"]}
    )
    # the caller saw the step after a=1 rejected: the first call samples it (2 candidates)
    assert [(c[1], c[2].stop_at_step) for c in policy.calls] == [(2, True), (1, False)]
    assert out["answer"] == "2" and out["stop_reason"] == "accepted"
    # a handed-over step the first round does not repair is sampled again, not drafted
    policy = FakePolicy(slips(right_sample=1))
    out = create_tts_graph(policy, prm, "step_repair", {"start": "repair"}).invoke(
        {"question": "q", "prefix_steps": ["a=1"]}
    )
    assert [(c[1], c[2].stop_at_step) for c in policy.calls] == [
        (1, True),
        (1, True),
        (2, True),
        (1, False),
    ]
    assert out["answer"] == "2" and out["stop_reason"] == "accepted"
    # repairs=0 repairs nothing: it drafts, as without start
    policy = FakePolicy(slips(right_sample=0))
    create_tts_graph(policy, prm, "step_repair", {**cfg, "repairs": 0}).invoke({"question": "q"})
    assert [c[2].stop_at_step for c in policy.calls] == [False]


async def test_messages_input_budget_and_async():
    policy, prm = FakePolicy(slips(right_sample=2)), checker()
    g = create_tts_graph(policy, prm, "step_repair", {"n": 4, "first_round": 4})
    out = await g.ainvoke({"messages": [("human", "q")]})
    assert out["messages"][-1].type == "ai" and out["messages"][-1].content == out["solution"]
    # a call reserves 64 tokens per sample up front: 100 pays for the draft, not the repair
    cap = 100
    out = await g.ainvoke({"question": "q"}, {"configurable": {"max_tokens": cap}})
    assert out["stop_reason"] == "budget" and out["usage"].tokens <= cap
    assert out["usage"].policy_calls == 1 and out["answer"] == "9"  # the rejected draft's


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"n": 0}, "n"),
        ({"first_round": 0}, "first_round"),
        ({"reject_below": 1.5}, "reject_below"),
        ({"repairs": -1}, "repairs"),
        ({"draft_temperature": -0.1}, "draft_temperature"),
        ({"start": "middle"}, "start"),
        ({"repair": 3}, "repair"),
    ],
)
def test_bad_config_is_a_clear_error(cfg: dict, field: str):
    with pytest.raises(ConfigError, match=field):
        create_tts_graph(FakePolicy(slips(1)), checker(), "step_repair", cfg)
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_tts_graph(FakePolicy(slips(1)), None, "step_repair")


def test_registered_with_a_budget_knob_and_a_price():
    from langchain_tts.limits import DEFAULT_MAXIMA
    from langchain_tts.strategies import STRATEGY_SPECS, budget_config

    spec = STRATEGY_SPECS["step_repair"]
    assert budget_config("step_repair", 8) == {"n": 8}
    price = lambda **cfg: spec.cost_units(spec.validated({"n": 8, **cfg}), 4.0, 0)  # noqa: E731
    # a typical run: a draft, the first rounds of one rejected step (4 samples of one of 4
    # steps), half a redraft
    assert price() == (2.5, 2.5)
    assert price(start="repair") == (2.0, 2.0)  # the step sampled at once, the rest redrafted
    assert price(first_round=8) == (3.5, 3.5)  # all 8 in the first round
    assert price(n=2) == (2.0, 2.0)  # never more than n
    assert DEFAULT_MAXIMA["repairs"] == 64  # a served client cannot ask for more
    assert DEFAULT_MAXIMA["first_round"] == DEFAULT_MAXIMA["n"]


@pytest.mark.slow
def test_embedded_models_repair_the_slip_greedy_decoding_makes():
    from langchain_tts import load_default

    policy, prm = load_default()
    q = "Start with 5. Multiply by 4. Divide by 2. Multiply by 5. Multiply by 3. Add 9. Multiply by 4."
    cot = create_tts_graph(policy, None, "cot", {"temperature": 0.0}).invoke({"question": q})
    assert cot["answer"] == "716"  # greedy: 150 + 9 = 179
    out = create_tts_graph(policy, prm, "step_repair", {"seed": 0}).invoke({"question": q})
    assert out["answer"] == "636" and out["stop_reason"] == "accepted"
    assert "150+9=159" in out["solution"]
    assert out["usage"].policy_calls == out["usage"].prm_calls >= 3

    # handed the steps before the slip, and told the next one was rejected, it samples that
    # step at once instead of drafting the slip again first
    steps = cot["solution"].split("\n\n")
    prefix = steps[: next(i for i, st in enumerate(steps) if "150+9" in st)]
    drafts_first = {}
    generate = policy.agenerate
    for start in ("draft", "repair"):
        kinds: list[bool] = []  # per policy call: a whole-rest draft (not one step)?

        async def recording(parents, n, params, _kinds=kinds):
            _kinds.append(not params.stop_at_step)
            return await generate(parents, n, params)

        policy.agenerate = recording
        try:
            g = create_tts_graph(policy, prm, "step_repair", {"seed": 0, "start": start})
            out = g.invoke({"question": q, "prefix_steps": prefix})
        finally:
            del policy.agenerate  # the class's method again
        assert out["answer"] == "636" and out["solution"].startswith("\n\n".join(prefix))
        drafts_first[start] = kinds[0]
    assert drafts_first == {"draft": True, "repair": False}
