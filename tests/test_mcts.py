"""MCTS logic: UCB1 choices and rollouts computed by hand, finals, batching, exhaustion, limits."""

from __future__ import annotations

import math
import time
from collections import defaultdict

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


def test_exhausted_children_are_skipped():
    tree = _parent((1, 0.3), (4, 2.4), (5, 4.0))
    tree[2] = tree[2].model_copy(update={"exhausted": True})
    assert select_child(tree, 0, 1.414) == 1  # B (the UCB1 pick) is exhausted: A
    for j in (1, 3):
        tree[j] = tree[j].model_copy(update={"exhausted": True})
    assert select_child(tree, 0, 1.414) == -1


# -- a scripted search, expected choices computed by hand -------------------------------

# Whole rollouts the policy writes from each prefix, in order (a prefix expanded twice
# writes its second rollout); a rollout's value is the PRM score of its boxed answer.
ROLLOUTS = {
    "": ["a\n\na1\n\n\\boxed{1}", "b\n\nb1\n\n\\boxed{2}"],
    "a": ["a2\n\n\\boxed{3}", "a3\n\n\\boxed{4}"],
    "b": ["b2\n\n\\boxed{5}", "b3\n\n\\boxed{6}"],
    "a/a2": ["\\boxed{7}"],
}
VALUES = {"1": 0.6, "2": 0.4, "3": 0.9, "4": 0.1, "5": 0.3, "6": 0.5, "7": 0.8}


def scripted(expanded: list[str]) -> tuple[FakePolicy, FakePRM]:
    served: dict[str, int] = defaultdict(int)

    def rollout(p: Trajectory, i: int) -> str:
        path = "/".join(p.steps)
        expanded.append(path)
        k = served[path]
        served[path] += 1
        return ROLLOUTS[path][k]

    def prm(t: Trajectory) -> list[float]:
        return [VALUES[s[7]] if s.startswith("\\boxed") else 0.5 for s in t.steps]

    return FakePolicy(rollout), FakePRM(prm)


CLASSIC = {"tree_policy": "ucb1", "grow": "step"}
ONE_AT_A_TIME = {"simulations": 7, "parallel": 1, "expand_k": 1, "width": 2, **CLASSIC}


def test_ucb1_path_of_each_simulation_matches_hand_computation():
    # (visits, value_sum) after each simulation; c = 1.414, width 2 (a node is expanded at
    # most twice), every expansion is one whole rollout whose value is backed up.
    # S1 root can grow: rollout a/a1/boxed1 (.6): a(1,.6) root(1,.6)
    # S2 root can grow: rollout b/b1/boxed2 (.4): b(1,.4) root(2,1.0)
    # S3 root full, ln2: a .6+1.177232=1.777  b .4+1.177232=1.577 -> a; rollout a2/boxed3
    #    (.9): a2(1,.9) a(2,1.5) root(3,1.9)
    # S4 ln3: a .75+1.048000=1.798  b .4+1.482080=1.882 -> b; rollout b2/boxed5 (.3):
    #    b2(1,.3) b(2,.7) root(4,2.2)
    # S5 ln4: a .75+1.177232=1.927  b .35+1.177232=1.527 -> a; rollout a3/boxed4 (.1):
    #    a(3,1.6) root(5,2.3)
    # S6 ln5: a .5333+1.035680=1.569  b .35+1.268443=1.618 -> b; rollout b3/boxed6 (.5):
    #    b(3,1.2) root(6,2.8)
    # S7 ln6: a .5333+1.092768=1.626  b .4+1.092768=1.493 -> a, full; at a (ln3):
    #    a2 .9+1.482080=2.382  a3 .1+1.482080=1.582 -> a2; rollout boxed7 (.8), a finished
    #    child: a2(2,1.7) a(4,2.4) root(7,3.6)
    expanded: list[str] = []
    policy, prm = scripted(expanded)
    g = create_tts_graph(policy, prm, "mcts", ONE_AT_A_TIME)
    updates = [u for u in g.stream({"question": "q"}, stream_mode="updates")]
    sims = [u["simulate"] for u in updates if "simulate" in u]
    assert len(sims) == 7  # one update per simulation
    assert [s["step"] for s in sims] == list(range(1, 8))
    assert [s["tree"][0].visits for s in sims] == list(range(1, 8))
    assert expanded == ["", "", "a", "b", "a", "b", "a/a2"]
    assert len(policy.calls) == len(prm.calls) == 7
    assert all(c[:2] == (1, 1) for c in policy.calls) and prm.calls == [1] * 7
    assert all(c[2].stop_at_step is False for c in policy.calls)  # whole rollouts
    by_path = _by_path(sims[-1]["tree"])
    assert set(by_path) == {"", "a", "b", "a/a2", "a/a3", "b/b2", "b/b3", "a/a2/\\boxed{7}"}
    assert (by_path[""].visits, by_path[""].value_sum) == (7, pytest.approx(3.6))
    assert (by_path["a"].visits, by_path["a"].value_sum) == (4, pytest.approx(2.4))
    assert (by_path["b"].visits, by_path["b"].value_sum) == (3, pytest.approx(1.2))
    assert (by_path["a/a2"].visits, by_path["a/a2"].value_sum) == (2, pytest.approx(1.7))
    leaf = by_path["a/a2/\\boxed{7}"]
    assert leaf.finished and leaf.exhausted and leaf.score == pytest.approx(0.8)
    assert not by_path["a/a2"].finished  # a rollout's first step, not its last
    assert len(sims[-1]["finished"]) == 7  # every rollout is a finished solution


# -- the defaults: every step of a rollout is a node, wider or deeper by the PRM ----------

# Base score of each step; the PRM's score of step j is the least base score of steps 1..j
# (as the calculator verifier's), so a path's score is that of its first doubted step.
BASE = {"a": 0.9, "b": 0.9, "c": 0.1, "c2": 0.8, "b3": 0.7}
BRANCHING = {
    "": ["a\n\nb\n\nc\n\n\\boxed{1}"],
    "a/b": ["c2\n\n\\boxed{2}"],
    "a": ["b3\n\n\\boxed{3}"],
}


def branching(expanded: list[str]) -> tuple[FakePolicy, FakePRM]:
    served: dict[str, int] = defaultdict(int)

    def rollout(p: Trajectory, i: int) -> str:
        path = "/".join(p.steps)
        expanded.append(path)
        served[path] += 1
        return BRANCHING[path][served[path] - 1]

    def prm(t: Trajectory) -> list[float]:
        out, least = [], 1.0
        for s in t.steps:
            least = min(least, BASE.get(s, 1.0))
            out.append(least)
        return out

    return FakePolicy(rollout), FakePRM(prm)


def _by_path(tree: list[MCTSNode]) -> dict[str, MCTSNode]:
    out = {}
    for i, n in enumerate(tree):
        steps, j = [], i
        while tree[j].parent is not None:
            steps.append(tree[j].step)
            j = tree[j].parent
        out["/".join(reversed(steps))] = n
    return out


def test_prm_tree_policy_branches_below_the_last_trusted_step():
    # promise of a new rollout from a node: its path's PRM score x retry_decay (.5) ** rollouts
    # already started there; a node's promise: the most of that and its children's.
    # S1 root (1.0): a/b/c/boxed1 -> path scores a .9, b .9, c .1, boxed1 .1
    # S2 root .5 < a's .9 -> a; at a: own .9, child b .9: ties go deeper -> b; at b: own .9,
    #    child c .1 -> expand b: c2/boxed2 (c2 .8, boxed2 .8)
    # S3 root .5 < a .9; at a: own .9 > b's max(.45, c .1, c2 .8) -> expand a: b3/boxed3
    expanded: list[str] = []
    policy, prm = branching(expanded)
    cfg = {"simulations": 3, "parallel": 1}
    updates = list(create_tts_graph(policy, prm, "mcts", cfg).stream({"question": "q"}))
    assert expanded == ["", "a/b", "a"]
    assert [u for u in updates if "finalize" in u][0]["finalize"]["answer"] == "2"  # .8
    nodes = _by_path([u for u in updates if "simulate" in u][-1]["simulate"]["tree"])
    assert set(nodes) == {
        "", "a", "a/b", "a/b/c", "a/b/c/\\boxed{1}", "a/b/c2", "a/b/c2/\\boxed{2}",
        "a/b3", "a/b3/\\boxed{3}",
    }  # fmt: skip
    assert (nodes["a"].visits, nodes["a/b"].visits, nodes["a/b3"].visits) == (3, 2, 1)
    assert nodes["a/b/c2/\\boxed{2}"].finished and not nodes["a/b/c2"].finished
    assert nodes["a/b3/\\boxed{3}"].score == pytest.approx(0.7)


def test_rollout_growth_adds_every_step_and_merges_repeats():
    from langchain_tts.strategies.mcts import MCTSConfig, _insert_rollout

    tree = [MCTSNode()]
    r = Trajectory(
        question="q", steps=["x", "y", "\\boxed{1}"], step_scores=[0.9, 0.8, 0.7], tokens=9,
        finished=True, finish_reason="stop",
    )  # fmt: skip
    assert _insert_rollout(tree, 0, r, 0.7, MCTSConfig()) == [1, 2, 3]
    assert [n.step for n in tree] == ["", "x", "y", "\\boxed{1}"]
    assert [n.depth for n in tree] == [0, 1, 2, 3]
    assert [n.step_scores for n in tree[1:]] == [[0.9], [0.9, 0.8], [0.9, 0.8, 0.7]]
    assert [n.tokens for n in tree] == [0, 3, 6, 9]  # a prefix's share of the rollout's tokens
    assert [n.finished for n in tree] == [False, False, False, True]
    assert all(n.visits == 0 for n in tree)  # visits come from backprop
    # the same steps again: the same nodes; a different last step: one new node under "y"
    assert _insert_rollout(tree, 0, r, 0.7, MCTSConfig()) == [1, 2, 3]
    r2 = r.copy_with(steps=["x", "y", "\\boxed{2}"])
    assert _insert_rollout(tree, 1, r2, 0.7, MCTSConfig()) == [2, 4]
    assert tree[2].children == [3, 4] and len(tree) == 5
    assert MCTSConfig().grow == "rollout"


def test_repeated_rollouts_merge_and_a_node_retries_up_to_tries():
    # The policy always writes the same steps: every rollout joins the nodes of the first
    # one, so no node reaches width (2) children; each stops growing after tries (3).
    def rollout(p: Trajectory, i: int) -> str:
        return "\\boxed{1}" if p.steps else "x\n\n\\boxed{1}"

    policy = FakePolicy(rollout)
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    cfg = {"simulations": 1000, "parallel": 1, "width": 2, "tries": 3}
    updates = list(create_tts_graph(policy, prm, "mcts", cfg).stream({"question": "q"}))
    tree = [u for u in updates if "simulate" in u][-1]["simulate"]["tree"]
    assert [n.step for n in tree] == ["", "x", "\\boxed{1}"]
    assert [n.expansions for n in tree[:2]] == [3, 3] and tree[0].visits == 6
    assert len(policy.calls) == 6
    assert [u for u in updates if "finalize" in u][0]["finalize"]["stop_reason"] == "exhausted"


@pytest.mark.parametrize(
    ("final", "selection", "answer"),
    [
        ("finished", "prm_max", "3"),  # the best of all 7 rollouts (.9)
        ("best_leaf", "majority", "3"),  # best_leaf is PRM-max whatever the selection
        ("most_visited", "prm_max", "7"),  # root -> a (4) -> a2 (2) -> boxed7
    ],
)
def test_final_rules(final: str, selection: str, answer: str):
    policy, prm = scripted([])
    cfg = {**ONE_AT_A_TIME, "final": final, "selection": selection}
    out = create_tts_graph(policy, prm, "mcts", cfg).invoke({"question": "q"})
    assert out["answer"] == answer
    assert out["stop_reason"] == "simulations"
    assert out["candidates"][0].score == pytest.approx(VALUES[out["candidates"][0].answer])


def test_rollouts_are_batched_across_the_selected_leaves():
    # parallel 2, expand_k 2, width 4: the first step selects the root twice (a pending
    # selection counts as a visit and as expand_k expansions), one call of 2 x 2 rollouts.
    counter = iter(range(10_000))

    def rollout(p: Trajectory, i: int) -> str:
        return f"s{next(counter)}\n\n\\boxed{{{i}}}"

    policy = FakePolicy(rollout)
    prm = FakePRM(lambda t: [0.5 + 0.1 * (s == "\\boxed{1}") for s in t.steps])
    cfg = {"simulations": 8, "parallel": 2, "expand_k": 2, "width": 4, "seed": 3}
    out = create_tts_graph(policy, prm, "mcts", cfg).invoke({"question": "q"})
    assert [c[:2] for c in policy.calls] == [(2, 2)] * 4  # 8 selections, 2 per step
    assert prm.calls == [4] * 4  # one PRM call per step, every rollout of it
    assert out["usage"].policy_calls == 4 and out["usage"].prm_calls == 4
    assert len(out["candidates"]) == 16 and out["answer"] == "1"
    # each step's seeds start where the last step's ended: no rollout is sampled twice
    assert [c[2].seed for c in policy.calls] == [3, 7, 11, 15]


@pytest.mark.parametrize("classic", [True, False])
def test_huge_simulations_on_an_exhaustible_tree_return_quickly(classic: bool):
    # Every rollout is 2 steps then an answer; width 2: the classic tree has 2 + 4 + 8 nodes
    # and is exhausted after the root and the 6 nodes above the leaves are expanded twice.
    def rollout(p: Trajectory, i: int) -> str:
        rest = [f"{len(p.steps)}.{len(p.steps) and p.steps[-1]}"] * (2 - len(p.steps))
        return "\n\n".join([*rest, f"\\boxed{{{len(p.steps)}}}"])

    policy = FakePolicy(rollout)
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    cfg = {"simulations": 10**9, "width": 2, **(CLASSIC if classic else {})}
    t0 = time.perf_counter()
    out = create_tts_graph(policy, prm, "mcts", cfg).invoke({"question": "q"})
    assert time.perf_counter() - t0 < 10
    assert out["stop_reason"] == "exhausted"
    if classic:
        assert sum(c[0] for c in policy.calls) == 2 * (1 + 2 + 4)  # 7 nodes, 2 rollouts each
    assert out["answer"] in {"0", "1", "2"}


def test_one_step_solutions_exhaust_the_root():
    policy = FakePolicy(lambda p, i: f"\\boxed{{{i}}}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    cfg = {"simulations": 1000, "expand_k": 3, "width": 3, "parallel": 4}
    out = create_tts_graph(policy, prm, "mcts", cfg).invoke({"question": "q"})
    assert out["stop_reason"] == "exhausted"
    assert [c[:2] for c in policy.calls] == [(1, 3)]  # one selection fills the root's width


def test_max_depth_stops_expansion():
    counter = iter(range(10_000))
    policy = FakePolicy(lambda p, i: f"s{next(counter)}\n\nt\n\n\\boxed{{1}}")
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    cfg = {"simulations": 50, "expand_k": 3, "max_depth": 1, "width": 2}
    out = create_tts_graph(policy, prm, "mcts", cfg).invoke({"question": "q"})
    assert out["stop_reason"] == "exhausted"
    assert [c[:2] for c in policy.calls] == [(1, 3)]  # only the root is ever expanded
    assert all(len(c.steps) == 3 for c in out["candidates"])  # rollouts run to the end


def test_200_simulations_with_recursion_limit_25():
    counter = iter(range(10_000))

    def rollout(p: Trajectory, i: int) -> str:
        k = next(counter)
        return "\n\n".join(
            [f"s{k}.{j}" for j in range(3 - min(len(p.steps), 3))] + [f"\\boxed{{{k % 3}}}"]
        )

    policy = FakePolicy(rollout)
    prm = FakePRM(lambda t: [0.3 + 0.1 * (s == "\\boxed{1}") for s in t.steps])
    cfg = {"simulations": 200, "parallel": 1}
    g = create_tts_graph(policy, prm, "mcts", cfg)
    out = g.invoke({"question": "q"}, {"recursion_limit": 25})
    assert out["stop_reason"] == "simulations"
    assert out["answer"] == "1"
    assert len(policy.calls) == len(prm.calls) == 200
    assert out["usage"].policy_calls == 200 and out["usage"].prm_calls == 200


async def test_async_messages_input_and_usage():
    policy, prm = scripted([])
    g = create_tts_graph(policy, prm, "mcts", {**ONE_AT_A_TIME, "simulations": 5})
    out = await g.ainvoke({"messages": [("human", "what?")]})
    assert out["messages"][-1].type == "ai"
    assert out["messages"][-1].content == out["solution"]
    u = out["usage"]
    assert u.policy_calls == 5 and u.prm_calls == 5 and u.flops > 0


def test_defaults_follow_the_reference():
    from langchain_tts.strategies.mcts import MCTSConfig

    cfg = MCTSConfig()
    assert (cfg.tree_policy, cfg.grow, cfg.simulations) == ("prm", "rollout", 24)
    assert (cfg.expand_k, cfg.width, cfg.max_depth, cfg.temperature, cfg.c) == (
        1,
        4,
        10,
        0.8,
        1.414,
    )


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"simulations": 0}, "simulations"),
        ({"expand_k": 0}, "expand_k"),
        ({"width": 0}, "width"),
        ({"parallel": 0}, "parallel"),
        ({"c": -1.0}, "c"),
        ({"max_depth": 0}, "max_depth"),
        ({"final": "best"}, "final"),
        ({"tree_policy": "puct"}, "tree_policy"),
        ({"grow": "all"}, "grow"),
        ({"retry_decay": 0.0}, "retry_decay"),
        ({"tries": 0}, "tries"),
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
