"""The sync bridge: run async backends from sync code, and blocking model calls off the loop.

Local models (torch forwards, ``generate``) run on this package's own worker pool, never on
asyncio's default executor: a caller that holds default-pool threads while it awaits a
policy (a peer library bridging its own sync code) would otherwise starve the very call it
waits for, and deadlock.

Cancellation reaches the worker: a cancelled ``await run_in_worker(...)`` sets the call's
:func:`cancel_token`, which the model code checks per decoding step (a thread cannot be
interrupted, so it must stop itself).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from langchain_core.runnables import Runnable, RunnableConfig

T = TypeVar("T")
In = TypeVar("In")
Out = TypeVar("Out")

#: threads of the worker pool; a call waiting for a busy model holds one, so this caps how
#: many concurrent calls one batch can merge
WORKER_THREADS = 64

#: the cancellation token of the worker call running in this context (None: not cancellable)
_TOKEN: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "langchain_tts_cancel_token", default=None
)

_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_GUARD = threading.Lock()


def _forget_pool() -> None:  # a forked child has none of the parent's threads
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def worker_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The package's thread pool for blocking model calls (created on first use)."""
    global _POOL
    with _POOL_GUARD:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(
                WORKER_THREADS, thread_name_prefix="langchain-tts-worker"
            )
        return _POOL


def cancel_token() -> threading.Event | None:
    """The cancellation token of the current :func:`run_in_worker` call: set once its
    awaiting task was cancelled (None outside one). Long model loops poll it and stop."""
    return _TOKEN.get()


def cancelled() -> bool:
    """Whether the current worker call was cancelled (see :func:`cancel_token`)."""
    token = _TOKEN.get()
    return token is not None and token.is_set()


async def run_in_worker(fn: Callable[..., T], /, *args: Any) -> T:
    """``await fn(*args)`` on :func:`worker_pool` (like ``asyncio.to_thread``, context vars
    included, but independent of the loop's default executor).

    Cancelling the await sets the call's :func:`cancel_token`, so ``fn`` can stop early;
    its result, if any, is dropped.
    """
    loop = asyncio.get_running_loop()
    token = threading.Event()
    ctx = contextvars.copy_context()
    ctx.run(_TOKEN.set, token)
    future = loop.run_in_executor(worker_pool(), functools.partial(ctx.run, fn, *args))
    try:
        return await future
    except asyncio.CancelledError:
        token.set()
        raise


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when the caller already has an event loop."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:  # outside the except block: errors don't chain "no running event loop"
        return _run(coro)
    # A thread of its own (not the worker pool): the coroutine may itself wait for workers.
    # It runs in a copy of the caller's context (callbacks and tracing ride on it), and a
    # KeyboardInterrupt in the caller (Ctrl-C in Jupyter) cancels it, as it would a run on
    # the caller's own loop, instead of waiting for it to end.
    started: dict[str, Any] = {}
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        future = pool.submit(contextvars.copy_context().run, _run, coro, started)
        return future.result()
    except BaseException:
        loop, task = started.get("loop"), started.get("task")
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # its loop has already closed: the run is over
                pass
        raise
    finally:
        pool.shutdown(wait=False)


def _run(coro: Coroutine[Any, Any, T], started: dict[str, Any] | None = None) -> T:
    """``asyncio.run(coro)``, but without joining the loop's default-executor threads at the
    end: a blocking call that a timeout gave up on (a sync-only chat model, run there by
    LangChain) must not hold its sync caller until it returns. The threads finish alone.
    ``started`` gets the loop and the task, for a caller in another thread to cancel."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        task = loop.create_task(coro)
        if started is not None:
            started.update(loop=loop, task=task)
        return loop.run_until_complete(task)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()  # its default executor: shut down without waiting


class AsyncFirstRunnable(Runnable[In, Out]):
    """A runnable whose async path is the real one: ``invoke`` runs ``ainvoke`` through
    :func:`run_sync`, so a sync caller inside an event loop works too."""

    def invoke(self, input: In, config: RunnableConfig | None = None, **kwargs: Any) -> Out:
        return run_sync(self.ainvoke(input, config, **kwargs))
