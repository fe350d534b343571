"""PRM-guided beam search over reasoning steps.

Two parametrisations of the same algorithm ("keep K beams, expand each into E children,
score all children with the PRM, keep the best K"):

* search-and-learn / paper 001 (default): ``n`` candidates per step, ``beam_width`` M:
  keep ``n / M`` beams, each expands into ``M`` children.
* width x k (the reference blog): set ``samples_per_beam=k``: keep ``beam_width`` beams,
  each expands into ``k`` children.

The first step samples ``K x E`` children from the question. Children that finish (EOS,
a boxed answer, a token cap) are set aside; the search stops when no beam is active,
``max_steps`` is reached, or ``n`` solutions have finished. The answer is selected among
finished solutions (active ones too when the search was cut short).

Graph: ``prepare -> step (loops, one update per search step) -> finalize``. Every step is
exactly one policy call and one PRM call. When LangGraph's recursion limit is close, the
``step`` node finishes the search inside itself instead of failing.

With a budget (``max_flops`` / ``max_tokens``) the search also stops at the first step the
budget cannot pay in full (``stop_reason="budget"``): the answer comes from the solutions
finished so far (a last step's finished children whose scoring was refused count too), else
from the best kept beams (else from that step's unscored children).
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
    question: str,
    active: list[Trajectory],
    finished: list[Trajectory],
    step: int,
) -> tuple[list[Trajectory], list[Trajectory], Usage]:
    """One search step: expand every kept beam, score all children, keep the best."""
    if step == 0:
        parents, n_each = [Trajectory(question=question)], cfg.keep * cfg.expand_each
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
    if budget_stopped(state, cfg):
        return budget_final_update(state, finished + active, cfg)
    reason = _search_done(active, finished, state.get("step", 0), cfg) or "max_steps"
    # Cut-short beams compete too when fewer than n solutions finished.
    cands = finished + active if len(finished) < cfg.target_finished else finished
    return finalize_update(state, cands, cfg, reason)


def build_beam_search_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: BeamSearchConfig
) -> StateGraph:
    if prm is None:
        raise ConfigError("beam_search needs a PRM: pass prm=... (e.g. from load_default())")

    async def prepare(state: TTSState, rc: RunnableConfig) -> dict:
        # resolving fails fast on bad call-time overrides
        return prepare_update(state, resolve_config(base, rc), policy=policy)

    async def step(state: TTSState, rc: RunnableConfig) -> Command:
        cfg = resolve_config(base, rc)
        pol, pr, ledger = metered(policy, prm, cfg, state)  # as they are without a budget
        active, finished = state.get("active") or [], state.get("finished") or []
        i, usage, stop = state.get("step", 0), Usage(), ""
        while True:
            try:
                active, finished, u = await beam_step(
                    pol, pr, cfg, state["question"], active, finished, i
                )
            except BudgetExceededError as e:  # this step is not paid for: stop before it
                usage, stop = budget_refused(e, state, ledger, cfg), "budget"
                # children a refused PRM call left unscored still compete (as a last resort)
                finished = finished + [t for t in e.unscored if t.finished]
                active = active + [t for t in e.unscored if not t.finished]
                break
            i, usage = i + 1, usage + u
            if ledger is not None and ledger.ended:  # the meter cut this step short
                stop = "budget"
                break
            # Finish inside this node when LangGraph's recursion limit is near (a user's
            # small recursion_limit must not kill a 40-step search).
            if _search_done(active, finished, i, cfg) or state.get("remaining_steps", 99) > 3:
                break
        update = {"active": active, "finished": finished, "step": i, "usage": usage}
        if stop:
            update["stop_reason"] = stop
        # The node routes itself (a Command): a conditional edge costs LangGraph a
        # fresh copy of every channel per step (docs/performance.md).
        return Command(
            update=update, goto=next_node(stop or _search_done(active, finished, i, cfg), "step")
        )

    async def finalize(state: TTSState, rc: RunnableConfig) -> dict:
        return beam_final_update(state, resolve_config(base, rc))

    g = StateGraph(TTSState, input_schema=TTSInput, output_schema=TTSOutput)
    g.add_node("prepare", node(prepare, "prepare"))
    g.add_node("step", node(step, "step"), destinations=("step", "finalize"))
    g.add_node("finalize", node(finalize, "finalize"))
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "step")
    g.add_edge("finalize", END)
    return g
