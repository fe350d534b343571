"""A bounded prefix KV cache for the local runtimes: pay for each prompt token once.

A search step extends the previous step's prompts (a beam's children share their parent's
prefix), so the cache keeps each row's keys/values, keyed by token ids, and the next call
computes only what no cached prefix covers. The model uses it under its own lock (one call
at a time); a budget meter may also *pin* an entry from another thread, so that a call's
cache hits, credited before the call, are still there when it runs: the cache's own lock
covers that.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["DEFAULT_PREFIX_CACHE_MB", "CacheEntry", "LayerKV", "PrefixCache", "PrefixCacheStats"]

#: default bound of a policy's prefix cache (the embedded policies use ~4 KiB per token)
DEFAULT_PREFIX_CACHE_MB = 256.0

#: per layer ``(keys, values)``, each ``(heads, tokens, head_dim)``
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]

_BLOCK = 16  # tokens per index key: the index holds one key per block of each entry


class CacheEntry:
    """Keys/values of ``tokens[parent_len:]``; the first ``parent_len`` are the parent's."""

    __slots__ = ("keys", "kv", "nbytes", "parent", "parent_len", "pins", "tokens")

    def __init__(
        self, tokens: tuple[int, ...], parent: CacheEntry | None, parent_len: int, kv: LayerKV
    ):
        self.tokens, self.parent, self.parent_len, self.kv = tokens, parent, parent_len, kv
        self.nbytes = sum(k.numel() * k.element_size() * 2 for k, _ in kv)
        self.keys: list[int] = []
        self.pins = 0  # calls that were credited this entry's tokens: not evicted meanwhile

    def segments(self, length: int) -> list[tuple[CacheEntry, int]]:
        """``(entry, own tokens to take)`` from the root down, covering ``length`` tokens."""
        out: list[tuple[CacheEntry, int]] = []
        node: CacheEntry | None = self
        while node is not None and length > 0:
            if length > node.parent_len:
                out.append((node, length - node.parent_len))
                length = node.parent_len
            node = node.parent
        out.reverse()
        return out

    def prefix_kv(self, length: int) -> LayerKV:
        """Keys/values of ``tokens[:length]``, per layer ``(heads, length, head_dim)``."""
        segs = self.segments(length)
        layers = len(self.kv)
        if len(segs) == 1:
            e, n = segs[0]
            return [(e.kv[i][0][:, :n], e.kv[i][1][:, :n]) for i in range(layers)]
        return [
            (
                torch.cat([e.kv[i][0][:, :n] for e, n in segs], dim=1),
                torch.cat([e.kv[i][1][:, :n] for e, n in segs], dim=1),
            )
            for i in range(layers)
        ]


@dataclass
class PrefixCacheStats:
    """Running totals: prompt tokens read from the cache, computed, entries evicted."""

    hit_tokens: int = 0
    computed_tokens: int = 0
    evictions: int = 0


class PrefixCache:
    """LRU of :class:`CacheEntry` keyed by token prefix, bounded by ``max_bytes``.

    Entries form a tree: an entry holds the keys/values of its *own* tokens and points at the
    entry it extends, so the samples of one prompt share the prompt's tensors. An evicted
    entry's tensors live on while a cached descendant still points at them; a hit refreshes
    the whole chain, so leaves go first. A pinned entry (:meth:`pin`) is not evicted (nor
    cleared) until unpinned.
    """

    def __init__(self, max_bytes: float = DEFAULT_PREFIX_CACHE_MB * 2**20):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.stats = PrefixCacheStats()
        self._entries: OrderedDict[tuple[int, ...], CacheEntry] = OrderedDict()
        self._index: dict[int, list[CacheEntry]] = {}  # block-chain hash -> entries with it
        #: per row of the last prefill: ``(prompt tokens computed, prompt tokens read)``
        self.last_rows: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, rows: list[tuple[int, int]]) -> None:
        """Book one prefill: ``(computed, read from cache)`` prompt tokens per row."""
        self.last_rows = rows
        self.stats.computed_tokens += sum(c for c, _ in rows)
        self.stats.hit_tokens += sum(h for _, h in rows)

    def clear(self) -> None:
        """Forget every entry but the pinned ones (a call in flight was credited them)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if not e.pins]:
                self._drop(key)

    def pin(
        self, tokens: Sequence[int], max_len: int | None = None
    ) -> tuple[CacheEntry | None, int]:
        """:meth:`lookup`, and keep the entry found until :meth:`unpin`: a later lookup of
        ``tokens`` then matches at least as many tokens."""
        with self._lock:
            entry, m = self._lookup(tokens, max_len)
            if entry is not None:
                entry.pins += 1
            return entry, m

    def unpin(self, entry: CacheEntry) -> None:
        with self._lock:
            entry.pins = max(0, entry.pins - 1)
            self._evict()

    @staticmethod
    def _block_keys(tokens: Sequence[int]) -> list[int]:
        keys, h = [], 0
        for end in range(_BLOCK, len(tokens) + 1, _BLOCK):
            h = hash((h, tuple(tokens[end - _BLOCK : end])))
            keys.append(h)
        return keys

    def lookup(
        self, tokens: Sequence[int], max_len: int | None = None
    ) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with ``tokens`` and that prefix's length
        (at most ``max_len``); ``(None, 0)`` on a miss. Refreshes the entry's chain."""
        with self._lock:
            return self._lookup(tokens, max_len)

    def _lookup(
        self, tokens: Sequence[int], max_len: int | None = None
    ) -> tuple[CacheEntry | None, int]:
        limit = len(tokens) if max_len is None else min(max_len, len(tokens))
        query = tuple(tokens[:limit])
        best: CacheEntry | None = self._entries.get(query)
        m = limit if best is not None else 0
        if best is None:
            # The deepest whole block some entry shares, then the longest match among the
            # entries holding it (siblings share blocks and part at a sample's first token).
            h, depth, found = 0, 0, None
            for end in range(_BLOCK, limit + 1, _BLOCK):
                h = hash((h, query[end - _BLOCK : end]))
                holders = self._index.get(h)
                if not holders:
                    break
                depth, found = end, holders
            for e in reversed(found or ()):
                n = depth
                tail = e.tokens
                stop = min(limit, len(tail))
                while n < stop and tail[n] == query[n]:
                    n += 1
                if n > m and tail[:depth] == query[:depth]:
                    best, m = e, n
                    if n == limit:
                        break
        node: CacheEntry | None = best
        while node is not None:  # refresh leaf to root: ancestors outlive their children
            if self._entries.get(node.tokens) is node:
                self._entries.move_to_end(node.tokens)
            node = node.parent
        return best, m

    def put(
        self, tokens: Sequence[int], parent: CacheEntry | None, parent_len: int, own: LayerKV
    ) -> CacheEntry | None:
        """Cache ``tokens`` whose first ``parent_len`` keys/values are ``parent``'s and the
        rest ``own`` (copied, so the caller's batch tensors can be freed). Returns the
        entry now holding ``tokens`` (an existing one is kept), or None if nothing new."""
        with self._lock:
            return self._put(tuple(tokens), parent, parent_len, own)

    def _put(
        self, key: tuple[int, ...], parent: CacheEntry | None, parent_len: int, own: LayerKV
    ) -> CacheEntry | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        if parent_len >= len(key):
            return parent
        kv = [(k.contiguous().clone(), v.contiguous().clone()) for k, v in own]
        entry = CacheEntry(key, parent if parent_len else None, parent_len, kv)
        entry.keys = self._block_keys(key)
        for h in entry.keys:
            self._index.setdefault(h, []).append(entry)
        self._entries[key] = entry
        self.nbytes += entry.nbytes
        self._evict()
        return entry

    def _evict(self) -> None:
        """Drop the least recently used unpinned entries while over the bound, never the
        newest (the one just put)."""
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            newest = next(reversed(self._entries))
            victim = next((k for k, e in self._entries.items() if not e.pins and k != newest), None)
            if victim is None:  # everything else is pinned: over the bound until unpinned
                return
            self._drop(victim)
            self.stats.evictions += 1

    def _drop(self, key: tuple[int, ...]) -> None:
        old = self._entries.pop(key)
        self.nbytes -= old.nbytes
        for h in old.keys:
            holders = self._index[h]
            holders.remove(old)
            if not holders:
                del self._index[h]
