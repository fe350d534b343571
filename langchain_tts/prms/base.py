"""The process reward model protocol: many trajectories -> a score per step, in one call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_tts.backends.sync import AsyncFirstRunnable, run_sync
from langchain_tts.core.errors import BackendError, InputError, check_unicode
from langchain_tts.core.types import Trajectory, Usage, check_scores, nothing_to_release

#: the system prompt of Qwen2.5-Math-PRM's chat format
DEFAULT_PRM_SYSTEM_PROMPT = (
    "Please reason step by step, and put your final answer within \\boxed{}."
)


class PRMResult(BaseModel):
    """``scores[i][j]``: P(step j of trajectory i is correct), in [0, 1]."""

    scores: list[list[float]]
    usage: Usage = Field(default_factory=Usage)


class PRMInput(BaseModel):
    """Runnable input of a PRM: a question and the steps to score."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(pattern=r"\S")  # not blank
    steps: list[str]


class ProcessRewardModel(AsyncFirstRunnable[PRMInput | dict, list[float]], ABC):
    """Scores every step of many partial solutions in one batched call.

    Implementations override :meth:`_ascore`; :meth:`ascore` validates the output (one
    finite probability per step) so a NaN never reaches the search. As a runnable,
    ``invoke({"question": ..., "steps": [...]})`` returns that trajectory's step scores.
    """

    num_parameters: int = 0
    name: str | None = None
    #: positions the model reads; None: unknown, inputs are not checked against it
    context_length: int | None = None

    def clear_cache(self) -> None:
        """Forget every scored prefix (see :meth:`StepPolicy.clear_cache`)."""

    def tokens_bound(self, trajectories: Sequence[Trajectory]) -> int | None:
        """An upper bound on the tokens a call on ``trajectories`` will *compute*, or None
        when the backend cannot say (budget meters then bound them by their bytes)."""
        return None

    @property
    def reuses_prefixes(self) -> bool:
        """Whether the PRM scores a prefix it scored before without computing it again (a
        prefix cache): the router then prices a search by the tokens it writes."""
        return False

    def lease_tokens(
        self, trajectories: Sequence[Trajectory]
    ) -> tuple[int | None, Callable[[], None]]:
        """:meth:`tokens_bound`, crediting what the PRM's prefix cache holds and keeps for
        the call, and the function that lets the cache go once the call is done (call it
        exactly once). By default nothing is credited."""
        return self.tokens_bound(trajectories), nothing_to_release

    @abstractmethod
    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult: ...

    async def ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        if not trajectories:
            return PRMResult(scores=[])
        result = await self._ascore(trajectories)
        check_scores(result.scores, [len(t.steps) for t in trajectories], type(self).__name__)
        return result

    def score(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        return run_sync(self.ascore(trajectories))

    def _call_usage(self, tokens: int, seconds: float = 0.0) -> Usage:
        """The usage of one call: its tokens and ``2 x num_parameters`` FLOPs per token."""
        if tokens < 0:  # budgets would grow with each call
            raise BackendError(f"{self.name}: a call reported {tokens} tokens; counts are >= 0")
        return Usage(
            prm_calls=1,
            prm_tokens=tokens,
            prm_flops=2.0 * self.num_parameters * tokens,
            seconds=seconds,
        )

    async def ainvoke(
        self, input: PRMInput | dict, config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[float]:
        # a run of its own, like any runnable's: callbacks, tags and run_name apply
        return await self._acall_with_config(self._scores_of, input, config, run_type="prm")

    async def _scores_of(self, input: PRMInput | dict) -> list[float]:
        try:
            inp = input if isinstance(input, PRMInput) else PRMInput.model_validate(input)
        except ValidationError as e:  # the package's error type, naming the field
            raise InputError(f"invalid PRM input (question, steps): {e}") from None
        check_unicode(inp.question)
        for j, step in enumerate(inp.steps):
            check_unicode(step, f"step {j}")
        result = await self.ascore([Trajectory(question=inp.question, steps=inp.steps)])
        return result.scores[0]
