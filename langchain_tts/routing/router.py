"""The router graph: estimate difficulty, look up the budget table, run that strategy.

Graph: ``prepare -> estimate -> <one strategy node per table bin | tier node> -> finalize``.

* ``estimate`` asks the task-type ``tier_fn`` (optional, paper 000's tiered serving), then
  the difficulty estimator (a probe of k samples by default), records ``difficulty`` and
  ``route`` in the state and picks the next node with a conditional edge on
  ``route.node``. The probe's usage goes into the run's ``usage``.
* One node per bin, named ``"{bin}_{strategy}"`` (e.g. ``easy_best_of_n``,
  ``hard_beam_search``): design choice "one graph per bin". Each node runs its own
  compiled strategy graph (``create_tts_graph`` with the bin's config baked in) as a
  subgraph, invoked with the node's config, so checkpointing and ``stream(...,
  subgraphs=True)`` see inside it. Baking the config in keeps the table authoritative:
  call-time ``configurable`` keys that are knobs of that strategy are not passed on.
* Compute is saved in two places. ``reuse_probe``: an *easy* question whose probe already
  agrees (``p_solve`` and agreement >= ``reuse_threshold``) is answered with the probe's
  majority answer, no strategy runs. ``reuse_samples``: a sampling strategy (best-of-N,
  majority / weighted vote) counts the probe's samples among its N when they were drawn
  the same way (same policy, temperature, token cap), so it samples only N - k more;
  ``cot`` likewise reuses the verifier's greedy attempt instead of writing it again.
* Tiers: ``math`` / ``code`` / ``logic`` -> the small policy (``policy``, ``prm``) with the
  table; ``factual`` (alias ``knowledge``) -> ``pool["large"]`` with a direct CoT;
  ``general`` -> ``pool["medium"]`` direct. No probe is run for direct tiers.
* Budgets (``max_flops`` / ``max_tokens``, per run): at build time, a probe whose
  worst-case cost (k samples x its token cap, PRM included) exceeds the budget is a
  ConfigError. At run time the bin's allocation is priced from the probe's measured
  cost per solution (a heuristic, see :func:`allocation_cost`); if it does not fit in
  what is left, the most expensive allocation of the table that fits is run instead, or
  the probe's answer is returned when none fits. Every model call (probe included) goes
  through :mod:`~langchain_tts.ledger`, which refuses calls the budget cannot pay,
  so the reported ``usage`` never exceeds the budget.

Output: the TTS output (``answer``, ``solution``, ``candidates``, ``usage``,
``stop_reason``) plus ``difficulty`` (:class:`DifficultyEstimate`, None for direct tiers)
and ``route`` (:class:`Route`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from pydantic import BaseModel, Field

from langchain_tts.core.answers import normalize_answer
from langchain_tts.core.config import StrategyConfig, check_budget
from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.graph import create_tts_graph, strategy_config
from langchain_tts.ledger import Ledger, meter
from langchain_tts.models.task import domain_warnings
from langchain_tts.policies.base import StepPolicy, run_sync
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
from langchain_tts.strategies.core import (
    TTSInput,
    TTSOutput,
    TTSState,
    node,
    question_of,
    score,
)
from langchain_tts.strategies.selection import select_answer

__all__ = [
    "DIRECT_TIERS",
    "REASONING_TIERS",
    "ROUTER_STATE_TYPES",
    "Route",
    "RouterOutput",
    "RouterState",
    "allocation_cost",
    "create_router_graph",
]

REASONING_TIERS = ("math", "code", "logic")
#: direct tiers -> the pool entry that answers them (paper 000: knowledge favours size)
DIRECT_TIERS: dict[str, str] = {"factual": "large", "knowledge": "large", "general": "medium"}
SAMPLING_STRATEGIES = ("best_of_n", "majority_vote", "weighted_vote")
#: strategies that can count the estimator's samples as their own (``reuse_samples``): the
#: sampling ones, and ``cot`` (one greedy chain: the verifier's attempt when caps match)
REUSE_STRATEGIES = ("cot", *SAMPLING_STRATEGIES)

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
    budget_stopped: bool = Field(False, description="the meter refused a call: search cut")
    probe_fallback: bool = Field(False, description="strategy found no answer; probe's used")


#: pydantic types the router adds to the state: register them with a checkpoint serializer,
#: e.g. ``langchain_tts.checkpoint.serializer(extra=ROUTER_STATE_TYPES)``
ROUTER_STATE_TYPES: list[type] = [DifficultyEstimate, Route]


class RouterOutput(TTSOutput, total=False):
    difficulty: DifficultyEstimate | None
    route: Route | None


class RouterState(TTSState, total=False):
    difficulty: DifficultyEstimate | None
    route: Route | None
    usage_at_start: Usage


# -- cost model ----------------------------------------------------------------------------
def _units(strategy: str, cfg: Any, steps: float, reused: int) -> tuple[float, float] | None:
    """(generations, PRM-scored solutions), in whole-solution units, of one allocation."""
    s = max(1.0, steps)
    if strategy == "cot":
        return float(max(0, 1 - reused)), 0.0
    if strategy in SAMPLING_STRATEGIES:
        gen = max(0, cfg.n - reused)
        prm = 0 if cfg.selection == "majority" or cfg.n < 2 else cfg.n
        return float(gen), float(prm)
    if strategy in ("beam_search", "dvts"):
        keep = cfg.keep if strategy == "beam_search" else cfg.n_subtrees
        n = cfg.keep * cfg.expand_each if strategy == "beam_search" else cfg.n
        # n children per step add up to n solutions; the kept prefixes are re-read as
        # prompts every step; the PRM re-reads every child (half a solution on average).
        return n + keep * s, n * (s + 1) / 2
    if strategy == "mcts":
        return cfg.simulations * (cfg.expand_k / s + 1), float(cfg.simulations * cfg.expand_k)
    if strategy in ("revision", "hybrid"):
        chains, revisions = cfg.chain_plan if strategy == "hybrid" else (1, cfg.revisions)
        attempts = chains * (revisions + 1)
        return 2.0 * attempts, float(attempts)  # a revision prompt holds the last attempt
    return None


def allocation_cost(
    strategy: str,
    config: StrategyConfig | dict | None,
    estimate: DifficultyEstimate,
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    *,
    reused: int = 0,
) -> tuple[float, float] | None:
    """Predicted ``(flops, tokens)`` of running an allocation on this question.

    Why: the router must choose, before running it, an allocation that fits what is left of
    the budget. The unit is the probe's measured cost of one whole solution (prompt +
    generation tokens per sample; the PRM's tokens per scored sample, or the same token
    count when the probe ran no PRM), priced with each model's parameters; each strategy
    spends a number of such units (see ``_units``). A heuristic -- the meter enforces the
    cap. None when the estimate measured nothing (e.g. a classifier).
    """
    k = len(estimate.candidates)
    u = estimate.usage
    if k == 0 or u.policy_calls == 0:
        return None
    cfg = strategy_config(strategy, config)
    units = _units(strategy, cfg, estimate.mean_steps, reused)
    if units is None:
        return None
    gen_u, prm_u = units
    pol_tok = (u.policy_prompt_tokens + u.policy_generated_tokens) / k
    prm_tok = u.prm_tokens / k if u.prm_tokens > 0 else pol_tok
    p_pol = float(policy.num_parameters or 0)
    p_prm = float(prm.num_parameters or 0) if prm is not None else 0.0
    if prm is None:
        prm_u = 0.0
    tokens = gen_u * pol_tok + prm_u * prm_tok
    flops = 2.0 * p_pol * gen_u * pol_tok + 2.0 * p_prm * prm_u * prm_tok
    return flops, tokens


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
            "lower the probe's k or max_tokens (ProbeEstimator(policy, prm, k=2, max_tokens=256))"
        )
    if isinstance(est, VerifierEstimator):
        return "lower the verifier's max_tokens (VerifierEstimator(policy, prm, max_tokens=256))"
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
        max_flops: float | None,
        max_tokens: float | None,
        reuse_samples: bool,
    ):
        self.name, self.strategy = name, strategy
        self.policy, self.prm = policy, prm
        self.cfg = strategy_config(strategy, config)
        self.max_flops, self.max_tokens = max_flops, max_tokens
        self.reuse_samples = reuse_samples and strategy in REUSE_STRATEGIES
        self.graph = create_tts_graph(policy, prm, strategy, self.cfg, name=f"tts_{name}")

    # the pieces shared by the sync and async paths
    def _ledger(self, state: RouterState) -> Ledger | None:
        if self.max_flops is None and self.max_tokens is None:
            return None
        start, now = state.get("usage_at_start") or Usage(), state.get("usage") or Usage()
        spent_f, spent_t = now.flops - start.flops, now.tokens - start.tokens
        return Ledger(
            None if self.max_flops is None else self.max_flops - spent_f,
            None if self.max_tokens is None else self.max_tokens - spent_t,
        )

    def reusable(self, est: DifficultyEstimate | None, same_policy: bool) -> list[Trajectory]:
        """Probe samples that count as this strategy's own samples (drawn the same way)."""
        if not (self.reuse_samples and same_policy and est and est.candidates):
            return []
        if (est.temperature, est.max_step_tokens) != (
            self.cfg.temperature,
            self.cfg.max_step_tokens,
        ):
            return []
        return list(est.candidates[: self.cfg.n])

    def _plan(self, state: RouterState, config: RunnableConfig):
        ledger = self._ledger(state)
        route = state["route"]
        est = state.get("difficulty")
        reused = list(est.candidates[: route.reused_samples]) if est else []
        n_run = self.cfg.n - len(reused) if reused else None
        graph = self.graph
        if ledger is not None:
            graph = create_tts_graph(
                meter(self.policy, ledger),
                meter(self.prm, ledger),
                self.strategy,
                self.cfg,
                name=f"tts_{self.name}",
            )
        fields = type(self.cfg).model_fields
        conf = {k: v for k, v in (config.get("configurable") or {}).items() if k not in fields}
        if n_run:
            conf["n"] = n_run
        sub_config: RunnableConfig = {**config, "configurable": conf}
        run = n_run is None or n_run > 0
        return ledger, reused, graph, sub_config, run

    async def _complete(
        self, state: RouterState, out: dict | None, reused: list[Trajectory], ledger: Ledger | None
    ) -> dict:
        usage = (out or {}).get("usage") or Usage()
        cands = list((out or {}).get("candidates") or [])
        stop = (out or {}).get("stop_reason") or "probe_samples"
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
        updates: dict[str, Any] = {}
        if ledger is not None and ledger.exhausted:
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
            ledger, reused, graph, sub_config, run = self._plan(state, config)
            out = graph.invoke({"question": state["question"]}, sub_config) if run else None
            return run_sync(self._complete(state, out, reused, ledger))

        async def afunc(state: RouterState, config: RunnableConfig) -> dict:
            ledger, reused, graph, sub_config, run = self._plan(state, config)
            out = await graph.ainvoke({"question": state["question"]}, sub_config) if run else None
            return await self._complete(state, out, reused, ledger)

        return RunnableLambda(sync, afunc=afunc, name=self.name)


# -- the graph -------------------------------------------------------------------------------
def create_router_graph(
    policy: StepPolicy,
    prm: ProcessRewardModel | None = None,
    *,
    estimator: str | DifficultyEstimator = "probe",
    table: BudgetTable | Mapping[str, Any] | None = None,
    pool: Mapping[str, Any] | None = None,
    tier_fn: Callable[[str], Any] | None = None,
    checkpointer: Checkpointer = None,
    max_flops: float | None = None,
    max_tokens: float | None = None,
    reuse_probe: bool = True,
    reuse_threshold: float = 0.75,
    reuse_samples: bool = True,
    name: str = "tts_router",
) -> CompiledStateGraph:
    """A compiled graph that spends test-time compute according to estimated difficulty.

    Why: one fixed strategy over-spends on easy questions and under-spends on hard ones;
    the papers' compute-optimal recipe picks the strategy and budget per question.
    ``policy``/``prm`` are the small policy and its PRM (the "math/code/logic" tier);
    ``estimator`` is ``"probe"`` (k samples' agreement, PRM-blended when ``prm`` is given),
    ``"verifier"`` (PRM score of a greedy attempt) or any :class:`DifficultyEstimator`;
    ``table`` maps bins to strategies (default :class:`BudgetTable`; its ``thresholds``,
    when set, replace the estimator's bin cut points); ``tier_fn(question)``
    with ``pool={"large": (policy, prm), "medium": (policy, prm)}`` routes factual and
    general questions to a bigger model answering directly. ``max_flops`` / ``max_tokens``
    cap each run's usage. See the module docstring and ``docs/router.md``.
    """
    if not isinstance(policy, StepPolicy):
        raise ConfigError(f"policy must be a StepPolicy, got {type(policy).__name__}")
    if prm is not None and not isinstance(prm, ProcessRewardModel):
        raise ConfigError(f"prm must be a ProcessRewardModel or None, got {type(prm).__name__}")
    if table is None:
        table = BudgetTable()
    elif isinstance(table, Mapping):
        table = BudgetTable.from_dict(table)
    elif not isinstance(table, BudgetTable):
        raise ConfigError(f"table must be a BudgetTable or a mapping, got {type(table).__name__}")
    table.check()
    if not 0.0 <= reuse_threshold <= 1.0:
        raise ConfigError(f"reuse_threshold must be in [0, 1], got {reuse_threshold!r}")
    check_budget("max_flops", max_flops)
    check_budget("max_tokens", max_tokens)
    est_obj = make_estimator(estimator, policy, prm)
    if table.thresholds is not None:  # a calibrated table knows where its bins begin
        est_obj = est_obj.with_thresholds(table.thresholds)
    budgeted = max_flops is not None or max_tokens is not None

    if budgeted:
        worst = est_obj.max_cost()
        if worst is not None:
            w_flops, w_tokens = worst
            checks = (("max_flops", max_flops, w_flops), ("max_tokens", max_tokens, w_tokens))
            for label, cap, need in checks:
                if cap is not None and need > cap:
                    raise ConfigError(
                        f"{label}={cap:.4g} is below the difficulty probe's worst-case cost "
                        f"({need:.4g}: its samples x token cap, PRM included, prompt aside); "
                        f"raise the budget, {_cheaper_probe_hint(est_obj)}, or use a "
                        "ClassifierEstimator, which costs nothing"
                    )

    # tiers
    direct: dict[str, tuple[str, StepPolicy, ProcessRewardModel | None]] = {}
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
    if tier_fn is not None:
        if not callable(tier_fn):
            raise ConfigError(f"tier_fn must be callable, got {type(tier_fn).__name__}")
        if pool is None:
            raise ConfigError(
                "tier_fn needs pool={'large': (policy, prm), 'medium': (policy, prm)}: "
                "factual questions go to 'large', general ones to 'medium'"
            )
        for key in sorted(set(DIRECT_TIERS.values())):
            if key not in pool:
                tiers = [t for t, k in DIRECT_TIERS.items() if k == key]
                raise ConfigError(
                    f"pool has no {key!r} entry, needed for the {tiers} tiers; pool has "
                    f"{sorted(pool)}"
                )
            direct[key] = (key, *_pool_entry(pool, key))

    g = StateGraph(RouterState, input_schema=TTSInput, output_schema=RouterOutput)
    nodes: dict[str, str] = {}  # bin -> node name
    runners: dict[str, _StrategyNode] = {}
    for b, alloc in table.items():
        node_name = f"{b}_{alloc.strategy}"
        try:
            runner = _StrategyNode(
                node_name,
                alloc.strategy,
                alloc.config,
                policy,
                prm,
                max_flops=max_flops,
                max_tokens=max_tokens,
                reuse_samples=reuse_samples,
            )
        except ConfigError as e:
            raise ConfigError(f"budget table, bin {b!r}: {e}") from None
        nodes[b], runners[b] = node_name, runner
        g.add_node(node_name, runner.runnable())
    tier_nodes: dict[str, str] = {}
    for key, (_, pol, pr) in direct.items():
        tier_name = "factual" if key == "large" else "general"
        node_name = f"{tier_name}_direct"
        runner = _StrategyNode(
            node_name,
            "cot",
            {},
            pol,
            pr,
            max_flops=max_flops,
            max_tokens=max_tokens,
            reuse_samples=False,
        )
        tier_nodes[key] = node_name
        g.add_node(node_name, runner.runnable())

    same_policy = getattr(est_obj, "policy", None) is policy

    async def prepare(state: RouterState, config: RunnableConfig) -> dict:
        question = question_of(state)
        return {
            "question": question,
            "warnings": domain_warnings(question, policy),
            "difficulty": None,
            "route": None,
            "answer": None,
            "solution": "",
            "candidates": [],
            "stop_reason": "",
            "usage_at_start": state.get("usage") or Usage(),
        }

    def _left(spent: Usage) -> tuple[float, float]:
        f = math.inf if max_flops is None else max_flops - spent.flops
        t = math.inf if max_tokens is None else max_tokens - spent.tokens
        return f, t

    async def estimate(state: RouterState, config: RunnableConfig) -> dict:
        q = state["question"]
        tier: str | None = None
        if tier_fn is not None:
            raw = await _maybe_await(tier_fn(q))
            tier = raw.strip().lower() if isinstance(raw, str) else None
            if tier in DIRECT_TIERS:
                key = DIRECT_TIERS[tier]
                route = Route(
                    tier=tier, strategy="cot", node=tier_nodes[key], model=key, reason="tier"
                )
                return {"route": route, "difficulty": None}
            if tier not in REASONING_TIERS:
                raise ConfigError(
                    f"tier_fn returned {raw!r}; expected one of "
                    f"{list(REASONING_TIERS) + list(DIRECT_TIERS)}"
                )
        runner_est, ledger = est_obj, None
        if budgeted:
            ledger = Ledger(max_flops, max_tokens)
            runner_est = est_obj.with_models(lambda m: meter(m, ledger))
        est = await runner_est.aestimate(q)
        b = est.bin
        reused = len(runners[b].reusable(est, same_policy))
        route = Route(
            tier=tier,
            bin=b,
            strategy=table[b].strategy,
            config=table[b].config,
            node=nodes[b],
            reused_samples=reused,
        )
        agreed = est.agreement is None or est.agreement >= reuse_threshold
        if (
            reuse_probe
            and b == "easy"
            and est.answer is not None
            and est.p_solve >= reuse_threshold
            and agreed
        ):
            route = Route(tier=tier, bin=b, strategy="probe", node="finalize", reason="reuse_probe")
        elif ledger is not None and ledger.exhausted:
            # The budget could not even pay for the probe: its estimate means nothing and
            # no strategy can fit; answer with whatever the probe got.
            route = route.model_copy(update=_PROBE_ONLY | {"budget_stopped": True})
        elif budgeted:
            route = _fit(route, est, _left(est.usage))
        return {"difficulty": est, "usage": est.usage, "route": route}

    def _fit(route: Route, est: DifficultyEstimate, left: tuple[float, float]) -> Route:
        """The bin's allocation if it is predicted to fit, else the dearest one that does."""
        costs: dict[str, tuple[float, float] | None] = {}
        for b in BINS:
            r = runners[b]
            reused = len(r.reusable(est, same_policy))
            costs[b] = allocation_cost(r.strategy, r.cfg, est, policy, prm, reused=reused)
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
                "strategy": table[b].strategy,
                "config": table[b].config,
                "node": nodes[b],
                "reason": "budget_downgrade",
                "reused_samples": len(runners[b].reusable(est, same_policy)),
            }
        )

    async def finalize(state: RouterState, config: RunnableConfig) -> dict:
        route, est = state.get("route"), state.get("difficulty")
        update: dict[str, Any] = {}
        solution = state.get("solution") or ""
        if route is not None and route.node == "finalize" and est is not None:
            solution, cands = _probe_pick(est)
            update = {
                "answer": est.answer,
                "solution": solution,
                "candidates": cands,
                "stop_reason": "probe" if route.reason == "reuse_probe" else "budget",
            }
        if state.get("messages"):
            update["messages"] = [AIMessage(content=solution or "(no solution found)")]
        return update

    def pick(state: RouterState) -> str:
        return state["route"].node

    targets = sorted(set(nodes.values()) | set(tier_nodes.values()) | {"finalize"})
    g.add_node("prepare", node(prepare, "prepare"))
    g.add_node("estimate", node(estimate, "estimate"))
    g.add_node("finalize", node(finalize, "finalize"))
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "estimate")
    g.add_conditional_edges("estimate", pick, targets)
    for n in set(nodes.values()) | set(tier_nodes.values()):
        g.add_edge(n, "finalize")
    g.add_edge("finalize", END)
    return g.compile(checkpointer=checkpointer, name=name)
