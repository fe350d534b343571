"""End to end through the real code path: the shipped embedded policy and PRM on CPU."""

from __future__ import annotations

import random

import pytest

from langchain_tts import create_tts_graph, load_default
from langchain_tts.core.types import Trajectory
from langchain_tts.eval.grading import answers_match
from langchain_tts.eval.synthetic import corrupt_steps, make_split
from langchain_tts.models import load_default_policy, load_default_prm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models():
    return load_default(prm="strong")  # the Qwen-interface PRM's code path


@pytest.fixture(scope="module")
def problems():
    return make_split("test", 16)


def test_load_default_is_offline_hf_format(models, monkeypatch):
    policy, prm = models
    assert policy.num_parameters > 500_000 and prm.num_parameters > policy.num_parameters
    # The default runtime is the native one; the folders are what transformers loads.
    assert type(policy.model).__name__ == "NativeCausalLM"
    assert type(prm.model).__name__ == "NativeCheckerPRM"
    assert policy.model.config.architectures == ["LlamaForCausalLM"]
    assert prm.model.config.architectures == ["LlamaForProcessRewardModel"]
    with pytest.raises(Exception):  # noqa: B017 - any config error will do
        load_default(size="huge")


def test_greedy_policy_solves_most_easy_problems(models):
    # Measured: 90-95% greedy accuracy at 1-2 operations (docs/model_card.md).
    policy, _ = models
    easy = [p for p in make_split("test", 160) if p.difficulty <= 2]
    outs = create_tts_graph(policy, None, "cot").batch([{"question": p.question} for p in easy])
    correct = sum(answers_match(o["answer"], p.answer) for o, p in zip(outs, easy))
    assert correct >= 0.8 * len(easy), f"{correct}/{len(easy)}"


def test_strong_prm_prefers_gold_over_corrupted_steps(models, problems):
    _, prm = models
    rng = random.Random(0)
    hard = [p for p in problems if p.difficulty >= 3]
    gold = [Trajectory(question=p.question, steps=p.gold_steps) for p in hard]
    bad = [Trajectory(question=p.question, steps=corrupt_steps(p, rng)) for p in hard]
    res = prm.score(gold + bad)
    g_final = [s[-1] for s in res.scores[: len(hard)]]
    b_final = [s[-1] for s in res.scores[len(hard) :]]
    wins = sum(g > b for g, b in zip(g_final, b_final))
    assert wins >= 0.9 * len(hard), (g_final, b_final)
    assert min(g_final) > 0.5


def test_beam_search_end_to_end(models, problems):
    policy, prm = models
    p = next(p for p in problems if p.difficulty == 4)
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 8, "beam_width": 4, "seed": 0})
    updates = list(graph.stream({"question": p.question}, stream_mode="updates"))
    steps = [u["step"] for u in updates if "step" in u]
    final = updates[-1]["finalize"]
    assert len(steps) >= p.difficulty  # one update per search step
    assert final["answer"] is not None
    assert all(len(c.step_scores) == len(c.steps) for c in final["candidates"])
    out = graph.invoke({"question": p.question})
    u = out["usage"]
    # Exactly one policy call and one PRM call per search step.
    assert u.policy_calls == u.prm_calls == len(steps)
    assert u.policy_generated_tokens > 0
    # the same seeded run again: the PRM reads what it scored in the stream above
    assert u.prm_cached_tokens > 0
    assert u.prm_flops == pytest.approx(2 * prm.num_parameters * u.prm_tokens)
    assert u.policy_flops == pytest.approx(
        2 * policy.num_parameters * (u.policy_prompt_tokens + u.policy_generated_tokens)
    )


@pytest.mark.parametrize("strategy", ["best_of_n", "majority_vote", "weighted_vote"])
def test_sampling_strategies_end_to_end(models, problems, strategy):
    policy, prm = models
    p = next(p for p in problems if p.difficulty == 3)
    out = create_tts_graph(policy, prm, strategy, {"n": 8, "seed": 1}).invoke(
        {"question": p.question}
    )
    assert len(out["candidates"]) == 8
    assert out["answer"] is not None
    assert out["usage"].policy_calls == 1


async def test_async_messages_input_end_to_end(models, problems):
    policy, prm = models
    p = problems[0]
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    out = await graph.ainvoke({"messages": [("human", p.question)]})
    assert out["messages"][-1].type == "ai"
    assert "\\boxed" in out["messages"][-1].content


def test_large_policy_and_weak_prm_load():
    assert load_default_policy("large").num_parameters > load_default_policy("small").num_parameters
    assert load_default_prm("weak").num_parameters < load_default_prm("strong").num_parameters


def test_the_embedded_router_under_a_budget_continues_verified_steps_within_it():
    """The calibrated embedded router with a per-run FLOPs cap: the estimate flags a hard
    question, the strategy continues the steps the verifier accepted, and the run (estimate
    included) stays within the cap, downgrading only when the rest does not fit."""
    from langchain_tts.routing import (
        BudgetTable,
        RouteAllocation,
        VerifierEstimator,
        create_router_graph,
        embedded_router_kwargs,
    )

    policy, prm = load_default()  # the calculator verifier the preset was calibrated for
    kwargs = embedded_router_kwargs("small", "calculator")
    preset = kwargs["table"]  # the calibrated table, seeded: the same runs every time
    kwargs["table"] = BudgetTable(
        **{
            b: RouteAllocation(strategy=a.strategy, config={**a.config, "seed": 0})
            for b in ("easy", "medium", "hard")
            for a in [getattr(preset, b)]
        }
    )
    # a short token cap keeps the estimate's worst case (checked against the budget) low
    kwargs["estimator"] = VerifierEstimator(policy, prm, max_tokens=128)
    router = create_router_graph(policy, prm, **kwargs)
    # a cap must lie above the estimate's worst case (a lower cap is a ConfigError) and below
    # the full run: the flagged hard question whose run spends the most
    least = 1.02 * kwargs["estimator"].max_cost()[0]
    runs = []
    for p in make_split("test", 64):
        if p.difficulty >= 6:
            out = router.invoke({"question": p.question})
            if out["route"].prefix_steps:
                runs.append((out["usage"].flops, p, out))
    assert runs, "no hard question whose attempt the verifier partly accepts"
    full, flagged, out = max(runs, key=lambda r: r[0])
    cap = max(0.8 * full, least)
    assert cap < full
    capped = router.invoke({"question": flagged.question}, context={"max_flops": cap})
    assert capped["usage"].flops <= cap
    assert capped["route"].reason in ("table", "budget_downgrade", "budget_probe_only")
    assert capped["route"].prefix_steps == out["route"].prefix_steps  # the same estimate


def _step_repair_price(est, route, policy, prm, **cfg) -> float:
    from langchain_tts.routing import allocation_cost

    return allocation_cost(
        "step_repair", {"n": 16, **cfg}, est, policy, prm,
        prefix_steps=len(route.prefix_steps), rejected=route.prefix_rejected,
    )[0]  # fmt: skip


def test_the_embedded_router_runs_step_repair_when_its_typical_run_fits():
    """Step repair is priced at a typical run (one rejected step found in the first rounds),
    not at all n samples: under a cap that pays for the estimate and that price, a flagged
    question whose rejected step the router hands over runs step repair, not the estimate's
    answer, and gets the uncapped run's answer within the cap. The router is the one
    ``embedded_router_kwargs`` gives (seeded): its estimate's worst case lets a per-run cap
    this low through."""
    from langchain_tts.routing import (
        BudgetTable,
        RouteAllocation,
        create_router_graph,
        embedded_router_kwargs,
    )

    policy, prm = load_default()
    kwargs = embedded_router_kwargs("small", "calculator")
    preset = kwargs["table"]
    kwargs["table"] = BudgetTable(
        **{b: RouteAllocation(strategy=preset[b].strategy, config={**preset[b].config, "seed": 0})
           for b in ("easy", "medium", "hard")},
        thresholds=preset.thresholds,
    )  # fmt: skip
    router = create_router_graph(policy, prm, **kwargs)
    least = 2.0 * (policy.num_parameters + prm.num_parameters) * 256  # the estimate's worst
    for p in make_split("test", 64):
        if p.difficulty < 5:
            continue
        out = router.invoke({"question": p.question})
        route, est = out["route"], out["difficulty"]
        if not (route.prefix_rejected and answers_match(out["answer"], p.answer)):
            continue
        cap = est.usage.flops + 1.05 * _step_repair_price(est, route, policy, prm)
        if least < cap and out["usage"].flops <= cap:
            break
    else:
        raise AssertionError("no flagged question whose run fits its typical price")
    all_at_once = _step_repair_price(est, route, policy, prm, first_round=16)
    assert cap < est.usage.flops + all_at_once  # priced at all 16 samples: no fit
    capped = router.invoke({"question": p.question}, context={"max_flops": cap})
    assert capped["route"].reason == "table" and capped["route"].strategy == "step_repair"
    assert capped["answer"] == out["answer"] and capped["usage"].flops <= cap


def test_the_router_prices_a_search_by_what_it_writes_where_caches_hold_the_rest():
    """With prefix caches on both embedded models, particle filtering's price counts the
    tokens it writes and has scored, not every prefix it re-reads: never below what a run
    spends, and well under the cache-blind price."""
    from types import SimpleNamespace

    from langchain_tts.routing import (
        BudgetTable,
        RouteAllocation,
        allocation_cost,
        create_router_graph,
        embedded_router_kwargs,
    )

    policy, prm = load_default()
    assert policy.reuses_prefixes and prm.reuses_prefixes
    kwargs = embedded_router_kwargs()
    alloc = RouteAllocation(strategy="particle_filtering", config={"n": 16, "seed": 0})
    table = BudgetTable(easy=alloc, medium=alloc, hard=alloc, thresholds=kwargs["table"].thresholds)
    router = create_router_graph(
        policy, prm, estimator=kwargs["estimator"], table=table, reuse_probe=False
    )
    blind = [SimpleNamespace(num_parameters=m.num_parameters, reuses_prefixes=False)
             for m in (policy, prm)]  # fmt: skip
    ratios = []
    for p in make_split("validation", 64)[::8]:
        out = router.invoke({"question": p.question})
        est, route = out["difficulty"], out["route"]
        where = {"prefix_steps": len(route.prefix_steps), "rejected": route.prefix_rejected}
        price = allocation_cost("particle_filtering", {"n": 16}, est, policy, prm, **where)[0]
        old = allocation_cost("particle_filtering", {"n": 16}, est, *blind, **where)[0]
        spent = out["usage"].flops - est.usage.flops
        assert 0 < spent <= price < old / 2
        ratios.append(spent / price)
    assert sum(ratios) / len(ratios) > 0.35


@pytest.mark.parametrize("uid", ["test-86", "test-151"])
def test_the_embedded_router_cut_short_by_its_budget_answers_with_a_finished_solution(uid):
    """What the estimate leaves is step repair's own budget: a question whose repairs cost
    more than their price (and the cap) stops at the call it cannot pay (stop_reason
    "budget"), within the cap, and answers with a finished solution: its own, or the
    estimate's attempt when none of its own finished (test-151)."""
    from langchain_tts.routing import (
        BudgetTable,
        RouteAllocation,
        VerifierEstimator,
        allocation_cost,
        create_router_graph,
        embedded_router_kwargs,
    )

    policy, prm = load_default()
    kwargs = embedded_router_kwargs()
    preset = kwargs["table"]
    kwargs["table"] = BudgetTable(
        **{b: RouteAllocation(strategy=preset[b].strategy, config={**preset[b].config, "seed": 0})
           for b in ("easy", "medium", "hard")},
        thresholds=preset.thresholds,
    )  # fmt: skip
    kwargs["estimator"] = VerifierEstimator(policy, prm, max_tokens=128)  # a lower floor
    router = create_router_graph(policy, prm, **kwargs)
    p = next(p for p in make_split("test", 320) if p.uid == uid)
    free = router.invoke({"question": p.question})
    est, route = free["difficulty"], free["route"]
    assert free["stop_reason"] in ("accepted", "unrepaired") and route.strategy == "step_repair"
    price = allocation_cost("step_repair", {"n": 16}, est, policy, prm,
                            prefix_steps=len(route.prefix_steps),
                            rejected=route.prefix_rejected)[0]  # fmt: skip
    cap = est.usage.flops + 1.01 * price  # the price fits; this question's repairs do not
    assert free["usage"].flops > cap
    policy.clear_cache()  # cold, as the uncapped run was
    prm.clear_cache()
    out = router.invoke({"question": p.question}, context={"max_flops": cap})
    assert out["route"].reason == "table" and out["route"].budget_stopped
    assert out["stop_reason"] == "budget" and out["usage"].flops <= cap
    assert out["solution"].endswith(f"\\boxed{{{out['answer']}}}")  # finished, not a partial
    if out["route"].probe_fallback:
        assert out["answer"] == est.answer
    assert out["route"].probe_fallback == (uid == "test-151")


def test_the_embedded_router_with_limits_reports_its_route_and_answer():
    """On the embedded models: ``limits=`` refuses an absurd knob before any compute, and a
    standalone custom stream carries the router's own ``tts_route`` then ``tts_done``."""
    from langchain_tts import ConfigError, ServeLimits
    from langchain_tts.routing import create_router_graph, embedded_router_kwargs

    policy, prm = load_default()
    router = create_router_graph(
        policy, prm, limits=ServeLimits(default_max_tokens=5e5), **embedded_router_kwargs()
    )
    q = {"question": "Start with 12. Add 7. Multiply by 2."}
    with pytest.raises(ConfigError, match=r"maxima\.max_flops"):
        router.invoke(q, context={"max_flops": 1e30})
    events = list(router.stream(q, stream_mode="custom"))
    assert [e["event"] for e in events] == ["tts_route", "tts_done"]
    assert events[-1]["answer"] == "38" and events[-1]["usage"]["flops"] > 0


def test_the_embedded_policy_gives_a_short_prefix_its_step_next_to_a_long_one():
    """Each prefix's room is its own: next to a prefix near the end of the context the
    short one's step is what it is alone (it was cut, or empty)."""
    from langchain_tts.core.config import SamplingParams

    policy = load_default_policy()
    q = "Start with 14. Add 9. Multiply by 3. Subtract 17."
    short, params = Trajectory(question=q), SamplingParams(temperature=0.0)
    alone = policy.generate([short], 1, params).steps[0][0]
    for k in (51, 52):  # 510 and 519 prompt tokens: the context is 512
        long = Trajectory(question=q, steps=["14+9=23"] * k)
        assert policy.generate([short, long], 1, params).steps[0][0] == alone
