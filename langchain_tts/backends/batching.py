"""Dynamic batching: concurrent calls on one local model are merged into one forward pass.

Many graph runs in flight (``graph.abatch``, a server, an eval sweep) each call the policy
with their own few prefixes. A local model is used by one call at a time (it is locked), so
instead of queueing those calls, the caller that gets the model takes *every* pending
request with the same key (same sampling parameters) and runs them as one batch. Nothing
waits on a timer: requests merge exactly while the model is busy, so a lone caller pays no
latency and a busy model batches as wide as its load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - one item of a request (a prefix, a trajectory)
R = TypeVar("R")  # the result for one item


@dataclass
class _Request(Generic[I, R]):
    items: Sequence[I]
    key: Hashable
    done: threading.Event = field(default_factory=threading.Event)
    results: list[R] | None = None
    error: BaseException | None = None


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
        #: sizes (requests merged) of the batches run, for tests and benchmarks
        self.batch_sizes: list[int] = []

    def run(self, items: Sequence[I], key: Hashable) -> list[R]:
        req: _Request[I, R] = _Request(items=items, key=key)
        with self._queue_lock:
            self._pending.append(req)
        while not req.done.is_set():
            with self.lock:
                if req.done.is_set():  # another caller ran it while we waited
                    break
                group = self._take(req)
                self._run_group(group)
        if req.error is not None:
            raise req.error
        assert req.results is not None
        return req.results

    def _take(self, req: _Request[I, R]) -> list[_Request[I, R]]:
        """Our request plus every pending one with the same key, oldest first."""
        with self._queue_lock:
            group, total = [], 0
            for r in self._pending:
                if r.key != req.key or r is req:
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
        try:
            out = self.fn(merged, group[0].key)
            if len(out) != len(merged):
                raise RuntimeError(f"batched call returned {len(out)} results for {len(merged)}")
        except BaseException as e:  # every merged caller sees the failure
            for r in group:
                r.error = e
                r.done.set()
            return
        self.batch_sizes.append(len(group))
        i = 0
        for r in group:
            r.results = out[i : i + len(r.items)]
            i += len(r.items)
            r.done.set()
