"""Dynamic batching: concurrent calls on one local model are merged into one forward pass.

Many graph runs in flight (``graph.abatch``, a server, an eval sweep) each call the policy
with their own few prefixes. A local model is used by one call at a time (it is locked), so
instead of queueing those calls, the caller that gets the model takes *every* pending
request with the same key (same sampling parameters) and runs them as one batch. Nothing
waits on a timer: requests merge exactly while the model is busy, so a lone caller pays no
latency and a busy model batches as wide as its load.

Cancellation is per request: a cancelled caller leaves the queue at once, and inside a
merged batch only its items stop (:func:`item_cancel_tokens`); the others run on.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from langchain_tts.backends.sync import cancel_token

I = TypeVar("I")  # noqa: E741 - one item of a request (a prefix, a trajectory)
R = TypeVar("R")  # the result for one item

#: how often a caller waiting for the model checks whether it was cancelled (seconds)
_POLL = 0.05
#: per item of the merged batch running in this context: its request's cancellation token
_ITEM_TOKENS: contextvars.ContextVar[list[threading.Event | None] | None] = contextvars.ContextVar(
    "langchain_tts_item_tokens", default=None
)


def item_cancel_tokens(count: int) -> list[threading.Event | None]:
    """The cancellation token of each of the ``count`` items of the batch being run: per
    merged request inside :meth:`RequestCoalescer.run`, else the current worker call's
    (:func:`~.sync.cancel_token`) for all. A set token means: stop computing that item."""
    tokens = _ITEM_TOKENS.get()
    if tokens is None or len(tokens) != count:
        return [cancel_token()] * count
    return tokens


@dataclass
class _Request(Generic[I, R]):
    items: Sequence[I]
    key: Hashable
    done: threading.Event = field(default_factory=threading.Event)
    results: list[R] | None = None
    error: BaseException | None = None
    token: threading.Event | None = None  # set: the caller was cancelled

    @property
    def cancelled(self) -> bool:
        return self.token is not None and self.token.is_set()


class RequestCoalescer(Generic[I, R]):
    """Runs ``fn(items, key) -> results`` (one result per item) for merged requests.

    ``lock`` guards the model (shared with every other user of it); ``max_items`` caps a
    merged batch (a request is never split, so one larger request still runs whole).
    """

    def __init__(
        self,
        fn: Callable[[list[I], Any], list[R]],
        lock: threading.Lock,
        max_items: int | None = None,
    ):
        self.fn = fn
        self.lock = lock
        self.max_items = max_items
        self._pending: list[_Request[I, R]] = []
        self._queue_lock = threading.Lock()
        #: sizes (requests merged) of the latest batches run, for tests and benchmarks
        #: (bounded: a server runs batches for ever), and how many ran in all
        self.batch_sizes: deque[int] = deque(maxlen=4096)
        self.batches_run = 0

    def sizes_since(self, batches_run: int) -> list[int]:
        """The sizes of the batches run since :attr:`batches_run` was ``batches_run``."""
        new = self.batches_run - batches_run
        return list(self.batch_sizes)[-new:] if new > 0 else []

    def run(self, items: Sequence[I], key: Hashable) -> list[R]:
        req: _Request[I, R] = _Request(items=items, key=key, token=cancel_token())
        with self._queue_lock:
            self._pending.append(req)
        while not req.done.is_set():
            # Wait for the model in short slices: a cancelled caller leaves the queue now,
            # not after the batch that holds the model.
            if not self.lock.acquire(timeout=_POLL):
                self._leave_if_cancelled(req)
                continue
            try:
                if req.done.is_set():  # another caller ran it while we waited
                    break
                self._leave_if_cancelled(req)
                group = self._take(req)
                self._run_group(group)
            finally:
                self.lock.release()
        if req.error is not None:
            raise req.error
        assert req.results is not None
        return req.results

    def _leave_if_cancelled(self, req: _Request[I, R]) -> None:
        if not req.cancelled:
            return
        with self._queue_lock:  # taken into another caller's batch: its rows stop there
            if req in self._pending:
                self._pending.remove(req)
        raise asyncio.CancelledError("the caller was cancelled")

    def _take(self, req: _Request[I, R]) -> list[_Request[I, R]]:
        """Our request plus every pending one with the same key, oldest first."""
        with self._queue_lock:
            group, total = [], 0
            for r in self._pending:
                if r.key != req.key or r is req or r.cancelled:
                    continue
                if self.max_items is not None and total + len(r.items) + len(req.items) > (
                    self.max_items
                ):
                    continue
                group.append(r)
                total += len(r.items)
            group.insert(0, req)
            for r in group:
                self._pending.remove(r)
        return group

    def _run_group(self, group: list[_Request[I, R]]) -> None:
        merged = [it for r in group for it in r.items]
        reset = _ITEM_TOKENS.set([r.token for r in group for _ in r.items])
        try:
            out = self.fn(merged, group[0].key)
            if len(out) != len(merged):
                raise RuntimeError(f"batched call returned {len(out)} results for {len(merged)}")
        except BaseException as e:  # every merged caller sees the failure
            for r in group:
                r.error = e
                r.done.set()
            return
        finally:
            _ITEM_TOKENS.reset(reset)
        self.batch_sizes.append(len(group))
        self.batches_run += 1
        i = 0
        for r in group:
            r.results = out[i : i + len(r.items)]
            i += len(r.items)
            r.done.set()
