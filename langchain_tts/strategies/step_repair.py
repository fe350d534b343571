"""Step repair: a greedy solution whose rejected steps are resampled, one step at a time.

Greedy decoding is cheap and usually right; where it goes wrong, the PRM says at which
step. Step repair spends samples only there:

1. **draft**: the policy writes the rest of the solution greedily (``draft_temperature``)
   from the steps accepted so far (at first: the question, and any ``prefix_steps``); the
   PRM scores it. If the PRM accepts every new step (score ``>= reject_below``), that
   solution is the answer.
2. **repair**: otherwise the draft is cut before its first rejected step, and the policy
   samples candidates for that step alone (at ``temperature``); the PRM scores them. The
   best-scored candidate is kept if the PRM accepts it, and the next draft goes on from it.
   If the PRM rejects them all, the step is sampled again with as many candidates as it
   has had so far (``first_round``, then doubling), up to ``n`` in all; a step whose ``n``
   candidates are all rejected ends the search.

Each search step is one of the two: one policy call and one PRM call. A search that is
right the first time costs one greedy solution and one PRM call; a slip costs the samples
it takes to find an accepted step (most are found in the first one or two) and the
redrafted rest. The search stops once a draft is accepted, after ``repairs`` repaired
steps, or at a step beyond repair, and then answers with ``selection`` among every
finished solution it wrote (drafts and finished candidates).

This is the per-step counterpart of best-of-N: best-of-N resamples whole solutions,
beam search and particle filtering resample every step of every path, step repair
resamples the steps the verifier rejects. It pays when the PRM judges single steps well
(a verifier that checks each step's arithmetic, a strong PRM); with a PRM that cannot
tell a wrong step, it is greedy decoding.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Literal

from langgraph.graph import StateGraph
from pydantic import Field

from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import (
    TTSState,
    expand,
    finalize_update,
    first_rejected,
    score,
)
from langchain_tts.strategies.loop import Search, SearchLoop, require_prm, search_graph
from langchain_tts.strategies.registry import StrategySpec

Phase = Literal["draft", "repair", "done", "unrepaired"]


class StepRepairConfig(StrategyConfig):
    """Step repair knobs (see :mod:`~langchain_tts.strategies.step_repair`)."""

    n: int = Field(16, ge=1, description="the most candidates sampled for one rejected step")
    # hotter than a whole-solution sampler's 0.7: the PRM filters every candidate, so what
    # pays is variety; a small policy's slip repeats in most samples at 0.7
    temperature: float = Field(
        1.3, ge=0.0, le=5.0, description="the candidates' sampling temperature"
    )
    first_round: int = Field(
        1,
        ge=1,
        description="candidates in a rejected step's first call; each further call doubles "
        "the step's samples, up to n (first_round >= n: all n in one call)",
    )
    reject_below: float = Field(
        0.5, ge=0.0, le=1.0, description="a step the PRM scores below this is rejected"
    )
    repairs: int = Field(
        4, ge=0, description="the most rejected steps repaired; then the best solution so far"
    )
    draft_temperature: float = Field(
        0.0, ge=0.0, le=5.0, description="the drafts' sampling temperature (0: greedy)"
    )
    start: Literal["draft", "repair"] = Field(
        "draft",
        description="'repair': the caller's prefix_steps end just before a step the PRM "
        "rejected (the router's verified steps), so the first call samples that step "
        "instead of drafting it again",
    )


class StepRepairState(TTSState, total=False):
    #: what the next search step does; ``"done"`` once a draft was accepted
    phase: Phase
    #: rejected steps repaired so far
    repaired: int
    #: candidates sampled so far for the rejected step being repaired
    tried: int


def cut_before(t: Trajectory, j: int) -> Trajectory:
    """``t``'s first ``j`` steps (accepted ones), unfinished, to go on from."""
    return Trajectory(
        question=t.question, steps=t.steps[:j], step_scores=t.step_scores[:j], tokens=t.tokens
    )


def _accepted_so_far(s: Search, root: Trajectory) -> Trajectory:
    return s["active"][0] if s["active"] else root


async def _draft(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: StepRepairConfig,
    base: Trajectory,
    s: Search,
) -> tuple[Search, Usage]:
    drafts, usage = await expand(
        policy, [base], 1, cfg, stop_at_step=False, temperature=cfg.draft_temperature
    )
    drafts, prm_usage = await score(prm, drafts, in_place=True)
    d = drafts[0]
    finished = s["finished"] + ([d] if d.finished else [])
    j = first_rejected(d, cfg.reject_below, start=len(base.steps))
    if j is None:  # accepted (or, unfinished, as far as the draft got)
        out = {**s, "active": [d], "finished": finished, "phase": "done"}
    else:
        out = {**s, "active": [cut_before(d, j)], "finished": finished, "phase": "repair"}
    return out, usage + prm_usage


def round_size(cfg: StepRepairConfig, tried: int) -> int:
    """Candidates for the next call on a rejected step already sampled ``tried`` times:
    ``first_round``, then as many again as so far (the step's total doubles), up to ``n``."""
    return min(cfg.first_round if tried == 0 else tried, cfg.n - tried)


async def _repair(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: StepRepairConfig,
    base: Trajectory,
    s: Search,
    i: int,
) -> tuple[Search, Usage]:
    k = round_size(cfg, s["tried"])
    # seed_offset: each call on a step draws new samples
    kids, usage = await expand(policy, [base], k, cfg, seed_offset=i * cfg.n)
    kids, prm_usage = await score(prm, kids, in_place=True)
    best = max(kids, key=lambda c: c.step_scores[-1] if c.step_scores else 0.0)  # ties: first
    out: Search = {**s, "finished": s["finished"] + [c for c in kids if c.finished]}
    if best.step_scores and best.step_scores[-1] >= cfg.reject_below:
        phase = "done" if best.finished else "draft"
        out |= {"active": [best], "phase": phase, "repaired": s["repaired"] + 1, "tried": 0}
    elif s["tried"] + k >= cfg.n:  # n samples, all rejected: the step is beyond repair
        out |= {"phase": "unrepaired", "tried": s["tried"] + k}
    else:  # ("repair" also when the caller handed the rejection over: no draft came first)
        out |= {"phase": "repair", "tried": s["tried"] + k}
    return out, usage + prm_usage


async def repair_step(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: StepRepairConfig,
    root: Trajectory,
    s: Search,
    i: int,
) -> tuple[Search, Usage]:
    """One search step: a draft or a repair, by ``phase`` (one policy call, one PRM call)."""
    base = _accepted_so_far(s, root)
    handed_a_rejection = i == 0 and cfg.start == "repair" and cfg.repairs > 0
    if s["phase"] == "draft" and not handed_a_rejection:
        return await _draft(policy, prm, cfg, base, s)
    return await _repair(policy, prm, cfg, base, s, i)


def _done(s: Search, step: int, cfg: StepRepairConfig) -> str:
    if s["phase"] == "done":  # a draft (or a repaired last step) the PRM accepted
        return "accepted" if s["active"][0].finished else "max_steps"  # unfinished: a cap
    if s["phase"] == "unrepaired":
        return "unrepaired"
    if s["phase"] == "repair" and s["repaired"] >= cfg.repairs:
        return "max_repairs"
    if s["active"] and len(s["active"][0].steps) >= cfg.max_steps:
        return "max_steps"
    return ""


def step_repair_final_update(state: StepRepairState, cfg: StepRepairConfig) -> dict:
    """The ``finalize`` update: the accepted solution, else the best finished one."""
    s = _search(state)
    reason = _done(s, state.get("step", 0), cfg) or "max_repairs"
    if reason == "accepted":
        return finalize_update(state, s["active"], cfg, reason)
    return finalize_update(state, s["finished"] or s["active"], cfg, reason)


def _search(state: TTSState) -> Search:
    return {
        "active": state.get("active") or [],
        "finished": state.get("finished") or [],
        "phase": state.get("phase") or "draft",
        "repaired": state.get("repaired") or 0,
        "tried": state.get("tried") or 0,
    }


STEP_REPAIR_LOOP: SearchLoop[StepRepairConfig] = SearchLoop(
    node="step",
    step=repair_step,
    done=_done,
    answer=step_repair_final_update,
    start=_search,
    fresh=lambda: {"phase": "draft", "repaired": 0, "tried": 0},
    state_schema=StepRepairState,
)


def build_step_repair_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: StepRepairConfig
) -> StateGraph:
    """``prepare -> step (loops: draft, repair, draft, ...) -> finalize``; see the module."""
    prm = require_prm(prm, "step_repair", " (its step scores decide what to resample)")
    return search_graph(STEP_REPAIR_LOOP, policy, prm, base)


def step_repair_units(cfg: StepRepairConfig, steps: float, reused: int) -> tuple[float, float]:
    """A typical run, not the worst case: a draft of the rest (none first with
    ``start="repair"``, which samples the handed step at once), one rejected step whose
    accepted candidate the first rounds find (``4 x first_round`` samples, at most ``n``;
    most are found within the first two), and a redraft of the rest after it (half the
    solution after a draft, all of it after a handed step). A run that costs more is capped
    by the meter and answers with its best finished solution."""
    samples = min(cfg.n, 4 * cfg.first_round) / steps  # in whole solutions
    units = (1.0 if cfg.start == "repair" else 1.5) + samples
    return units, units


SPEC = StrategySpec(
    name="step_repair",
    config=StepRepairConfig,
    build=build_step_repair_graph,
    budget_config=lambda n: {"n": n},
    cost_units=step_repair_units,
    computed_units=step_repair_units,  # drafts, samples and redrafts are all new tokens
    after_rejection=MappingProxyType({"start": "repair"}),
    summary="step repair: a greedy solution; each step the PRM rejects is resampled n times",
)
