"""The router graph: estimate difficulty, look up the budget table, run that strategy.

Graph: ``prepare -> estimate -> <one strategy node per table bin | tier node> -> finalize``.
Each bin's node runs its own compiled strategy graph with the bin's config baked in, so the
table stays authoritative; the probe's samples are reused where they can be, and every model
call goes through :mod:`~langchain_tts.ledger`, so ``usage`` never exceeds the budget. See
``docs/router.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from langchain_tts.backends.sync import run_sync
from langchain_tts.core.answers import normalize_answer
from langchain_tts.core.channels import PlainValue
from langchain_tts.core.config import (
    StrategyConfig,
    check_budget,
    knobs_model,
    reject_bool_numbers,
)
from langchain_tts.core.errors import BudgetExceededError, ConfigError, InputError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.graph import served_limits
from langchain_tts.ledger import Ledger, meter
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.routing.difficulty import (
    BINS,
    Bin,
    DifficultyEstimate,
    DifficultyEstimator,
    ProbeEstimator,
    VerifierEstimator,
    make_estimator,
)
from langchain_tts.routing.table import BudgetTable
from langchain_tts.strategies.contract import (
    RESERVED_KEYS,
    AfterNode,
    check_name,
    title_of,
    with_contract,
)
from langchain_tts.strategies.core import (
    BUDGET,
    TTSInput,
    TTSOutput,
    TTSState,
    answer_message,
    first_rejected,
    node,
    prepare_update,
    resolve_config,
    score,
)
from langchain_tts.strategies.progress import DONE_EVENT, ROUTE_EVENT, Progress
from langchain_tts.strategies.registry import get_strategy
from langchain_tts.strategies.selection import select_answer
from langchain_tts.tracing import graph_run_config, trace_event

if TYPE_CHECKING:
    from langchain_tts.limits import ServeLimits

__all__ = [
    "DIRECT_TIERS",
    "REASONING_TIERS",
    "ROUTER_STATE_TYPES",
    "Route",
    "RouterOutput",
    "RouterState",
    "allocation_cost",
    "create_router_graph",
    "embedded_router_kwargs",
    "verified_prefix",
]

REASONING_TIERS = ("math", "code", "logic")
#: direct tiers -> the pool entry that answers them (knowledge favours model size)
DIRECT_TIERS: dict[str, str] = {"factual": "large", "knowledge": "large", "general": "medium"}

RouteReason = Literal["table", "reuse_probe", "budget_downgrade", "budget_probe_only", "tier"]


_PROBE_ONLY: dict[str, Any] = {
    "strategy": "probe",
    "config": {},
    "node": "finalize",
    "reason": "budget_probe_only",
    "reused_samples": 0,
}


class Route(BaseModel):
    """Where the router sent a question, and why."""

    tier: str | None = Field(None, description="task type from tier_fn (None: no tiering)")
    bin: Bin | None = Field(None, description="difficulty bin (None for direct tiers)")
    strategy: str = Field(description="strategy run; 'probe' when the probe's answer is used")
    config: dict[str, Any] = Field(default_factory=dict)
    node: str = Field(description="graph node that answered ('finalize': the probe)")
    model: str = Field("small", description="pool entry that ran ('small': policy, prm)")
    reason: RouteReason = "table"
    reused_samples: int = Field(0, description="probe samples counted among the strategy's N")
    prefix_steps: list[str] = Field(
        default_factory=list,
        description="steps of the estimate's attempt the strategy continued from (reuse_prefix)",
    )
    prefix_rejected: bool = Field(
        False,
        description="the step after prefix_steps in the estimate's greedy attempt (by the "
        "strategy's own policy) was one the PRM rejected",
    )
    budget_stopped: bool = Field(False, description="the meter refused a call: search cut")
    probe_fallback: bool = Field(False, description="strategy found no answer; probe's used")


#: pydantic types the router adds to the state (``langchain_tts.checkpoint.serializer()``
#: registers them with the package's own)
ROUTER_STATE_TYPES: list[type] = [DifficultyEstimate, Route]


# channels that checkpoint the objects as plain data (langchain_tts.checkpoint)
Estimate = Annotated[DifficultyEstimate | None, PlainValue(DifficultyEstimate | None)]
RouteValue = Annotated[Route | None, PlainValue(Route | None)]


class RouterOutput(TTSOutput, total=False):
    difficulty: Estimate
    route: RouteValue


class RouterState(TTSState, total=False):
    difficulty: Estimate
    route: RouteValue


class RouterConfig(BaseModel):
    """The router's per-run knobs (its graph's ``context_schema``); the budget table sets each
    strategy's own config, so strategy knobs (``n``, ``beam_width``) are not among them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    max_flops: float | None = Field(
        None, description="compute budget of one run in FLOPs, probe included; None: no cap"
    )
    max_tokens: float | None = Field(
        None, description="budget of one run in tokens, probe included; None: no cap"
    )
    reuse_probe: bool = Field(
        True, description="answer an easy question whose probe agrees with the probe's answer"
    )
    reuse_threshold: float = Field(
        0.75, ge=0.0, le=1.0, description="p_solve and agreement an easy probe needs for reuse"
    )
    reuse_samples: bool = Field(
        True, description="count the probe's samples among a sampling strategy's N"
    )
    reuse_prefix: bool = Field(
        True,
        description="the strategy continues from the estimate's best attempt up to its first "
        "step the PRM doubts (prefix_threshold), instead of from the bare question",
    )
    prefix_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="a step scored below this ends the reused prefix"
    )
    #: the graph's name (its knobs namespace) and context schema, set when it is compiled
    _graph_name: str | None = PrivateAttr(None)
    _knobs: type[BaseModel] | None = PrivateAttr(None)
    _knob_check: Any = PrivateAttr(None)  # as StrategyConfig's

    @field_validator("max_flops", "max_tokens", mode="before")
    @classmethod
    def _budget(cls, v: Any, info: Any) -> Any:
        check_budget(info.field_name, v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        return reject_bool_numbers(cls, data)

    @property
    def budgeted(self) -> bool:
        return self.max_flops is not None or self.max_tokens is not None


# -- cost model ----------------------------------------------------------------------------
def allocation_cost(
    strategy: str,
    config: StrategyConfig | dict | None,
    estimate: DifficultyEstimate,
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    *,
    reused: int = 0,
    prefix_steps: int = 0,
    rejected: bool = False,
) -> tuple[float, float] | None:
    """Predicted ``(flops, tokens)`` of running an allocation on this question.

    Why: the router must choose, before running it, an allocation that fits what is left of
    the budget. The unit is the probe's measured cost of one whole solution (prompt +
    generation tokens per sample; the PRM's tokens per scored sample, or the same token
    count when the probe ran no PRM), priced with each model's parameters; each strategy
    spends a number of such units (its ``StrategySpec.cost_units``). A heuristic -- the
    meter enforces the cap. None when the estimate measured nothing (e.g. a classifier).
    ``prefix_steps``: steps the strategy continues from (``reuse_prefix``): it writes and
    scores only the rest, a share of each unit the size of the steps left; ``rejected``:
    the step after them was rejected (``Route.prefix_rejected``), so the strategy runs with
    its ``after_rejection`` knobs.
    """
    k = len(estimate.candidates)
    u = estimate.usage
    if k == 0 or u.policy_calls == 0:
        return None
    spec = get_strategy(strategy)
    cfg = spec.validated(config)
    if rejected and spec.after_rejection:  # priced as it will run (see _StrategyNode._plan)
        cfg = spec.validated({**cfg.model_dump(), **spec.after_rejection})
    if spec.cost_units is None:
        return None
    steps = max(1.0, estimate.mean_steps)
    left = max(1.0, steps - prefix_steps)  # the prefix is read from the caches, not computed
    share = left / steps
    gen_u, prm_u = spec.cost_units(cfg, left, reused)
    prompt = u.policy_prompt_tokens / k
    pol_tok = (prompt + u.policy_generated_tokens / k) * share
    prm_tok = (u.prm_tokens / k if u.prm_tokens > 0 else pol_tok / share) * share
    pol_all = gen_u * pol_tok
    prm_all = prm_u * prm_tok
    # With prefix caches a search computes what it writes (and the PRM what is new to it):
    # its prompts and the prefixes it extends are read, not computed again.
    cached = spec.computed_units(cfg, left, reused) if spec.computed_units else None
    if cached is not None and policy.reuses_prefixes:
        pol_all = cached[0] * (u.policy_generated_tokens / k) * share + prompt
    if cached is not None and prm is not None and prm.reuses_prefixes:
        prm_all = cached[1] * prm_tok
    p_pol = float(policy.num_parameters or 0)
    p_prm = float(prm.num_parameters or 0) if prm is not None else 0.0
    if prm is None:
        prm_all = 0.0
    return 2.0 * p_pol * pol_all + 2.0 * p_prm * prm_all, pol_all + prm_all


# -- helpers ---------------------------------------------------------------------------------
async def _maybe_await(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


def _probe_pick(est: DifficultyEstimate) -> tuple[str, list[Trajectory]]:
    """The probe's solution for its majority answer (best scored), and its candidates."""
    cands = sorted(est.candidates, key=lambda t: -(t.score or 0.0))
    key = normalize_answer(est.answer)
    for c in cands:
        if key is not None and normalize_answer(c.answer) == key:
            return c.text, cands
    return (cands[0].text if cands else ""), cands


def _cheaper_probe_hint(est: DifficultyEstimator) -> str:
    if isinstance(est, ProbeEstimator):
        return (
            "lower the probe's k or max_tokens (ProbeEstimator(policy, prm, k=2, max_tokens=256)"
            ", or as data: estimator={'kind': 'probe', 'k': 2, 'max_tokens': 256})"
        )
    if isinstance(est, VerifierEstimator):
        return (
            "lower the verifier's max_tokens (VerifierEstimator(policy, prm, max_tokens=256), "
            "or as data: estimator={'kind': 'verifier', 'max_tokens': 256})"
        )
    return f"make the {type(est).__name__} cheaper"


def _pool_entry(pool: Mapping[str, Any], key: str) -> tuple[StepPolicy, ProcessRewardModel | None]:
    v = pool[key]
    if isinstance(v, StepPolicy):
        pol, prm = v, None
    elif isinstance(v, (tuple, list)) and 1 <= len(v) <= 2:
        pol, prm = (tuple(v) + (None,))[:2]
    else:
        pol, prm = None, None
    if not isinstance(pol, StepPolicy):
        raise ConfigError(f"pool[{key!r}] must be (policy, prm) with a StepPolicy, got {v!r}")
    if prm is not None and not isinstance(prm, ProcessRewardModel):
        raise ConfigError(f"pool[{key!r}]: prm must be a ProcessRewardModel or None")
    return pol, prm


#: ``configurable`` keys a strategy subgraph is given: LangGraph's own. A user's keys (and the
#: strategy's knobs) stay out: the budget table sets the strategy's config.
_SUBGRAPH_KEYS = frozenset(
    {"thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map", "run_id", "run_name"}
)


class _StrategyNode:
    """Runs one allocation's compiled strategy graph as a subgraph, under the budget."""

    def __init__(
        self,
        name: str,
        strategy: str,
        config: dict[str, Any],
        policy: StepPolicy,
        prm: ProcessRewardModel | None,
        *,
        reuse_samples: bool,
        router: RouterConfig,
    ):
        self.name, self.strategy, self.spec = name, strategy, get_strategy(strategy)
        self.policy, self.prm = policy, prm
        self.cfg = self.spec.validated(config)
        self.reuse_samples = reuse_samples and self.spec.reuses_samples
        self.router = router
        self.graph = self.spec.compile(policy, prm, self.cfg, name=f"tts_{name}")

    # the pieces shared by the sync and async paths
    @staticmethod
    def _budget_left(state: RouterState, knobs: RouterConfig) -> tuple[float, float] | None:
        """What the run's budget leaves the strategy after the estimate (None: no cap)."""
        if not knobs.budgeted:
            return None
        return _left(knobs, state.get("usage") or Usage())

    def reusable(
        self, est: DifficultyEstimate | None, same_policy: bool, knobs: RouterConfig
    ) -> list[Trajectory]:
        """Probe samples that count as this strategy's own samples (drawn the same way)."""
        ok = self.reuse_samples and knobs.reuse_samples
        if not (ok and same_policy and est and est.candidates):
            return []
        if (est.temperature, est.max_step_tokens) != (
            self.cfg.temperature,
            self.cfg.max_step_tokens,
        ):
            return []
        return list(est.candidates[: self.cfg.n])

    def _plan(self, state: RouterState, config: RunnableConfig):
        knobs = resolve_config(self.router, config)
        left = self._budget_left(state, knobs)
        route = state["route"]
        est = state.get("difficulty")
        reused = list(est.candidates[: route.reused_samples]) if est else []
        n_run = self.cfg.n - len(reused) if reused else None
        conf = {
            k: v
            for k, v in (config.get("configurable") or {}).items()
            if k in _SUBGRAPH_KEYS or k.startswith("__")
        }
        sub_config: RunnableConfig = {**config, "configurable": conf}
        # A run context of the subgraph's own: the router's (or its parent's) context must
        # not set the strategy's knobs; only the probe samples it reuses lower its n, and
        # a rejected step after the prefix sets the strategy's ``after_rejection`` knobs
        # (drafting that step again from the same policy would write it the same way).
        context: dict[str, Any] = {"n": n_run} if n_run else {}
        if route.prefix_rejected:
            context |= self.spec.after_rejection
        wanted = n_run is None or n_run > 0  # else the probe's samples are all of them
        run = wanted
        if left is not None:
            # What is left is the strategy's own budget: its strict meter stops the search
            # at a call it cannot pay (stop_reason "budget") and it answers with the best it
            # got to; a meter that handed back empty samples would let a PRM that sees
            # nothing wrong in an empty step accept it.
            if min(left) <= 0:
                run = False
            own = (self.cfg.max_flops, self.cfg.max_tokens)  # a table entry's own cap holds too
            caps = [min(x, math.inf if c is None else c) for x, c in zip(left, own)]
            context |= {
                "max_flops": None if math.isinf(caps[0]) else caps[0],
                "max_tokens": None if math.isinf(caps[1]) else caps[1],
            }
        return left, reused, sub_config, context, wanted, run

    def _run_sync(self, q: dict, sub_config: RunnableConfig, context: dict) -> dict | None:
        try:
            return self.graph.invoke(q, sub_config, context=context)
        except ConfigError as e:
            return _budget_too_small(e)

    async def _run_async(self, q: dict, sub_config: RunnableConfig, context: dict) -> dict | None:
        try:
            return await self.graph.ainvoke(q, sub_config, context=context)
        except ConfigError as e:
            return _budget_too_small(e)

    async def _complete(
        self,
        state: RouterState,
        out: dict | None,
        reused: list[Trajectory],
        left: tuple[float, float] | None,
        wanted: bool,
    ) -> dict:
        usage = (out or {}).get("usage") or Usage()
        cands = list((out or {}).get("candidates") or [])
        stop = (out or {}).get("stop_reason") or (BUDGET if wanted else "probe_samples")
        # the strategy's own budget stop, or a budget too small for its first call
        stopped = left is not None and stop == BUDGET
        # scoring merged probe samples spends from what the strategy left
        ledger = None if left is None else Ledger(left[0] - usage.flops, left[1] - usage.tokens)
        if reused:
            merged = reused + cands
            prm = meter(self.prm, ledger) if ledger is not None else self.prm
            todo = [i for i, c in enumerate(merged) if len(c.step_scores) != len(c.steps)]
            if prm is not None and self.cfg.selection != "majority" and len(merged) > 1 and todo:
                scored, u = await score(prm, [merged[i] for i in todo])
                for i, t in zip(todo, scored):
                    merged[i] = t
                usage = usage + u
            chosen, answer, scored_all = select_answer(
                merged, self.cfg.selection, self.cfg.aggregation
            )
            solution = chosen.text if chosen else ""
            cands = sorted(scored_all, key=lambda t: -(t.score or 0.0))
        else:
            answer, solution = (out or {}).get("answer"), (out or {}).get("solution") or ""
            if stopped and not any(c.finished for c in cands):
                # cut before any solution finished: a partial's last number is no answer;
                # the estimate's finished attempt (below) is a better one
                answer, solution = None, ""
        updates: dict[str, Any] = {}
        if stopped or (ledger is not None and ledger.exhausted):
            updates["budget_stopped"] = True
        est = state.get("difficulty")
        if answer is None and est is not None and est.answer is not None:
            answer = est.answer
            solution, _ = _probe_pick(est)
            updates["probe_fallback"] = True
        route = state["route"].model_copy(update=updates) if updates else state["route"]
        return {
            "answer": answer,
            "solution": solution,
            "candidates": cands,
            "stop_reason": stop,
            "usage": usage,
            "route": route,
        }

    def runnable(self) -> RunnableLambda:
        # Sync and async bodies call the subgraph's own invoke / ainvoke, so a sync
        # checkpointer (SqliteSaver) works under invoke and an async one under ainvoke.
        def sync(state: RouterState, config: RunnableConfig) -> dict:
            left, reused, sub_config, context, wanted, run = self._plan(state, config)
            q = _strategy_input(state)
            out = self._run_sync(q, sub_config, context) if run else None
            return run_sync(self._complete(state, out, reused, left, wanted))

        async def afunc(state: RouterState, config: RunnableConfig) -> dict:
            left, reused, sub_config, context, wanted, run = self._plan(state, config)
            q = _strategy_input(state)
            out = await self._run_async(q, sub_config, context) if run else None
            return await self._complete(state, out, reused, left, wanted)

        return RunnableLambda(sync, afunc=afunc, name=self.name)


#: the embedded models' verifier attempt cap: the longest greedy solution of the synthetic
#: task (8 operations) is about 100 generated tokens. A tight cap keeps the estimate's worst
#: case, which every per-run budget must cover, near what the estimate really costs.
EMBEDDED_ESTIMATE_TOKENS = 256


def embedded_router_kwargs(policy: str = "small", prm: str = "calculator") -> dict[str, Any]:
    """``create_router_graph`` keyword arguments measured for the embedded models named
    ``policy`` / ``prm``: for the small policy and the calculator verifier, the verifier
    estimator (its attempt capped at :data:`EMBEDDED_ESTIMATE_TOKENS`) and the table
    ``research.router_eval`` calibrates (the ``embedded_calculator`` preset); ``{}`` (the
    defaults) for models no calibration was made for."""
    if (policy, prm) == ("small", "calculator"):
        return {
            "estimator": {"kind": "verifier", "max_tokens": EMBEDDED_ESTIMATE_TOKENS},
            "table": BudgetTable.preset("embedded_calculator"),
        }
    return {}


def _strategy_input(state: RouterState) -> dict[str, Any]:
    """The strategy subgraph's input: the question, and the estimate's verified steps."""
    route = state.get("route")
    prefix = route.prefix_steps if route is not None else []
    q: dict[str, Any] = {"question": state["run_question"]}
    return {**q, "prefix_steps": prefix} if prefix else q


def verified_prefix(estimate: DifficultyEstimate | None, threshold: float = 0.5) -> list[str]:
    """The steps of the estimate's best-scored attempt before the first one the PRM scores
    below ``threshold``: work the estimate already paid for and its verifier accepted, for
    a strategy to continue from. Never the attempt's last step (it ends that solution: the
    strategy writes its own ending); ``[]`` when no attempt carries step scores."""
    return verified_cut(estimate, threshold)[0]


def verified_cut(
    estimate: DifficultyEstimate | None, threshold: float = 0.5
) -> tuple[list[str], bool]:
    """:func:`verified_prefix`, and whether the attempt's next step was rejected (the cut is
    at a rejection, not before the attempt's accepted last step)."""
    if estimate is None:
        return [], False
    scored = [c for c in estimate.candidates if c.steps and len(c.step_scores) >= len(c.steps)]
    if not scored:
        return [], False
    best = max(scored, key=lambda c: c.score if c.score is not None else min(c.step_scores))
    cut = first_rejected(best, threshold)
    if cut is None:  # all accepted: everything but the step that ends the solution
        return list(best.steps[:-1]), False
    return list(best.steps[: min(cut, len(best.steps) - 1)]), True


# -- the graph -------------------------------------------------------------------------------
def _both(
    first: Callable[[Mapping[str, Any]], None] | None,
    then: Callable[[Mapping[str, Any]], None],
) -> Callable[[Mapping[str, Any]], None]:
    if first is None:
        return then

    def check(knobs: Mapping[str, Any]) -> None:
        first(knobs)
        then(knobs)

    return check


def create_router_graph(
    policy: StepPolicy,
    prm: ProcessRewardModel | None = None,
    *,
    estimator: str | Mapping[str, Any] | DifficultyEstimator = "probe",
    table: BudgetTable | Mapping[str, Any] | None = None,
    pool: Mapping[str, Any] | None = None,
    tier_fn: Callable[[str], Any] | None = None,
    checkpointer: Checkpointer = None,
    max_flops: float | None = None,
    max_tokens: float | None = None,
    reuse_probe: bool = True,
    reuse_threshold: float = 0.75,
    reuse_samples: bool = True,
    reuse_prefix: bool = True,
    prefix_threshold: float = 0.5,
    name: str = "tts_router",
    output_key: str | None = None,
    knob_check: Callable[[Mapping[str, Any]], None] | None = None,
    limits: ServeLimits | None = None,
) -> CompiledStateGraph:
    """A compiled graph that spends test-time compute according to estimated difficulty.

    Why: one fixed strategy over-spends on easy questions and under-spends on hard ones;
    the papers' compute-optimal recipe picks the strategy and budget per question.
    ``policy``/``prm`` are the small policy and its PRM (the "math/code/logic" tier);
    ``estimator`` is ``"probe"`` (k samples' agreement, PRM-blended when ``prm`` is given),
    ``"verifier"`` (PRM score of a greedy attempt), either with options as plain data
    (``{"kind": "verifier", "max_tokens": 256}``) or any :class:`DifficultyEstimator`;
    ``table`` maps bins to strategies (default :class:`BudgetTable`; its ``thresholds``,
    when set, replace the estimator's bin cut points); ``tier_fn(question)``
    with ``pool={"large": (policy, prm), "medium": (policy, prm)}`` routes factual and
    general questions to a bigger model answering directly. ``max_flops`` / ``max_tokens``
    cap each run's usage. See ``docs/router.md``.

    Like a strategy graph (``create_tts_graph``), each run answers its own question (also on
    a reused checkpointer thread) and reports its own ``usage``. ``max_flops``,
    ``max_tokens``, ``reuse_probe``, ``reuse_threshold``, ``reuse_samples``, ``reuse_prefix``
    and ``prefix_threshold`` are the defaults of its per-run knobs (:class:`RouterConfig`, its ``context_schema``): set them
    per run with ``context={...}`` or ``configurable``, at the top or under ``name``.
    ``output_key``: as a node of a parent graph with keys of its own, it reads only
    ``messages`` and writes only ``messages``, ``output_key`` (plain JSON: the result plus
    ``route`` and ``difficulty``) and ``tts_usage``. ``knob_check``: called with the knobs
    each run changes, before it runs; it raises :class:`ConfigError` to refuse the run.
    ``limits``: as for :func:`create_tts_graph`, a :class:`ServeLimits` that refuses runs
    over its maxima (after ``knob_check``) and gives runs its default budgets.
    """
    if not isinstance(policy, StepPolicy):
        raise ConfigError(f"policy must be a StepPolicy, got {type(policy).__name__}")
    if prm is not None and not isinstance(prm, ProcessRewardModel):
        raise ConfigError(f"prm must be a ProcessRewardModel or None, got {type(prm).__name__}")
    table = _as_table(table)
    if limits is not None:
        limits = served_limits(limits)
        defaults = limits.default_budgets({"max_flops": max_flops, "max_tokens": max_tokens})
        max_flops = defaults.get("max_flops", max_flops)
        max_tokens = defaults.get("max_tokens", max_tokens)
        knob_check = _both(knob_check, limits.knob_check("router"))
    knobs = _router_config(
        max_flops=max_flops,
        max_tokens=max_tokens,
        reuse_probe=reuse_probe,
        reuse_threshold=reuse_threshold,
        reuse_samples=reuse_samples,
        reuse_prefix=reuse_prefix,
        prefix_threshold=prefix_threshold,
    )
    est = make_estimator(estimator, policy, prm)
    if table.thresholds is not None:  # a calibrated table knows where its bins begin
        est = est.with_thresholds(table.thresholds)
    _check_probe_fits(est, max_flops, max_tokens)
    tiers = _direct_tiers(pool, tier_fn)

    # The strategy graphs' contract (strategies/contract.py): knobs as context_schema, name
    # as their namespace, output_key for a parent with keys of its own.
    check_name(name, "name", knobs)
    if output_key is not None:
        check_name(output_key, "output_key", knobs)
        if output_key in RESERVED_KEYS or output_key in RouterState.__annotations__:
            raise ConfigError(
                f"output_key {output_key!r} is a key of the router's state; pick a key of your "
                "own graph's, e.g. output_key='tts'"
            )
    knobs._graph_name, knobs._knob_check = name, knob_check
    knobs._knobs = knobs_model(knobs, title=title_of(name) + "Knobs")  # type: ignore[arg-type]
    runners = {
        # reuse_samples is a per-run knob: the runners may reuse, the knob decides
        b: _bin_runner(b, alloc, policy, prm, reuse_samples=True, router=knobs)
        for b, alloc in table.items()
    }
    direct = {
        key: _StrategyNode(f"{tier}_direct", "cot", {}, pol, pr, reuse_samples=False, router=knobs)
        for key, tier, pol, pr in tiers
    }
    router = _Router(policy, prm, est, table, runners, direct, knobs, tier_fn=tier_fn)
    router.graph_name = name
    builder = with_contract(router.graph(), knobs._knobs, "router", output_key)
    if output_key is not None:
        spec = builder.nodes["finalize"]
        builder.nodes["finalize"] = dataclasses.replace(
            spec, runnable=AfterNode(spec.runnable, _add_route(output_key))
        )
    # strategy, knobs and budget as metadata of every run (traces); its probe adds the route
    graph = builder.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(graph_run_config("router", knobs))  # type: ignore[arg-type]


def _add_route(output_key: str) -> Callable[[Mapping[str, Any], dict], dict]:
    """The published result of a router built with ``output_key`` plus ``route`` and
    ``difficulty`` as plain JSON data."""

    def add(state: Mapping[str, Any], update: dict) -> dict:
        route = update.get("route") or state.get("route")
        est = update.get("difficulty") or state.get("difficulty")
        result = dict(update[output_key])
        result["route"] = route.model_dump(mode="json") if route is not None else None
        result["difficulty"] = _difficulty_summary(est)
        return {**update, output_key: result}

    return add


def _difficulty_summary(est: DifficultyEstimate | None) -> dict[str, Any] | None:
    """A difficulty estimate as plain JSON data (its samples are in ``candidates``)."""
    if est is None:
        return None
    out = est.model_dump(mode="json", exclude={"candidates", "usage"})
    out["samples"] = len(est.candidates)
    out["usage"] = est.usage.summary()
    return out


def _router_config(**knobs: Any) -> RouterConfig:
    try:
        return RouterConfig(**knobs)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = f"{err['loc'][0]}: " if err["loc"] else ""  # a model-level check names its own
        raise ConfigError(f"{where}{err['msg'].removeprefix('Value error, ')}") from None


def _as_table(table: BudgetTable | Mapping[str, Any] | None) -> BudgetTable:
    if table is None:
        table = BudgetTable()
    elif isinstance(table, Mapping):
        table = BudgetTable.from_dict(table)
    elif not isinstance(table, BudgetTable):
        raise ConfigError(f"table must be a BudgetTable or a mapping, got {type(table).__name__}")
    return table.check()


def _check_probe_fits(
    est: DifficultyEstimator, max_flops: float | None, max_tokens: float | None
) -> None:
    """A budget below the probe's worst-case cost is a :class:`ConfigError` at build time."""
    worst = est.max_cost() if max_flops is not None or max_tokens is not None else None
    if worst is None:
        return
    w_flops, w_tokens = worst
    for label, cap, need in (
        ("max_flops", max_flops, w_flops),
        ("max_tokens", max_tokens, w_tokens),
    ):
        if cap is not None and need > cap:
            raise ConfigError(
                f"{label}={cap:.4g} is below the difficulty probe's worst-case cost "
                f"({need:.4g}: its samples x token cap, PRM included, prompt aside); "
                f"raise the budget, {_cheaper_probe_hint(est)}, or use a "
                "ClassifierEstimator, which costs nothing"
            )


def _direct_tiers(
    pool: Mapping[str, Any] | None, tier_fn: Callable[[str], Any] | None
) -> list[tuple[str, str, StepPolicy, ProcessRewardModel | None]]:
    """``(pool key, tier node prefix, policy, prm)`` of each direct tier, checked."""
    if pool is not None and not isinstance(pool, Mapping):
        raise ConfigError(
            f"pool must be a mapping name -> (policy, prm), got {type(pool).__name__}"
        )
    if pool is not None and not pool:
        raise ConfigError(
            "pool is empty: give {'large': (policy, prm), 'medium': (policy, prm)} for the "
            "factual and general tiers, or leave pool and tier_fn out"
        )
    if pool is not None and tier_fn is None:
        raise ConfigError("pool is only used with tier_fn(question) -> tier; pass tier_fn too")
    if tier_fn is None:
        return []
    if not callable(tier_fn):
        raise ConfigError(f"tier_fn must be callable, got {type(tier_fn).__name__}")
    if pool is None:
        raise ConfigError(
            "tier_fn needs pool={'large': (policy, prm), 'medium': (policy, prm)}: "
            "factual questions go to 'large', general ones to 'medium'"
        )
    out = []
    for key in sorted(set(DIRECT_TIERS.values())):
        if key not in pool:
            tiers = [t for t, k in DIRECT_TIERS.items() if k == key]
            raise ConfigError(
                f"pool has no {key!r} entry, needed for the {tiers} tiers; pool has {sorted(pool)}"
            )
        out.append((key, "factual" if key == "large" else "general", *_pool_entry(pool, key)))
    return out


def _bin_runner(
    b: str, alloc: Any, policy: StepPolicy, prm: ProcessRewardModel | None, **kwargs: Any
) -> _StrategyNode:
    """The node of bin ``b``: ``"{bin}_{strategy}"`` running the bin's allocation."""
    try:
        return _StrategyNode(
            f"{b}_{alloc.strategy}", alloc.strategy, alloc.config, policy, prm, **kwargs
        )
    except ConfigError as e:
        raise ConfigError(f"budget table, bin {b!r}: {e}") from None


class _Router:
    """The router graph's own nodes (prepare, estimate, finalize) and its routing choices."""

    graph_name: str | None = None  #: the compiled graph's name (its chat replies' ``name``)

    def __init__(
        self,
        policy: StepPolicy,
        prm: ProcessRewardModel | None,
        est: DifficultyEstimator,
        table: BudgetTable,
        runners: dict[str, _StrategyNode],
        direct: dict[str, _StrategyNode],
        knobs: RouterConfig,
        *,
        tier_fn: Callable[[str], Any] | None,
    ):
        self.policy, self.prm, self.est, self.table = policy, prm, est, table
        self.runners, self.direct, self.tier_fn = runners, direct, tier_fn
        self.knobs = knobs
        self.same_policy = getattr(est, "policy", None) is policy

    def graph(self) -> StateGraph:
        g = StateGraph(RouterState, input_schema=TTSInput, output_schema=RouterOutput)
        workers = {r.name: r for r in [*self.runners.values(), *self.direct.values()]}
        for worker_name, runner in workers.items():
            g.add_node(worker_name, runner.runnable())
        g.add_node("prepare", node(self.prepare, "prepare"))
        g.add_node("estimate", node(self.estimate, "estimate"))
        g.add_node("finalize", node(self.finalize, "finalize"))
        g.add_edge(START, "prepare")
        g.add_edge("prepare", "estimate")
        g.add_conditional_edges("estimate", _route_node, sorted({*workers, "finalize"}))
        for worker_name in workers:
            g.add_edge(worker_name, "finalize")
        g.add_edge("finalize", END)
        return g

    async def prepare(self, state: RouterState, config: RunnableConfig) -> dict:
        resolve_config(self.knobs, config)  # a bad knob fails before any model call
        if state.get("prefix_steps"):
            raise InputError(
                "the router does not take prefix_steps: it estimates difficulty from the bare "
                "question (and hands its strategy the steps its estimate verified); pass "
                "prefix_steps to a strategy graph instead"
            )
        return {
            **prepare_update(state, policy=self.policy, prm=self.prm, config=config),
            "difficulty": None,
            "route": None,
        }

    async def estimate(self, state: RouterState, config: RunnableConfig) -> dict:
        q = state["question"]
        knobs = resolve_config(self.knobs, config)
        tier = await self._tier(q)
        if tier in DIRECT_TIERS:
            key = DIRECT_TIERS[tier]
            route = Route(
                tier=tier, strategy="cot", node=self.direct[key].name, model=key, reason="tier"
            )
            await self._report_route(config, route, None)
            return {"route": route, "difficulty": None}
        if knobs is not self.knobs:  # a run's own budget; a direct tier runs no probe
            _check_probe_fits(self.est, knobs.max_flops, knobs.max_tokens)
        est, ledger = self.est, None
        if knobs.budgeted:
            ledger = Ledger(knobs.max_flops, knobs.max_tokens)
            est = self.est.with_models(lambda m: meter(m, ledger))
        found = await est.aestimate(q)
        route = self._route(tier, found, ledger, knobs)
        meta = {"tts_difficulty_bin": found.bin, "tts_route": route.strategy}
        out = {"p_solve": found.p_solve, "bin": found.bin, "route": route.model_dump(mode="json")}
        await trace_event("tts_route", out, config=config, metadata=meta, tags=["tts:route"])
        await self._report_route(config, route, found)
        return {"difficulty": found, "usage": found.usage, "route": route}

    async def _report_route(
        self, config: RunnableConfig, route: Route, found: DifficultyEstimate | None
    ) -> None:
        """The ``tts_route`` progress event: where the question goes, before it runs."""
        progress = Progress(config)
        if progress.active:
            usage = found.usage if found is not None else Usage()
            await progress.emit(
                {
                    "event": ROUTE_EVENT,
                    "graph": self.graph_name or "",
                    "tier": route.tier,
                    "bin": route.bin,
                    "p_solve": None if found is None else found.p_solve,
                    "strategy": route.strategy,
                    "node": route.node,
                    "reason": route.reason,
                    "usage": usage.summary(),
                }
            )

    async def _tier(self, question: str) -> str | None:
        """The task type ``tier_fn`` names (None without one); a reasoning or direct tier."""
        if self.tier_fn is None:
            return None
        raw = await _maybe_await(self.tier_fn(question))
        tier = raw.strip().lower() if isinstance(raw, str) else None
        if tier not in DIRECT_TIERS and tier not in REASONING_TIERS:
            raise ConfigError(
                f"tier_fn returned {raw!r}; expected one of "
                f"{list(REASONING_TIERS) + list(DIRECT_TIERS)}"
            )
        return tier

    def _reused(self, b: str, est: DifficultyEstimate, knobs: RouterConfig) -> int:
        return len(self.runners[b].reusable(est, self.same_policy, knobs))

    def _route(
        self, tier: str | None, est: DifficultyEstimate, ledger: Ledger | None, knobs: RouterConfig
    ) -> Route:
        """The table's allocation for the estimated bin, unless the probe's answer will do
        (``reuse_probe``) or the budget calls for a cheaper allocation."""
        b = est.bin
        prefix, rejected = (
            verified_cut(est, knobs.prefix_threshold) if knobs.reuse_prefix else ([], False)
        )
        route = Route(
            tier=tier,
            bin=b,
            strategy=self.table[b].strategy,
            config=self.table[b].config,
            node=self.runners[b].name,
            reused_samples=self._reused(b, est, knobs),
            prefix_steps=prefix,
            # a redraft would write that step again only from the same policy, greedily
            prefix_rejected=rejected and self.same_policy and est.temperature == 0.0,
        )
        agreed = est.agreement is None or est.agreement >= knobs.reuse_threshold
        if (
            knobs.reuse_probe
            and b == "easy"
            and est.answer is not None
            and est.p_solve >= knobs.reuse_threshold
            and agreed
        ):
            return Route(tier=tier, bin=b, strategy="probe", node="finalize", reason="reuse_probe")
        if ledger is not None and ledger.exhausted:
            # The budget could not even pay for the probe: its estimate means nothing and
            # no strategy can fit; answer with whatever the probe got.
            return route.model_copy(update=_PROBE_ONLY | {"budget_stopped": True})
        if knobs.budgeted:
            return self._fit(route, est, _left(knobs, est.usage), knobs)
        return route

    def _fit(
        self,
        route: Route,
        est: DifficultyEstimate,
        left: tuple[float, float],
        knobs: RouterConfig,
    ) -> Route:
        """The bin's allocation if it is predicted to fit, else the dearest one that does."""
        costs: dict[str, tuple[float, float] | None] = {}
        for b in BINS:
            r = self.runners[b]
            costs[b] = allocation_cost(
                r.strategy,
                r.cfg,
                est,
                self.policy,
                self.prm,
                reused=self._reused(b, est, knobs),
                prefix_steps=len(route.prefix_steps),  # every bin's run would continue them
                rejected=route.prefix_rejected,
            )
        mine = costs[route.bin]  # type: ignore[index]
        fits = lambda c: c[0] <= left[0] and c[1] <= left[1]  # noqa: E731
        if mine is None or fits(mine):
            return route
        options = [
            (c, b) for b, c in costs.items() if c is not None and fits(c) and c[0] <= mine[0]
        ]
        if not options:
            return route.model_copy(update=_PROBE_ONLY)
        _, b = max(options, key=lambda o: (o[0][0], o[0][1]))
        return route.model_copy(
            update={
                "strategy": self.table[b].strategy,
                "config": self.table[b].config,
                "node": self.runners[b].name,
                "reason": "budget_downgrade",
                "reused_samples": self._reused(b, est, knobs),
            }
        )

    async def finalize(self, state: RouterState, config: RunnableConfig) -> dict:
        route, est = state.get("route"), state.get("difficulty")
        update: dict[str, Any] = {  # the whole result: output_key publishes this update
            "question": state["question"],
            "answer": state.get("answer"),
            "solution": state.get("solution") or "",
            "candidates": state.get("candidates") or [],
            "stop_reason": state.get("stop_reason") or "",
            "thread_usage": state.get("usage") or Usage(),
        }
        solution = update["solution"]
        if route is not None and route.node == "finalize" and est is not None:
            solution, cands = _probe_pick(est)
            update |= {
                "answer": est.answer,
                "solution": solution,
                "candidates": cands,
                "stop_reason": "probe" if route.reason == "reuse_probe" else "budget",
            }
        usage = state.get("usage") or Usage()
        if state.get("messages"):
            question = update["question"] or None
            update["messages"] = [answer_message(solution, self.graph_name, usage, question)]
        progress = Progress(config)
        if progress.active:  # the router's own: its strategy's (a subgraph's) come before
            await progress.emit(
                {
                    "event": DONE_EVENT,
                    "graph": self.graph_name or "",
                    "strategy": route.strategy if route is not None else "",
                    "answer": update["answer"],
                    "stop_reason": update["stop_reason"],
                    "candidates": len(update["candidates"]),
                    "route": None if route is None else route.model_dump(mode="json"),
                    "usage": usage.summary(),
                }
            )
        return update


def _budget_too_small(e: ConfigError) -> None:
    """None (the strategy did not run) when its budget could not pay for its first call;
    any other configuration error is raised."""
    if isinstance(e.__cause__, BudgetExceededError):
        return None
    raise e


def _left(knobs: RouterConfig, spent: Usage) -> tuple[float, float]:
    """What is left of the run's budget after ``spent`` (inf: no cap)."""
    f = math.inf if knobs.max_flops is None else knobs.max_flops - spent.flops
    t = math.inf if knobs.max_tokens is None else knobs.max_tokens - spent.tokens
    return f, t


def _route_node(state: RouterState) -> str:
    return state["route"].node
