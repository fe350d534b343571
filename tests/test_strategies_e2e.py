"""Every strategy of ``STRATEGIES``, end to end on the embedded default models.

Small budgets (N=2..4, 3 MCTS simulations) on 2 synthetic problems: the real code path
(HF policy, Qwen-style PRM, LangGraph), not accuracy. Each case checks the output contract,
that compute is counted, that search strategies make one policy call per search step
(batching), that ``stream_mode="updates"`` shows every step, and chat input.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from langchain_tts import create_tts_graph, load_default, load_default_policy
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.eval.synthetic import make_split
from langchain_tts.graph import STRATEGIES
from langchain_tts.strategies import get_strategy

pytestmark = pytest.mark.slow

# case id -> (strategy, config, the looping node, stop reasons it may end with)
CASES: dict[str, tuple[str, dict[str, Any], str, set[str]]] = {
    "cot": ("cot", {}, "sample", {"sampled"}),
    "best_of_n": ("best_of_n", {"n": 4}, "sample", {"sampled"}),
    "majority_vote": ("majority_vote", {"n": 4}, "sample", {"sampled"}),
    "weighted_vote": ("weighted_vote", {"n": 4}, "sample", {"sampled"}),
    "beam_search": (
        "beam_search",
        {"n": 4, "beam_width": 2},
        "step",
        {"all_finished", "enough_finished", "max_steps"},
    ),
    "beam_search_width_x_k": (
        "beam_search",
        {"beam_width": 2, "samples_per_beam": 3},
        "step",
        {"all_finished", "enough_finished", "max_steps"},
    ),
    "dvts": ("dvts", {"n": 4, "beam_width": 2}, "step", {"all_finished", "max_steps"}),
    "mcts": (
        "mcts",
        {"simulations": 3, "expand_k": 2, "parallel": 1},
        "simulate",
        {"simulations", "exhausted"},
    ),
    "particle_filtering": (
        "particle_filtering",
        {"n": 4},
        "step",
        {"all_finished", "max_steps"},
    ),
    "revision": ("revision", {"revisions": 1}, "round", {"confident", "max_revisions"}),
    "hybrid": ("hybrid", {"split": "sqrt", "budget": 4}, "round", {"confident", "max_revisions"}),
    "revision_backtrack": (
        "revision",
        {"revisions": 2, "revise": "backtrack"},
        "round",
        {"confident", "max_revisions"},
    ),
    "hybrid_backtrack": (
        "hybrid",
        {"chains": 2, "revisions": 1, "revise": "backtrack"},
        "round",
        {"confident", "max_revisions"},
    ),
    "step_repair": ("step_repair", {"n": 4}, "step", {"accepted", "max_repairs", "unrepaired"}),
}
SAMPLING = ("cot", "best_of_n", "majority_vote", "weighted_vote")


@pytest.fixture(scope="module")
def models():
    return load_default(prm="strong")  # small policy + Qwen-interface PRM


@pytest.fixture(scope="module")
def reviser():
    return load_default_policy("small-revise")  # what revision and hybrid run on


def _policy(models, reviser, strategy: str):
    """Each strategy on the embedded policy it runs on by default (StrategySpec)."""
    return reviser if get_strategy(strategy).embedded_policy == "small-revise" else models[0]


@pytest.fixture(scope="module")
def problems():
    return make_split("test", 2)


def test_every_strategy_is_covered():
    assert {s for s, *_ in CASES.values()} == set(STRATEGIES)


def _check_output(out: dict, stops: set[str]) -> Usage:
    answer = out.get("answer")
    assert answer is None or (isinstance(answer, str) and answer.strip())
    assert out["stop_reason"] in stops, out["stop_reason"]
    assert isinstance(out["solution"], str)
    assert out["candidates"] and all(isinstance(c, Trajectory) for c in out["candidates"])
    if answer is not None:
        assert out["solution"]
    u = out["usage"]
    assert isinstance(u, Usage)
    assert u.tokens > 0 and u.flops > 0
    assert u.policy_generated_tokens > 0 and u.policy_flops > 0
    return u


@pytest.mark.parametrize("case", list(CASES))
def test_strategy_end_to_end(models, reviser, problems, case: str):
    prm = models[1]
    strategy, cfg, loop, stops = CASES[case]
    policy = _policy(models, reviser, strategy)
    graph = create_tts_graph(policy, prm, strategy, {**cfg, "seed": 0})
    for p in problems:
        updates: list[dict] = []
        state: dict = {}
        for mode, chunk in graph.stream(
            {"question": p.question}, {"recursion_limit": 100}, stream_mode=["updates", "values"]
        ):
            if mode == "updates":
                updates.append(chunk)
            else:
                state = chunk
        names = [k for u in updates for k in u]
        assert names[0] == "prepare" and names[-1] == "finalize", names
        u = _check_output(state, stops)
        steps = state["step"]  # search steps (sampling: 1; MCTS: simulations; rounds)
        # One update per search step (the recursion limit is far away).
        assert names.count(loop) == steps >= 1, names
        if strategy in SAMPLING:
            assert steps == u.policy_calls == 1
            scored = strategy in ("best_of_n", "weighted_vote")
            assert u.prm_calls == (1 if scored else 0)
            n = cfg.get("n", 1)
            assert len(state["candidates"]) == n
        elif strategy == "mcts":
            # one policy and one PRM call per simulation, fewer when the tree is exhausted
            assert steps <= cfg["simulations"]
            assert 1 <= u.policy_calls == u.prm_calls == steps
        else:
            # beam search / DVTS: one call per search step; revision / hybrid: per round
            assert u.policy_calls == u.prm_calls == steps
            # a shared PRM reads what it scored before from its prefix cache: FLOPs only
            # for the tokens it computed
            assert u.prm_tokens + u.prm_cached_tokens > 0
            assert u.prm_flops == pytest.approx(2.0 * prm.num_parameters * u.prm_tokens)


@pytest.mark.parametrize("case", list(CASES))
def test_strategy_accepts_chat_messages(models, reviser, problems, case: str):
    prm = models[1]
    strategy, cfg, _, stops = CASES[case]
    policy = _policy(models, reviser, strategy)
    graph = create_tts_graph(policy, prm, strategy, {**cfg, "seed": 0})
    q = problems[0].question
    out = graph.invoke({"messages": [HumanMessage(content=q)]})
    _check_output(out, stops)
    assert out["question"] == q
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and last.content
    if out["answer"] is not None:
        assert last.content == out["solution"]


async def test_seeded_runs_reproduce_under_concurrency(models, problems):
    """A seeded graph run returns the same result alone and among concurrent runs (the
    policy merges concurrent calls into one batch; its seeded streams are per row), and a
    seeded difficulty probe returns the same estimate twice."""
    import asyncio

    from langchain_tts.routing import ProbeEstimator

    policy, prm = models
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 4, "seed": 11})
    q = problems[0].question
    alone = await graph.ainvoke({"question": q})
    crowd = await asyncio.gather(
        *(graph.ainvoke({"question": p}) for p in [q, problems[1].question, q])
    )
    texts = [c.text for c in alone["candidates"]]
    assert [c.text for c in crowd[0]["candidates"]] == texts
    assert [c.text for c in crowd[2]["candidates"]] == texts
    probe = ProbeEstimator(policy, prm, k=4, seed=3)
    a, b = await probe.aestimate(q), await probe.aestimate(q)
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
    assert a.p_solve == b.p_solve


@pytest.mark.parametrize("case", list(CASES))
def test_strategy_continues_from_prefix_steps(models, reviser, problems, case: str):
    """``prefix_steps``: the search starts after the given steps. Every candidate of a search
    carries them (revision's later rounds rewrite whole solutions, so there only the first
    attempts must), and the policy never writes them again."""
    prm = models[1]
    strategy, cfg, _, stops = CASES[case]
    policy = _policy(models, reviser, strategy)
    graph = create_tts_graph(policy, prm, strategy, {**cfg, "seed": 0})
    p = next(p for p in problems if len(p.gold_steps) >= 3)
    prefix = p.gold_steps[:2]
    out = graph.invoke({"question": p.question, "prefix_steps": prefix})
    _check_output(out, stops)
    starts = [c.steps[:2] == prefix for c in out["candidates"]]
    if strategy in ("revision", "hybrid"):
        assert any(starts)
    else:
        assert all(starts) and all(len(c.steps) > 2 for c in out["candidates"])
    if out["answer"] is not None and all(starts):
        assert out["solution"].startswith(prefix[0])
    # the next run on the same graph starts from the bare question again
    again = graph.invoke({"question": p.question})
    assert not all(c.steps[:2] == prefix for c in again["candidates"]) or strategy == "cot"
