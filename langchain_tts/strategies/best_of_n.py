"""Best-of-N: sample N whole solutions in one call, score them with the PRM, select.

Selection is PRM-max (default), majority (self-consistency: no PRM needed) or PRM-vote
(weighted majority). Graph: ``prepare -> sample -> score -> finalize``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from pydantic import Field

from langchain_tts.core.answers import vote_keys
from langchain_tts.core.config import Selection, StrategyConfig
from langchain_tts.core.errors import BudgetExceededError, ConfigError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import (
    BUDGET,
    TTSInput,
    TTSOutput,
    TTSState,
    budget_refused,
    expand,
    finalize_update,
    is_scored,
    metered,
    node,
    resolve_config,
    root_of,
    score,
)
from langchain_tts.strategies.loop import finalize_node, prepare_node
from langchain_tts.strategies.progress import Progress, step_event
from langchain_tts.strategies.registry import StrategySpec
from langchain_tts.strategies.selection import with_scores


class BestOfNConfig(StrategyConfig):
    n: int = Field(16, ge=1, description="solutions sampled")
    early_stop: bool = Field(
        False,
        description="votes only (majority, prm_vote): sample in rounds of round_size and "
        "stop once the leading answer is decided (adaptive consistency)",
    )
    round_size: int = Field(4, ge=1, description="samples per round with early_stop")
    stop_confidence: float = Field(
        0.95,
        gt=0.5,
        le=1.0,
        description="with early_stop: stop when P(leader beats runner-up) under a Beta "
        "posterior reaches this; 1.0 stops only when the rest cannot change the answer",
    )


class MajorityVoteConfig(BestOfNConfig):
    """Self-consistency: the most frequent answer among N samples; no PRM needed."""

    selection: Selection = "majority"


class WeightedVoteConfig(BestOfNConfig):
    """PRM-Vote: the answer with the largest sum of aggregated PRM scores."""

    selection: Selection = "prm_vote"


class CoTConfig(BestOfNConfig):
    """One greedy chain of thought (the baseline every search is measured against)."""

    n: int = Field(1, ge=1, le=1, description="always one chain")
    temperature: float = Field(0.0, ge=0.0, le=5.0)


def beta_lead_probability(lead: float, second: float) -> float:
    """P(p > 1/2) for p ~ Beta(lead + 1, second + 1): how sure the votes so far are that
    the leading answer beats the runner-up (Adaptive-Consistency's Beta criterion)."""
    a, b = lead + 1.0, second + 1.0
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    steps = 400  # Simpson's rule on [1/2, 1]: the integrand is smooth there

    def pdf(x: float) -> float:
        if x >= 1.0:
            return 0.0 if b > 1.0 else math.exp(log_norm)
        return math.exp(log_norm + (a - 1) * math.log(x) + (b - 1) * math.log1p(-x))

    h = 0.5 / steps
    total = pdf(0.5) + pdf(1.0)
    total += sum((4 if k % 2 else 2) * pdf(0.5 + k * h) for k in range(1, steps))
    return min(1.0, total * h / 3)


def votes_decided(samples: Sequence[Trajectory], cfg: BestOfNConfig, remaining: int) -> bool:
    """Whether more samples can be spared: the leader cannot be overtaken by ``remaining``
    votes of weight at most 1, or its Beta-posterior lead reaches ``stop_confidence``."""
    weight: dict[str, float] = defaultdict(float)
    scored = with_scores(samples, cfg.aggregation)
    # the keys the vote itself counts by: 0.5, 1/2 and \frac12 are one answer
    for t, key in zip(scored, vote_keys([t.answer for t in scored])):
        if key is not None:
            weight[key] += 1.0 if cfg.selection == "majority" else (t.score or 0.0)
    if not weight:
        return remaining <= 0
    top = sorted(weight.values(), reverse=True) + [0.0]
    if top[0] - top[1] > remaining:
        return True
    return cfg.stop_confidence < 1.0 and beta_lead_probability(top[0], top[1]) >= (
        cfg.stop_confidence
    )


def _samples(state: TTSState) -> list[Trajectory]:
    return state.get("finished") or []


def _answer(state: TTSState, cfg: BestOfNConfig) -> dict:
    return finalize_update(state, _samples(state), cfg, "sampled")


def build_best_of_n_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: BestOfNConfig
) -> StateGraph:
    """The best-of-N graph: ``prepare -> sample -> score -> finalize``.

    Selection is PRM-max (default), majority, or PRM-vote (weighted majority: the sum of
    aggregated scores per distinct normalised answer). With ``selection="majority"`` the PRM
    is optional (self-consistency).

    With a budget (``max_flops`` / ``max_tokens``) the samples are drawn under a lowered token
    cap when the full one does not fit (a sample it cuts short is no solution), and the PRM
    call is skipped when it does not fit; then ``stop_reason="budget"`` and the answer is the
    majority answer of the (unscored) samples.

    With ``early_stop=True`` the votes (``majority``, ``prm_vote``) sample in rounds of
    ``round_size`` and stop once the leading answer is decided: the samples left cannot
    overtake it, or its lead over the runner-up is significant under a Beta posterior
    (``stop_confidence``), as in "Let's Sample Step by Step: Adaptive-Consistency for
    Efficient Reasoning and Coding with LLMs" (Aggarwal, Madaan, Yang, Mausam).
    """
    if base.early_stop and base.selection == "prm_max":  # at build, not at the first run
        raise ConfigError(
            "early_stop applies to votes: set selection='majority' or 'prm_vote' "
            "(majority_vote / weighted_vote), or early_stop=False"
        )
    if prm is None and base.selection != "majority" and base.n > 1:
        raise ConfigError(
            f"best_of_n with selection={base.selection!r} needs a PRM: pass prm=..., or use "
            "selection='majority' (self-consistency) without one"
        )

    async def sample(state: TTSState, rc: RunnableConfig) -> dict:
        cfg = resolve_config(base, rc)
        if cfg.early_stop and cfg.n > 1:
            return await sample_rounds(state, cfg, rc)
        pol, _, ledger = metered(policy, None, cfg, state)  # as it is without a budget
        root = root_of(state)
        try:
            sols, usage = await expand(pol, [root], cfg.n, cfg, stop_at_step=False)
        except BudgetExceededError as e:  # the run's first call: a ConfigError
            budget_refused(e, state, ledger, cfg)
            raise  # pragma: no cover - budget_refused raised
        update = {"finished": sols, "step": 1, "usage": usage}
        if ledger is not None and ledger.ended:  # the meter cut samples short
            update["stop_reason"] = BUDGET
        progress = Progress(rc)
        if progress.active:
            await progress.emit(step_event(cfg, "sample", 1, {"finished": sols}, usage))
        return update

    async def sample_rounds(state: TTSState, cfg: BestOfNConfig, rc: RunnableConfig) -> dict:
        """Adaptive consistency: rounds of ``round_size`` samples until the vote is decided
        (a weighted vote scores each round, so the score node has nothing left to do)."""
        if cfg.selection == "prm_max":
            raise ConfigError(
                "early_stop applies to votes: set selection='majority' or 'prm_vote' "
                "(majority_vote / weighted_vote), or early_stop=False"
            )
        weighted = cfg.selection == "prm_vote" and prm is not None
        pol, pr, ledger = metered(policy, prm if weighted else None, cfg, state)
        root = root_of(state)
        sols: list[Trajectory] = []
        usage = Usage()
        update: dict[str, Any] = {}
        progress = Progress(rc)
        for r in range(math.ceil(cfg.n / cfg.round_size)):
            k = min(cfg.round_size, cfg.n - len(sols))
            try:
                new, u = await expand(pol, [root], k, cfg, stop_at_step=False, seed_offset=r)
            except BudgetExceededError as e:
                if not sols:  # the run's first call: a ConfigError
                    budget_refused(e, state, ledger, cfg)
                update["stop_reason"] = BUDGET
                break
            this = u  # this round's usage
            if weighted and pr is not None:
                try:
                    new, u = await score(pr, new, in_place=True)
                except BudgetExceededError:  # this round stays unscored: it cannot vote
                    update["stop_reason"] = BUDGET
                    sols += new
                    usage += this
                    break
                this += u
            sols, usage = sols + new, usage + this
            if progress.active:  # each round's samples as they come (still search step 1)
                await progress.emit(step_event(cfg, "sample", 1, {"finished": sols}, this))
            if ledger is not None and ledger.ended:
                update["stop_reason"] = BUDGET
                break
            if votes_decided(sols, cfg, cfg.n - len(sols)):
                break
        return {**update, "finished": sols, "step": 1, "usage": usage}

    async def score_all(state: TTSState, rc: RunnableConfig) -> dict:
        cfg = resolve_config(base, rc)
        # Majority needs no scores, and one sample needs no choosing: save the PRM call.
        if prm is None or cfg.selection == "majority" or len(state["finished"]) < 2:
            return {}
        if cfg.early_stop and all(is_scored(t) for t in state["finished"]):
            return {}  # the vote rounds scored every sample already
        _, pr, ledger = metered(policy, prm, cfg, state)
        try:
            scored, usage = await score(pr, state["finished"])
        except BudgetExceededError as e:  # the samples stay unscored
            return {"stop_reason": BUDGET, "usage": budget_refused(e, state, ledger, cfg)}
        progress = Progress(rc)
        if progress.active:
            await progress.emit(step_event(cfg, "score", 1, {"finished": scored}, usage))
        return {"finished": scored, "usage": usage}

    g = StateGraph(TTSState, input_schema=TTSInput, output_schema=TTSOutput)
    g.add_node("prepare", prepare_node(base, policy=policy, prm=prm))
    g.add_node("sample", node(sample, "sample"))
    g.add_node("score", node(score_all, "score"))
    g.add_node("finalize", finalize_node(base, _answer, _samples))
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "sample")
    g.add_edge("sample", "score")
    g.add_edge("score", "finalize")
    g.add_edge("finalize", END)
    return g


def sampling_units(cfg: BestOfNConfig, steps: float, reused: int) -> tuple[float, float]:
    """Cost units of ``n`` whole solutions, less the probe samples reused; the PRM scores
    them all unless the selection needs no scores (majority, or a single sample)."""
    prm = 0 if cfg.selection == "majority" or cfg.n < 2 else cfg.n
    return float(max(0, cfg.n - reused)), float(prm)


def _sampling_spec(
    name: str,
    config: type[BestOfNConfig],
    summary: str,
    *,
    needs_prm: bool = True,
    budget: Callable[[int], dict[str, Any]] = lambda n: {"n": n},
) -> StrategySpec:
    return StrategySpec(
        name=name,
        config=config,
        build=build_best_of_n_graph,
        budget_config=budget,
        summary=summary,
        needs_prm=needs_prm,
        cost_units=sampling_units,
        computed_units=sampling_units,  # the shared prompt computed once: see allocation_cost
        reuses_samples=True,  # n independent whole solutions, as the router's probe samples
    )


SPECS = (
    _sampling_spec(
        "cot",
        CoTConfig,
        "One greedy chain of thought, the baseline every search is measured against",
        needs_prm=False,
        budget=lambda n: {},
    ),
    _sampling_spec("best_of_n", BestOfNConfig, "N whole solutions, the PRM's best one"),
    _sampling_spec(
        "majority_vote",
        MajorityVoteConfig,
        "Self-consistency: the most frequent answer among N solutions (no PRM)",
        needs_prm=False,
    ),
    _sampling_spec(
        "weighted_vote",
        WeightedVoteConfig,
        "PRM-vote: the answer with the largest sum of PRM scores among N solutions",
    ),
)
