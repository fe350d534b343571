"""Diverse Verifier Tree Search (DVTS), as in Hugging Face's search-and-learn.

``n`` is split into ``n / beam_width`` independent subtrees, each greedily following the best
of its own ``beam_width`` children by PRM score, so the subtrees explore different parts of
the solution space. All subtrees advance in one ``step`` node: one policy call and one PRM
call per search step, not one per subtree.
"""

from __future__ import annotations

from langgraph.graph import StateGraph
from pydantic import Field, model_validator

from langchain_tts.core.config import StrategyConfig, check_split
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.beam_search import search_units, width_budget
from langchain_tts.strategies.core import Trajectories, TTSState, expand, finalize_update, score
from langchain_tts.strategies.loop import (
    Search,
    SearchLoop,
    finished_or_out_of_steps,
    require_prm,
    search_graph,
)
from langchain_tts.strategies.registry import StrategySpec, written_units
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
    subtrees: Trajectories


async def dvts_step(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: DVTSConfig,
    root: Trajectory,
    subtrees: list[Trajectory],
    step: int,
) -> tuple[list[Trajectory], Usage]:
    """One search step for every unfinished subtree (all growing from ``root`` at step 0):
    one policy call, one PRM call."""
    bw = cfg.beam_width
    if step == 0:
        parents, n_each = [root], cfg.n
        owners = list(range(cfg.n_subtrees))  # group i of the children -> subtree i
        subtrees = [root] * cfg.n_subtrees
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


def _done(subtrees: list[Trajectory], step: int, cfg: DVTSConfig) -> str:
    return finished_or_out_of_steps(subtrees, step, cfg.max_steps)


def _leaves(subtrees: list[Trajectory]) -> Search:
    """The subtrees and their current leaves, as ``active`` and ``finished`` candidates."""
    return {
        "subtrees": subtrees,
        "active": [t for t in subtrees if not t.finished],
        "finished": [t for t in subtrees if t.finished],
    }


async def _step(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: DVTSConfig,
    root: Trajectory,
    s: Search,
    i: int,
) -> tuple[Search, Usage]:
    subtrees, usage = await dvts_step(policy, prm, cfg, root, s["subtrees"], i)
    return _leaves(subtrees), usage


def dvts_final_update(state: DVTSState, cfg: DVTSConfig) -> dict:
    """The ``finalize`` update: the answer among the subtrees' leaves."""
    subtrees = state.get("subtrees") or []
    reason = _done(subtrees, state.get("step", 0), cfg) or "max_steps"
    # One candidate per subtree: its leaf (unfinished only when the search was cut).
    return finalize_update(state, subtrees, cfg, reason)


DVTS_LOOP: SearchLoop[DVTSConfig] = SearchLoop(
    node="step",
    step=_step,
    done=lambda s, i, cfg: _done(s["subtrees"], i, cfg),
    answer=dvts_final_update,
    start=lambda state: _leaves(state.get("subtrees") or []),
    fresh=lambda: {"subtrees": []},
    state_schema=DVTSState,
)


def build_dvts_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: DVTSConfig
) -> StateGraph:
    """The DVTS graph: ``prepare -> step (loops, one update per search step) -> finalize``.

    ``n`` is split into ``n / beam_width`` independent subtrees. Each subtree keeps ONE beam:
    every search step it samples ``beam_width`` children of its beam and greedily follows the
    best one by aggregated PRM score. A subtree's choice depends only on its own children, so
    the subtrees explore different parts of the solution space (beam search, by contrast, lets
    one strong prefix take over all ``n / beam_width`` beams).

    The first step samples all ``n`` children from the question in one call (prefix ``x n``,
    cache friendly) and hands children ``[i * beam_width, (i + 1) * beam_width)`` to subtree
    ``i``: the same distribution as sampling ``beam_width`` children per subtree. A subtree
    whose chosen child finishes (EOS, a boxed answer, a token cap, ``max_steps``) stops
    expanding. The answer is selected with ``selection`` among the subtrees' leaves.

    Design choice, batching over ``Send``: fanning the subtrees out with LangGraph ``Send``
    would run one policy call and one PRM call *per subtree* per step. Batching is the point
    of this package (one policy call + one PRM call per search step, across all subtrees), so
    all subtrees live in one state (``subtrees[i]`` is subtree ``i``'s current leaf) and one
    ``step`` node advances them together. Independence is kept by construction: children are
    grouped by parent and ranked only within their group.

    With a budget (``max_flops`` / ``max_tokens``) the search also stops at the first step the
    budget cannot pay in full (``stop_reason="budget"``): the answer comes from the subtrees'
    finished leaves (a last step's finished children whose scoring was refused count too),
    else from their best partial leaves (else from that step's unscored children).
    """
    return search_graph(DVTS_LOOP, policy, require_prm(prm, "dvts"), base)


SPEC = StrategySpec(
    name="dvts",
    config=DVTSConfig,
    build=build_dvts_graph,
    budget_config=width_budget,
    cost_units=lambda cfg, steps, reused: search_units(cfg.n, cfg.n_subtrees, steps),
    computed_units=lambda cfg, steps, reused: written_units(cfg.n),
    summary="Diverse verifier tree search: n / beam_width independent greedy PRM-guided subtrees",
)
