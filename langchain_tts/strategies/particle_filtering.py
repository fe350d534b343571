"""Particle filtering over reasoning steps: a population resampled by PRM weights each step.

"A Probabilistic Inference Approach to Inference-Time Scaling of LLMs using Particle-Based
Monte Carlo Methods" (Puri et al., 2025) treats a solution as a state-space model: the
policy proposes each next step, the PRM's score is the observation, and ``n`` particles
track the posterior over good solutions. Each step:

1. **propagate**: every unfinished particle gets its next step (one policy call; the first
   step samples ``n`` particles from the question);
2. **weigh**: the PRM scores the new prefixes (one PRM call); a particle's weight is
   ``softmax(logit(score) / weight_temperature)`` over the population, ``score`` its
   aggregated step score (``aggregation``; finished particles keep their final score);
3. **resample**: ``n`` particles are drawn by weight (``resampling``: multinomial, as in
   the paper, or systematic, lower variance), seeded by the config's ``seed``.

Unlike beam search, a weak prefix is not cut for good: it survives in proportion to its
weight, which keeps the search from collapsing early on a verifier's mistake. Finished
particles stay in the population (and are resampled like the rest); the search stops when
every particle finished, or at ``max_steps``. The answer is chosen among the final
population's finished particles with ``selection`` (``prm_max``: the paper's argmax).

Defaults follow its_hub's implementation of the paper: the logit of the last step's score
as the log weight (``weight_temperature=1``), multinomial resampling of the whole
population. Budgets (``max_flops`` / ``max_tokens``) stop the search at the first step they
cannot pay (``stop_reason="budget"``), as for beam search.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from langgraph.graph import StateGraph
from pydantic import Field

from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.aggregate import aggregate_scores
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import TTSState, expand, finalize_update, score
from langchain_tts.strategies.loop import (
    Search,
    SearchLoop,
    finished_or_out_of_steps,
    require_prm,
    search_graph,
)
from langchain_tts.strategies.registry import StrategySpec, written_units

Resampling = Literal["multinomial", "systematic"]
_EPS = 1e-7  # scores are clipped into (0, 1) before the logit, as its_hub does


class ParticleFilteringConfig(StrategyConfig):
    n: int = Field(16, ge=1, description="particles")
    weight_temperature: float = Field(
        1.0, gt=0.0, description="softmax temperature of the log weights (lower: greedier)"
    )
    resampling: Resampling = Field("multinomial", description="how particles are redrawn")


def log_weight(t: Trajectory, aggregation: str) -> float:
    """The logit of a particle's aggregated PRM score (scores are probabilities)."""
    s = min(max(aggregate_scores(t.step_scores, aggregation), _EPS), 1.0 - _EPS)
    return math.log(s / (1.0 - s))


def weights(particles: Sequence[Trajectory], cfg: ParticleFilteringConfig) -> list[float]:
    """Normalised resampling weights: softmax of the log weights over the population."""
    logits = [log_weight(t, cfg.aggregation) / cfg.weight_temperature for t in particles]
    top = max(logits)
    ws = [math.exp(x - top) for x in logits]
    total = sum(ws)
    return [w / total for w in ws]


def resample(ws: Sequence[float], k: int, how: Resampling, rng: random.Random) -> list[int]:
    """``k`` indices drawn by weight ``ws`` (normalised): multinomial or systematic."""
    if how == "multinomial":
        return rng.choices(range(len(ws)), weights=ws, k=k)
    # systematic: one uniform offset, k evenly spaced points through the cumulative weights
    u0, out, cum, i = rng.random() / k, [], ws[0], 0
    for j in range(k):
        u = u0 + j / k
        while u > cum and i < len(ws) - 1:
            i += 1
            cum += ws[i]
        out.append(i)
    return out


async def pf_step(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: ParticleFilteringConfig,
    root: Trajectory,
    particles: list[Trajectory],
    step: int,
) -> tuple[list[Trajectory], Usage]:
    """Propagate the unfinished particles one step (at step 0, ``n`` from ``root``), weigh
    them all, resample ``n``."""
    if step == 0:
        parents, n_each = [root], cfg.n
    else:
        parents, n_each = [p for p in particles if not p.finished], 1
    # a resampled prefix appears several times: each copy samples its own next step
    children, usage = await expand(policy, parents, n_each, cfg, seed_offset=step * cfg.n)
    children, prm_usage = await score(prm, children, in_place=True)  # fresh children
    population = children + [p for p in particles if p.finished] if step else children
    rng = random.Random(None if cfg.seed is None else f"{cfg.seed}:{step}")
    drawn = resample(weights(population, cfg), cfg.n, cfg.resampling, rng)
    return [population[i] for i in drawn], usage + prm_usage


def _search_done(particles: list[Trajectory], step: int, cfg: ParticleFilteringConfig) -> str:
    return finished_or_out_of_steps(particles, step, cfg.max_steps)


def pf_final_update(state: TTSState, cfg: ParticleFilteringConfig) -> dict:
    """The ``finalize`` update: the answer among the final population (finished first)."""
    particles = state.get("active") or []
    reason = _search_done(particles, state.get("step", 0), cfg) or "max_steps"
    done = [p for p in particles if p.finished]
    return finalize_update(state, _unique(done or particles), cfg, reason)


def _unique(ts: Sequence[Trajectory]) -> list[Trajectory]:
    """One copy of each resampled particle (copies would each cast a vote)."""
    seen: set[int] = set()
    return [t for t in ts if not (id(t) in seen or seen.add(id(t)))]


async def _step(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: ParticleFilteringConfig,
    root: Trajectory,
    s: Search,
    i: int,
) -> tuple[Search, Usage]:
    particles, usage = await pf_step(policy, prm, cfg, root, s["active"], i)
    # finished particles stay in the population (``active``): they are resampled too
    return {"active": particles, "finished": []}, usage


PARTICLE_FILTERING_LOOP: SearchLoop[ParticleFilteringConfig] = SearchLoop(
    node="step",
    step=_step,
    done=lambda s, i, cfg: _search_done(s["active"], i, cfg),
    answer=pf_final_update,
)


def build_particle_filtering_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: ParticleFilteringConfig
) -> StateGraph:
    prm = require_prm(prm, "particle_filtering", " (its weights)")
    return search_graph(PARTICLE_FILTERING_LOOP, policy, prm, base)


def pf_units(cfg: ParticleFilteringConfig, steps: float, reused: int) -> tuple[float, float]:
    """``n`` particles grow one step at a time (each prefix re-read as a prompt every step);
    the PRM re-reads every particle each step (half a solution on average)."""
    return cfg.n * (1 + steps), cfg.n * (steps + 1) / 2


SPEC = StrategySpec(
    name="particle_filtering",
    config=ParticleFilteringConfig,
    build=build_particle_filtering_graph,
    budget_config=lambda n: {"n": n},
    cost_units=pf_units,
    computed_units=lambda cfg, steps, reused: written_units(cfg.n),
    summary="particle filtering: n partial solutions resampled by PRM weight after every step",
)
