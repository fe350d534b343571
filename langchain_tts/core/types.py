"""The small typed vocabulary every layer speaks: steps, trajectories, usage."""

from __future__ import annotations

import math
from itertools import chain
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from langchain_tts.core.answers import extract_answer

FinishReason = Literal["step", "eos", "length"]
M = TypeVar("M", bound=BaseModel)
_set = object.__setattr__


def _trusted(cls: type[M], values: dict[str, Any], fields_set: set[str]) -> M:
    """An instance of ``cls`` from already valid values (every field, in field order).

    What ``model_construct`` does, without its per-field Python loop: for the hot paths of
    a search, whose values come from validated models (a search step makes hundreds).
    """
    m = cls.__new__(cls)
    _set(m, "__dict__", values)
    _set(m, "__pydantic_fields_set__", fields_set)
    _set(m, "__pydantic_extra__", None)
    _set(m, "__pydantic_private__", None)
    return m


def model_replace(m: M, **changes: Any) -> M:
    """``m.model_copy(update=changes)`` for plain models (no extras, no private attributes).

    About twice as fast; as with ``model_copy``, ``changes`` are not validated.
    """
    values = m.__dict__.copy()
    values.update(changes)
    return _trusted(type(m), values, m.__pydantic_fields_set__ | changes.keys())


_EXTEND_SET = frozenset({"question", "steps", "step_scores", "tokens", "finished", "finish_reason"})


class Step(BaseModel):
    """One generated reasoning step (the text before the step delimiter)."""

    model_config = ConfigDict(frozen=True)

    text: str
    tokens: int = Field(0, ge=0, description="generated tokens, delimiter included")
    finish_reason: FinishReason = "step"
    """``step``: stopped at the delimiter; ``eos``: the model ended the solution;
    ``length``: hit the per-step token cap."""


class Trajectory(BaseModel):
    """A (partial) solution: the question, its steps so far and their PRM scores."""

    question: str
    steps: list[str] = Field(default_factory=list)
    step_scores: list[float] = Field(default_factory=list)
    tokens: int = Field(0, ge=0, description="policy tokens generated for this trajectory")
    finished: bool = False
    finish_reason: str | None = None
    score: float | None = Field(None, description="aggregated PRM score, set when selected")

    def extend(self, step: Step, *, max_total_tokens: int | None = None) -> Trajectory:
        """A child trajectory with one more step (finished when the step ends the solution)."""
        tokens = self.tokens + step.tokens
        finished, reason = False, None
        if step.finish_reason in ("eos", "length"):
            finished, reason = True, step.finish_reason
        elif extract_answer(step.text, fallback=False) is not None:
            finished, reason = True, "answer"
        if not finished and max_total_tokens is not None and tokens >= max_total_tokens:
            finished, reason = True, "max_total_tokens"
        # Every value comes from validated models: build without re-validating the steps.
        values = {
            "question": self.question,
            "steps": [*self.steps, step.text],
            "step_scores": list(self.step_scores),
            "tokens": tokens,
            "finished": finished,
            "finish_reason": reason,
            "score": None,
        }
        return _trusted(Trajectory, values, set(_EXTEND_SET))

    def copy_with(self, **changes: Any) -> Trajectory:
        """A shallow copy with ``changes`` applied: ``model_copy(update=changes)``, faster.

        As with ``model_copy``, the new values are not validated; the search uses it to set
        ``step_scores`` / ``score`` / ``finished`` on the trajectories it creates.
        """
        return model_replace(self, **changes)

    @property
    def text(self) -> str:
        return "\n\n".join(self.steps)

    @property
    def answer(self) -> str | None:
        return extract_answer(self.text)


class Usage(BaseModel):
    """Compute spent: tokens, FLOPs (2 x params x tokens per model), calls and seconds.

    Tokens are the ones a model *computed*; tokens read back from a cache are counted
    apart and cost no FLOPs:

    * ``policy_prompt_tokens``: prompt tokens the policy computed (prefill). Prompt tokens
      whose keys/values came from a prefix cache (the embedded runtime's, vLLM's, a
      server's ``cached_tokens``) are ``policy_cached_tokens`` instead, so every prompt
      token read is ``policy_prompt_tokens + policy_cached_tokens``.
    * ``policy_generated_tokens``: sampled tokens (each is one decode step).
    * ``policy_flops = 2 x params x (policy_prompt_tokens + policy_generated_tokens)``.
    * ``prm_tokens`` / ``prm_cached_tokens`` / ``prm_flops``: the same split for the PRM
      (``prm_flops = 2 x params x prm_tokens``).

    ``tokens`` and ``flops``, and so every token / FLOPs budget, count computed work only.
    Usages add up with ``+``, which is also the graph-state reducer.
    """

    policy_calls: int = 0
    policy_prompt_tokens: int = 0
    policy_cached_tokens: int = 0
    policy_generated_tokens: int = 0
    policy_flops: float = 0.0
    prm_calls: int = 0
    prm_tokens: int = 0
    prm_cached_tokens: int = 0
    prm_flops: float = 0.0
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.policy_prompt_tokens + self.policy_generated_tokens + self.prm_tokens

    @property
    def flops(self) -> float:
        return self.policy_flops + self.prm_flops

    def __add__(self, other: Usage | None) -> Usage:
        if other is None:
            return self
        data = {k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields}
        return Usage(**data)

    def summary(self) -> dict[str, float]:
        d = self.model_dump()
        d.update(tokens=self.tokens, flops=self.flops)
        return d


#: a ``usage`` write that starts the count again (a graph's first node writes it: the state
#: of a reused checkpointer thread holds the previous run's usage, and usage is per run)
RESET_USAGE = "reset"


def add_usage(left: Usage | None, right: Usage | dict | str | None) -> Usage:
    """LangGraph reducer: every node returns the usage of its own calls; :data:`RESET_USAGE`
    sets it back to zero. A plain dict (``update_state`` from a JSON client) is read as a
    :class:`Usage`."""
    if isinstance(right, str):
        if right != RESET_USAGE:
            raise ValueError(f"a usage update is a Usage or {RESET_USAGE!r}, got {right!r}")
        return Usage()
    if isinstance(right, dict):
        right = Usage.model_validate(right)  # a ValidationError names a bad field
    elif right is not None and not isinstance(right, Usage):
        # ValueError, not TypeError: a server answers a client's bad write with a 4xx
        raise ValueError(
            f"a usage update is a Usage (or its fields as a dict), got {type(right).__name__}"
        )
    return (left or Usage()) + right


def add_usage_summaries(
    left: dict[str, float] | None, right: dict[str, float] | None
) -> dict[str, float]:
    """LangGraph reducer summing :meth:`Usage.summary` dicts key by key (plain JSON data, so
    a parent graph's state and checkpoints need no package types)."""
    out = dict(left or {})
    for k, v in (right or {}).items():
        out[k] = out.get(k, 0) + v
    return out


def check_scores(scores: list[list[float]], expected_lengths: list[int], source: str) -> None:
    """Reject PRM output that is not one finite score in [0, 1] per step."""
    from langchain_tts.core.errors import PRMOutputError

    if len(scores) != len(expected_lengths):
        raise PRMOutputError(
            f"{source} returned {len(scores)} score lists for {len(expected_lengths)} "
            "trajectories; a PRM must return one list per trajectory."
        )
    # Fast path: every length right and every score a plain number in [0, 1], checked in
    # a few C loops over all scores at once. Otherwise the loop below finds the first
    # problem, in order, and names it.
    if all(len(row) == n for row, n in zip(scores, expected_lengths)) and _plain_probabilities(
        list(chain.from_iterable(scores))
    ):
        return
    for i, (row, n) in enumerate(zip(scores, expected_lengths)):
        if len(row) != n:
            raise PRMOutputError(
                f"{source} returned {len(row)} step scores for trajectory {i}, which has {n} "
                "steps; check that the step separator is not inside a step's text."
            )
        for j, s in enumerate(row):
            if not isinstance(s, (int, float)) or math.isnan(s) or not (0.0 <= s <= 1.0):
                raise PRMOutputError(
                    f"{source} returned score {s!r} for step {j} of trajectory {i}; scores "
                    "must be finite probabilities in [0, 1] (a NaN usually means fp16 "
                    "overflow: load the PRM in float32 or bfloat16)."
                )


_PLAIN = frozenset({float, int, bool})


def _plain_probabilities(values: list[float]) -> bool:
    """Whether ``values`` are plain floats / ints / bools, all in [0, 1], none NaN.

    ``False`` means "look closer": :func:`check_scores` then checks score by score, which
    also accepts float / int subclasses and names the first bad score.
    """
    if not values:
        return True
    if not set(map(type, values)) <= _PLAIN:
        return False
    total = sum(values)  # NaN if any score is NaN (min / max would skip it)
    return total == total and min(values) >= 0.0 and max(values) <= 1.0


def nothing_to_release() -> None:
    """The release of a budget lease that holds nothing (a backend without a cache to pin)."""
    return None
