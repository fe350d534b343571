"""Scripted fakes of a policy and a PRM, for unit tests and for measuring orchestration.

``FakePolicy(fn)`` answers every prefix with ``fn(prefix, sample_index)`` (a string or a
``Step``); ``FakePRM(fn)`` scores a trajectory with ``fn(trajectory)``. Both record their
calls, so tests can assert batching (one call per search step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

StepFn = Callable[[Trajectory, int], "str | Step"]


class FakePolicy(StepPolicy):
    """A policy whose next step is computed by a Python function."""

    def __init__(self, fn: StepFn, *, num_parameters: int = 1000, name: str = "fake-policy"):
        self.fn = fn
        self.num_parameters = num_parameters
        self.name = name
        self.calls: list[tuple[int, int, SamplingParams]] = []  # (prefixes, n, params)

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self.calls.append((len(prefixes), n, params))
        out: list[list[Step]] = []
        gen = prompt = 0
        for p in prefixes:
            row = []
            for i in range(n):
                s = self.fn(p, i)
                step = s if isinstance(s, Step) else Step(text=s, tokens=max(1, len(s) // 4))
                row.append(step)
                gen += step.tokens
            out.append(row)
            prompt += sum(len(s) // 4 for s in p.steps) + len(p.question) // 4
        usage = Usage(
            policy_calls=1,
            policy_prompt_tokens=prompt,
            policy_generated_tokens=gen,
            policy_flops=2.0 * self.num_parameters * (prompt + gen),
        )
        return PolicyResult(steps=out, usage=usage)


class FakePRM(ProcessRewardModel):
    """A PRM whose per-step scores are computed by a Python function."""

    def __init__(
        self,
        fn: Callable[[Trajectory], list[float]],
        *,
        num_parameters: int = 1000,
        name: str = "fake-prm",
    ):
        self.fn = fn
        self.num_parameters = num_parameters
        self.name = name
        self.calls: list[int] = []  # trajectories per call

    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        self.calls.append(len(trajectories))
        scores = [list(self.fn(t)) for t in trajectories]
        tokens = sum(len(t.question) // 4 + sum(len(s) // 4 for s in t.steps) for t in trajectories)
        usage = Usage(prm_calls=1, prm_tokens=tokens, prm_flops=2.0 * self.num_parameters * tokens)
        return PRMResult(scores=scores, usage=usage)
