"""What every strategy graph shares: state, input handling, expand / score, finalisation.

No strategy re-implements batching, scoring or answer selection: they call
:func:`expand` (one policy call for all prefixes), :func:`score` (one PRM call for all
trajectories) and :func:`finalize_update`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph.message import add_messages
from langgraph.managed import RemainingSteps
from pydantic import ValidationError
from typing_extensions import TypedDict

from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.errors import ConfigError, InputError
from langchain_tts.core.types import Trajectory, Usage, add_usage
from langchain_tts.policies.base import StepPolicy, run_sync
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.selection import select_answer

C = TypeVar("C", bound=StrategyConfig)
MAX_QUESTION_CHARS = 100_000


# TypedDict from typing_extensions (not typing): pydantic/LangServe build schemas from it on
# Python 3.11, and total=False lets callers send partial input.
class TTSInput(TypedDict, total=False):
    """Graph input: a question, or chat messages whose last human message is the question."""

    question: str
    messages: list[AnyMessage]


class TTSOutput(TypedDict, total=False):
    question: str
    answer: str | None
    solution: str
    candidates: list[Trajectory]
    usage: Usage
    stop_reason: str
    messages: list[AnyMessage]


class TTSState(TypedDict, total=False):
    question: str
    messages: Annotated[list[AnyMessage], add_messages]
    active: list[Trajectory]
    finished: list[Trajectory]
    step: int
    usage: Annotated[Usage, add_usage]
    answer: str | None
    solution: str
    candidates: list[Trajectory]
    stop_reason: str
    remaining_steps: RemainingSteps


def resolve_config(base: C, config: RunnableConfig | None) -> C:
    """The strategy config with call-time ``config["configurable"]`` overrides applied.

    Keys that are not fields of the config (``thread_id``, other graphs' knobs) are ignored.
    """
    overrides = {
        k: v
        for k, v in ((config or {}).get("configurable") or {}).items()
        if k in type(base).model_fields
    }
    if not overrides:
        return base
    try:
        return type(base).model_validate({**base.model_dump(), **overrides})
    except ValidationError as e:
        raise ConfigError(f"invalid call-time configurable for {type(base).__name__}: {e}") from e


def question_of(state: TTSState) -> str:
    """The question, validated; from ``question`` or the last human message."""
    q: Any = state.get("question")
    if q is None:
        for m in reversed(state.get("messages") or []):
            if isinstance(m, HumanMessage):
                q = m.content if isinstance(m.content, str) else _text_of(m.content)
                break
    if q is None:
        raise InputError(
            "no question: pass {'question': '...'} or {'messages': [...]} ending with a "
            "human message"
        )
    if not isinstance(q, str):
        raise InputError(f"question must be a string, got {type(q).__name__}")
    if not q.strip():
        raise InputError("question is empty: pass the problem text in {'question': '...'}")
    if len(q) > MAX_QUESTION_CHARS:
        raise InputError(
            f"question is {len(q)} characters; the limit is {MAX_QUESTION_CHARS}. "
            "Shorten it or raise langchain_tts.strategies.core.MAX_QUESTION_CHARS."
        )
    return q.strip()


def _text_of(content: list) -> str:
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)


def prepare_update(state: TTSState) -> dict:
    return {"question": question_of(state), "step": 0, "active": [], "finished": []}


async def expand(
    policy: StepPolicy,
    parents: Sequence[Trajectory],
    n_each: int,
    cfg: StrategyConfig,
    *,
    stop_at_step: bool = True,
    temperature: float | None = None,
) -> tuple[list[Trajectory], Usage]:
    """One policy call: ``n_each`` children for every parent, finished ones marked."""
    overrides: dict[str, Any] = {"stop_at_step": stop_at_step}
    if temperature is not None:
        overrides["temperature"] = temperature
    result = await policy.agenerate(parents, n_each, cfg.sampling(**overrides))
    children: list[Trajectory] = []
    for parent, samples in zip(parents, result.steps):
        for step in samples:
            if stop_at_step:
                child = parent.extend(step, max_total_tokens=cfg.max_total_tokens)
            else:
                child = _whole_solution(parent, step.text, step.tokens, step.finish_reason)
            if not child.finished and len(child.steps) >= cfg.max_steps:
                child = child.model_copy(update={"finished": True, "finish_reason": "max_steps"})
            children.append(child)
    return children, result.usage


def _whole_solution(parent: Trajectory, text: str, tokens: int, reason: str) -> Trajectory:
    steps = [s.strip() for s in text.split("\n\n") if s.strip()]
    return Trajectory(
        question=parent.question,
        steps=[*parent.steps, *steps],
        tokens=parent.tokens + tokens,
        finished=True,
        finish_reason=reason,
    )


async def score(
    prm: ProcessRewardModel, trajs: Sequence[Trajectory]
) -> tuple[list[Trajectory], Usage]:
    """One PRM call scoring every step of every trajectory."""
    result = await prm.ascore(trajs)
    scored = [t.model_copy(update={"step_scores": s}) for t, s in zip(trajs, result.scores)]
    return scored, result.usage


def finalize_update(
    state: TTSState, candidates: Sequence[Trajectory], cfg: StrategyConfig, stop_reason: str
) -> dict:
    chosen, answer, scored = select_answer(candidates, cfg.selection, cfg.aggregation)
    solution = chosen.text if chosen else ""
    update: dict[str, Any] = {
        "answer": answer,
        "solution": solution,
        "candidates": sorted(scored, key=lambda t: -(t.score or 0.0)),
        "stop_reason": stop_reason,
    }
    if state.get("messages"):
        update["messages"] = [AIMessage(content=solution or "(no solution found)")]
    return update


def node(fn: Callable[[TTSState, RunnableConfig], Awaitable[dict]], name: str) -> RunnableLambda:
    """A graph node from one async function, runnable from both invoke and ainvoke."""

    def sync(state: TTSState, config: RunnableConfig) -> dict:
        return run_sync(fn(state, config))

    async def wrapped(state: TTSState, config: RunnableConfig) -> dict:
        return await fn(state, config)

    return RunnableLambda(sync, afunc=wrapped, name=name)
