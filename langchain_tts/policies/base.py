"""The step policy protocol: many prefixes x n samples -> next steps, in one batched call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_tts.backends.sync import AsyncFirstRunnable, run_sync
from langchain_tts.backends.text import DEFAULT_STEP_DELIMITER
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BackendError, InputError
from langchain_tts.core.types import Step, Trajectory, Usage, nothing_to_release


class PolicyResult(BaseModel):
    """``steps[i]`` holds the ``n`` samples for prefix ``i``; ``usage`` what the call cost."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    steps: list[list[Step]]
    usage: Usage = Field(default_factory=Usage)
    max_step_tokens: int | None = Field(
        None,
        description="the per-step cap the call really ran with, when a budget meter lowered "
        "it (None: the requested cap); its 'length' steps were cut by the budget",
    )


class PolicyInput(BaseModel):
    """Runnable input of a policy: one prefix (question + steps so far). Sampling settings
    go under ``sampling`` (an unknown key, e.g. ``temperature`` at the top, is an error: it
    would be ignored)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(pattern=r"\S")  # not blank
    steps: list[str] = Field(default_factory=list)
    n: int = Field(1, ge=1)
    sampling: SamplingParams = Field(default_factory=SamplingParams)


class StepPolicy(AsyncFirstRunnable[PolicyInput | dict, list[Step]], ABC):
    """A policy that continues many partial solutions by one step each, in one call.

    Implementations override :meth:`_agenerate`. Callers use :meth:`agenerate` (batched,
    async) or :meth:`generate`; as a LangChain runnable, ``invoke({"question": ..., "steps":
    [...], "n": 4})`` returns the ``n`` next steps of that one prefix.
    """

    step_delimiter: str = DEFAULT_STEP_DELIMITER
    #: parameters of the model, for FLOPs = 2 x params x tokens (0 when unknown)
    num_parameters: int = 0
    name: str | None = None
    #: positions the model reads (prompt + generated); None: unknown, prompts are not checked
    context_length: int | None = None

    def clear_cache(self) -> None:
        """Forget every cached prefix (a benchmark comparing runs on the same questions
        starts each from nothing); backends without a cache have nothing to forget."""

    @abstractmethod
    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult: ...

    async def agenerate(
        self, prefixes: Sequence[Trajectory], n: int = 1, params: SamplingParams | None = None
    ) -> PolicyResult:
        if n < 1:
            raise InputError(f"n must be >= 1 sample per prefix, got {n}")
        if not prefixes:
            return PolicyResult(steps=[])
        result = await self._agenerate(prefixes, n, params or SamplingParams())
        if len(result.steps) != len(prefixes) or any(len(s) != n for s in result.steps):
            raise RuntimeError(
                f"{type(self).__name__} returned a malformed batch: expected {len(prefixes)} "
                f"prefixes x {n} samples"
            )
        return result

    def generate(
        self, prefixes: Sequence[Trajectory], n: int = 1, params: SamplingParams | None = None
    ) -> PolicyResult:
        return run_sync(self.agenerate(prefixes, n, params))

    # -- LangChain runnable -------------------------------------------------------------
    @staticmethod
    def _parse_input(input: PolicyInput | dict) -> PolicyInput:
        if isinstance(input, PolicyInput):
            return input
        try:
            return PolicyInput.model_validate(input)
        except ValidationError as e:  # the package's error type, naming the field
            raise InputError(
                f"invalid policy input (question, steps, n, sampling={{temperature, ...}}): {e}"
            ) from None

    async def ainvoke(
        self, input: PolicyInput | dict, config: RunnableConfig | None = None, **kwargs: Any
    ) -> list[Step]:
        # a run of its own, like any runnable's: callbacks, tags and run_name apply
        return await self._acall_with_config(self._steps_of, input, config, run_type="llm")

    async def _steps_of(self, input: PolicyInput | dict) -> list[Step]:
        inp = self._parse_input(input)
        prefix = Trajectory(question=inp.question, steps=inp.steps)
        result = await self.agenerate([prefix], inp.n, inp.sampling)
        return result.steps[0]

    def _call_usage(
        self, prompt_tokens: int, generated_tokens: int, *, cached: int = 0, seconds: float = 0.0
    ) -> Usage:
        """The usage of one call from every prompt token it read (``prompt_tokens``, the
        ``cached`` ones included): ``policy_prompt_tokens`` are the computed ones
        (``prompt_tokens - cached``), and FLOPs are ``2 x num_parameters`` per computed
        token (see :class:`~langchain_tts.core.types.Usage`)."""
        if prompt_tokens < 0 or generated_tokens < 0:  # budgets would grow with each call
            raise BackendError(
                f"{self.name}: a call reported {prompt_tokens} prompt and {generated_tokens} "
                "generated tokens; token counts are >= 0"
            )
        cached = min(max(0, cached), prompt_tokens)
        computed = prompt_tokens - cached
        return Usage(
            policy_calls=1,
            policy_prompt_tokens=computed,
            policy_cached_tokens=cached,
            policy_generated_tokens=generated_tokens,
            policy_flops=2.0 * self.num_parameters * (computed + generated_tokens),
            seconds=seconds,
        )

    def prompt_tokens_bound(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> int | None:
        """An upper bound on the prompt tokens a call will *compute*, or None when the
        backend cannot say (budget meters then bound the prompt by its bytes)."""
        return None

    @property
    def reuses_prefixes(self) -> bool:
        """Whether the backend computes a prompt prefix it computed before only once, in a
        cache whose hits :meth:`lease_prompt_tokens` can credit: a search's re-read prefixes
        then cost nothing, and the router prices it by what it writes
        (:func:`~langchain_tts.routing.allocation_cost`). A backend whose cache a meter
        cannot pin (a vLLM engine or server) says False: a price that credited the cache
        while the meter reserved every prompt would pick runs the meter then cuts short."""
        return False

    def lease_prompt_tokens(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> tuple[int | None, Callable[[], None]]:
        """:meth:`prompt_tokens_bound`, crediting what the backend's prefix cache holds and
        keeps for the call, and the function that lets the cache go once the call is done
        (call it exactly once). By default nothing is credited."""
        return self.prompt_tokens_bound(prefixes, n, params), nothing_to_release

    def render_prefix(self, prefix: Trajectory) -> str:
        """The solution text so far, each finished step followed by the delimiter."""
        return "".join(s + self.step_delimiter for s in prefix.steps)
