"""PRM-guided beam search over reasoning steps.

Keep K beams, expand each into E children, score all children with the PRM, keep the best K:
every search step is one policy call and one PRM call. Graph: ``prepare -> step (loops) ->
finalize``, built by :func:`~langchain_tts.strategies.loop.search_graph`.
"""

from __future__ import annotations

from langgraph.graph import StateGraph
from pydantic import Field, model_validator

from langchain_tts.core.config import StrategyConfig, check_split
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import TTSState, expand, finalize_update, score
from langchain_tts.strategies.loop import Search, SearchLoop, require_prm, search_graph
from langchain_tts.strategies.registry import StrategySpec, written_units
from langchain_tts.strategies.selection import top_k


class BeamSearchConfig(StrategyConfig):
    n: int = Field(16, ge=1, description="candidates generated per search step")
    beam_width: int = Field(4, ge=1, description="M: children per beam (search-and-learn)")
    samples_per_beam: int | None = Field(
        None, ge=1, description="width x k variant: keep beam_width beams, k children each"
    )
    max_steps: int = Field(40, ge=1)

    @model_validator(mode="after")
    def _shape(self) -> BeamSearchConfig:
        if self.samples_per_beam is None:
            check_split(self.n, self.beam_width, "beam search keeps n / beam_width beams")
        return self

    @property
    def keep(self) -> int:
        """Beams kept after each step."""
        if self.samples_per_beam is not None:
            return self.beam_width
        return self.n // self.beam_width

    @property
    def expand_each(self) -> int:
        """Children sampled from each kept beam."""
        return self.samples_per_beam if self.samples_per_beam is not None else self.beam_width

    @property
    def target_finished(self) -> int:
        return self.keep * self.expand_each


def _search_done(active: list[Trajectory], finished: list[Trajectory], step: int, cfg) -> str:
    if not active:
        return "all_finished"
    if len(finished) >= cfg.target_finished:
        return "enough_finished"
    if step >= cfg.max_steps:
        return "max_steps"
    return ""


async def beam_step(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: BeamSearchConfig,
    root: Trajectory,
    active: list[Trajectory],
    finished: list[Trajectory],
    step: int,
) -> tuple[list[Trajectory], list[Trajectory], Usage]:
    """One search step: expand every kept beam (at step 0, ``root``), score all children,
    keep the best."""
    if step == 0:
        parents, n_each = [root], cfg.keep * cfg.expand_each
    else:
        parents, n_each = active, cfg.expand_each
    children, usage = await expand(policy, parents, n_each, cfg)
    children, prm_usage = await score(prm, children, in_place=True)  # fresh children
    new_finished = [c for c in children if c.finished]
    still_active = [c for c in children if not c.finished]
    return (
        top_k(still_active, cfg.keep, cfg.aggregation),
        finished + new_finished,
        usage + prm_usage,
    )


def beam_final_update(state: TTSState, cfg: BeamSearchConfig) -> dict:
    """The ``finalize`` update: the answer among finished (and cut-short) beams."""
    active, finished = state.get("active") or [], state.get("finished") or []
    reason = _search_done(active, finished, state.get("step", 0), cfg) or "max_steps"
    # Cut-short beams compete too when fewer than n solutions finished.
    cands = finished + active if len(finished) < cfg.target_finished else finished
    return finalize_update(state, cands, cfg, reason)


async def _step(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: BeamSearchConfig,
    root: Trajectory,
    s: Search,
    i: int,
) -> tuple[Search, Usage]:
    active, finished, usage = await beam_step(policy, prm, cfg, root, s["active"], s["finished"], i)
    return {"active": active, "finished": finished}, usage


BEAM_SEARCH_LOOP: SearchLoop[BeamSearchConfig] = SearchLoop(
    node="step",
    step=_step,
    done=lambda s, i, cfg: _search_done(s["active"], s["finished"], i, cfg),
    answer=beam_final_update,
)


def build_beam_search_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: BeamSearchConfig
) -> StateGraph:
    """The beam search graph: ``step`` loops once per search step.

    Two parametrisations of the same algorithm ("keep K beams, expand each into E children,
    score all children with the PRM, keep the best K"):

    * search-and-learn (default): ``n`` candidates per step, ``beam_width`` M: keep ``n / M``
      beams, each expands into ``M`` children.
    * width x k (the reference blog): set ``samples_per_beam=k``: keep ``beam_width`` beams,
      each expands into ``k`` children.

    The first step samples ``K x E`` children from the question. Children that finish (EOS, a
    boxed answer, a token cap) are set aside; the search stops when no beam is active,
    ``max_steps`` is reached, or ``n`` solutions have finished. The answer is selected among
    finished solutions (active ones too when the search was cut short).

    With a budget (``max_flops`` / ``max_tokens``) the search also stops at the first step the
    budget cannot pay in full (``stop_reason="budget"``): the answer comes from the solutions
    finished so far (a last step's finished children whose scoring was refused count too),
    else from the best kept beams (else from that step's unscored children).
    """
    return search_graph(BEAM_SEARCH_LOOP, policy, require_prm(prm, "beam_search"), base)


def width_budget(n: int) -> dict[str, int]:
    """``n`` candidates per step in groups of (at most) 4, the search-and-learn width."""
    return {"n": n, "beam_width": min(4, n)}


def search_units(children: int, kept: int, steps: float) -> tuple[float, float]:
    """Cost units of a step-level search that samples ``children`` per step from ``kept``
    prefixes: the children add up to ``children`` solutions; the kept prefixes are re-read
    as prompts every step; the PRM re-reads every child (half a solution on average)."""
    return children + kept * steps, children * (steps + 1) / 2


SPEC = StrategySpec(
    name="beam_search",
    config=BeamSearchConfig,
    build=build_beam_search_graph,
    budget_config=width_budget,
    cost_units=lambda cfg, steps, reused: search_units(cfg.keep * cfg.expand_each, cfg.keep, steps),
    computed_units=lambda cfg, steps, reused: written_units(cfg.keep * cfg.expand_each),
    summary="PRM-guided beam search: keep the best prefixes each step, expand each into more",
)
