"""Best-of-N: sample N whole solutions in one call, score them with the PRM, select.

Selection is PRM-max (default), majority, or PRM-vote (weighted majority: the sum of
aggregated scores per distinct normalised answer). With ``selection="majority"`` the PRM
is optional (self-consistency).

Graph: ``prepare -> sample -> score -> finalize``.

With a budget (``max_flops`` / ``max_tokens``) the samples are drawn under a lowered token
cap when the full one does not fit (a sample it cuts short is no solution), and the PRM call
is skipped when it does not fit; then ``stop_reason="budget"`` and the answer is the
majority answer of the (unscored) samples.
"""

from __future__ import annotations

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from pydantic import Field

from langchain_tts.core.config import Selection, StrategyConfig
from langchain_tts.core.errors import BudgetExceededError, ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import (
    TTSInput,
    TTSOutput,
    TTSState,
    budget_final_update,
    budget_refused,
    budget_stopped,
    expand,
    finalize_update,
    metered,
    node,
    prepare_update,
    resolve_config,
    score,
)


class BestOfNConfig(StrategyConfig):
    n: int = Field(16, ge=1, description="solutions sampled")


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


def build_best_of_n_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: BestOfNConfig
) -> StateGraph:
    if prm is None and base.selection != "majority" and base.n > 1:
        raise ConfigError(
            f"best_of_n with selection={base.selection!r} needs a PRM: pass prm=..., or use "
            "selection='majority' (self-consistency) without one"
        )

    async def prepare(state: TTSState, rc: RunnableConfig) -> dict:
        return prepare_update(state, resolve_config(base, rc), policy=policy)

    async def sample(state: TTSState, rc: RunnableConfig) -> dict:
        cfg = resolve_config(base, rc)
        pol, _, ledger = metered(policy, None, cfg, state)  # as it is without a budget
        root = Trajectory(question=state["question"])
        try:
            sols, usage = await expand(pol, [root], cfg.n, cfg, stop_at_step=False)
        except BudgetExceededError as e:  # the run's first call: a ConfigError
            budget_refused(e, state, ledger, cfg)
            raise  # pragma: no cover - budget_refused raised
        update = {"finished": sols, "step": 1, "usage": usage}
        if ledger is not None and ledger.ended:  # the meter cut samples short
            update["stop_reason"] = "budget"
        return update

    async def score_all(state: TTSState, rc: RunnableConfig) -> dict:
        cfg = resolve_config(base, rc)
        # Majority needs no scores, and one sample needs no choosing: save the PRM call.
        if prm is None or cfg.selection == "majority" or len(state["finished"]) < 2:
            return {}
        _, pr, ledger = metered(policy, prm, cfg, state)
        try:
            scored, usage = await score(pr, state["finished"])
        except BudgetExceededError as e:  # the samples stay unscored
            return {"stop_reason": "budget", "usage": budget_refused(e, state, ledger, cfg)}
        return {"finished": scored, "usage": usage}

    async def finalize(state: TTSState, rc: RunnableConfig) -> dict:
        cfg = resolve_config(base, rc)
        if budget_stopped(state, cfg):
            return budget_final_update(state, state.get("finished") or [], cfg)
        return finalize_update(state, state.get("finished") or [], cfg, "sampled")

    g = StateGraph(TTSState, input_schema=TTSInput, output_schema=TTSOutput)
    g.add_node("prepare", node(prepare, "prepare"))
    g.add_node("sample", node(sample, "sample"))
    g.add_node("score", node(score_all, "score"))
    g.add_node("finalize", node(finalize, "finalize"))
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "sample")
    g.add_edge("sample", "score")
    g.add_edge("score", "finalize")
    g.add_edge("finalize", END)
    return g
