"""Hard compute caps: policy/PRM wrappers that never start a call the budget cannot pay.

Budgets (``max_flops`` / ``max_tokens``, of every strategy and of the router) are enforced
before each model call, not after the fact: a :class:`Ledger` holds what one run may still
spend, and :class:`MeteredPolicy` / :class:`MeteredPRM` reserve a call's worst-case cost
first and book its actual usage after.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from langchain_tts.backends.text import PROMPT_OVERHEAD_TOKENS
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BudgetExceededError, ConfigError
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

__all__ = [
    "PRM_OVERHEAD_TOKENS",
    "PRM_STEP_OVERHEAD_TOKENS",
    "PROMPT_OVERHEAD_TOKENS",
    "Ledger",
    "MeteredPRM",
    "MeteredPolicy",
    "meter",
]

#: bound on separator tokens the PRM adds per step, and its template per trajectory
PRM_STEP_OVERHEAD_TOKENS = 4
PRM_OVERHEAD_TOKENS = 64


def _nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


class Ledger:
    """What one run may still spend (``None``: no cap), with reservations for calls in flight.

    ``strict``: a call that cannot be paid raises :class:`BudgetExceededError` instead of
    coming back empty (policy) or zero-scored (PRM).

    * A policy call's worst case is ``prompt + prefixes x n x max_step_tokens`` tokens (FLOPs:
      ``2 x params x tokens``). The prompt is the policy's own bound on the prompt tokens it
      will compute (:meth:`~langchain_tts.policies.base.StepPolicy.lease_prompt_tokens`: the
      local policies tokenize, prefill a prompt shared by ``n`` samples once, and on the
      native runtime credit the prefix its cache holds, pinned until the call is done, so
      a search's next step pays for its new tokens only); otherwise
      its UTF-8 bytes (no tokenizer emits more tokens than bytes) plus
      :data:`PROMPT_OVERHEAD_TOKENS` for templates and special tokens, counted once per sample
      (chat backends send one prompt per sample). After the call the reservation is released
      and the call's actual usage booked: computed tokens only, prefix-cache hits cost nothing
      (see :class:`~langchain_tts.core.types.Usage`). When the full per-step cap does not fit,
      the call runs with a smaller ``max_step_tokens`` that does (the result's
      ``max_step_tokens`` says so; the samples it cut, ``finish_reason="length"``, are
      counted in :attr:`Ledger.cut`). When not even one token per sample fits, the call is
      refused: by default every sample comes back as an empty step with
      ``finish_reason="length"`` (the trajectory is cut, as a length cap would), at zero cost,
      and the caller winds down on its own (the router's difficulty estimate, which then
      answers alone); a ``strict`` ledger raises
      :class:`~langchain_tts.core.errors.BudgetExceededError` instead, which the strategy
      graphs catch to stop their search (``stop_reason="budget"``): a search must not
      mistake an empty sample for a step (a PRM may find nothing wrong with it).
    * A PRM call's worst case is the PRM's own bound on the tokens it will compute
      (:meth:`~langchain_tts.prms.base.ProcessRewardModel.lease_tokens`: the local PRMs
      encode every input, and where their scoring is surely incremental credit the prefix
      their cache holds, pinned until the call is done), otherwise the bytes of every
      trajectory plus per-step and per-trajectory overheads; a call that does not fit is
      refused (scores 0 for every step, or ``BudgetExceededError`` when strict).

    Concurrent calls reserve under a lock, so together they cannot overrun. The guarantee
    assumes the backend honours ``max_step_tokens`` (every backend here does).
    """

    def __init__(
        self,
        max_flops: float | None = None,
        max_tokens: float | None = None,
        *,
        strict: bool = False,
    ):
        for name, cap in (("max_flops", max_flops), ("max_tokens", max_tokens)):
            # a cap of 0 or less is a spent budget (every call refused): what is left of a
            # run's budget may be; a NaN, a bool or text is no cap at all
            if cap is not None and (
                isinstance(cap, bool) or not isinstance(cap, (int, float)) or math.isnan(cap)
            ):
                raise ConfigError(f"{name} must be a number (or None: no cap), got {cap!r}")
        self.max_flops, self.max_tokens = max_flops, max_tokens
        self.strict = strict
        self.spent = Usage()
        self.refused = 0  # calls refused for lack of budget
        self.cut = 0  # samples a lowered step cap cut short (finish_reason "length")
        self._res_flops = 0.0
        self._res_tokens = 0.0
        self._lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        """Whether some call had to be refused (the answer may be a cut-short search)."""
        return self.refused > 0

    @property
    def ended(self) -> bool:
        """Whether the budget changed the run: a call refused, or a sample cut short."""
        return self.refused > 0 or self.cut > 0

    def _left(self) -> tuple[float, float]:
        f = math.inf if self.max_flops is None else self.max_flops - self.spent.flops
        t = math.inf if self.max_tokens is None else self.max_tokens - self.spent.tokens
        return f - self._res_flops, t - self._res_tokens

    def left(self) -> tuple[float, float]:
        """``(flops, tokens)`` still free (``inf``: no cap), calls in flight deducted."""
        with self._lock:
            return self._left()

    def reserve(self, params: float, fixed: float, units: int, cap: int) -> int:
        """Reserve a call of ``fixed + units x c`` tokens for the largest ``c`` in
        ``[1, cap]`` that fits and return ``c``; ``units == 0`` (a PRM call) reserves
        ``fixed`` alone and returns 1. Returns 0 (nothing reserved) when nothing fits."""
        with self._lock:
            f_left, t_left = self._left()
            if units <= 0:
                c, tokens = 1, fixed
                if not self._fits(params, tokens, f_left, t_left):
                    c = 0
            else:
                avail = t_left if params <= 0 else min(t_left, f_left / (2.0 * params))
                room = avail - fixed
                c = cap if room >= units * cap else max(0, math.floor(room / units))
                while c > 0 and not self._fits(params, fixed + units * c, f_left, t_left):
                    c -= 1  # float rounding at the edge
                tokens = fixed + units * c
            if c <= 0:
                self.refused += 1
                return 0
            self._res_tokens += tokens
            self._res_flops += 2.0 * params * tokens
            return c

    @staticmethod
    def _fits(params: float, tokens: float, f_left: float, t_left: float) -> bool:
        return tokens <= t_left and 2.0 * params * tokens <= f_left

    def settle(self, params: float, reserved_tokens: float, usage: Usage, cut: int = 0) -> None:
        """Release a reservation and book what the call really cost (and samples it cut)."""
        with self._lock:
            self._res_tokens -= reserved_tokens
            self._res_flops -= 2.0 * params * reserved_tokens
            self.spent = self.spent + usage
            self.cut += cut

    def refusal(self, what: str, params: float, tokens: float) -> BudgetExceededError:
        """The error of a refused call that needed at least ``tokens`` tokens."""
        f_left, t_left = self.left()
        flops = 2.0 * params * tokens
        left = [
            f"{v:.6g} {unit}" for v, unit in ((t_left, "tokens"), (f_left, "FLOPs")) if v < math.inf
        ]
        return BudgetExceededError(
            f"{what} needs at least {tokens:.6g} tokens ({flops:.6g} FLOPs); the budget has "
            f"{' / '.join(left) or 'nothing'} left",
            need_tokens=tokens,
            need_flops=flops,
            left_tokens=t_left,
            left_flops=f_left,
        )


class MeteredPolicy(StepPolicy):
    """A policy that spends only what its :class:`Ledger` allows."""

    def __init__(self, inner: StepPolicy, ledger: Ledger):
        self.inner, self.ledger = inner, ledger
        self.num_parameters = inner.num_parameters
        self.name = inner.name
        self.step_delimiter = inner.step_delimiter

    def render_prefix(self, prefix: Trajectory) -> str:
        return self.inner.render_prefix(prefix)

    def prompt_tokens_bound(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> int | None:
        return self.inner.prompt_tokens_bound(prefixes, n, params)

    def lease_prompt_tokens(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> tuple[int | None, Callable[[], None]]:
        return self.inner.lease_prompt_tokens(prefixes, n, params)

    @property
    def reuses_prefixes(self) -> bool:
        return self.inner.reuses_prefixes

    def prompt_bound(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams | None = None
    ) -> int:
        """Upper bound on the prompt tokens one call computes: the policy's own bound when
        it has one (and ``params`` are given), else bytes + overhead per sample."""
        if params is not None:
            exact = self.inner.prompt_tokens_bound(prefixes, n, params)
            if exact is not None:
                return exact
        per = sum(
            _nbytes(p.question) + _nbytes(self.inner.render_prefix(p)) + PROMPT_OVERHEAD_TOKENS
            for p in prefixes
        )
        return per * n

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        # the policy's own bound, crediting the cache entries it keeps for this call
        fixed, release = self.inner.lease_prompt_tokens(prefixes, n, params)
        try:
            if fixed is None:
                fixed = self.prompt_bound(prefixes, n)
            return await self._metered(prefixes, n, params, fixed)
        finally:
            release()

    async def _metered(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams, fixed: int
    ) -> PolicyResult:
        units = len(prefixes) * n
        p = float(self.num_parameters or 0)
        cap = self.ledger.reserve(p, fixed, units, params.max_step_tokens)
        if cap == 0:
            if self.ledger.strict:
                what = f"a policy call ({n} samples from each of {len(prefixes)} prefixes)"
                raise self.ledger.refusal(what, p, fixed + units)
            empty = Step(text="", tokens=0, finish_reason="length")
            return PolicyResult(steps=[[empty] * n for _ in prefixes], usage=Usage())
        reserved = fixed + units * cap
        lowered = cap < params.max_step_tokens
        if lowered:
            params = params.model_copy(update={"max_step_tokens": cap})
        try:
            result = await self.inner.agenerate(prefixes, n, params)
        except BaseException:
            self.ledger.settle(p, reserved, Usage())
            raise
        cut = 0
        if lowered:
            cut = sum(s.finish_reason == "length" for row in result.steps for s in row)
            result = result.model_copy(update={"max_step_tokens": cap})
        self.ledger.settle(p, reserved, result.usage, cut)
        return result


class MeteredPRM(ProcessRewardModel):
    """A PRM that scores only when its :class:`Ledger` can pay the worst case."""

    def __init__(self, inner: ProcessRewardModel, ledger: Ledger):
        self.inner, self.ledger = inner, ledger
        self.num_parameters = inner.num_parameters
        self.name = inner.name

    def tokens_bound(self, trajectories: Sequence[Trajectory]) -> int:
        """Upper bound on the tokens one call computes: the PRM's own bound when it has one,
        else bytes + overheads."""
        exact = self.inner.tokens_bound(trajectories)
        if exact is not None:
            return exact
        return sum(
            _nbytes(t.question)
            + sum(_nbytes(s) + PRM_STEP_OVERHEAD_TOKENS for s in t.steps)
            + PRM_OVERHEAD_TOKENS
            for t in trajectories
        )

    def lease_tokens(
        self, trajectories: Sequence[Trajectory]
    ) -> tuple[int | None, Callable[[], None]]:
        return self.inner.lease_tokens(trajectories)

    @property
    def reuses_prefixes(self) -> bool:
        return self.inner.reuses_prefixes

    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        # the PRM's own bound, crediting the cache entries it keeps for this call
        credited, release = self.inner.lease_tokens(trajectories)
        try:
            tokens = self.tokens_bound(trajectories) if credited is None else credited
            return await self._metered(trajectories, tokens)
        finally:
            release()

    async def _metered(self, trajectories: Sequence[Trajectory], tokens: int) -> PRMResult:
        p = float(self.num_parameters or 0)
        if self.ledger.reserve(p, tokens, 0, 0) == 0:
            if self.ledger.strict:
                what = f"a PRM call ({len(trajectories)} trajectories)"
                raise self.ledger.refusal(what, p, tokens)
            return PRMResult(scores=[[0.0] * len(t.steps) for t in trajectories], usage=Usage())
        try:
            result = await self.inner.ascore(trajectories)
        except BaseException:
            self.ledger.settle(p, tokens, Usage())
            raise
        self.ledger.settle(p, tokens, result.usage)
        return result


def meter(model: Any, ledger: Ledger) -> Any:
    """``model`` wrapped to spend from ``ledger`` (a policy, a PRM, or None).

    A FLOPs cap needs the model's size: a model with ``num_parameters=0`` (a server's whose
    size was not given) would spend no FLOPs and run past any ``max_flops``, so that is a
    :class:`ConfigError`."""
    if model is None:
        return None
    if ledger.max_flops is not None and not getattr(model, "num_parameters", 0):
        name = getattr(model, "name", None) or type(model).__name__
        raise ConfigError(
            f"max_flops cannot be enforced on {name}: its num_parameters is 0, so its calls "
            "count no FLOPs. Pass num_parameters=... (the served model's size) to it, or "
            "budget with max_tokens instead"
        )
    if isinstance(model, StepPolicy):
        return MeteredPolicy(model, ledger)
    if isinstance(model, ProcessRewardModel):
        return MeteredPRM(model, ledger)
    raise TypeError(f"cannot meter {type(model).__name__}: not a StepPolicy or PRM")
