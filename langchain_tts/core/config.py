"""Shared pydantic configuration: sampling and budgets. Strategy configs extend these."""

from __future__ import annotations

import copy
import difflib
import math
import typing
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from langchain_tts.core.errors import ConfigError

#: the largest seed: backends add sample and round indices to it and need it to fit 64 bits
MAX_SEED = 2**62
Aggregation = Literal["min", "last", "mean", "prod", "geo_mean"]
Selection = Literal["prm_max", "majority", "prm_vote"]


class SamplingParams(BaseModel):
    """How the policy samples one step (or a whole solution)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0.0, le=5.0, description="0 means greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_step_tokens: int = Field(2048, ge=1, description="cap on the tokens of one step")
    stop_at_step: bool = Field(True, description="stop at the step delimiter (else: to EOS)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="sampling seed (None: random)")


def numeric_field(annotation: Any) -> bool:
    """Whether a field takes numbers (``int``, ``float``, optional or not) and no ``bool``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return False
    if args:
        return any(numeric_field(a) for a in args)
    return annotation in (int, float)


def reject_bool_numbers(model: type[BaseModel], data: Any) -> Any:
    """``data`` unchanged, unless a numeric knob holds ``True`` / ``False``: pydantic would
    read it as 1 / 0 (``n=True`` as one sample), so it is an error naming the knob."""
    if isinstance(data, dict):
        for k, v in data.items():
            info = model.model_fields.get(k) if isinstance(k, str) else None
            if isinstance(v, bool) and info is not None and numeric_field(info.annotation):
                raise ValueError(f"{k} must be a number, got {v!r}")
    return data


class StrategyConfig(BaseModel):
    """Knobs every strategy has. Subclasses add their own; defaults follow the papers."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        return reject_bool_numbers(cls, data)

    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_step_tokens: int = Field(2048, ge=1, description="per-step token cap")
    max_total_tokens: int = Field(8192, ge=1, description="per-trajectory token cap")
    max_steps: int = Field(40, ge=1, description="maximum reasoning steps per trajectory")
    aggregation: Aggregation = Field("last", description="how step scores become one score")
    selection: Selection = Field("prm_max", description="how the final answer is chosen")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="sampling seed (None: random)")
    max_flops: float | None = Field(
        None,
        description="compute budget of one run in FLOPs (policy + PRM); None: no cap. A model "
        "call that could overrun it is not made: the search stops with stop_reason 'budget'",
    )
    max_tokens: float | None = Field(
        None,
        description="budget of one run in tokens (policy prompt + generated + PRM); None: no "
        "cap. Enforced like max_flops",
    )
    #: the name of the graph built on this config (its knobs namespace in ``configurable``
    #: and the run context), and that graph's context schema: set by ``create_tts_graph``
    _graph_name: str | None = PrivateAttr(None)
    _knobs: type[BaseModel] | None = PrivateAttr(None)
    #: called with the knobs a run changes, before it runs: a server's limits
    #: (``servable_graph(..., limits=...)``); raises ConfigError to refuse
    _knob_check: Any = PrivateAttr(None)

    @field_validator("max_flops", "max_tokens")
    @classmethod
    def _budget(cls, v: float | None, info: Any) -> float | None:
        check_budget(info.field_name, v)
        return v

    @property
    def budgeted(self) -> bool:
        """Whether a compute budget (``max_flops`` / ``max_tokens``) is set."""
        return self.max_flops is not None or self.max_tokens is not None

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


def check_budget(name: str, v: object) -> None:
    """A budget is a positive number of FLOPs / tokens, or None (no cap)."""
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive number (or None: no cap), got {v!r}")


def check_budgets(data: Any) -> None:
    """:func:`check_budget` on the ``max_flops`` / ``max_tokens`` of a dict of knobs."""
    if isinstance(data, dict):
        for k in ("max_flops", "max_tokens"):
            if k in data:
                check_budget(k, data[k])


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


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when ``key`` is close to one of ``valid``, else ``""``."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def knobs_model(cfg: StrategyConfig, title: str | None = None) -> type[BaseModel]:
    """The knobs of ``cfg``'s strategy as a pydantic model defaulting to ``cfg`` itself.

    A graph's ``context_schema``: ``invoke(..., context={"n": 4})`` checks each value's type
    and range against it (an invalid one is a :class:`ConfigError` naming the field), and
    its JSON schema shows the built config as defaults. Combinations (``n`` a multiple of
    ``beam_width``) are checked once all of a run's knobs are merged, and extra keys pass
    here (a graph's name holds its own knobs): the graph rejects unknown ones when it
    resolves its config.
    """
    cls = type(cfg)
    annotations: dict[str, Any] = {}
    ns: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        f = copy.copy(info)
        f.default = getattr(cfg, name)
        f.default_factory = None
        annotations[name] = info.annotation
        ns[name] = f
    title = title or cls.__name__.removesuffix("Config") + "Knobs"

    def __init__(self: BaseModel, **data: Any) -> None:
        try:
            super(knobs, self).__init__(**data)
        except ValidationError as e:
            raise ConfigError(f"invalid run context for {title}: {e}") from e

    def _checks(cls: type[BaseModel], data: Any) -> Any:
        # the config's own validators are not copied: its bool and budget checks are these
        reject_bool_numbers(cls, data)
        check_budgets(data)
        return data

    knobs = type(
        title,
        (BaseModel,),
        {
            **ns,
            "__annotations__": annotations,
            "__module__": __name__,
            "__doc__": f"Per-run knobs of {cls.__name__} (run context or config['configurable']).",
            "__init__": __init__,
            "_checks": model_validator(mode="before")(classmethod(_checks)),  # type: ignore[arg-type]
            "model_config": ConfigDict(extra="allow", title=title),
        },
    )
    return knobs
