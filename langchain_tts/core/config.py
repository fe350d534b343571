"""Shared pydantic configuration: sampling and budgets. Strategy configs extend these."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Aggregation = Literal["min", "last", "mean", "prod", "geo_mean"]
Selection = Literal["prm_max", "majority", "prm_vote"]


class SamplingParams(BaseModel):
    """How the policy samples one step (or a whole solution)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 means greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_step_tokens: int = Field(2048, ge=1, description="cap on one step (paper: 2048)")
    stop_at_step: bool = Field(True, description="stop at the step delimiter (else: to EOS)")
    seed: int | None = None


class StrategyConfig(BaseModel):
    """Knobs every strategy has. Subclasses add their own; defaults follow the papers."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_step_tokens: int = Field(2048, ge=1, description="per-step token cap")
    max_total_tokens: int = Field(8192, ge=1, description="per-trajectory token cap")
    max_steps: int = Field(40, ge=1, description="maximum reasoning steps per trajectory")
    aggregation: Aggregation = Field("last", description="how step scores become one score")
    selection: Selection = Field("prm_max", description="how the final answer is chosen")
    seed: int | None = None

    def sampling(self, **overrides: object) -> SamplingParams:
        base = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_step_tokens": self.max_step_tokens,
            "seed": self.seed,
        }
        base.update(overrides)
        return SamplingParams(**base)

    @model_validator(mode="after")
    def _caps(self) -> StrategyConfig:
        if self.max_step_tokens > self.max_total_tokens:
            raise ValueError(
                f"max_step_tokens ({self.max_step_tokens}) exceeds max_total_tokens "
                f"({self.max_total_tokens}); raise max_total_tokens or lower max_step_tokens"
            )
        return self


def check_split(n: int, beam_width: int, what: str) -> None:
    """``n`` candidates split into groups of ``beam_width`` (beam search, DVTS)."""
    if n < beam_width:
        raise ValueError(
            f"n ({n}) must be >= beam_width ({beam_width}): {what}; raise n or lower beam_width"
        )
    if n % beam_width:
        raise ValueError(
            f"n ({n}) must be a multiple of beam_width ({beam_width}); "
            f"e.g. n={beam_width * max(1, n // beam_width)}"
        )
