"""Beam search logic, pinned exactly with a scripted policy and PRM."""

from __future__ import annotations

import zlib

import pytest

from langchain_tts import ConfigError, PRMOutputError, create_tts_graph
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.aggregate import aggregate_scores
from langchain_tts.testing import FakePolicy, FakePRM


def _h(s: str) -> float:
    """A deterministic pseudo-random score in [0, 1) per step text."""
    return (zlib.crc32(s.encode()) % 1000) / 1000


def tree_policy(depth: int) -> FakePolicy:
    """Step k of sample i under a prefix is named by the path; at ``depth`` it boxes an answer."""

    def step(prefix: Trajectory, i: int) -> str:
        k = len(prefix.steps)
        path = "/".join(prefix.steps)
        if k >= depth:
            return f"\\boxed{{{zlib.crc32(path.encode()) % 3}}}"
        return f"{path}>{i}" if path else f"r{i}"

    return FakePolicy(step)


def hash_prm() -> FakePRM:
    return FakePRM(lambda t: [_h(s) for s in t.steps])


@pytest.mark.parametrize("aggregation", ["last", "min", "mean", "prod", "geo_mean"])
@pytest.mark.parametrize(("n", "width", "k"), [(8, 2, None), (16, 4, None), (6, 3, 2)])
def test_keeps_exactly_top_k_each_step(aggregation: str, n: int, width: int, k: int | None):
    policy, prm = tree_policy(depth=4), hash_prm()
    cfg = {"n": n, "beam_width": width, "samples_per_beam": k, "aggregation": aggregation}
    graph = create_tts_graph(policy, prm, "beam_search", cfg)
    keep = width if k else n // width
    expand_each = k if k else width
    prev: list[Trajectory] | None = None
    steps_seen = 0
    distinct: list[int] = []  # children per step the PRM must see: identical ones once
    for update in graph.stream({"question": "q"}, stream_mode="updates"):
        if "step" not in update:
            continue
        active = update["step"]["active"]
        steps_seen += 1
        # Rebuild every child of the previous beams and rank them ourselves.
        parents = prev if prev is not None else [Trajectory(question="q")]
        n_each = expand_each if prev is not None else keep * expand_each
        children = []
        for p in parents:
            for i in range(n_each):
                t = Trajectory(question="q", steps=[*p.steps, policy.fn(p, i)])
                children.append(t)
        distinct.append(len({tuple(c.steps) for c in children}))
        unfinished = [c for c in children if "boxed" not in c.steps[-1]]
        ranked = sorted(
            unfinished, key=lambda c: -aggregate_scores([_h(s) for s in c.steps], aggregation)
        )
        assert [a.steps for a in active] == [c.steps for c in ranked[:keep]]
        assert all(len(a.step_scores) == len(a.steps) for a in active)
        prev = active
    assert steps_seen == 5  # 4 reasoning steps + the boxed one
    # One policy call and one PRM call per search step, each batching all beams.
    assert len(policy.calls) == len(prm.calls) == 5
    assert policy.calls[0][:2] == (1, keep * expand_each)
    assert all(c[:2] == (keep, expand_each) for c in policy.calls[1:])
    assert prm.calls == distinct and max(distinct) == keep * expand_each


def test_finished_beams_are_set_aside_and_search_stops_when_all_finish():
    # Every sample boxes an answer at step 2: all beams finish early, long before max_steps.
    policy = FakePolicy(lambda p, i: "\\boxed{7}" if p.steps else f"a{i}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    out = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2}).invoke(
        {"question": "q"}
    )
    assert out["answer"] == "7"
    assert out["stop_reason"] in ("all_finished", "enough_finished")
    assert len(out["candidates"]) == 4
    assert all(c.finished for c in out["candidates"])
    assert len(policy.calls) == 2


def test_selects_best_finished_by_aggregate_and_reports_usage():
    scores = {"good": 0.9, "bad": 0.2, "\\boxed{1}": 0.9, "\\boxed{2}": 0.95}

    def step(p: Trajectory, i: int) -> str:
        if not p.steps:
            return ["good", "bad"][i % 2]
        return "\\boxed{1}" if p.steps[0] == "good" else "\\boxed{2}"

    prm = FakePRM(lambda t: [scores[s] for s in t.steps])
    cfg = {"n": 4, "beam_width": 2, "aggregation": "min"}
    out = create_tts_graph(FakePolicy(step), prm, "beam_search", cfg).invoke({"question": "q"})
    # "bad" beams are dropped at step 1 (keep 2 of 4: both "good"), so only answer 1 exists.
    assert out["answer"] == "1"
    assert out["candidates"][0].score == pytest.approx(0.9)
    u = out["usage"]
    assert u.policy_calls == 2 and u.prm_calls == 2
    assert u.flops == u.policy_flops + u.prm_flops > 0


def test_forty_step_search_survives_small_recursion_limit():
    policy = FakePolicy(lambda p, i: "\\boxed{3}" if len(p.steps) >= 40 else f"s{i}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    g = create_tts_graph(policy, prm, "beam_search", {"n": 2, "beam_width": 2, "max_steps": 60})
    out = g.invoke({"question": "q"}, {"recursion_limit": 5})
    assert out["answer"] == "3"
    assert len(out["candidates"][0].steps) == 41
    assert len(policy.calls) == 41


def test_max_steps_cuts_search_and_keeps_active_beams_as_candidates():
    policy = FakePolicy(lambda p, i: f"s{len(p.steps)}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    g = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2, "max_steps": 3})
    out = g.invoke({"question": "q"})
    assert out["stop_reason"] == "max_steps" or out["stop_reason"] == "all_finished"
    assert all(len(c.steps) == 3 for c in out["candidates"])
    assert out["answer"] == "2"  # last-number fallback: "s2"


def test_call_time_configurable_overrides():
    policy, prm = tree_policy(depth=2), hash_prm()
    g = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    g.invoke({"question": "q"}, {"configurable": {"n": 8, "thread_id": "ignored"}})
    assert policy.calls[0][1] == 8
    with pytest.raises(ConfigError, match="beam_width"):
        g.invoke({"question": "q"}, {"configurable": {"beam_width": 0}})


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"beam_width": 0}, "beam_width"),
        ({"n": 2, "beam_width": 4}, "n"),
        ({"n": 6, "beam_width": 4}, "multiple"),
        ({"max_steps": 0}, "max_steps"),
        ({"aggregation": "median"}, "aggregation"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_is_a_clear_error(cfg: dict, field: str):
    with pytest.raises(ConfigError, match=field):
        create_tts_graph(tree_policy(2), hash_prm(), "beam_search", cfg)


def test_unknown_strategy_and_missing_prm():
    with pytest.raises(ConfigError, match="available"):
        create_tts_graph(tree_policy(2), hash_prm(), "beam_serch")
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_tts_graph(tree_policy(2), None, "beam_search")


@pytest.mark.parametrize("bad", [{"question": ""}, {"question": "   "}, {}, {"question": 3}])
def test_bad_question_is_a_clear_error(bad: dict):
    g = create_tts_graph(tree_policy(2), hash_prm(), "beam_search", {"n": 2, "beam_width": 2})
    with pytest.raises(ValueError, match="question"):
        g.invoke(bad)


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.1, float("inf")])
def test_prm_returning_nan_or_out_of_range_is_a_typed_error(value: float):
    prm = FakePRM(lambda t: [value] * len(t.steps))
    g = create_tts_graph(tree_policy(2), prm, "beam_search", {"n": 2, "beam_width": 2})
    with pytest.raises(PRMOutputError, match="step 0"):
        g.invoke({"question": "q"})


def test_prm_returning_wrong_number_of_scores():
    prm = FakePRM(lambda t: [0.5])
    g = create_tts_graph(tree_policy(3), prm, "beam_search", {"n": 2, "beam_width": 2})
    with pytest.raises(PRMOutputError, match="step scores"):
        g.invoke({"question": "q"})


async def test_async_and_messages_input():
    g = create_tts_graph(tree_policy(1), hash_prm(), "beam_search", {"n": 2, "beam_width": 2})
    out = await g.ainvoke({"messages": [("human", "what is it?")]})
    assert out["messages"][-1].type == "ai"
    assert "boxed" in out["messages"][-1].content
    assert out["answer"] is not None
