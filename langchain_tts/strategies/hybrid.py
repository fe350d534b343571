"""Hybrid parallel x sequential: M chains, each revised up to T times, select by verifier.

Snell, Lee, Xu and Kumar ("Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters") find a balanced split best at medium difficulty; ``split="sqrt"``
derives theirs from a generation budget (:func:`sqrt_split`). The mechanics are
:mod:`langchain_tts.strategies.revision`'s, which is this with M = 1.
"""

from __future__ import annotations

import math
from typing import Literal

from langgraph.graph import StateGraph
from pydantic import Field, model_validator

from langchain_tts.core.errors import ConfigError
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.registry import StrategySpec
from langchain_tts.strategies.revision import RevisionConfig, attempts_units, build_revision_graph


def sqrt_split(budget: int) -> tuple[int, int]:
    """The reference's square-root split of a generation budget: ``(M, T)`` with
    ``M = int(sqrt(budget))`` parallel chains (truncated, not rounded) of ``T = budget // M``
    attempts each (a first attempt and ``T - 1`` revisions; at most ``budget`` in all).

    >>> sqrt_split(16), sqrt_split(10), sqrt_split(8), sqrt_split(3)
    ((4, 4), (3, 3), (2, 4), (1, 3))
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"budget must be a positive integer (generations), got {budget!r}")
    m = math.isqrt(budget)
    return m, budget // m


class HybridConfig(RevisionConfig):
    """Hybrid knobs. Defaults: 4 chains x (1 attempt + 3 revisions) = 16 generations, the
    sqrt split of 16; sampling as in the papers (temperature 0.7, top_p 0.95, 2048 tokens
    per step, 8192 per trajectory)."""

    chains: int = Field(4, ge=1, description="M: parallel chains (split='manual')")
    revisions: int = Field(
        3, ge=0, description="T: revision rounds after each chain's first attempt"
    )
    split: Literal["manual", "sqrt"] = Field(
        "manual",
        description="'manual': chains x revisions as given; 'sqrt': derive both from budget",
    )
    budget: int | None = Field(
        None, ge=1, description="generations in all, for split='sqrt' (M chains x T attempts)"
    )

    @model_validator(mode="after")
    def _split(self) -> HybridConfig:
        if self.split == "sqrt" and self.budget is None:
            raise ValueError(
                "split='sqrt' needs budget (total generations): e.g. budget=16 gives "
                "4 chains x 4 attempts; or use split='manual' with chains and revisions"
            )
        if self.split == "manual" and self.budget is not None:
            raise ValueError(
                f"budget ({self.budget}) is only used with split='sqrt': set split='sqrt', "
                "or drop budget and set chains and revisions"
            )
        return self

    @property
    def chain_plan(self) -> tuple[int, int]:
        if self.split == "sqrt":
            m, t = sqrt_split(self.budget)  # type: ignore[arg-type]  # validated above
            return m, t - 1
        return self.chains, self.revisions


def build_hybrid_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: HybridConfig
) -> StateGraph:
    """The hybrid graph: the revision graph over M chains.

    Round 0 samples the M chains' first attempts in one policy call (question x M); each later
    round revises every chain still going in one batched policy call (one prefix per chain,
    built with ``revision_template``), and scores the new attempts in one PRM call. A chain
    whose latest attempt reaches ``stop_threshold`` stops being revised. The answer is chosen
    with ``selection`` among every attempt of every chain.

    ``split="manual"`` uses ``chains`` and ``revisions`` as given; ``split="sqrt"`` spends
    ``budget`` generations as :func:`sqrt_split` says: M = int(sqrt(budget)) chains of T =
    budget // M attempts each (so ``revisions`` = T - 1, and at most ``budget`` generations in
    all).
    """
    return build_revision_graph(policy, prm, base, strategy="hybrid")


SPEC = StrategySpec(
    name="hybrid",
    config=HybridConfig,
    build=build_hybrid_graph,
    budget_config=lambda n: {"split": "sqrt", "budget": n},
    cost_units=attempts_units,
    embedded_policy="small-revise",  # its prompts need a policy trained to revise
    summary="Parallel x sequential: M chains revised side by side, the sqrt split of a budget",
)
