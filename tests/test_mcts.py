"""MCTS logic: UCB1 choices computed by hand on scripted trees, finals, batching, limits."""

from __future__ import annotations

import math

import pytest

from langchain_tts import ConfigError, create_tts_graph
from langchain_tts.core.types import Trajectory
from langchain_tts.strategies.mcts import MCTSNode, select_child, ucb1
from langchain_tts.testing import FakePolicy, FakePRM

# -- UCB1 on a hand-built node ---------------------------------------------------------


def _parent(*children: tuple[int, float]) -> list[MCTSNode]:
    """A root with 10 visits and children given as (visits, value_sum)."""
    tree = [MCTSNode(visits=10, children=list(range(1, len(children) + 1)))]
    tree += [MCTSNode(parent=0, depth=1, visits=v, value_sum=w) for v, w in children]
    return tree


def test_ucb1_formula_and_choice_by_hand():
    # ln(10) = 2.302585
    # A: 0.6 + 1.414 * sqrt(2.302585 / 4) = 0.6 + 1.414 * 0.758711 = 1.672818
    # B: 0.3 + 1.414 * sqrt(2.302585 / 1) = 0.3 + 1.414 * 1.517427 = 2.445642  <- max
    # C: 0.8 + 1.414 * sqrt(2.302585 / 5) = 0.8 + 1.414 * 0.678614 = 1.759560
    tree = _parent((4, 2.4), (1, 0.3), (5, 4.0))
    assert ucb1(tree[1], 10, 1.414) == pytest.approx(1.672818, abs=1e-5)
    assert ucb1(tree[2], 10, 1.414) == pytest.approx(2.445642, abs=1e-5)
    assert ucb1(tree[3], 10, 1.414) == pytest.approx(1.759560, abs=1e-5)
    assert select_child(tree, 0, 1.414) == 2
    # c = 0.5: A 0.6 + 0.379356 = 0.979, B 0.3 + 0.758714 = 1.059, C 0.8 + 0.339307 = 1.139
    assert select_child(tree, 0, 0.5) == 3
    # c = 0: pure exploitation, the best mean value (C, 0.8).
    assert select_child(tree, 0, 0.0) == 3


def test_unvisited_children_first_and_ties_keep_order():
    tree = _parent((4, 2.4), (0, 0.0), (5, 4.0), (0, 0.0))
    assert ucb1(tree[2], 10, 1.414) == math.inf
    assert select_child(tree, 0, 1.414) == 2  # the first unvisited one
    tie = _parent((2, 1.0), (2, 1.0))
    assert select_child(tie, 0, 1.414) == 1


# -- a scripted search, expected choices computed by hand -------------------------------

# Root -> a, b; a -> aa, ab; b -> ba, bb; depth-2 nodes -> two boxed answers each.
SCORES = {
    "a": 0.6,
    "b": 0.4,
    "a/aa": 0.9,
    "a/ab": 0.1,
    "b/ba": 0.3,
    "b/bb": 0.5,
    "a/aa/\\boxed{1}": 0.8,
    "a/aa/\\boxed{2}": 0.2,
    "a/ab/\\boxed{3}": 0.5,
    "a/ab/\\boxed{4}": 0.5,
    "b/ba/\\boxed{5}": 0.6,
    "b/ba/\\boxed{6}": 0.0,
    "b/bb/\\boxed{7}": 0.95,
    "b/bb/\\boxed{8}": 0.35,
}
ANSWERS = {"a/aa": "12", "a/ab": "34", "b/ba": "56", "b/bb": "78"}


def scripted(expanded: list[str]) -> tuple[FakePolicy, FakePRM]:
    def step(p: Trajectory, i: int) -> str:
        path = "/".join(p.steps)
        if i == 0:
            expanded.append(path)
        if not p.steps:
            return "ab"[i]
        if len(p.steps) == 1:
            return p.steps[0] + "ab"[i]
        return f"\\boxed{{{ANSWERS[path][i]}}}"

    def prm(t: Trajectory) -> list[float]:
        return [SCORES["/".join(t.steps[: j + 1])] for j in range(len(t.steps))]

    return FakePolicy(step), FakePRM(prm)


def test_ucb1_path_of_each_simulation_matches_hand_computation():
    # (visits, value_sum) after each simulation; c = 1.414, children start at 1 visit.
    # S1 expand root: a(1,.6) b(1,.4); root(1,.5)
    # S2 root ln1=0: a .6 > b .4 -> a; expand a: aa .9 ab .1 (mean .5); a(2,1.1) root(2,1.0)
    # S3 root ln2: a .55+.832429=1.382  b .4+1.177232=1.577 -> b; expand b: ba .3 bb .5
    #    (mean .4); b(2,.8) root(3,1.4)
    # S4 root ln3: a .55+1.047989=1.598  b .4+1.047989=1.448 -> a;
    #    at a ln2: aa .9+1.177=2.077  ab .1+1.177=1.277 -> aa; expand aa: boxed1 .8
    #    boxed2 .2 (mean .5); aa(2,1.4) a(3,1.6) root(4,1.9)
    # S5 root ln4: a .5333+.961206=1.495  b .4+1.177232=1.577 -> b;
    #    at b ln2: ba .3+1.177=1.477  bb .5+1.177=1.677 -> bb; expand bb: boxed7 .95
    #    boxed8 .35 (mean .65); bb(2,1.15) b(3,1.45) root(5,2.55)
    # S6 root ln5: a .5333+1.035680=1.569  b .4833+1.035680=1.519 -> a;
    #    at a ln3: aa .7+1.047989=1.748  ab .1+1.482080=1.582 -> aa;
    #    at aa ln2: boxed1 .8+1.177 > boxed2 .2+1.177 -> boxed1: finished, so no model
    #    call: it re-backprops .8; boxed1(2,1.6) aa(3,2.2) a(4,2.4) root(6,3.35)
    # S7 root ln6: a .6+.946366=1.546  b .4833+1.092769=1.576 -> b;
    #    at b ln3: ba .3+1.482080=1.782  bb .575+1.047989=1.623 -> ba; expand ba
    expanded: list[str] = []
    policy, prm = scripted(expanded)
    g = create_tts_graph(policy, prm, "mcts", {"simulations": 7, "expand_k": 2})
    updates = [u for u in g.stream({"question": "q"}, stream_mode="updates")]
    sims = [u["simulate"] for u in updates if "simulate" in u]
    assert len(sims) == 7  # one update per simulation
    assert [s["step"] for s in sims] == list(range(1, 8))
    assert [s["tree"][0].visits for s in sims] == list(range(1, 8))
    assert expanded == ["", "a", "b", "a/aa", "b/bb", "b/ba"]
    assert len(policy.calls) == len(prm.calls) == 6  # S6 made no call
    assert all(c[:2] == (1, 2) for c in policy.calls) and prm.calls == [2] * 6
    tree = sims[-1]["tree"]
    by_path = {}
    for i, n in enumerate(tree):
        steps, j = [], i
        while tree[j].parent is not None:
            steps.append(tree[j].step)
            j = tree[j].parent
        by_path["/".join(reversed(steps))] = n
    assert (by_path[""].visits, by_path[""].value_sum) == (7, pytest.approx(3.65))
    assert (by_path["a"].visits, by_path["a"].value_sum) == (4, pytest.approx(2.4))
    assert (by_path["b"].visits, by_path["b"].value_sum) == (4, pytest.approx(1.75))
    assert (by_path["a/aa"].visits, by_path["a/aa"].value_sum) == (3, pytest.approx(2.2))
    assert by_path["a/aa/\\boxed{1}"].visits == 2
    assert by_path["b/ba"].visits == 2 and by_path["b/ba"].value_sum == pytest.approx(0.6)


def test_final_most_visited_vs_best_leaf():
    # After the 7 simulations above: a and b have 4 visits each, a has the higher mean
    # (.6 vs .4375); under a, aa (3 visits); under aa, boxed1 (2 visits) -> answer 1.
    # best_leaf: the best finished leaf by PRM is boxed7 (.95) -> answer 7.
    for final, answer in (("most_visited", "1"), ("best_leaf", "7")):
        policy, prm = scripted([])
        cfg = {"simulations": 7, "expand_k": 2, "final": final}
        out = create_tts_graph(policy, prm, "mcts", cfg).invoke({"question": "q"})
        assert out["answer"] == answer, final
        assert out["stop_reason"] == "simulations"
        assert {c.steps[-1] for c in out["candidates"]} == {
            "\\boxed{1}",
            "\\boxed{2}",
            "\\boxed{5}",
            "\\boxed{6}",
            "\\boxed{7}",
            "\\boxed{8}",
        }
        assert out["candidates"][0].score == pytest.approx(0.95)


def test_most_visited_unfinished_path_falls_back_to_best_finished_leaf():
    # a scores high but never finishes; b's children finish (boxed 5: .7, boxed 6: .3).
    # S1 root: a(1,.9) b(1,.5). S2 ln1=0 -> a; expand a: x0 x1 (.9). S3 root ln2:
    # a .9+.832=1.732, b .5+1.177=1.677 -> a; at a: x0 (tie, first); expand x0.
    # S4 root ln3: a .9+.855679=1.756, b .5+1.482080=1.982 -> b; expand b.
    # Most visited: a (3) -> x0 (2) -> x0/x0 (unfinished) -> fall back: boxed 5.
    def step(p: Trajectory, i: int) -> str:
        if not p.steps:
            return "ab"[i]
        if p.steps[0] == "b":
            return f"\\boxed{{{5 + i}}}"
        return f"x{i}"

    scores = {"a": 0.9, "b": 0.5, "\\boxed{5}": 0.7, "\\boxed{6}": 0.3}
    prm = FakePRM(lambda t: [scores.get(s, 0.9) for s in t.steps])
    policy = FakePolicy(step)
    g = create_tts_graph(policy, prm, "mcts", {"simulations": 4, "expand_k": 2})
    out = g.invoke({"question": "q"})
    assert out["answer"] == "5"
    assert out["solution"] == "b\n\n\\boxed{5}"
    # After 3 simulations b is not expanded yet, nothing finished: the most-visited leaf
    # itself (a -> x0 -> x0) is the answer.
    out = g.invoke({"question": "q"}, {"configurable": {"simulations": 3}})
    assert out["solution"] == "a\n\nx0\n\nx0"
    assert [c.finished for c in out["candidates"]] == [False]


def test_max_depth_stops_expansion():
    policy = FakePolicy(lambda p, i: f"s{i}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    cfg = {"simulations": 10, "expand_k": 3, "max_depth": 1}
    out = create_tts_graph(policy, prm, "mcts", cfg).invoke({"question": "q"})
    assert len(policy.calls) == 1  # only the root is ever expanded
    assert all(len(c.steps) == 1 for c in out["candidates"])


def test_200_simulations_with_recursion_limit_25():
    def step(p: Trajectory, i: int) -> str:
        return f"\\boxed{{{i}}}" if len(p.steps) >= 3 else f"s{len(p.steps)}.{i}"

    policy = FakePolicy(step)
    prm = FakePRM(lambda t: [0.3 + 0.1 * (s.endswith("1}")) for s in t.steps])
    g = create_tts_graph(policy, prm, "mcts", {"simulations": 200, "expand_k": 2})
    out = g.invoke({"question": "q"}, {"recursion_limit": 25})
    assert out["stop_reason"] == "simulations"
    assert out["answer"] == "1"
    # The full binary tree of depth 3 has 1 + 2 + 4 + 8 = 15 expandable nodes.
    assert len(policy.calls) == len(prm.calls) == 15
    assert out["usage"].policy_calls == 15 and out["usage"].prm_calls == 15


async def test_async_messages_input_and_usage():
    policy, prm = scripted([])
    g = create_tts_graph(policy, prm, "mcts", {"simulations": 5, "expand_k": 2})
    out = await g.ainvoke({"messages": [("human", "what?")]})
    assert out["messages"][-1].type == "ai"
    assert out["messages"][-1].content == out["solution"]
    u = out["usage"]
    assert u.policy_calls == 5 and u.prm_calls == 5 and u.flops > 0


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"simulations": 0}, "simulations"),
        ({"expand_k": 0}, "expand_k"),
        ({"c": -1.0}, "c"),
        ({"max_depth": 0}, "max_depth"),
        ({"final": "best"}, "final"),
        ({"aggregation": "median"}, "aggregation"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_config_is_a_clear_error(cfg: dict, field: str):
    policy, prm = scripted([])
    with pytest.raises(ConfigError, match=field):
        create_tts_graph(policy, prm, "mcts", cfg)


def test_needs_prm_and_call_time_override_is_validated():
    policy, prm = scripted([])
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_tts_graph(policy, None, "mcts")
    g = create_tts_graph(policy, prm, "mcts", {"simulations": 2, "expand_k": 2})
    with pytest.raises(ConfigError, match="expand_k"):
        g.invoke({"question": "q"}, {"configurable": {"expand_k": 0}})
