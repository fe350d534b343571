"""Compute budgets on every strategy: ``max_flops`` / ``max_tokens``.

Every model call of a budgeted run goes through the ledger (:mod:`langchain_tts.ledger`),
which refuses -- before it is made -- a call the budget cannot pay, or lowers its step cap.
The properties, checked over seeded random configs and budgets for every strategy (a
seeded loop: hypothesis is not a dependency):

* ``usage`` never exceeds ``max_flops`` / ``max_tokens``;
* a run that does not say ``stop_reason="budget"`` is exactly the unbudgeted run (the
  budget changed nothing); one that says it spent less than the unbudgeted run;
* an answer is returned whenever some candidate finished;
* a budget that cannot pay even the first call is a ConfigError naming the least budget
  that can, and that least budget runs.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from langchain_tts import create_tts_graph
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BudgetExceededError, ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.graph import STRATEGIES
from langchain_tts.ledger import Ledger, MeteredPolicy, MeteredPRM
from langchain_tts.policies.base import PolicyResult
from langchain_tts.strategies.core import metered
from langchain_tts.testing import FakePolicy, FakePRM

QUESTIONS = ["What is 3 + 4?", "Start with 14. Add 9. Multiply by 3. Subtract 17.", "2+2?"]


class CappedPolicy(FakePolicy):
    """A scripted policy that, like a real backend, honours ``max_step_tokens``.

    Step ``d.i`` (depth d, sample i) has a length that varies with d and i; the step at
    depth ``depth - 1`` writes a boxed answer, so a trajectory finishes only with an answer.
    Whole-solution calls (``stop_at_step=False``) write every step at once.
    """

    def __init__(self, depth: int = 3, **kw: Any):
        self.depth = depth
        self._whole = False
        super().__init__(self._step, honour_step_cap=True, **kw)

    def _text(self, d: int, i: int) -> str:
        if d + 1 >= self.depth:
            return f"so the answer is \\boxed{{{(d + i) % 3}}}"
        return f"step {d}.{i}: " + "x" * ((7 * d + 13 * i) % 23)

    def _step(self, prefix: Trajectory, i: int) -> str:
        d = len(prefix.steps)
        if self._whole:
            return "\n\n".join(self._text(k, i) for k in range(d, max(d + 1, self.depth)))
        return self._text(d, i)

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self._whole = not params.stop_at_step
        return await super()._agenerate(prefixes, n, params)


def step_scores(t: Trajectory) -> list[float]:
    """Deterministic scores in [0.05, 0.95] (not ``hash``: that changes per process)."""
    return [0.05 + 0.9 * ((len(s) * 37 + k * 11) % 100) / 100 for k, s in enumerate(t.steps)]


def random_config(strategy: str, rng: random.Random) -> dict[str, Any]:
    selection = {"selection": rng.choice(["prm_max", "majority", "prm_vote"])}
    if strategy == "cot":
        return {}
    if strategy == "best_of_n":
        return {"n": rng.randint(1, 6), **selection}
    if strategy in ("majority_vote", "weighted_vote"):
        return {"n": rng.randint(1, 6)}
    if strategy == "beam_search":
        if rng.random() < 0.3:
            return {"beam_width": rng.randint(1, 3), "samples_per_beam": rng.randint(1, 3)}
        bw = rng.randint(1, 3)
        return {"n": bw * rng.randint(1, 3), "beam_width": bw, **selection}
    if strategy == "dvts":
        bw = rng.randint(1, 3)
        return {"n": bw * rng.randint(1, 3), "beam_width": bw}
    if strategy == "mcts":
        return {
            "simulations": rng.randint(1, 8),
            "expand_k": rng.randint(1, 3),
            "parallel": rng.randint(1, 3),
            "final": rng.choice(["finished", "most_visited", "best_leaf"]),
        }
    if strategy == "particle_filtering":
        # seeded: an unseeded resampling differs run to run, even on a deterministic policy
        how = rng.choice(["multinomial", "systematic"])
        return {"n": rng.randint(1, 6), "resampling": how, "seed": rng.randint(0, 9)}
    stop = {"stop_threshold": rng.choice([None, 0.5, 0.9])}
    if strategy == "revision":
        return {"revisions": rng.randint(0, 3), **stop, **selection}
    if strategy == "hybrid":
        return {"chains": rng.randint(1, 3), "revisions": rng.randint(0, 2), **stop}
    if strategy == "step_repair":
        knobs = {
            "n": rng.randint(1, 6),
            "first_round": rng.randint(1, 6),
            "repairs": rng.randint(0, 3),
        }
        return {**knobs, **selection}
    raise AssertionError(strategy)


def least_budget(err: ConfigError) -> dict[str, float]:
    m = re.search(r"The least this question runs on is (.*?) \(", str(err))
    assert m, str(err)
    return {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split(", "))}


def _same_run(a: dict, b: dict) -> bool:
    keys = ("answer", "solution", "candidates", "usage", "stop_reason")
    return all(a[k] == b[k] for k in keys)


# -- the property: every strategy, random configs and budgets ------------------------------
TRIALS = 40


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_budget_is_never_exceeded_and_ends_the_search_gracefully(strategy: str):
    rng = random.Random(f"budgets/{strategy}")
    seen: Counter[str] = Counter()
    for trial in range(TRIALS):
        policy = CappedPolicy(rng.randint(1, 5), num_parameters=rng.choice([100, 1000, 7000]))
        prm = FakePRM(step_scores, num_parameters=rng.choice([500, 1000, 20000]))
        cfg = random_config(strategy, rng)
        q = rng.choice(QUESTIONS)
        free_graph = create_tts_graph(policy, prm, strategy, cfg)
        free = free_graph.invoke({"question": q})
        assert free["stop_reason"] != "budget"
        # Budgets from far below the first call's cost to far above the whole run's.
        budgets: dict[str, float] = {}
        kind = rng.choice(["tokens", "flops", "both"])
        if kind in ("tokens", "both"):
            budgets["max_tokens"] = free["usage"].tokens * 10 ** rng.uniform(-1.3, 1.7)
        if kind in ("flops", "both"):
            budgets["max_flops"] = free["usage"].flops * 10 ** rng.uniform(-1.3, 1.7)
        if rng.random() < 0.5:  # set at build time ...
            graph, rc = create_tts_graph(policy, prm, strategy, {**cfg, **budgets}), None
        else:  # ... or per call
            graph, rc = free_graph, {"configurable": budgets}
        ctx = (strategy, trial, cfg, q, budgets)
        try:
            out = graph.invoke({"question": q}, rc)
        except ConfigError as e:
            seen["too small for the first call"] += 1
            assert "cannot pay for even the first model call" in str(e), ctx
            least = least_budget(e)
            assert all(least[k] > budgets[k] for k in least), (ctx, least)
            budgets = {**budgets, **least}  # the least budget it names runs
            out = graph.invoke({"question": q}, {"configurable": budgets})
        u = out["usage"]
        assert u.tokens <= budgets.get("max_tokens", math.inf), ctx
        assert u.flops <= budgets.get("max_flops", math.inf), ctx
        if out["stop_reason"] == "budget":
            seen["budget"] += 1
            # The budget ended the run: it spent less than the run without one.
            assert u != free["usage"] and u.tokens <= free["usage"].tokens, ctx
            assert u.flops <= free["usage"].flops, ctx
        else:
            seen["unchanged"] += 1
            assert _same_run(out, free), ctx  # a budget that did not bind changes nothing
        if any(c.finished for c in out["candidates"]):
            assert out["answer"] is not None, ctx
        assert all(c.finished or c.finish_reason in (None, "budget") for c in out["candidates"])
    # every branch of the property was exercised
    assert set(seen) == {"budget", "unchanged", "too small for the first call"}, seen


# -- what a budget stop returns -------------------------------------------------------------
def test_a_step_the_meter_cuts_short_is_a_partial_and_stops_the_search():
    policy = CappedPolicy(depth=5, num_parameters=0)  # FLOPs aside: a token budget
    prm = FakePRM(step_scores, num_parameters=0)
    cfg = {"n": 4, "beam_width": 2}
    graph = create_tts_graph(policy, prm, "beam_search", cfg)
    free = graph.invoke({"question": "2+2?"})
    assert free["stop_reason"] == "all_finished" and free["answer"] is not None
    q = Trajectory(question="2+2?")
    meter = MeteredPolicy(policy, Ledger())
    first = meter.prompt_bound([q], 4) + 4 * 3  # room for 3 tokens per first step: cut
    out = graph.invoke({"question": "2+2?"}, {"configurable": {"max_tokens": first}})
    assert out["stop_reason"] == "budget" and out["usage"].tokens <= first
    assert out["usage"].policy_calls == 1  # the cut step was the last
    cands = out["candidates"]  # the PRM call could not be paid either: unscored partials
    assert cands and all(not c.finished for c in cands)
    assert "budget" in {c.finish_reason for c in cands}  # the steps that were cut
    assert out["solution"] == cands[0].text  # the best partial one
    assert out["answer"] == cands[0].answer  # as for any cut-short search: its last number


def test_finished_solutions_the_prm_could_not_score_are_voted_on():
    policy = CappedPolicy(depth=2, num_parameters=1)
    prm = FakePRM(step_scores, num_parameters=10**6)  # the PRM call cannot be paid
    graph = create_tts_graph(policy, prm, "best_of_n", {"n": 5})
    out = graph.invoke({"question": "2+2?"}, {"configurable": {"max_flops": 1e5}})
    assert out["stop_reason"] == "budget" and out["usage"].prm_calls == 0
    assert len(out["candidates"]) == 5 and all(c.finished for c in out["candidates"])
    answers = Counter(c.answer for c in out["candidates"])
    assert out["answer"] == answers.most_common(1)[0][0]  # majority: nothing scored them
    # The same for the finished children of a beam search's refused last step.
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    out = graph.invoke({"question": "2+2?"}, {"configurable": {"max_flops": 1e5}})
    assert out["stop_reason"] == "budget" and out["answer"] is not None


def test_a_budget_below_the_first_call_names_the_least_that_runs():
    policy, prm = CappedPolicy(depth=3), FakePRM(step_scores)
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    with pytest.raises(ConfigError) as ei:
        graph.invoke({"question": "2+2?"}, {"configurable": {"max_tokens": 10}})
    msg = str(ei.value)
    assert msg.startswith("max_tokens=10 cannot pay for even the first model call")
    assert "a policy call (4 samples from each of 1 prefixes) needs at least" in msg
    assert isinstance(ei.value.__cause__, BudgetExceededError)
    least = least_budget(ei.value)
    bound = MeteredPolicy(policy, Ledger()).prompt_bound([Trajectory(question="2+2?")], 4)
    assert least == {"max_tokens": bound + 4}  # the prompt bound + one token per sample
    out = graph.invoke({"question": "2+2?"}, {"configurable": least})
    assert out["stop_reason"] == "budget" and out["answer"] is None  # 1 token: all cut
    assert out["usage"].tokens <= least["max_tokens"]
    with pytest.raises(ConfigError, match=r"max_flops=1 .* least this question runs on is "):
        graph.invoke({"question": "2+2?"}, {"configurable": {"max_flops": 1}})


def test_max_flops_needs_each_called_models_size():
    """A model with num_parameters=0 (a server's whose size was not given) counts no FLOPs:
    a max_flops of 1 ran whole searches. Now the run is refused before any call, naming the
    model and the fix; max_tokens still works without a size."""
    policy, prm = CappedPolicy(depth=3), FakePRM(step_scores)
    policy.num_parameters, prm.num_parameters = 0, 1000
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2})
    with pytest.raises(ConfigError, match="max_flops cannot be enforced on .*num_parameters is 0"):
        graph.invoke({"question": "2+2?"}, context={"max_flops": 1e12})
    assert not policy.calls
    policy.num_parameters, prm.num_parameters = 1000, 0  # the PRM's calls would be free
    with pytest.raises(ConfigError, match="num_parameters is 0"):
        graph.invoke({"question": "2+2?"}, context={"max_flops": 1e12})
    out = graph.invoke({"question": "2+2?"}, context={"max_tokens": 10_000})
    assert out["usage"].tokens <= 10_000


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "lots"])
def test_invalid_budgets_are_config_errors(strategy: str, bad: Any):
    policy, prm = CappedPolicy(), FakePRM(step_scores)
    for field in ("max_flops", "max_tokens"):
        with pytest.raises(ConfigError, match=field):
            create_tts_graph(policy, prm, strategy, {field: bad})
        graph = create_tts_graph(policy, prm, strategy)
        with pytest.raises(ConfigError, match=f"(?s)invalid call-time configurable.*{field}"):
            graph.invoke({"question": "2+2?"}, {"configurable": {field: bad}})
    if not isinstance(bad, str):
        with pytest.raises(ConfigError, match="must be a (positive )?number"):
            create_tts_graph(policy, prm, strategy, {"max_tokens": bad})


def test_call_time_budget_overrides_the_built_one():
    policy, prm = CappedPolicy(depth=4), FakePRM(step_scores)
    cfg = {"n": 4, "beam_width": 2}
    free = create_tts_graph(policy, prm, "beam_search", cfg).invoke({"question": "2+2?"})
    tight = free["usage"].tokens * 1.2
    capped = create_tts_graph(policy, prm, "beam_search", {**cfg, "max_tokens": tight})
    out = capped.invoke({"question": "2+2?"})
    assert out["stop_reason"] == "budget" and out["usage"].tokens <= tight
    lifted = capped.invoke({"question": "2+2?"}, {"configurable": {"max_tokens": None}})
    assert _same_run(lifted, free)
    loose = capped.invoke({"question": "2+2?"}, {"configurable": {"max_tokens": 1e9}})
    assert _same_run(loose, free)


def test_no_budget_means_no_wrapping():
    policy, prm = CappedPolicy(), FakePRM(step_scores)
    cfg = STRATEGIES["beam_search"][0]()
    assert metered(policy, prm, cfg, {}) == (policy, prm, None)
    pol, pr, ledger = metered(policy, prm, cfg.model_copy(update={"max_flops": 1e9}), {})
    assert isinstance(pol, MeteredPolicy) and isinstance(pr, MeteredPRM)
    assert ledger is not None and ledger.strict and ledger.max_flops == 1e9


# -- per run ---------------------------------------------------------------------------------
async def test_concurrent_runs_each_have_their_own_budget():
    policy, prm = CappedPolicy(depth=4), FakePRM(step_scores)
    graph = create_tts_graph(policy, prm, "dvts", {"n": 4, "beam_width": 2})
    free = await graph.ainvoke({"question": "2+2?"})
    budgets = [free["usage"].tokens * f for f in (1.2, 1.6, 2.5, 50.0)] * 3
    alone = [
        await graph.ainvoke({"question": "2+2?"}, {"configurable": {"max_tokens": b}})
        for b in budgets
    ]
    together = await asyncio.gather(*[
        graph.ainvoke({"question": "2+2?"}, {"configurable": {"max_tokens": b}}) for b in budgets
    ])  # fmt: skip
    assert {a["stop_reason"] for a in alone} == {"budget", "all_finished"}
    for a, b, cap in zip(alone, together, budgets):
        assert _same_run(a, b) and b["usage"].tokens <= cap
    threads = graph.batch(
        [{"question": "2+2?"}] * len(budgets),
        [{"configurable": {"max_tokens": b}} for b in budgets],
    )
    assert all(_same_run(a, b) for a, b in zip(alone, threads))


def test_each_run_on_a_checkpointer_thread_gets_the_whole_budget():
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_tts.checkpoint import serializer

    policy, prm = CappedPolicy(depth=3), FakePRM(step_scores)
    cfg = {"n": 4, "beam_width": 2}
    free = create_tts_graph(policy, prm, "beam_search", cfg).invoke({"question": "2+2?"})
    budget = free["usage"].tokens * 1.5  # ends a run early; far from enough for two
    alone = create_tts_graph(policy, prm, "beam_search", {**cfg, "max_tokens": budget}).invoke(
        {"question": "2+2?"}
    )
    assert alone["stop_reason"] == "budget"
    graph = create_tts_graph(
        policy,
        prm,
        "beam_search",
        {**cfg, "max_tokens": budget},
        checkpointer=InMemorySaver(serde=serializer()),
    )
    rc = {"configurable": {"thread_id": "t"}}
    first = graph.invoke({"question": "2+2?"}, rc)
    second = graph.invoke({"question": "2+2?"}, rc)
    # ``usage`` is each run's own, and each run had the whole budget to itself; the
    # thread's total is ``thread_usage``.
    assert _same_run(first, alone) and _same_run(second, alone)
    thread_usage = graph.get_state(rc).values["thread_usage"]
    assert thread_usage == first["usage"] + alone["usage"]


class BoundedPRM(FakePRM):
    """A fake that, like the local PRMs, says how many tokens a call computes at most."""

    def tokens_bound(self, trajectories: Sequence[Trajectory]) -> int | None:
        return sum(len(t.question) // 4 + sum(len(s) // 4 for s in t.steps) for t in trajectories)


async def test_a_prm_call_reserves_the_prms_own_token_bound_when_it_has_one():
    t = Trajectory(question="q" * 40, steps=["s" * 40, "t" * 40])
    by_bytes = MeteredPRM(FakePRM(lambda t: [0.9, 0.9]), Ledger()).tokens_bound([t])
    assert by_bytes == 40 + 2 * (40 + 4) + 64  # bytes plus per-step and per-call allowances
    prm = BoundedPRM(lambda t: [0.9, 0.9], num_parameters=10)
    ledger = Ledger(max_tokens=40)  # the bound (30 tokens) fits, the bytes (192) would not
    assert MeteredPRM(prm, ledger).tokens_bound([t]) == 30
    res = await MeteredPRM(prm, ledger).ascore([t])
    assert res.scores == [[0.9, 0.9]] and not ledger.exhausted and ledger.spent.tokens == 30
    res = await MeteredPRM(prm, ledger).ascore([t])  # 10 tokens left: refused
    assert res.scores == [[0.0, 0.0]] and ledger.exhausted and ledger.spent.tokens == 30


@pytest.mark.slow
def test_the_embedded_prms_bound_their_calls_by_their_own_encoding():
    from langchain_tts import load_default
    from langchain_tts.models import load_default_prm

    q = "Start with 5. Add 3. Multiply by 2."
    ts = [Trajectory(question=q, steps=["5+3=8", f"8*2={r}"]) for r in (16, 17)]
    for prm in (load_default()[1], load_default_prm("strong")):
        prm.clear_cache()
        bound = prm.tokens_bound(ts)
        free = prm.score(ts)
        computed = free.usage.prm_tokens
        assert bound is not None and computed <= bound  # cold: a cache may save the rest
        assert bound < MeteredPRM(FakePRM(lambda t: []), Ledger()).tokens_bound(ts)
        prm.clear_cache()
        ledger = Ledger(max_tokens=bound)  # exactly the bound: the call is paid
        assert MeteredPRM(prm, ledger).score(ts).scores == free.scores and not ledger.exhausted


# -- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_beam_search_on_the_embedded_models_stops_midway_within_budget():
    from langchain_tts import load_default

    policy, prm = load_default()
    q = "Start with 27. Multiply by 5. Multiply by 3. Divide by 5. Multiply by 4. Add 28."
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2, "seed": 0})
    t0 = time.perf_counter()
    free = graph.invoke({"question": q})
    steps = free["candidates"][0].steps
    assert free["stop_reason"] != "budget" and len(steps) >= 4
    budget = free["usage"].flops / 2
    out = graph.invoke({"question": q}, {"configurable": {"max_flops": budget}})
    assert out["stop_reason"] == "budget"
    assert 0 < out["usage"].flops <= budget
    assert 0 < out["usage"].policy_calls < free["usage"].policy_calls  # stopped midway
    assert out["candidates"] and out["solution"]  # the best beams so far
    assert time.perf_counter() - t0 < 10


@pytest.mark.slow
def test_the_budgets_doc_example_runs(capsys: pytest.CaptureFixture[str]):
    text = (Path(__file__).parent.parent / "docs" / "strategies.md").read_text()
    section = text.split("## Budgets", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "strategies.md[Budgets]", "exec"), {})
    assert "The least this question runs on is max_tokens=" in capsys.readouterr().out
