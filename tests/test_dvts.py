"""DVTS logic, pinned exactly with a scripted policy and PRM."""

from __future__ import annotations

import zlib

import pytest

from langchain_tts import ConfigError, create_tts_graph
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.aggregate import aggregate_scores
from langchain_tts.testing import FakePolicy, FakePRM


def _h(s: str) -> float:
    """A deterministic pseudo-random score in [0, 1) per step text."""
    return (zlib.crc32(s.encode()) % 1000) / 1000


def tree_policy(depth: int) -> FakePolicy:
    """Step names spell the path (``r3``, ``r3>1``, ...); at ``depth`` it boxes an answer."""

    def step(prefix: Trajectory, i: int) -> str:
        k = len(prefix.steps)
        path = "/".join(prefix.steps)
        if k >= depth:
            return f"\\boxed{{{zlib.crc32(path.encode()) % 3}}}"
        return f"{path}>{i}" if path else f"r{i}"

    return FakePolicy(step)


def hash_prm(flip: frozenset[int] = frozenset()) -> FakePRM:
    """Hash scores; in the subtrees listed in ``flip`` every score becomes ``1 - score``
    (subtree s owns the first steps r{2s}, r{2s+1} when beam_width is 2)."""

    def fn(t: Trajectory) -> list[float]:
        flipped = bool(t.steps) and int(t.steps[0][1:]) // 2 in flip
        return [1.0 - _h(s) if flipped else _h(s) for s in t.steps]

    return FakePRM(fn)


def _subtree_updates(graph, question: str = "q") -> list[list[Trajectory]]:
    return [
        u["step"]["subtrees"]
        for u in graph.stream({"question": question}, stream_mode="updates")
        if "step" in u
    ]


@pytest.mark.parametrize("aggregation", ["last", "min", "mean", "prod"])
@pytest.mark.parametrize(("n", "width"), [(8, 2), (12, 4), (6, 3)])
def test_each_subtree_greedily_follows_its_own_best_child(aggregation: str, n: int, width: int):
    policy, prm = tree_policy(depth=3), hash_prm()
    cfg = {"n": n, "beam_width": width, "aggregation": aggregation}
    graph = create_tts_graph(policy, prm, "dvts", cfg)
    prev: list[Trajectory] | None = None
    updates = _subtree_updates(graph)
    for subtrees in updates:
        assert len(subtrees) == n // width
        for s, leaf in enumerate(subtrees):
            if prev is None:  # step 0: subtree s owns samples [s*width, (s+1)*width) of the root
                kids = [
                    [policy.fn(Trajectory(question="q"), i)]
                    for i in range(s * width, (s + 1) * width)
                ]
            elif prev[s].finished:
                assert leaf.steps == prev[s].steps  # finished subtrees stop
                continue
            else:
                kids = [[*prev[s].steps, policy.fn(prev[s], i)] for i in range(width)]
            # Greedy by the subtree's own children only; ties keep generation order.
            best = max(
                range(width),
                key=lambda j: (aggregate_scores([_h(x) for x in kids[j]], aggregation), -j),
            )
            assert leaf.steps == kids[best]
            assert len(leaf.step_scores) == len(leaf.steps)
        prev = subtrees
    assert len(updates) == 4  # 3 reasoning steps + the boxed one
    assert all(t.finished for t in updates[-1])


def test_subtrees_are_independent():
    # Invert the scores inside some subtrees: their paths change, the others' must not.
    cfg = {"n": 8, "beam_width": 2}
    base = _subtree_updates(create_tts_graph(tree_policy(4), hash_prm(), "dvts", cfg))
    for flip in ({1}, {0, 3}, {2}):
        other = _subtree_updates(
            create_tts_graph(tree_policy(4), hash_prm(frozenset(flip)), "dvts", cfg)
        )
        assert len(other) == len(base) == 5
        for s in range(4):
            same = all(a[s].steps == b[s].steps for a, b in zip(base, other))
            assert same == (s not in flip), (flip, s)


def test_subtree_path_depends_on_its_own_scores():
    # Sanity for the independence test: a bias that flips subtree 1's ranking does change it.
    def prm_fn(flip: bool) -> FakePRM:
        def fn(t: Trajectory) -> list[float]:
            out = []
            for s in t.steps:
                if "boxed" in s:
                    out.append(0.5)
                    continue
                last = s.rsplit(">", 1)[-1]
                idx = int(last[1:]) if last.startswith("r") else int(last)
                v = 0.9 if idx % 2 == 0 else 0.1  # even samples look good
                if flip and t.steps[0] in ("r2", "r3"):
                    v = 1.0 - v
                out.append(v)
            return out

        return FakePRM(fn)

    a = _subtree_updates(
        create_tts_graph(tree_policy(3), prm_fn(False), "dvts", {"n": 8, "beam_width": 2})
    )
    b = _subtree_updates(
        create_tts_graph(tree_policy(3), prm_fn(True), "dvts", {"n": 8, "beam_width": 2})
    )
    assert a[0][1].steps == ["r2"] and b[0][1].steps == ["r3"]
    assert a[-1][1].steps[:3] == ["r2", "r2>0", "r2/r2>0>0"]
    assert b[-1][1].steps[:3] == ["r3", "r3>1", "r3/r3>1>1"]
    for s in (0, 2, 3):
        assert a[-1][s].steps == b[-1][s].steps


def test_one_policy_call_and_one_prm_call_per_step_and_finished_subtrees_stop():
    # Subtree 0 (first steps r0/r1) boxes an answer at its 2nd step; the others at the 4th.
    def step(p: Trajectory, i: int) -> str:
        k = len(p.steps)
        if k == 0:
            return f"r{i}"
        if (p.steps[0] in ("r0", "r1") and k >= 1) or k >= 3:
            return f"\\boxed{{{p.steps[0]}}}"
        return f"{p.steps[-1]}.{i}"

    policy, prm = FakePolicy(step), FakePRM(lambda t: [0.5] * len(t.steps))
    out = create_tts_graph(policy, prm, "dvts", {"n": 8, "beam_width": 2}).invoke({"question": "q"})
    assert [c[:2] for c in policy.calls] == [(1, 8), (4, 2), (3, 2), (3, 2)]
    # a parent whose two children box the same answer has them scored once
    assert prm.calls == [8, 7, 6, 3]
    assert out["usage"].policy_calls == 4 and out["usage"].prm_calls == 4
    assert out["stop_reason"] == "all_finished"
    assert sorted(len(c.steps) for c in out["candidates"]) == [2, 4, 4, 4]


def test_final_answer_selected_among_subtree_leaves():
    # Subtree s answers s; the PRM likes subtree 2's path best.
    def step(p: Trajectory, i: int) -> str:
        return f"\\boxed{{{int(p.steps[0][1:]) // 2}}}" if p.steps else f"r{i}"

    prm = FakePRM(lambda t: [0.9 if t.steps[0] in ("r4", "r5") else 0.4] * len(t.steps))
    g = create_tts_graph(FakePolicy(step), prm, "dvts", {"n": 8, "beam_width": 2})
    out = g.invoke({"question": "q"})
    assert out["answer"] == "2"
    assert len(out["candidates"]) == 4  # one leaf per subtree
    assert out["candidates"][0].score == pytest.approx(0.9)
    # Majority over leaves: 3 subtrees answer 7 (scores low), one answers 1 (score high).
    step2 = FakePolicy(
        lambda p, i: ("\\boxed{1}" if p.steps[0] == "r0" else "\\boxed{7}") if p.steps else f"r{i}"
    )
    prm2 = FakePRM(lambda t: [0.9 if t.steps[0] == "r0" else 0.2] * len(t.steps))
    cfg = {"n": 8, "beam_width": 2, "selection": "majority"}
    assert create_tts_graph(step2, prm2, "dvts", cfg).invoke({"question": "q"})["answer"] == "7"


def test_long_search_survives_small_recursion_limit_and_max_steps_cuts():
    policy = FakePolicy(lambda p, i: "\\boxed{3}" if len(p.steps) >= 30 else f"s{i}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    g = create_tts_graph(policy, prm, "dvts", {"n": 4, "beam_width": 2, "max_steps": 60})
    out = g.invoke({"question": "q"}, {"recursion_limit": 5})
    assert out["answer"] == "3" and len(policy.calls) == 31
    g = create_tts_graph(policy, prm, "dvts", {"n": 4, "beam_width": 2, "max_steps": 5})
    out = g.invoke({"question": "q"})
    assert all(len(c.steps) == 5 for c in out["candidates"])


def test_call_time_override_and_messages_input():
    policy = tree_policy(1)
    g = create_tts_graph(policy, hash_prm(), "dvts", {"n": 4, "beam_width": 2})
    out = g.invoke({"messages": [("human", "what?")]}, {"configurable": {"n": 6}})
    assert policy.calls[0][:2] == (1, 6) and policy.calls[1][:2] == (3, 2)
    assert out["messages"][-1].type == "ai" and "boxed" in out["messages"][-1].content
    with pytest.raises(ConfigError, match="multiple"):
        g.invoke({"question": "q"}, {"configurable": {"n": 5}})


async def test_async():
    g = create_tts_graph(tree_policy(2), hash_prm(), "dvts", {"n": 4, "beam_width": 2})
    out = await g.ainvoke({"question": "q"})
    assert out["answer"] is not None and out["usage"].policy_calls == 3


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"beam_width": 0}, "beam_width"),
        ({"n": 2, "beam_width": 4}, "n"),
        ({"n": 6, "beam_width": 4}, "multiple"),
        ({"temperature": -1}, "temperature"),
        ({"max_step_tokens": 9000}, "max_total_tokens"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_is_a_clear_error(cfg: dict, field: str):
    with pytest.raises(ConfigError, match=field):
        create_tts_graph(tree_policy(2), hash_prm(), "dvts", cfg)


def test_needs_prm():
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_tts_graph(tree_policy(2), None, "dvts")
