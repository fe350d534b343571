"""Model calls as LangChain child runs, and the metadata a strategy graph's runs carry.

Each policy and PRM call is a child run of the graph node that made it, so LangSmith,
``astream_events`` and callback handlers show prompts, tokens and latency; inputs and outputs
are summarized so a 256-row batch does not flood a trace. Without a handler nothing is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar
from uuid import uuid4

from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackManager
from langchain_core.outputs import Generation, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

from langchain_tts.core.config import SamplingParams, StrategyConfig
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

__all__ = [
    "MAX_CHARS",
    "MAX_SHOWN",
    "TracedFinalize",
    "graph_run_config",
    "trace_event",
    "traced_call",
]

R = TypeVar("R")

#: rows (prefixes, samples, trajectories) shown per call; the rest are only counted
MAX_SHOWN = 4
#: characters shown per row (head and tail kept: the newest step is at the end)
MAX_CHARS = 400
#: tags of the runs this module starts (``nostream``: LangGraph's "messages" stream mode
#: must not mistake a policy call for the graph's answer)
POLICY_TAGS = ["tts:policy", "nostream"]
PRM_TAGS = ["tts:prm"]


def callback_manager(config: RunnableConfig | None = None) -> BaseCallbackManager | None:
    """The callback manager of the running node (``config``, else the context's), or None
    when no handler listens: then tracing costs one context-variable read."""
    if config is None:
        config = var_child_runnable_config.get()
    if not config:
        return None
    cb = config.get("callbacks")
    if cb is None:
        return None
    if isinstance(cb, BaseCallbackManager):
        return cb if cb.handlers else None
    if not cb:
        return None
    return AsyncCallbackManager.configure(
        inheritable_callbacks=cb,
        inheritable_tags=config.get("tags"),
        inheritable_metadata=config.get("metadata"),
    )


def _labelled(
    mgr: BaseCallbackManager, tags: Sequence[str], metadata: Mapping[str, Any]
) -> BaseCallbackManager:
    """``mgr`` adding ``tags`` and ``metadata`` to the one run it starts (its ``on_*_start``
    take them from the manager, not from arguments)."""
    out = mgr.copy()
    out.add_tags(list(tags), inherit=False)
    out.add_metadata(dict(metadata), inherit=False)
    return out


#: set on an error a callback handler raised (``raise_error=True``): the handler's own, which
#: the graphs pass on as it is instead of blaming the model call it was tracing
HANDLER_ERROR = "_tts_handler_error"


async def _handlers(call: Callable[[], Any]) -> Any:
    """A callback manager's ``call()``, its handlers' errors marked :data:`HANDLER_ERROR`."""
    try:
        return await _maybe_await(call())
    except Exception as e:
        setattr(e, HANDLER_ERROR, True)
        raise


async def _maybe_await(x: Any) -> Any:
    return await x if inspect.isawaitable(x) else x


async def traced_call(backend: object, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
    """``await fn(*args)``, as a child run of the current node when a handler listens.

    ``backend`` is a :class:`StepPolicy` (``fn`` its ``agenerate(prefixes, n, params)``) or
    a :class:`ProcessRewardModel` (``fn`` its ``ascore(trajectories)``).
    """
    mgr = callback_manager()
    if mgr is None:
        return await fn(*args)
    if isinstance(backend, StepPolicy):
        return await _traced_policy(mgr, backend, fn, *args)
    if isinstance(backend, ProcessRewardModel):
        return await _traced_prm(mgr, backend, fn, *args)
    return await fn(*args)


def _name(backend: object) -> str:
    return getattr(backend, "name", None) or type(backend).__name__


def clip(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and its tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - 2 * half} chars ...] {text[-half:]}"


def _prompt_summary(prefixes: Sequence[Trajectory], n: int) -> str:
    rows = [f"{len(prefixes)} prefixes x {n} samples"]
    for i, p in enumerate(prefixes[:MAX_SHOWN]):
        body = "\n\n".join([p.question, *p.steps])
        rows.append(f"--- prefix {i + 1} ({len(p.steps)} steps) ---\n{clip(body)}")
    if len(prefixes) > MAX_SHOWN:
        rows.append(f"--- {len(prefixes) - MAX_SHOWN} more prefixes not shown ---")
    return "\n".join(rows)


def token_usage(usage: Usage) -> dict[str, int]:
    """A policy call's tokens in OpenAI's ``token_usage`` form (what LangSmith reads): as in
    OpenAI's, ``prompt_tokens`` include the ``cached_tokens`` read from a prefix cache."""
    cached = usage.policy_cached_tokens
    prompt, gen = usage.policy_prompt_tokens + cached, usage.policy_generated_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": gen,
        "total_tokens": prompt + gen,
        "cached_tokens": cached,
    }


async def _traced_policy(
    mgr: BaseCallbackManager,
    policy: StepPolicy,
    fn: Callable[..., Awaitable[PolicyResult]],
    prefixes: Sequence[Trajectory],
    n: int,
    params: SamplingParams | None = None,
) -> Any:
    name = _name(policy)
    invocation = {"prefixes": len(prefixes), "n": n, "samples": len(prefixes) * n}
    if params is not None:
        invocation.update(params.model_dump(mode="json"))
    mgr = _labelled(mgr, POLICY_TAGS, {"ls_provider": "langchain_tts", "ls_model_name": name})
    runs = await _handlers(
        lambda: mgr.on_llm_start(
            {"name": name, "id": ["langchain_tts", type(policy).__name__]},
            [_prompt_summary(prefixes, n)],
            run_id=uuid4(),
            name=name,
            invocation_params=invocation,
        )
    )
    run = runs[0]
    try:
        result = await fn(prefixes, n, params)
    except BaseException as e:
        await _handlers(partial(run.on_llm_error, e))
        raise
    shown = [s for row in result.steps[:MAX_SHOWN] for s in row[:1]]
    gens = [
        Generation(
            text=clip(s.text),
            generation_info={"finish_reason": s.finish_reason, "tokens": s.tokens},
        )
        for s in shown
    ]
    llm_output = {
        "token_usage": token_usage(result.usage),
        "model_name": name,
        "samples": sum(len(r) for r in result.steps),
        "shown": "the first sample of each of the first prefixes",
        "flops": result.usage.policy_flops,
    }
    await _handlers(lambda: run.on_llm_end(LLMResult(generations=[gens], llm_output=llm_output)))
    return result


async def _traced_prm(
    mgr: BaseCallbackManager,
    prm: ProcessRewardModel,
    fn: Callable[..., Awaitable[PRMResult]],
    trajectories: Sequence[Trajectory],
) -> Any:
    name = _name(prm)
    inputs = {
        "trajectories": len(trajectories),
        "steps": sum(len(t.steps) for t in trajectories),
        "shown": [clip("\n\n".join(t.steps[-2:])) for t in trajectories[:MAX_SHOWN]],
    }
    mgr = _labelled(mgr, PRM_TAGS, {"ls_model_name": name})
    run = await _handlers(
        lambda: mgr.on_chain_start(
            {"name": name, "id": ["langchain_tts", type(prm).__name__]},
            inputs,
            run_id=uuid4(),
            name=name,
        )
    )
    try:
        result = await fn(trajectories)
    except BaseException as e:
        await _handlers(partial(run.on_chain_error, e))
        raise
    last = [row[-1] for row in result.scores if row]  # the step each trajectory just took
    outputs = {
        "scored": len(result.scores),
        "tokens": result.usage.prm_tokens,
        "cached_tokens": result.usage.prm_cached_tokens,
        "flops": result.usage.prm_flops,
        "min_score": min(last) if last else None,
        "max_score": max(last) if last else None,
    }
    await _handlers(lambda: run.on_chain_end(outputs))
    return result


async def trace_event(
    name: str,
    outputs: Mapping[str, Any],
    *,
    config: RunnableConfig | None = None,
    metadata: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
) -> None:
    """A finished ``chain`` child run ``name`` of the current node carrying ``outputs`` (and
    ``metadata``): how values known only at a node's end reach a trace. No-op without a
    handler."""
    mgr = callback_manager(config)
    if mgr is None:
        return
    mgr = _labelled(mgr, tags, metadata or {})
    run = await _maybe_await(mgr.on_chain_start({"name": name}, {}, run_id=uuid4(), name=name))
    await _maybe_await(run.on_chain_end(dict(outputs)))


def graph_run_config(strategy: str, cfg: StrategyConfig) -> RunnableConfig:
    """The ``with_config`` of a compiled strategy graph: its strategy, knobs and budget as
    metadata (every child run inherits them) and its tags.

    A compiled strategy graph carries ``tts_strategy``, ``tts_knobs`` and the budget as run
    metadata (inherited by every child run) and the tags ``tts`` and ``tts:<strategy>``; what
    is known only at the end (stop reason, FLOPs, tokens) is a ``tts_summary`` child run of
    the ``finalize`` node, with the same values in its metadata and outputs.
    """
    return {
        "metadata": {
            "tts_strategy": strategy,
            "tts_knobs": cfg.model_dump(mode="json"),
            "tts_max_flops": cfg.max_flops,
            "tts_max_tokens": cfg.max_tokens,
        },
        "tags": ["tts", f"tts:{strategy}"],
    }


class TracedFinalize(Runnable[Any, Any]):
    """A ``finalize`` node that, when a handler listens, adds a ``tts_summary`` child run:
    strategy, the knobs the run resolved, budget, stop reason, FLOPs and tokens."""

    def __init__(
        self,
        finalize: Runnable,
        strategy: str,
        resolve: Callable[[RunnableConfig], StrategyConfig],
    ):
        self.finalize, self.strategy, self.resolve = finalize, strategy, resolve
        self.name = getattr(finalize, "name", None) or "finalize"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        from langchain_tts.backends.sync import run_sync

        return run_sync(self.ainvoke(input, config, **kwargs))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        update = await self.finalize.ainvoke(input, config)
        if config is not None and callback_manager(config) is not None:
            await trace_event(
                "tts_summary",
                **self.summary(input, update, config),
                config=config,
                tags=["tts:summary"],
            )
        return update

    def summary(
        self, state: Mapping[str, Any], update: Mapping[str, Any], config: RunnableConfig
    ) -> dict[str, Any]:
        """``outputs`` and ``metadata`` of the ``tts_summary`` run."""
        usage = (state.get("usage") or Usage()) + update.get("usage")
        cfg = self.resolve(config)
        stop = update.get("stop_reason", "")
        meta = {
            "tts_strategy": self.strategy,
            "tts_stop_reason": stop,
            "tts_flops": usage.flops,
            "tts_tokens": usage.tokens,
        }
        outputs = {
            "strategy": self.strategy,
            "stop_reason": stop,
            "answer": update.get("answer"),
            "flops": usage.flops,
            "tokens": usage.tokens,
            "usage": usage.summary(),
            "knobs": cfg.model_dump(mode="json"),
            "max_flops": cfg.max_flops,
            "max_tokens": cfg.max_tokens,
        }
        return {"outputs": outputs, "metadata": meta}
