"""The process reward model protocol: many trajectories -> a score per step, in one call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, Field

from langchain_tts.core.types import Trajectory, Usage, check_scores
from langchain_tts.policies.base import run_sync


class PRMResult(BaseModel):
    """``scores[i][j]``: P(step j of trajectory i is correct), in [0, 1]."""

    scores: list[list[float]]
    usage: Usage = Field(default_factory=Usage)


class PRMInput(BaseModel):
    question: str
    steps: list[str]


class ProcessRewardModel(Runnable[PRMInput | dict, list[float]], ABC):
    """Scores every step of many partial solutions in one batched call.

    Implementations override :meth:`_ascore`; :meth:`ascore` validates the output (one
    finite probability per step) so a NaN never reaches the search. As a runnable,
    ``invoke({"question": ..., "steps": [...]})`` returns that trajectory's step scores.
    """

    num_parameters: int = 0
    name: str | None = None

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

    def invoke(
        self, input: PRMInput | dict, config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[float]:
        return run_sync(self.ainvoke(input, config, **kwargs))

    async def ainvoke(
        self, input: PRMInput | dict, config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[float]:
        inp = input if isinstance(input, PRMInput) else PRMInput.model_validate(input)
        result = await self.ascore([Trajectory(question=inp.question, steps=inp.steps)])
        return result.scores[0]
