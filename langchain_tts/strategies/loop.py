"""The loop every iterative search shares: metering, the budget stop, the recursion guard.

A looping strategy says what its search is (where it starts, one step, when it is done) as a
:class:`SearchLoop`; :func:`search_graph` builds ``prepare -> <loop node> -> finalize`` around
it and owns the rest, so a strategy module keeps only its step logic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from langchain_tts.backends.sync import run_in_worker
from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.errors import BudgetExceededError, ConfigError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import (
    BUDGET,
    OFFLOAD_ITEMS,
    TTSInput,
    TTSOutput,
    TTSState,
    budget_final_update,
    budget_refused,
    budget_stopped,
    metered,
    next_node,
    node,
    prepare_update,
    resolve_config,
    root_of,
)
from langchain_tts.strategies.progress import Progress, done_event, step_event

C = TypeVar("C", bound=StrategyConfig)

#: A search's own state keys (``active``, ``tree``, ...): what its loop node writes back.
Search = dict[str, Any]
#: ``(policy, prm, config, root, search, step index) -> (search after the step, usage)``;
#: ``root`` is where the search starts: the question and the caller's ``prefix_steps``
StepFn = Callable[
    [StepPolicy, Any, Any, Trajectory, Search, int],
    Awaitable[tuple[Search, Usage]],
]

#: with this few LangGraph supersteps left, the loop node runs the remaining steps itself
RECURSION_MARGIN = 3


def active_and_finished(state: TTSState) -> Search:
    """The usual search keys: the prefixes still searched and the solutions finished."""
    return {"active": state.get("active") or [], "finished": state.get("finished") or []}


def keep_unscored(search: Search, unscored: list[Trajectory]) -> Search:
    """A refused PRM call's children still compete (as a last resort): the finished ones
    among ``finished``, the others among ``active``."""
    return {
        **search,
        "active": search["active"] + [t for t in unscored if not t.finished],
        "finished": search["finished"] + [t for t in unscored if t.finished],
    }


def finished_and_active(state: TTSState) -> list[Trajectory]:
    """The candidates of a search the budget stopped: finished solutions and partial ones."""
    return (state.get("finished") or []) + (state.get("active") or [])


@dataclass(frozen=True)
class SearchLoop(Generic[C]):
    """One iterative search: the algorithm, without the bookkeeping.

    ``node``: the loop node's name (``"step"``, ``"simulate"``, ``"round"``). ``step``: one
    search step (at most one policy call and one PRM call). ``done(search, steps, cfg)``:
    why the search is over, ``""`` while it is not. ``answer(state, cfg)``: the
    ``finalize`` update of a search that ran its course.

    ``start(state)``: the search's keys as the state holds them. ``refused(search,
    unscored)``: the search after a step the budget refused, given the children a refused
    PRM call left unscored. ``fresh()``: the search's keys when a run starts.
    ``budget_candidates(state)``: what :func:`budget_final_update` chooses among when the
    budget stopped the search (None: ``answer`` handles that case too).
    """

    node: str
    step: StepFn
    done: Callable[[Search, int, C], str]
    answer: Callable[[Any, C], dict]
    start: Callable[[TTSState], Search] = active_and_finished
    refused: Callable[[Search, list[Trajectory]], Search] = keep_unscored
    fresh: Callable[[], Search] = dict
    budget_candidates: Callable[[Any], list[Trajectory]] | None = finished_and_active
    state_schema: type = TTSState


def loop_node(
    loop: SearchLoop[C], policy: StepPolicy, prm: ProcessRewardModel | None, base: C
) -> Runnable:
    """The graph node that runs ``loop``: one search step per LangGraph superstep."""

    async def run(state: TTSState, rc: RunnableConfig) -> Command:
        cfg = resolve_config(base, rc)
        pol, pr, ledger = metered(policy, prm, cfg, state)  # as they are without a budget
        search, i, usage, stop = loop.start(state), state.get("step", 0), Usage(), ""
        root = root_of(state)
        progress = Progress(rc)
        while True:
            try:
                search, u = await loop.step(pol, pr, cfg, root, search, i)
            except BudgetExceededError as e:  # this step is not paid for: stop before it
                usage, stop = budget_refused(e, state, ledger, cfg), BUDGET
                search = loop.refused(search, e.unscored)
                break
            i, usage = i + 1, usage + u  # one search step done
            if progress.active:
                await progress.emit(step_event(cfg, loop.node, i, search, u))
            if ledger is not None and ledger.ended:  # the meter cut this step short
                stop = BUDGET
                break
            # Finish inside this node when LangGraph's recursion limit is near (a user's
            # small recursion_limit must not kill a 40-step search).
            if loop.done(search, i, cfg) or state.get("remaining_steps", 99) > RECURSION_MARGIN:
                break
        # The node routes itself (a Command): a conditional edge costs LangGraph a fresh
        # copy of every channel per step (docs/performance.md).
        goto = next_node(stop or loop.done(search, i, cfg), loop.node)
        return Command(update=step_update(search, i, usage, stop), goto=goto)

    return node(run, loop.node)


def step_update(search: Search, steps: int, usage: Usage, stop: str) -> dict[str, Any]:
    """The state update of a loop node: the search's keys, the step count, the usage spent."""
    update = {**search, "step": steps, "usage": usage}
    if stop:
        update["stop_reason"] = stop
    return update


def search_graph(
    loop: SearchLoop[C],
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    base: C,
    *,
    check: Callable[[C], None] | None = None,
) -> StateGraph:
    """``prepare -> <loop.node> (loops) -> finalize``; ``check``: see :func:`prepare_node`.

    The loop node runs each step on budget-metered models, stops at the first step the budget
    cannot pay (``stop_reason="budget"``), keeps stepping inside itself when LangGraph's
    recursion limit is near, and routes itself with a ``Command``; ``finalize`` answers a
    search the budget stopped with :func:`~langchain_tts.strategies.core.budget_final_update`.
    """
    g = StateGraph(loop.state_schema, input_schema=TTSInput, output_schema=TTSOutput)
    g.add_node("prepare", prepare_node(base, policy=policy, prm=prm, fresh=loop.fresh, check=check))
    g.add_node(loop.node, loop_node(loop, policy, prm, base), destinations=(loop.node, "finalize"))
    g.add_node("finalize", finalize_node(base, loop.answer, loop.budget_candidates))
    g.add_edge(START, "prepare")
    g.add_edge("prepare", loop.node)
    g.add_edge("finalize", END)
    return g


def prepare_node(
    base: C,
    *,
    policy: StepPolicy | None = None,
    prm: ProcessRewardModel | None = None,
    fresh: Callable[[], Search] = dict,
    check: Callable[[C], None] | None = None,
) -> Runnable:
    """The ``prepare`` node: the question, fresh search keys (``fresh()``), the run's budget.

    It resolves the call's config first, so bad call-time overrides fail before any model
    call; ``check(cfg)`` adds a check of the resolved config.
    """

    async def prepare(state: TTSState, rc: RunnableConfig) -> dict:
        cfg = resolve_config(base, rc)
        if check is not None:
            check(cfg)
        return {**prepare_update(state, cfg, policy=policy, prm=prm, config=rc), **fresh()}

    return node(prepare, "prepare")


def finalize_node(
    base: C,
    answer: Callable[[Any, C], dict],
    budget_candidates: Callable[[Any], list[Trajectory]] | None,
) -> Runnable:
    """The ``finalize`` node: ``answer(state, cfg)``, or, when the budget stopped the search,
    :func:`budget_final_update` among ``budget_candidates(state)`` (None: ``answer`` handles
    budget stops itself)."""

    def choose(state: TTSState, cfg: C) -> dict:
        if budget_candidates is not None and budget_stopped(state, cfg):
            return budget_final_update(state, budget_candidates(state), cfg)
        return answer(state, cfg)

    async def finalize(state: TTSState, rc: RunnableConfig) -> dict:
        cfg = resolve_config(base, rc)
        many = len(state.get("finished") or []) + len(state.get("active") or [])
        if many > OFFLOAD_ITEMS:  # answer extraction and voting: off the event loop
            update = await run_in_worker(choose, state, cfg)
        else:
            update = choose(state, cfg)
        progress = Progress(rc)
        if progress.active:
            await progress.emit(done_event(cfg, state, update))
        return update

    return node(finalize, "finalize")


def require_prm(prm: ProcessRewardModel | None, strategy: str, why: str = "") -> ProcessRewardModel:
    """``prm``, or a :class:`ConfigError` saying that ``strategy`` cannot run without one."""
    if prm is None:
        raise ConfigError(f"{strategy} needs a PRM{why}: pass prm=... (e.g. from load_default())")
    return prm


def finished_or_out_of_steps(trajectories: Sequence[Trajectory], step: int, max_steps: int) -> str:
    """The ``done`` reason of a search over ``trajectories``: ``"all_finished"``,
    ``"max_steps"`` at ``max_steps``, else ``""`` (go on)."""
    if trajectories and all(t.finished for t in trajectories):
        return "all_finished"
    if step >= max_steps:
        return "max_steps"
    return ""
