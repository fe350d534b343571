"""Diverse Verifier Tree Search (DVTS, search-and-learn / paper 001).

``n`` is split into ``n / beam_width`` independent subtrees. Each subtree keeps ONE beam:
every search step it samples ``beam_width`` children of its beam and greedily follows the
best one by aggregated PRM score. A subtree's choice depends only on its own children, so
the subtrees explore different parts of the solution space (beam search, by contrast,
lets one strong prefix take over all ``n / beam_width`` beams).

The first step samples all ``n`` children from the question in one call (prefix ``x n``,
cache friendly) and hands children ``[i * beam_width, (i + 1) * beam_width)`` to subtree
``i``: the same distribution as sampling ``beam_width`` children per subtree. A subtree whose
chosen child finishes (EOS, a boxed answer, a token cap, ``max_steps``) stops expanding. The
answer is selected with ``selection`` among the subtrees' leaves.

Design choice, batching over ``Send``: fanning the subtrees out with LangGraph ``Send``
would run one policy call and one PRM call *per subtree* per step. Batching is the point of
this package (one policy call + one PRM call per search step, across all subtrees), so all
subtrees live in one state (``subtrees[i]`` is subtree ``i``'s current leaf) and one
``step`` node advances them together. Independence is kept by construction: children are
grouped by parent and ranked only within their group.

Graph: ``prepare -> step (loops, one update per search step) -> finalize``. When LangGraph's
recursion limit is close, the ``step`` node finishes the search inside itself.

With a budget (``max_flops`` / ``max_tokens``) the search also stops at the first step the
budget cannot pay in full (``stop_reason="budget"``): the answer comes from the subtrees'
finished leaves (a last step's finished children whose scoring was refused count too),
else from their best partial leaves (else from that step's unscored children).
"""

from __future__ import annotations

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from pydantic import Field, model_validator

from langchain_tts.core.config import StrategyConfig, check_split
from langchain_tts.core.errors import BudgetExceededError, ConfigError
from langchain_tts.core.types import Trajectory, Usage
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
    next_node,
    node,
    prepare_update,
    resolve_config,
    score,
)
from langchain_tts.strategies.selection import top_k


class DVTSConfig(StrategyConfig):
    """DVTS knobs. Defaults: n=16, beam_width=4 (4 subtrees), temperature 0.7, top_p 0.95,
    2048 tokens per step, 8192 per trajectory, 40 steps (search-and-learn)."""

    n: int = Field(16, ge=1, description="total children sampled per search step")
    beam_width: int = Field(
        4, ge=1, description="children per subtree per step; n / beam_width subtrees"
    )

    @model_validator(mode="after")
    def _shape(self) -> DVTSConfig:
        check_split(self.n, self.beam_width, "DVTS runs n / beam_width subtrees")
        return self

    @property
    def n_subtrees(self) -> int:
        return self.n // self.beam_width


class DVTSState(TTSState, total=False):
    #: ``subtrees[i]``: the current leaf of subtree ``i`` (finished or not)
    subtrees: list[Trajectory]


def _done(subtrees: list[Trajectory], step: int, cfg: DVTSConfig) -> str:
    if subtrees and all(t.finished for t in subtrees):
        return "all_finished"
    if step >= cfg.max_steps:
        return "max_steps"
    return ""


async def dvts_step(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: DVTSConfig,
    question: str,
    subtrees: list[Trajectory],
    step: int,
) -> tuple[list[Trajectory], Usage]:
    """One search step for every unfinished subtree: one policy call, one PRM call."""
    bw = cfg.beam_width
    if step == 0:
        parents, n_each = [Trajectory(question=question)], cfg.n
        owners = list(range(cfg.n_subtrees))  # group i of the children -> subtree i
        subtrees = [Trajectory(question=question)] * cfg.n_subtrees
    else:
        owners = [i for i, t in enumerate(subtrees) if not t.finished]
        parents, n_each = [subtrees[i] for i in owners], bw
    children, usage = await expand(policy, parents, n_each, cfg)
    children, prm_usage = await score(prm, children, in_place=True)  # fresh children
    new = list(subtrees)
    for g, owner in enumerate(owners):
        # Greedy within the subtree: its own children only (independence).
        new[owner] = top_k(children[g * bw : (g + 1) * bw], 1, cfg.aggregation)[0]
    return new, usage + prm_usage


def build_dvts_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: DVTSConfig
) -> StateGraph:
    if prm is None:
        raise ConfigError("dvts needs a PRM: pass prm=... (e.g. from load_default())")

    async def prepare(state: DVTSState, rc: RunnableConfig) -> dict:
        # resolving fails fast on bad call-time overrides
        return {**prepare_update(state, resolve_config(base, rc), policy=policy), "subtrees": []}

    async def step(state: DVTSState, rc: RunnableConfig) -> Command:
        cfg = resolve_config(base, rc)
        pol, pr, ledger = metered(policy, prm, cfg, state)  # as they are without a budget
        subtrees = state.get("subtrees") or []
        i, usage, stop, unscored = state.get("step", 0), Usage(), "", []
        #: ``unscored``: children a refused PRM call left unscored (a last resort)
        while True:
            try:
                subtrees, u = await dvts_step(pol, pr, cfg, state["question"], subtrees, i)
            except BudgetExceededError as e:  # this step is not paid for: stop before it
                usage, stop = budget_refused(e, state, ledger, cfg), "budget"
                unscored = e.unscored
                break
            i, usage = i + 1, usage + u
            if ledger is not None and ledger.ended:  # the meter cut this step short
                stop = "budget"
                break
            # Finish inside this node when LangGraph's recursion limit is near.
            if _done(subtrees, i, cfg) or state.get("remaining_steps", 99) > 3:
                break
        update = {
            "subtrees": subtrees,
            "active": [t for t in subtrees if not t.finished]
            + [t for t in unscored if not t.finished],
            "finished": [t for t in subtrees if t.finished] + [t for t in unscored if t.finished],
            "step": i,
            "usage": usage,
        }
        if stop:
            update["stop_reason"] = stop
        return Command(update=update, goto=next_node(stop or _done(subtrees, i, cfg), "step"))

    async def finalize(state: DVTSState, rc: RunnableConfig) -> dict:
        cfg = resolve_config(base, rc)
        if budget_stopped(state, cfg):
            cands = (state.get("finished") or []) + (state.get("active") or [])
            return budget_final_update(state, cands, cfg)
        subtrees = state.get("subtrees") or []
        reason = _done(subtrees, state.get("step", 0), cfg) or "max_steps"
        # One candidate per subtree: its leaf (unfinished only when the search was cut).
        return finalize_update(state, subtrees, cfg, reason)

    g = StateGraph(DVTSState, input_schema=TTSInput, output_schema=TTSOutput)
    g.add_node("prepare", node(prepare, "prepare"))
    g.add_node("step", node(step, "step"), destinations=("step", "finalize"))
    g.add_node("finalize", node(finalize, "finalize"))
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "step")
    g.add_edge("finalize", END)
    return g
