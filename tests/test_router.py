"""Router: difficulty estimation, budget table, calibration, routing and budgets (fakes only)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from langchain_tts import ConfigError, InputError, create_tts_graph
from langchain_tts.checkpoint import serializer
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult
from langchain_tts.routing import (
    BinThresholds,
    BudgetTable,
    ClassifierEstimator,
    ProbeEstimator,
    Route,
    RouteAllocation,
    VerifierEstimator,
    bin_of,
    calibrate,
    create_router_graph,
    fit_thresholds,
)
from langchain_tts.strategies.core import TTSUsageState
from langchain_tts.testing import FakePolicy, FakePRM

# -- fakes ---------------------------------------------------------------------------------
# The question names its difficulty; sample i of an easy question always answers 7, of a
# medium one 7 only for i % 4 == 0 (agreement 1/4), of a hard one never answers at all.


def answer_for(question: str, i: int) -> str | None:
    if "easy" in question:
        return "7"
    if "medium" in question:
        return "7" if i % 4 == 0 else str(100 + i)
    return None


def solve(prefix: Trajectory, i: int) -> str:
    a = answer_for(prefix.question, i)
    return f"so the answer is \\boxed{{{a}}}" if a is not None else "I am stuck here"


def make_policy(**kw) -> FakePolicy:
    return FakePolicy(solve, **kw)


def make_prm(value: float = 0.8, **kw) -> FakePRM:
    return FakePRM(lambda t: [value] * len(t.steps), **kw)


def whole_calls(policy: FakePolicy) -> list[tuple[int, int]]:
    return [(p, n) for p, n, s in policy.calls if not s.stop_at_step]


def step_calls(policy: FakePolicy) -> list[tuple[int, int]]:
    return [(p, n) for p, n, s in policy.calls if s.stop_at_step]


# -- bins ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("p", "expected"),
    [(1.0, "easy"), (0.5, "easy"), (0.4999, "medium"), (0.1, "medium"), (0.0999, "hard"),
     (0.0, "hard")],
)  # fmt: skip
def test_bins_follow_the_paper_absolute_thresholds(p: float, expected: str):
    assert bin_of(p) == expected


def test_bins_thresholds_are_configurable_and_validated():
    assert bin_of(0.3, easy=0.3, hard=0.2) == "easy"
    assert bin_of(0.19, easy=0.3, hard=0.2) == "hard"
    with pytest.raises(ConfigError, match="hard"):
        bin_of(0.3, easy=0.1, hard=0.5)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(InputError, match="p_solve"):
            bin_of(bad)


# -- estimators ----------------------------------------------------------------------------
@pytest.mark.parametrize(("question", "agreement", "bin"),
                         [("easy q", 1.0, "easy"), ("medium q", 0.25, "medium"),
                          ("hard q", 0.0, "hard")])  # fmt: skip
def test_probe_agreement_is_the_majority_fraction(question: str, agreement: float, bin: str):
    policy = make_policy()
    est = ProbeEstimator(policy, k=4).estimate(question)
    assert est.agreement == agreement and est.p_solve == agreement and est.bin == bin
    assert est.method == "probe"
    assert est.answer == ("7" if agreement else None)
    assert len(est.candidates) == 4 and all(c.finished for c in est.candidates)
    # one policy call, k whole solutions, at the probe's temperature
    assert len(policy.calls) == 1
    prefixes, n, params = policy.calls[0]
    assert (prefixes, n, params.stop_at_step, params.temperature) == (1, 4, False, 0.7)
    assert est.usage.policy_calls == 1 and est.usage.prm_calls == 0


def test_probe_agreement_compares_normalised_answers():
    texts = ["\\boxed{7}", "\\boxed{7.0}", "\\boxed{ 7 }", "\\boxed{8}", "no answer"]
    policy = FakePolicy(lambda p, i: texts[i])
    est = ProbeEstimator(policy, k=5).estimate("q")
    assert est.agreement == pytest.approx(3 / 5)


def test_probe_samples_cut_by_the_token_cap_give_no_answer():
    """A sample cut by the probe's ``max_tokens`` ends in a number it was still computing
    with: it used to vote, four cut samples "agreed", and the router answered with it at
    p_solve 1.0 without running a strategy."""
    policy = FakePolicy(lambda p, i: Step(text="20+35=55\n\n55", tokens=12, finish_reason="length"))
    est = ProbeEstimator(policy, k=4).estimate("Start with 20. Add 35. Divide by 5.")
    assert all(c.finish_reason == "length" and c.answer == "55" for c in est.candidates)
    assert est.answer is None and est.agreement == 0.0 and est.bin == "hard"


def test_probe_blends_prm_score_with_one_prm_call():
    policy, prm = make_policy(), make_prm(0.8)
    est = ProbeEstimator(policy, prm, k=4, prm_weight=0.5).estimate("medium q")
    assert est.method == "probe+prm"
    assert est.prm_score == pytest.approx(0.8)
    assert est.p_solve == pytest.approx(0.5 * 0.25 + 0.5 * 0.8)
    assert prm.calls == [4]  # one PRM call scoring the k samples
    assert est.usage.prm_calls == 1 and est.usage.policy_calls == 1
    assert all(c.score == pytest.approx(0.8) for c in est.candidates)


def test_verifier_is_one_greedy_call_and_one_prm_call():
    policy, prm = make_policy(), FakePRM(lambda t: [0.9, 0.3][: len(t.steps)] or [])
    est = VerifierEstimator(policy, prm).estimate("easy q")
    assert len(policy.calls) == 1
    prefixes, n, params = policy.calls[0]
    assert (prefixes, n, params.temperature, params.stop_at_step) == (1, 1, 0.0, False)
    assert prm.calls == [1]
    assert est.p_solve == pytest.approx(0.9) and est.bin == "easy"
    assert est.method == "verifier" and est.answer == "7"
    with pytest.raises(ConfigError, match="PRM"):
        VerifierEstimator(policy, None)  # type: ignore[arg-type]


async def test_classifier_accepts_probabilities_bins_and_async_functions():
    assert (await ClassifierEstimator(lambda q: 0.05).aestimate("q")).bin == "hard"
    est = await ClassifierEstimator(lambda q: "Medium").aestimate("q")
    assert est.bin == "medium" and 0.1 <= est.p_solve < 0.5

    async def afn(q: str) -> float:
        return 0.9

    est = await ClassifierEstimator(afn).aestimate("q")
    assert est.bin == "easy" and est.usage == Usage() and est.candidates == []
    for bad in (1.5, "trivial", None):
        with pytest.raises(ConfigError, match="classifier returned"):
            await ClassifierEstimator(lambda q, b=bad: b).aestimate("q")


# -- budget table --------------------------------------------------------------------------
def test_default_table_follows_the_papers():
    t = BudgetTable()
    assert t.easy.strategy == "best_of_n" and t.easy.config["n"] <= 8
    assert t.medium.strategy == "beam_search" and t.medium.config["n"] == 16
    assert t.hard.strategy == "beam_search" and t.hard.config["n"] == 64
    assert all(a.note for _, a in t.items())
    seq = BudgetTable.preset("sequential")
    assert (seq.medium.strategy, seq.hard.strategy) == ("hybrid", "revision")


def test_table_json_and_yaml_round_trip(tmp_path):
    t = BudgetTable(
        easy=RouteAllocation(strategy="majority_vote", config={"n": 8}),
        medium=RouteAllocation(strategy="hybrid", config={"split": "sqrt", "budget": 16}),
    )
    assert BudgetTable.from_json(t.to_json()) == t
    assert BudgetTable.from_yaml(t.to_yaml()) == t
    t.to_json(tmp_path / "t.json")
    t.to_yaml(tmp_path / "t.yaml")
    assert BudgetTable.from_json(tmp_path / "t.json") == t
    assert BudgetTable.from_json(str(tmp_path / "t.json")) == t
    assert BudgetTable.from_yaml(str(tmp_path / "t.yaml")) == t
    with pytest.raises(ConfigError, match="no such"):
        BudgetTable.from_json(str(tmp_path / "missing.json"))


def test_table_rejects_unknown_strategies_and_bad_configs():
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        RouteAllocation(strategy="nope")
    # pydantic's own errors arrive as the package's, naming the field
    with pytest.raises(ConfigError, match=r"(?s)invalid route allocation.*strategy"):
        RouteAllocation(strategy=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"(?s)invalid route allocation.*bogus"):
        RouteAllocation(strategy="cot", bogus=1)
    bad = json.loads(BudgetTable().to_json())
    bad["hard"]["strategy"] = "nope"
    with pytest.raises(ConfigError, match="bin 'hard'.*unknown strategy 'nope'"):
        BudgetTable.from_json(json.dumps(bad))
    bad = json.loads(BudgetTable().to_json())
    bad["medium"]["config"] = {"n": 10, "beam_width": 4}  # n not a multiple of the width
    with pytest.raises(ConfigError, match=r"(?s)bin .medium.*multiple"):
        BudgetTable.from_dict(bad)
    with pytest.raises(ConfigError, match="not valid JSON"):
        BudgetTable.from_json("{not json")
    with pytest.raises(ConfigError, match="mapping"):
        BudgetTable.from_yaml("- a\n- b\n")


def _rec(pid: str, strategy: str, budget: int, correct: bool, flops: float) -> dict:
    return {"dataset": "d", "policy": "p", "prm": "r", "strategy": strategy, "budget": budget,
            "id": pid, "level": 1, "correct": correct, "tokens": 1, "flops": flops}  # fmt: skip


def test_calibrate_picks_the_cheapest_run_within_tolerance():
    easy, hard = [f"e{i}" for i in range(10)], [f"h{i}" for i in range(10)]
    runs = {  # (strategy, budget, mean FLOPs): problems solved in (easy, hard)
        ("best_of_n", 4, 10.0): (9, 1),
        ("best_of_n", 16, 40.0): (10, 3),
        ("beam_search", 16, 100.0): (10, 6),
    }
    recs = [
        _rec(pid, strategy, budget, j < solved, flops)
        for (strategy, budget, flops), (n_easy, n_hard) in runs.items()
        for pids, solved in ((easy, n_easy), (hard, n_hard))
        for j, pid in enumerate(pids)
    ]
    bins = {**dict.fromkeys(easy, "easy"), **dict.fromkeys(hard, "hard")}
    t = calibrate(recs, bins, tolerance=0.1)
    # easy: 90% at 10 FLOPs is within 0.1 of the best (100%) -> the cheapest run
    assert (t.easy.strategy, t.easy.config) == ("best_of_n", {"n": 4})
    # hard: beam search is 30 points ahead -> chosen despite its cost
    assert (t.hard.strategy, t.hard.config) == ("beam_search", {"n": 16, "beam_width": 4})
    assert t.medium == BudgetTable().medium  # no medium problems: the base table's entry
    assert "calibrated" in t.source and "accuracy 0.600" in (t.hard.note or "")
    # default tolerance 0.01: only the 100% runs qualify; the cheaper of the two wins
    assert calibrate(recs, bins).easy.config == {"n": 16}
    # a run that misses problems of a bin is not compared there
    partial = [r for r in recs if not (r["strategy"] == "best_of_n" and r["id"] == "h0")]
    assert calibrate(partial, bins).hard.strategy == "beam_search"


def test_calibrate_noise_widens_the_tolerance_by_paired_standard_errors():
    pids = [f"q{i}" for i in range(40)]
    # the expensive run solves 22/40, the cheap one 20/40: the same 20 plus two more
    recs = [_rec(p, "beam_search", 16, i < 22, 100.0) for i, p in enumerate(pids)]
    recs += [_rec(p, "best_of_n", 4, i < 20, 10.0) for i, p in enumerate(pids)]
    bins = dict.fromkeys(pids, "medium")
    # plain rule: 5 points behind is outside the 1-point tolerance -> the expensive run
    assert calibrate(recs, bins).medium.strategy == "beam_search"
    # paired differences: two 1s in 40 -> SE = sqrt(var/n) ~ 0.035; 0.01 + 2 SE > 0.05
    t = calibrate(recs, bins, noise=2.0)
    assert (t.medium.strategy, t.medium.config) == ("best_of_n", {"n": 4})
    assert "2 paired SE" in (t.medium.note or "")
    assert calibrate(recs, bins, noise=1.0).medium.strategy == "beam_search"  # 0.045 < 0.05
    # a real gap survives any reasonable noise allowance: 20 points on 40 paired problems
    far = [r if r["strategy"] == "beam_search" else {**r, "correct": False} for r in recs]
    assert calibrate(far, bins, noise=1.0).medium.strategy == "beam_search"
    with pytest.raises(ConfigError, match="noise"):
        calibrate(recs, bins, noise=-1.0)


def test_calibrate_without_bins_uses_reference_accuracy():
    recs = []
    for pid, solved_by in [("a", 3), ("b", 1), ("c", 0)]:
        for k, (strategy, budget, flops) in enumerate(
            [("best_of_n", 4, 1.0), ("best_of_n", 8, 2.0), ("majority_vote", 8, 1.5)]
        ):
            recs.append(_rec(pid, strategy, budget, k < solved_by, flops))
    # a: 3/3 easy, b: 1/3 medium, c: 0/3 hard
    t = calibrate(recs)
    assert (t.easy.strategy, t.easy.config) == ("best_of_n", {"n": 4})  # all right, cheapest
    assert (t.medium.strategy, t.medium.config) == ("best_of_n", {"n": 4})  # the one solver
    assert t.hard.config == {"n": 4}  # nobody solves it: the cheapest
    t2 = calibrate(recs, reference=("best_of_n", 8))  # b is solved by nothing there
    assert t2.medium == BudgetTable().medium
    with pytest.raises(ConfigError, match="mix"):
        calibrate([*recs, {**recs[0], "policy": "other"}])
    with pytest.raises(ConfigError, match="records"):
        calibrate([])


# -- fitted thresholds --------------------------------------------------------------------
def test_fit_thresholds_finds_where_the_score_means_50_and_10_percent():
    # scores 0.1 / 0.3 / 0.6 / 0.9 solve 0 / 1 / 2 / 4 of 4 questions (rounding pools 0.301)
    scores, solved = {}, {}
    for x, wins in ((0.1, 0), (0.3, 1), (0.6, 2), (0.9, 4)):
        for i in range(4):
            pid = f"{x}-{i}"
            scores[pid], solved[pid] = x + (0.001 if i == 0 else 0.0), i < wins
    th = fit_thresholds(scores, solved)
    # the lower edges of the rounded groups 0.6 and 0.3: a raw 0.5951 rounds to 0.6 and the
    # router, comparing raw scores, bins it "easy" as the fit did
    assert (th.easy, th.hard) == (0.595, 0.295)
    assert "fitted on 16 questions" in th.note
    # a dip that breaks monotonicity is pooled: 0.3 solves 3/4, 0.6 only 1/4 -> both 4/8
    scores2 = {"a": 0.3, "b": 0.3, "c": 0.3, "d": 0.3, "e": 0.6, "f": 0.6, "g": 0.6, "h": 0.6}
    solved2 = dict(zip(scores2, [True, True, True, False, True, False, False, False]))
    assert fit_thresholds(scores2, solved2).easy == 0.295
    # never 50%: the easy bin starts above every score seen; hard <= easy always
    never = fit_thresholds({"a": 0.2, "b": 0.4}, {"a": False, "b": False})
    assert never.easy == never.hard == 0.41


def test_fit_thresholds_rejects_unusable_input():
    with pytest.raises(ConfigError, match="no id in common"):
        fit_thresholds({"a": 0.5}, {"b": True})
    with pytest.raises(ConfigError, match="resolution"):
        fit_thresholds({"a": 0.5}, {"a": True}, resolution=0)
    with pytest.raises(ConfigError, match="hard"):
        BinThresholds(easy=0.2, hard=0.3)


def test_table_thresholds_rebin_the_router_and_round_trip(tmp_path):
    # the probe's score is agreement / 2 here: 0.5 for an easy question, 0.125 for a medium
    # one; cut points fitted where those scores mean a 50% / 10% chance move both down a bin
    policy, prm = make_policy(), make_prm(0.0)
    est = ProbeEstimator(policy, prm, k=4)
    table = BudgetTable(thresholds=BinThresholds(easy=0.6, hard=0.2))
    path = tmp_path / "t.json"
    table.to_json(path)
    assert BudgetTable.from_json(path).thresholds == table.thresholds
    with pytest.raises(ConfigError, match="budget table thresholds"):
        BudgetTable.from_dict({"thresholds": {"easy": 0.1, "hard": 0.5}})
    plain = create_router_graph(policy, prm, estimator=est, reuse_probe=False)
    fitted = create_router_graph(policy, prm, estimator=est, table=table, reuse_probe=False)
    assert plain.invoke({"question": "easy q"})["difficulty"].bin == "easy"
    assert plain.invoke({"question": "medium q"})["difficulty"].bin == "medium"
    out = fitted.invoke({"question": "easy q"})
    assert out["difficulty"].bin == "medium" and out["route"].node == "medium_beam_search"
    assert fitted.invoke({"question": "medium q"})["difficulty"].bin == "hard"
    assert est.easy == 0.5  # the caller's estimator is left as it was


# -- routing -------------------------------------------------------------------------------
@pytest.mark.parametrize(("question", "node", "strategy"),
                         [("easy q", "easy_best_of_n", "best_of_n"),
                          ("medium q", "medium_beam_search", "beam_search"),
                          ("hard q", "hard_beam_search", "beam_search")])  # fmt: skip
def test_routes_each_bin_to_its_strategy(question: str, node: str, strategy: str):
    policy, prm = make_policy(), make_prm(0.0)  # PRM 0: p_solve = agreement / 2
    graph = create_router_graph(
        policy, prm, estimator=ProbeEstimator(policy, prm, k=4, prm_weight=0.0),
        reuse_probe=False, reuse_samples=False,
    )  # fmt: skip
    seen = [k for u in graph.stream({"question": question}, stream_mode="updates") for k in u]
    assert seen == ["prepare", "estimate", node, "finalize"]
    out = graph.invoke({"question": question})
    assert out["route"].node == node and out["route"].strategy == strategy
    assert out["route"].reason == "table" and out["difficulty"].bin == question.split()[0]
    policy.calls.clear()
    graph.invoke({"question": question})
    assert whole_calls(policy)[0] == (1, 4)  # the probe
    if strategy == "best_of_n":
        assert whole_calls(policy)[1:] == [(1, 4)] and step_calls(policy) == []
    else:  # beam search: first step samples all N children from the question
        n = 16 if "medium" in question else 64
        assert step_calls(policy)[0] == (1, n) and len(whole_calls(policy)) == 1


def test_probe_reuse_answers_easy_questions_without_a_strategy():
    policy, prm = make_policy(), make_prm(0.9)
    graph = create_router_graph(policy, prm)
    out = graph.invoke({"question": "easy q"})
    assert out["route"].node == "finalize" and out["route"].reason == "reuse_probe"
    assert out["answer"] == "7" and "\\boxed{7}" in out["solution"]
    assert out["stop_reason"] == "probe" and len(out["candidates"]) == 4
    # only the probe ran; its 4 samples are the same solution, scored once
    assert len(policy.calls) == 1 and prm.calls == [1]
    assert out["usage"] == out["difficulty"].usage


def test_probe_samples_count_towards_best_of_n():
    policy, prm = make_policy(), make_prm(0.9)
    table = BudgetTable(easy=RouteAllocation(strategy="best_of_n", config={"n": 6}))
    graph = create_router_graph(policy, prm, table=table, reuse_probe=False)
    out = graph.invoke({"question": "easy q"})
    assert out["route"].reused_samples == 4
    assert whole_calls(policy) == [(1, 4), (1, 2)]  # the probe's 4 + only 2 more
    assert len(out["candidates"]) == 6 and out["answer"] == "7"


def test_cot_reuses_the_verifiers_greedy_attempt():
    policy, prm = make_policy(), make_prm(0.3)  # verifier p_solve 0.3: medium
    table = BudgetTable(medium=RouteAllocation(strategy="cot"))
    out = create_router_graph(policy, prm, estimator="verifier", table=table).invoke(
        {"question": "medium q"}
    )
    assert out["route"].node == "medium_cot" and out["route"].reused_samples == 1
    assert whole_calls(policy) == [(1, 1)] and prm.calls == [1]  # the verifier's only
    assert out["answer"] == "7" and out["usage"] == out["difficulty"].usage


def slipping_models() -> tuple[FakePolicy, FakePRM, list[list[str]]]:
    """A policy whose greedy attempt slips at its third step (``c=99``) and whose later
    samples do not, a PRM that doubts exactly that slip, and the prefixes the policy saw
    after the attempt."""
    state = {"attempt_done": False}
    seen: list[list[str]] = []

    def write(t: Trajectory, i: int) -> str:
        if state["attempt_done"]:
            seen.append(list(t.steps))
        k = len(t.steps)
        if k < 2:
            return ["a=1", "b=2"][k]
        if k == 2:
            return "c=3" if state["attempt_done"] else "c=99"
        state["attempt_done"] = True
        return f"\\boxed{{{t.steps[-1].split('=')[1]}}}"

    prm = FakePRM(lambda t: [0.0 if "99" in s else 1.0 for s in t.steps])
    return FakePolicy(write), prm, seen


@pytest.mark.parametrize("strategy", ["beam_search", "particle_filtering", "mcts", "best_of_n"])
def test_the_strategy_continues_from_the_steps_the_estimate_verified(strategy: str):
    policy, prm, seen = slipping_models()
    table = BudgetTable(hard=RouteAllocation(strategy=strategy, config={"n": 4}
                        if strategy != "mcts" else {"simulations": 4}))  # fmt: skip
    graph = create_router_graph(policy, prm, estimator="verifier", table=table)
    out = graph.invoke({"question": "q"})
    assert out["difficulty"].candidates[0].steps == ["a=1", "b=2", "c=99", "\\boxed{99}"]
    assert out["route"].bin == "hard" and out["route"].prefix_steps == ["a=1", "b=2"]
    assert seen and all(s[:2] == ["a=1", "b=2"] for s in seen)  # never the bare question
    assert out["answer"] == "3" and out["solution"].startswith("a=1")
    assert all(c.steps[:2] == ["a=1", "b=2"] for c in out["candidates"])

    policy, prm, seen = slipping_models()
    off = create_router_graph(policy, prm, estimator="verifier", table=table, reuse_prefix=False)
    out = off.invoke({"question": "q"})
    assert out["route"].prefix_steps == [] and [] in seen


def test_step_repair_starts_at_the_step_the_estimate_had_rejected():
    policy, prm, seen = slipping_models()
    table = BudgetTable(hard=RouteAllocation(strategy="step_repair", config={"n": 4}))
    out = create_router_graph(policy, prm, estimator="verifier", table=table).invoke(
        {"question": "q"}
    )
    assert out["route"].prefix_steps == ["a=1", "b=2"] and out["route"].prefix_rejected
    # the estimate's greedy attempt, then no second draft of c=99: one sample of that step
    # (accepted, c=3), then the rest drafted
    assert [(c[1], c[2].stop_at_step) for c in policy.calls] == [(1, False), (1, True), (1, False)]
    assert out["answer"] == "3" and out["stop_reason"] == "accepted"

    policy, prm, seen = slipping_models()  # without the verified steps: drafts from scratch
    off = create_router_graph(policy, prm, estimator="verifier", table=table, reuse_prefix=False)
    out = off.invoke({"question": "q"})
    assert not out["route"].prefix_rejected and policy.calls[1][2].stop_at_step is False


def test_a_strategy_the_budget_cuts_short_stops_and_the_estimate_answers():
    """What the estimate leaves is the strategy's own budget: the call it cannot pay stops
    its search (stop_reason "budget"); nothing finished, so the estimate's attempt answers.
    A refused call never comes back as empty samples a PRM could accept as a repaired step."""
    state = {"attempt_done": False, "slips": 2}  # the attempt and two repair samples slip

    def write(t: Trajectory, i: int) -> str:
        k = len(t.steps)
        if k < 2:
            return ["a=1", "b=2"][k]
        if k == 2:
            slip = not state["attempt_done"] or state["slips"] > 0
            state["slips"] -= state["attempt_done"] and slip
            return "c=99" if slip else "c=3"
        state["attempt_done"] = True
        return f"\\boxed{{{t.steps[-1].split('=')[1]}}}"

    def models():
        state.update(attempt_done=False, slips=2)
        policy = FakePolicy(write)
        prm = FakePRM(lambda t: [0.0 if "99" in s else 1.0 for s in t.steps])
        return policy, prm, VerifierEstimator(policy, prm, max_tokens=8)

    table = BudgetTable(hard=RouteAllocation(strategy="step_repair", config={"n": 16}))
    policy, prm, est = models()
    free = create_router_graph(policy, prm, estimator=est, table=table).invoke({"question": "q"})
    assert free["answer"] == "3" and free["stop_reason"] == "accepted"
    assert [c[1] for c in policy.calls] == [1, 1, 1, 2, 1]  # attempt, rounds of 1, 1, 2, draft
    # 150 tokens pay the estimate and the rounds of one sample (a prompt bound of 75 tokens
    # each), not the round of two
    policy, prm, est = models()
    capped = create_router_graph(policy, prm, estimator=est, table=table, max_tokens=150)
    out = capped.invoke({"question": "q"})
    assert [c[1] for c in policy.calls] == [1, 1, 1] and out["usage"].tokens <= 150
    assert out["stop_reason"] == "budget" and out["route"].budget_stopped
    assert out["route"].probe_fallback and out["answer"] == "99"  # the attempt's, finished
    assert out["solution"] == "a=1\n\nb=2\n\nc=99\n\n\\boxed{99}"
    # a table entry's own cap still holds under a roomier run budget
    own = BudgetTable(
        hard=RouteAllocation(strategy="step_repair", config={"n": 16, "max_tokens": 80})
    )
    policy, prm, est = models()
    graph = create_router_graph(policy, prm, estimator=est, table=own, max_tokens=10_000)
    out = graph.invoke({"question": "q"})
    assert (
        out["stop_reason"] == "budget"
        and out["usage"].tokens - out["difficulty"].usage.tokens <= 80
    )


def test_verified_prefix_never_keeps_the_attempts_last_step():
    from langchain_tts.routing import DifficultyEstimate, verified_prefix

    attempt = Trajectory(question="q", steps=["a=1", "b=2", "\\boxed{2}"], step_scores=[1, 1, 1])
    est = DifficultyEstimate(p_solve=1.0, bin="easy", method="verifier", candidates=[attempt])
    assert verified_prefix(est) == ["a=1", "b=2"]
    doubted = attempt.model_copy(update={"step_scores": [0.2, 1, 1]})
    assert verified_prefix(est.model_copy(update={"candidates": [doubted]})) == []
    assert verified_prefix(est.model_copy(update={"candidates": [doubted]}), 0.1) == ["a=1", "b=2"]
    unscored = attempt.model_copy(update={"step_scores": []})
    assert verified_prefix(est.model_copy(update={"candidates": [unscored]})) == []
    assert verified_prefix(None) == []
    from langchain_tts.routing.router import verified_cut

    assert verified_cut(est) == (["a=1", "b=2"], False)  # nothing rejected: no rejection
    last_doubted = attempt.model_copy(update={"step_scores": [1, 1, 0.2]})
    assert verified_cut(est.model_copy(update={"candidates": [last_doubted]})) == (
        ["a=1", "b=2"],
        True,
    )


def test_the_router_refuses_a_callers_prefix_steps():
    graph = create_router_graph(make_policy(), make_prm())
    with pytest.raises(InputError, match="router does not take prefix_steps"):
        graph.invoke({"question": "easy q", "prefix_steps": ["a=1"]})


def test_usage_is_probe_plus_strategy():
    policy, prm = make_policy(), make_prm(0.1)  # p_solve = 0.05: hard
    graph = create_router_graph(policy, prm, reuse_probe=False, reuse_samples=False)
    out = graph.invoke({"question": "hard q"})
    assert out["route"].node == "hard_beam_search"
    probe = ProbeEstimator(make_policy(), make_prm(0.1)).estimate("hard q").usage
    strat = create_tts_graph(
        make_policy(), make_prm(0.1), "beam_search", {"n": 64, "beam_width": 4}
    )
    alone = strat.invoke({"question": "hard q"})["usage"]
    assert out["usage"] == probe + alone
    assert out["usage"].policy_calls == 1 + alone.policy_calls


def test_verifier_estimator_and_messages_input():
    policy, prm = make_policy(), make_prm(0.95)
    graph = create_router_graph(policy, prm, estimator="verifier")
    out = graph.invoke({"messages": [HumanMessage(content="easy q")]})
    assert out["difficulty"].method == "verifier"
    assert out["route"].reason == "reuse_probe" and out["answer"] == "7"
    assert isinstance(out["messages"][-1], AIMessage) and "7" in out["messages"][-1].content


def test_an_estimator_with_options_as_plain_data():
    policy, prm = make_policy(), make_prm(0.95)
    spec = {"kind": "verifier", "max_tokens": 64}
    graph = create_router_graph(policy, prm, estimator=spec, max_flops=1e9)
    out = graph.invoke({"question": "easy q"})
    assert out["difficulty"].method == "verifier" and out["difficulty"].max_step_tokens == 64
    probe = create_router_graph(policy, prm, estimator={"kind": "probe", "k": 2})
    assert len(probe.invoke({"question": "easy q"})["difficulty"].candidates) == 2
    for bad, field in [({"max_tokens": 64}, "needs 'kind'"), ({"kind": "oracle"}, "'kind'"),
                       ({"kind": "verifier", "max_token": 64}, r"\['max_token'\].*max_tokens"),
                       ({"kind": "verifier", "max_tokens": 0}, "max_tokens")]:  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            create_router_graph(policy, prm, estimator=bad)
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_router_graph(policy, None, estimator={"kind": "verifier"})


async def test_ainvoke_and_classifier_estimator():
    policy, prm = make_policy(), make_prm(0.5)
    graph = create_router_graph(policy, prm, estimator=ClassifierEstimator(lambda q: "hard"))
    out = await graph.ainvoke({"question": "easy q"})
    assert out["route"].node == "hard_beam_search" and out["answer"] == "7"
    assert whole_calls(policy) == []  # no probe: the classifier is free


def test_tiers_send_factual_and_general_questions_to_the_pool():
    small, large, medium = make_policy(name="s"), make_policy(name="l"), make_policy(name="m")
    tiers = {"easy q": "math", "medium q": "factual", "hard q": "General"}
    graph = create_router_graph(
        small, make_prm(0.9), tier_fn=lambda q: tiers[q],
        pool={"large": (large, None), "medium": (medium, None)},
    )  # fmt: skip
    out = graph.invoke({"question": "medium q"})
    assert out["route"].node == "factual_direct" and out["route"].model == "large"
    assert out["difficulty"] is None and small.calls == [] and len(large.calls) == 1
    assert large.calls[0][2].temperature == 0.0  # direct CoT: one greedy chain
    out = graph.invoke({"question": "hard q"})
    assert out["route"].node == "general_direct" and len(medium.calls) == 1
    out = graph.invoke({"question": "easy q"})
    assert out["route"].tier == "math" and out["route"].bin == "easy" and small.calls


def test_a_budget_too_small_for_the_probe_still_answers_a_direct_tier():
    """A direct tier runs no probe, so a run's budget was refused for a probe that would
    not run; a question for the probe is still refused, naming it."""
    small, large = make_policy(name="s"), make_policy(name="l", num_parameters=10)
    tiers = {"easy fact": "factual", "easy sum": "math"}
    graph = create_router_graph(
        small, make_prm(0.9), tier_fn=lambda q: tiers[q],
        pool={"large": (large, None), "medium": (large, None)},
    )  # fmt: skip
    # one greedy chain reserves a step's 2048 tokens; the probe's four samples 4 x 2048
    out = graph.invoke({"question": "easy fact"}, context={"max_tokens": 4000})
    assert out["route"].node == "factual_direct" and out["answer"] == "7"
    with pytest.raises(ConfigError, match="below the difficulty probe's worst-case"):
        graph.invoke({"question": "easy sum"}, context={"max_tokens": 4000})


def test_bad_router_inputs_fail_clearly():
    policy, prm = make_policy(), make_prm()
    with pytest.raises(ConfigError, match="pool is empty"):
        create_router_graph(policy, prm, pool={}, tier_fn=lambda q: "math")
    with pytest.raises(ConfigError, match="needs pool"):
        create_router_graph(policy, prm, tier_fn=lambda q: "math")
    with pytest.raises(ConfigError, match="no 'medium' entry"):
        create_router_graph(policy, prm, tier_fn=lambda q: "math", pool={"large": (policy, None)})
    with pytest.raises(ConfigError, match="only used with tier_fn"):
        create_router_graph(policy, prm, pool={"large": (policy, None)})
    graph = create_router_graph(
        policy, prm, tier_fn=lambda q: "poetry",
        pool={"large": (policy, None), "medium": (policy, None)},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="tier_fn returned 'poetry'"):
        graph.invoke({"question": "q"})
    with pytest.raises(ConfigError, match="unknown strategy"):
        create_router_graph(policy, prm, table={"easy": {"strategy": "nope"}})
    with pytest.raises(ConfigError, match="bin 'easy'.*needs a PRM"):
        create_router_graph(policy, None)  # beam search needs a PRM
    with pytest.raises(ConfigError, match="temperature"):
        ProbeEstimator(policy, temperature=-1.0)
    with pytest.raises(ConfigError, match="k must be"):
        ProbeEstimator(policy, k=0)
    with pytest.raises(ConfigError, match="unknown estimator"):
        create_router_graph(policy, prm, estimator="oracle")
    with pytest.raises(InputError, match="empty"):
        create_router_graph(policy, prm).invoke({"question": "  "})


def test_budget_below_the_probe_cost_is_rejected_at_build_time():
    policy, prm = make_policy(num_parameters=1000), make_prm(num_parameters=1000)
    est = ProbeEstimator(policy, prm, k=4, max_tokens=100)
    worst = 2 * 1000 * 4 * 100 * 2  # policy + PRM, k samples x cap
    with pytest.raises(ConfigError, match="below the difficulty probe's worst-case cost"):
        create_router_graph(policy, prm, estimator=est, max_flops=worst - 1)
    with pytest.raises(ConfigError, match="max_tokens"):
        create_router_graph(policy, prm, estimator=est, max_tokens=799)
    create_router_graph(policy, prm, estimator=est, max_flops=worst)
    with pytest.raises(ConfigError, match="positive"):
        create_router_graph(policy, prm, max_flops=-1)


def test_malformed_pools_tiers_bins_and_budgets_fail_clearly():
    policy, prm = make_policy(), make_prm()
    for bad in (None, "large", (prm,), (policy, prm, prm)):
        with pytest.raises(ConfigError, match=r"pool\['large'\] must be \(policy, prm\)"):
            create_router_graph(
                policy, prm, tier_fn=lambda q: "math", pool={"large": bad, "medium": policy}
            )
    pool = {"large": policy, "medium": (policy, None)}  # a bare policy is (policy, None)
    for raw in (None, 3, "astrology"):
        graph = create_router_graph(policy, prm, tier_fn=lambda q, raw=raw: raw, pool=pool)
        with pytest.raises(ConfigError, match=f"tier_fn returned {raw!r}; expected one of"):
            graph.invoke({"question": "q"})
    with pytest.raises(ConfigError, match=r"unknown difficulty bin\(s\) \['extreme'\]"):
        create_router_graph(policy, prm, table={"extreme": {"strategy": "cot"}})
    with pytest.raises(ConfigError, match="below the difficulty probe's.*verifier's max_tokens"):
        create_router_graph(policy, prm, estimator="verifier", max_flops=1.0)
    free = ClassifierEstimator(lambda q: "hard")  # costs nothing: any budget is enough
    create_router_graph(policy, prm, estimator=free, max_flops=1.0)


# -- budgets -------------------------------------------------------------------------------
class CappedPolicy(FakePolicy):
    """A fake that, like a real backend, honours ``max_step_tokens`` and knows whole-solution
    calls (it writes ``depth`` steps then a boxed answer)."""

    def __init__(self, depth: int = 3, **kw):
        self.depth = depth
        super().__init__(self._step, honour_step_cap=True, **kw)
        self._whole = False

    def _step(self, prefix: Trajectory, i: int) -> str | Step:
        a = answer_for(prefix.question, i)
        # a hard question's solutions end without an answer (EOS), so searches finish
        final = f"\\boxed{{{a}}}" if a is not None else Step(text="no idea", finish_reason="eos")
        if self._whole:
            body = ["thinking about it some more"] * self.depth  # no digits: no fake answer
            return "\n\n".join([*body, final if isinstance(final, str) else final.text])
        k = len(prefix.steps)
        return "thinking about it some more" if k < self.depth else final

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self._whole = not params.stop_at_step
        return await super()._agenerate(prefixes, n, params)


def test_budget_downgrades_to_a_cheaper_allocation_that_fits():
    policy, prm = CappedPolicy(), make_prm(0.1)
    est = ProbeEstimator(policy, prm, k=4, max_tokens=32)
    free = create_router_graph(policy, prm, estimator=est, reuse_probe=False)
    out = free.invoke({"question": "hard q"})
    hard_cost = out["usage"].flops
    probe_cost = out["difficulty"].usage.flops
    assert out["route"].node == "hard_beam_search"
    budget = 2 * 1000 * 4 * 32 * 2 + 0.3 * (hard_cost - probe_cost)
    capped = create_router_graph(policy, prm, estimator=est, reuse_probe=False, max_flops=budget)
    out = capped.invoke({"question": "hard q"})
    assert out["route"].reason == "budget_downgrade" and out["route"].node != "hard_beam_search"
    assert out["usage"].flops <= budget
    # The probe runs, but what is left cannot pay for any allocation: the probe answers.
    searches = BudgetTable(
        easy=RouteAllocation(strategy="beam_search", config={"n": 16, "beam_width": 4}),
        medium=RouteAllocation(strategy="beam_search", config={"n": 16, "beam_width": 4}),
    )
    out = create_router_graph(
        policy, prm, estimator=est, table=searches, reuse_probe=False, max_flops=3e6
    ).invoke({"question": "medium q"})
    assert out["route"].reason == "budget_probe_only" and out["route"].node == "finalize"
    assert out["answer"] == "7" and out["stop_reason"] == "budget"
    assert 0 < out["usage"].flops <= 3e6
    # The build-time check leaves out the prompt; a budget the probe cannot pay at run
    # time (its prompt bound included) is refused call by call: nothing is spent.
    tight = 2 * 1000 * 4 * 32 * 2
    out = create_router_graph(
        policy, prm, estimator=est, reuse_probe=False, max_flops=tight
    ).invoke({"question": "medium q"})
    assert out["route"].reason == "budget_probe_only" and out["route"].budget_stopped
    assert out["usage"].flops == 0 and out["answer"] is None


async def test_meter_lowers_the_step_cap_then_refuses():
    from langchain_tts.ledger import Ledger, MeteredPolicy, MeteredPRM

    policy = CappedPolicy(num_parameters=10)
    q = Trajectory(question="hard q")  # 6 bytes + 64 overhead = 70 prompt tokens per sample
    ledger = Ledger(max_tokens=70 * 2 + 2 * 5)  # room for 2 samples of 5 tokens each
    res = await MeteredPolicy(policy, ledger).agenerate([q], 2, SamplingParams())
    assert policy.calls[-1][2].max_step_tokens == 5  # lowered from 2048 to what fits
    assert res.usage.tokens <= 150 and ledger.spent == res.usage
    spent = ledger.spent
    ledger.max_tokens = spent.tokens + 10  # not even one token per sample now
    res = await MeteredPolicy(policy, ledger).agenerate([q], 2, SamplingParams())
    assert ledger.exhausted and res.usage == Usage() and ledger.spent == spent
    assert [s.finish_reason for s in res.steps[0]] == ["length", "length"]
    scores = await MeteredPRM(make_prm(0.7), ledger).ascore([Trajectory(question="q", steps=["a"])])
    assert scores.scores == [[0.0]] and scores.usage == Usage()  # refused: unverified


_ALLOCS = [
    ("cot", {}),
    ("best_of_n", {"n": 2}),
    ("best_of_n", {"n": 8}),
    ("majority_vote", {"n": 6}),
    ("weighted_vote", {"n": 4}),
    ("beam_search", {"n": 8, "beam_width": 2}),
    ("beam_search", {"n": 16, "beam_width": 4}),
    ("dvts", {"n": 8, "beam_width": 4}),
    ("mcts", {"simulations": 6, "expand_k": 2}),
    ("revision", {"revisions": 2}),
    ("hybrid", {"split": "sqrt", "budget": 4}),
]


@pytest.mark.parametrize("seed", range(4))
def test_usage_never_exceeds_max_flops(seed: int):
    rng = random.Random(seed)
    policy, prm = CappedPolicy(depth=rng.randint(1, 4)), make_prm(rng.random())
    k, cap = rng.randint(1, 4), rng.choice([16, 32])
    probe_worst = 2 * 1000 * k * cap * 2
    for _ in range(6):
        table = BudgetTable(**{
            b: RouteAllocation(strategy=s, config=c)
            for b, (s, c) in zip(("easy", "medium", "hard"), rng.sample(_ALLOCS, 3))
        })  # fmt: skip
        max_flops = probe_worst * rng.uniform(1.0, 12.0)
        graph = create_router_graph(
            policy, prm, estimator=ProbeEstimator(policy, prm, k=k, max_tokens=cap),
            table=table, max_flops=max_flops, reuse_probe=rng.random() < 0.5,
        )  # fmt: skip
        q = rng.choice(["easy q", "medium q", "hard q"])
        out = graph.invoke({"question": q})
        assert out["usage"].flops <= max_flops, (seed, table, q, out["route"])


# -- turns, knobs and the composition contract ------------------------------------------------
TURNS = ["Start with 5. Add 6.", "Start with 50. Add 6.", "Start with 7. Add 1."]
SUMS = ["11", "56", "8"]


def adder(prefix: Trajectory, i: int) -> str:
    """Every sample boxes the sum of the question's numbers: the probe agrees (easy)."""
    nums = [int(x) for x in re.findall(r"-?\d+", prefix.question.split("\n\n")[0])]
    return f"so the answer is \\boxed{{{sum(nums)}}}"


def test_three_turns_on_one_thread_answer_each_turn(caplog):
    policy, prm = FakePolicy(adder), make_prm(0.9)
    saver = InMemorySaver(serde=serializer())  # the router's types are the package's own
    router = create_router_graph(policy, prm, checkpointer=saver)
    fresh = create_router_graph(policy, prm)
    rc = {"configurable": {"thread_id": "chat-1"}}
    # turn 2 turns probe reuse off through the run context: the easy bin's best-of-N runs
    contexts = [None, {"reuse_probe": False}, None]
    outs = []
    for q, gold, ctx in zip(TURNS, SUMS, contexts):
        out = router.invoke({"messages": [("human", q)]}, rc, context=ctx)
        assert out["question"] == q and out["answer"] == gold
        assert all(t.question.startswith(q) for t in out["candidates"])
        assert out["usage"] == fresh.invoke({"question": q}, context=ctx)["usage"]
        assert out["messages"][-1].content == out["solution"]
        outs.append(out)
    assert [o["route"].node for o in outs] == ["finalize", "easy_best_of_n", "finalize"]
    assert outs[1]["route"].reason == "table" and outs[0]["route"].reason == "reuse_probe"
    state = router.get_state(rc).values
    assert state["thread_usage"] == outs[0]["usage"] + outs[1]["usage"] + outs[2]["usage"]
    assert [type(m) for m in outs[-1]["messages"]] == [HumanMessage, AIMessage] * 3
    # the steps' pending writes load typed, with nothing blocked or unregistered
    results = [t.result for s in router.get_state_history(rc) for t in s.tasks if t.result]
    routes = [r["route"] for r in results if r.get("route") is not None]
    assert routes and all(isinstance(r, Route) for r in routes)
    assert not [r for r in caplog.records if "eserializ" in r.getMessage()]


def test_router_knobs_are_its_context_schema_with_did_you_mean_errors():
    policy, prm = FakePolicy(adder), make_prm(0.9)
    router = create_router_graph(policy, prm, reuse_threshold=0.5)
    schema = router.get_context_jsonschema()
    assert schema["properties"]["reuse_threshold"]["default"] == 0.5
    assert {"max_flops", "max_tokens", "reuse_probe", "reuse_samples"} <= set(schema["properties"])
    q = {"question": TURNS[0]}
    with pytest.raises(ConfigError, match=r"reuseprobe.*did you mean 'reuse_probe'"):
        router.invoke(q, context={"reuseprobe": False})
    with pytest.raises(ConfigError, match="reuse_threshold"):
        router.invoke(q, {"configurable": {"reuse_threshold": 2.0}})
    with pytest.raises(ConfigError, match=r"did you mean 'reuse_probe'"):
        router.invoke(q, {"configurable": {"reuse_prob": False}})
    # strategy knobs are the table's, not the router's: an error in its own context
    with pytest.raises(ConfigError, match="unknown knob 'n'"):
        router.invoke(q, context={"n": 4})
    # under the graph's name, in configurable
    out = router.invoke(q, {"configurable": {"tts_router": {"reuse_probe": False}}})
    assert out["route"].node == "easy_best_of_n"
    # a per-run budget the probe cannot fit is refused before any model call
    policy.calls.clear()
    with pytest.raises(ConfigError, match="max_tokens"):
        router.invoke(q, context={"max_tokens": 10})
    assert policy.calls == []


def test_a_parents_context_does_not_reach_the_tables_strategies():
    policy, prm = FakePolicy(adder), make_prm(0.9)
    table = BudgetTable(easy=RouteAllocation(strategy="best_of_n", config={"n": 4}))
    router = create_router_graph(
        policy, prm, table=table, reuse_samples=False, name="router", output_key="tts"
    )

    class App(MessagesState, total=False):
        tts: dict

    g = StateGraph(App)
    g.add_node("router", router)
    g.add_edge(START, "router")
    g.add_edge("router", END)
    app = g.compile()
    msgs = {"messages": [("human", TURNS[0])]}
    # "n" is a knob of other TTS nodes of the parent: the router's table keeps its n = 4
    out = app.invoke(msgs, context={"n": 6, "router": {"reuse_probe": False}})
    assert out["tts"]["route"]["node"] == "easy_best_of_n" and out["tts"]["answer"] == "11"
    assert whole_calls(policy) == [(1, 4), (1, 4)] and len(out["tts"]["candidates"]) == 4


def test_a_parent_keeps_its_own_route_with_output_key():
    policy, prm = FakePolicy(adder), make_prm(0.9)

    class App(MessagesState, TTSUsageState, total=False):
        route: str  # the parent's own keys: the router neither reads nor writes them
        difficulty: str
        question: dict
        usage: dict
        tts: dict

    def front(state: App) -> dict:
        n = len(state["messages"])
        return {"route": "math", "difficulty": "mine", "question": {"turn": n}, "usage": {}}

    router = create_router_graph(policy, prm, name="router", output_key="tts")
    assert router.get_output_jsonschema()["properties"].keys() == {"messages", "tts", "tts_usage"}
    g = StateGraph(App)
    g.add_node("front", front)
    g.add_node("router", router)
    g.add_edge(START, "front")
    g.add_edge("front", "router")
    g.add_edge("router", END)
    app = g.compile(checkpointer=InMemorySaver(serde=serializer()))
    rc = {"configurable": {"thread_id": "app"}}
    total = 0
    for q, gold in zip(TURNS, SUMS):
        out = app.invoke({"messages": [("human", q)]}, rc)
        assert out["route"] == "math" and out["difficulty"] == "mine" and out["usage"] == {}
        tts = out["tts"]
        assert tts["question"] == q and tts["answer"] == gold and tts["strategy"] == "router"
        assert tts["route"]["node"] == "finalize" and tts["route"]["reason"] == "reuse_probe"
        assert tts["difficulty"]["bin"] == "easy" and tts["difficulty"]["samples"] == 4
        assert json.loads(json.dumps(tts)) == tts  # plain JSON data
        assert out["messages"][-1].content == tts["solution"]
        total += tts["usage"]["policy_calls"]
    assert out["tts_usage"]["policy_calls"] == total == 3
    with pytest.raises(ConfigError, match="key of the router's state"):
        create_router_graph(policy, prm, output_key="route")


def test_reuse_samples_is_a_per_run_knob():
    policy, prm = FakePolicy(adder), make_prm(0.9)
    table = BudgetTable(easy=RouteAllocation(strategy="best_of_n", config={"n": 6}))
    router = create_router_graph(policy, prm, table=table, reuse_probe=False, reuse_samples=False)
    q = {"question": TURNS[0]}
    assert router.invoke(q)["route"].reused_samples == 0
    assert whole_calls(policy) == [(1, 4), (1, 6)]
    policy.calls.clear()
    out = router.invoke(q, context={"reuse_samples": True})
    assert out["route"].reused_samples == 4 and whole_calls(policy) == [(1, 4), (1, 2)]


def test_the_embedded_preset_is_the_table_router_eval_calibrated():
    """The ``embedded_calculator`` preset is what ``python -m research.router_eval`` chose,
    seeds aside (docs/results/router_eval_calculator.json): regenerate one, update the other."""
    from pathlib import Path

    from langchain_tts.routing import embedded_router_kwargs

    path = Path(__file__).resolve().parents[1] / "docs/results/router_eval_calculator.json"
    measured = BudgetTable.from_dict(json.loads(path.read_text())["calibration"]["table"])
    preset = BudgetTable.preset("embedded_calculator")
    for b, alloc in preset.items():
        seedless = {k: v for k, v in measured[b].config.items() if k != "seed"}
        assert (alloc.strategy, alloc.config) == (measured[b].strategy, seedless), b
    assert measured.thresholds is not None and preset.thresholds is not None
    assert (preset.thresholds.easy, preset.thresholds.hard) == (
        measured.thresholds.easy,
        measured.thresholds.hard,
    )
    kwargs = embedded_router_kwargs("small", "calculator")
    assert kwargs["estimator"] == {"kind": "verifier", "max_tokens": 256}
    assert kwargs["table"] == preset
    assert embedded_router_kwargs("small", "strong") == {} == embedded_router_kwargs("large")


def test_bad_router_and_estimator_arguments_are_config_errors_at_build_time():
    """Each was an IndexError, a TypeError, or an error only at the first run."""
    policy, prm = make_policy(), make_prm()
    with pytest.raises(ConfigError, match="max_flops must be a number, got True"):
        create_router_graph(policy, prm, max_flops=True)
    with pytest.raises(ConfigError, match="prm_weight must be a number in"):
        create_router_graph(policy, prm, estimator={"kind": "probe", "prm_weight": "0.5"})
    with pytest.raises(ConfigError, match="(?s)VerifierEstimator.*aggregation"):
        create_router_graph(policy, prm, estimator={"kind": "verifier", "aggregation": "lsat"})
    with pytest.raises(ConfigError, match="max_tokens must be a positive integer"):
        VerifierEstimator(policy, prm, max_tokens=True)
    with pytest.raises(ConfigError, match=r"scores\['a'\] must be a p_solve in \[0, 1\]"):
        fit_thresholds({"a": float("nan"), "b": 0.5}, {"a": True, "b": False})
    with pytest.raises(ConfigError, match=r"scores\['a'\]"):
        fit_thresholds({"a": 5.0, "b": 0.5}, {"a": True, "b": False})


def test_calibrate_refuses_records_whose_cost_or_budget_is_no_number():
    """A NaN cost used to win or lose a bin depending on the records' order."""

    def rec(strategy: str, flops: float, budget: object = 4) -> dict:
        return {"id": "p1", "strategy": strategy, "budget": budget, "correct": True,
                "flops": flops}  # fmt: skip

    with pytest.raises(ConfigError, match="record 0 has flops=nan"):
        calibrate([rec("best_of_n", float("nan")), rec("beam_search", 1e9)])
    with pytest.raises(ConfigError, match="record 1 has budget='four'"):
        calibrate([rec("best_of_n", 1e9), rec("beam_search", 1e9, "four")])


def test_a_ledger_refuses_a_cap_that_is_no_number():
    from langchain_tts.ledger import Ledger

    for cap in (float("nan"), True, "1e9"):
        with pytest.raises(ConfigError, match="max_tokens must be a number"):
            Ledger(max_tokens=cap)  # type: ignore[arg-type]
    assert Ledger(max_tokens=0).max_tokens == 0  # a spent budget: every call is refused
