"""Incremental scoring for the embedded PRMs: a scored prefix is never read twice.

A search scores a child as its parent plus one step, and siblings share their parent's
prefix. :func:`cached_hidden` runs the model body only past each sequence's longest cached
prefix and returns the hidden states a full forward gives (causal attention), so scores with
the cache equal scores without it up to float rounding. The policy's generation cache is
:mod:`langchain_tts.backends.prefix_cache`.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from langchain_tts.core.errors import ConfigError

__all__ = [
    "CachedForward",
    "NotIncremental",
    "ScoringCache",
    "TransformersBody",
    "cached_hidden",
    "incremental_body",
    "transformers_body",
]

_MASK = (1 << 61) - 1  # polynomial prefix hashes mod a Mersenne prime
_BASE = 1_000_003
#: a shared prefix is computed on its own only when it has at least this many uncached tokens
MIN_SHARED_PREFIX = 8


@dataclass(eq=False)
class _Entry:
    ids: tuple[int, ...]
    kv: torch.Tensor  # (layers, 2, heads, tokens, head_dim)
    hidden: torch.Tensor  # (tokens, hidden)
    #: calls credited this entry's tokens (a budget meter): not evicted until they are done
    pins: int = 0


@dataclass
class CachedForward:
    """Hidden states of a batch (right padded) and how many tokens were computed/read."""

    hidden: torch.Tensor  # (batch, width, hidden)
    computed: list[int]
    cached: list[int]


def incremental_body(model: object) -> torch.nn.Module | None:
    """The Llama body of a native-runtime model (``model.core.model``: embeddings, layers
    with ``self_attn.project``, final norm, rotary ``inv_freq``), else None."""
    body = getattr(getattr(model, "core", None), "model", None)
    layers = getattr(body, "layers", None)
    if not isinstance(body, torch.nn.Module) or not layers or not hasattr(body, "inv_freq"):
        return None
    if not callable(getattr(layers[0].self_attn, "project", None)):
        return None
    return body


class NotIncremental(RuntimeError):
    """A model's forward did not continue the cache it was given."""


@dataclass(frozen=True)
class TransformersBody:
    """A transformers decoder body that can continue a ``DynamicCache``: the module, the
    name its ``forward`` gives the cache argument (``cache`` in transformers 5,
    ``past_key_values`` before and in older remote code), and the shortest sliding window
    of its layers (None: full attention everywhere)."""

    module: torch.nn.Module
    cache_arg: str
    window: int | None = None

    def holds(self, tokens: int) -> bool:
        """Whether its cache keeps every key of a sequence this long (a sliding-window
        layer keeps only its last ``window - 1``)."""
        return self.window is None or tokens < self.window - 1


def transformers_body(model: object) -> TransformersBody | None:
    """The decoder body of a transformers model (``base_model``: embeddings, layers, final
    norm) when it can reuse keys/values: every layer on the default ``DynamicCache``, with
    full attention or a sliding window (reused only for sequences shorter than the window:
    Mistral's 4,096 tokens), and a ``forward`` taking a cache and ``position_ids``. Else
    None (a recurrent, hybrid or static cache)."""
    if "transformers" not in sys.modules:
        # no transformers model without the package imported: the native runtime's models
        # must not pay for importing it (seconds, under the PRM's lock, mid-run)
        return None
    try:
        from transformers import DynamicCache, PreTrainedModel
    except ImportError:  # pragma: no cover - the native backend needs no transformers
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    body = getattr(model, "base_model", None)
    if not isinstance(body, PreTrainedModel):
        return None
    try:
        cache = DynamicCache(config=body.config)
    except Exception:  # noqa: BLE001 - a config this cache class cannot read
        return None
    layers = getattr(cache, "layers", None)
    kinds = {"DynamicLayer", "DynamicSlidingWindowLayer"}
    if not layers or any(type(layer).__name__ not in kinds for layer in layers):
        return None
    windows = [int(layer.sliding_window) for layer in layers if getattr(layer, "is_sliding", 0)]
    params = inspect.signature(body.forward).parameters
    arg = next((a for a in ("cache", "past_key_values") if a in params), None)
    if arg is None or "position_ids" not in params:
        return None
    return TransformersBody(body, arg, min(windows) if windows else None)


def _body_forward(
    body: torch.nn.Module,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    allowed: torch.Tensor,
    past: torch.Tensor | None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The body on new tokens at ``positions`` (batch, new), attention ``allowed`` (batch,
    1, new, past + new), after ``past`` keys/values (layers, 2, batch, heads, past, dim):
    the native runtime's forward with a past, returning the final hidden states of the new
    tokens and every layer's keys/values (past + new)."""
    freqs = positions[..., None].float() * body.inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    x = body.embed_tokens(input_ids)
    kv = []
    for i, layer in enumerate(body.layers):
        attn = layer.self_attn
        q, k, v = attn.project(layer.input_layernorm(x), cos, sin)
        if past is not None:
            k = torch.cat((past[i, 0], k), dim=2)
            v = torch.cat((past[i, 1], v), dim=2)
        kv.append((k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return body.norm(x), kv


def _prefix_hashes(ids: Sequence[int]) -> list[int]:
    out, h = [], 0
    for t in ids:
        h = (h * _BASE + int(t) + 1) & _MASK
        out.append(h)
    return out


class ScoringCache:
    """An LRU of token sequences with their keys/values and hidden states.

    ``max_tokens`` bounds the tokens held (the oldest sequences are dropped first); a
    lookup finds the longest cached prefix of a sequence, also one that ends inside a
    cached sequence. Thread safe: concurrent PRM calls share one cache. A pinned sequence
    (:meth:`pin`) is neither dropped nor cleared until unpinned, and its prefixes stay
    found.
    """

    def __init__(self, max_tokens: int = 32_768):
        if max_tokens < 1:
            raise ConfigError(f"prefix cache max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # by id(entry)
        self._index: dict[tuple[int, int], _Entry] = {}  # (length, prefix hash) -> entry
        self._tokens = 0
        self._lock = threading.Lock()
        #: tokens read from the cache / computed, since creation (for benchmarks)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return self._tokens

    def clear(self) -> None:
        """Forget every sequence but the pinned ones (a call in flight was credited them)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if not e.pins]:
                self._drop(key)

    def lookup(self, ids: Sequence[int]) -> tuple[int, _Entry | None]:
        """The longest cached prefix of ``ids``: its length and the entry holding it."""
        hashes = _prefix_hashes(ids)
        with self._lock:
            return self._lookup(ids, hashes)

    def _lookup(self, ids: Sequence[int], hashes: list[int]) -> tuple[int, _Entry | None]:
        for n in range(len(ids), 0, -1):
            entry = self._index.get((n, hashes[n - 1]))
            if entry is not None and entry.ids[:n] == tuple(ids[:n]):  # no hash collision
                self._entries.move_to_end(id(entry))
                return n, entry
        return 0, None

    def pin(self, ids: Sequence[int]) -> tuple[int, _Entry | None]:
        """:meth:`lookup`, and keep the entry found until :meth:`unpin`: a later lookup of
        ``ids`` then finds at least as long a prefix."""
        hashes = _prefix_hashes(ids)
        with self._lock:
            n, entry = self._lookup(ids, hashes)
            if entry is not None:
                entry.pins += 1
            return n, entry

    def unpin(self, entry: _Entry) -> None:
        with self._lock:
            entry.pins = max(0, entry.pins - 1)
            self._evict()

    def add(self, ids: Sequence[int], kv: torch.Tensor, hidden: torch.Tensor) -> None:
        """Hold ``ids`` with its keys/values ``(layers, 2, heads, tokens, head_dim)`` and
        hidden states ``(tokens, hidden)``, evicting the least recently used to fit."""
        if len(ids) > self.max_tokens:
            return
        entry = _Entry(tuple(int(t) for t in ids), kv, hidden)
        with self._lock:
            self._entries[id(entry)] = entry
            self._tokens += len(ids)
            for n, h in enumerate(_prefix_hashes(ids), start=1):
                self._index[(n, h)] = entry  # the newest sequence holds a shared prefix
            self._evict()

    def _evict(self) -> None:
        """Drop the least recently used unpinned sequences while over ``max_tokens``."""
        while self._tokens > self.max_tokens:
            key = next((k for k, e in self._entries.items() if not e.pins), None)
            if key is None:  # everything is pinned: over the bound until unpinned
                return
            self._drop(key)

    def _drop(self, key: int) -> None:
        old = self._entries.pop(key)
        self._tokens -= len(old.ids)
        # the pinned sequence sharing the longest prefix with ``old`` keeps that prefix found
        keeper, shared = None, 0
        for e in self._entries.values():
            if e.pins:
                m = _common_prefix(e.ids, old.ids)
                if m > shared:
                    keeper, shared = e, m
        for n, h in enumerate(_prefix_hashes(old.ids), start=1):
            if self._index.get((n, h)) is old:
                if n <= shared:
                    self._index[(n, h)] = keeper  # type: ignore[assignment]
                else:
                    del self._index[(n, h)]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _shared_prefixes(seqs: list[tuple[int, ...]], hit: list[int]) -> list[tuple[int, ...]]:
    """Prefixes that two or more sequences share beyond what the cache holds for them."""
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    shared: set[tuple[int, ...]] = set()
    for a, b in zip(order, order[1:]):
        sa, sb = seqs[a], seqs[b]
        n = 0
        for x, y in zip(sa, sb):
            if x != y:
                break
            n += 1
        # at least one new token each, else the shorter one is itself the prefix
        n = min(n, len(sa) - 1, len(sb) - 1)
        if n - max(hit[a], hit[b]) >= MIN_SHARED_PREFIX:  # worth a forward of its own
            shared.add(sa[:n])
    return sorted(shared, key=len)


#: per sequence its full keys/values and hidden states (cached + new), and how many of its
#: tokens were read from the cache rather than computed
Extended = tuple[list[torch.Tensor], list[torch.Tensor], list[int]]


def _extend(
    body: torch.nn.Module,
    seqs: list[tuple[int, ...]],
    past: list[tuple[int, _Entry | None]],
    device: torch.device,
) -> Extended:
    """One forward over each sequence's tokens past its cached prefix (the native body:
    every row continues from its own cached length)."""
    b = len(seqs)
    plen = [n for n, _ in past]
    nlen = [len(s) - n for s, n in zip(seqs, plen)]
    pmax, nmax = max(plen), max(nlen)
    layers = len(body.layers)
    ref = next(body.parameters())
    heads = body.layers[0].self_attn.n_heads
    hd = body.layers[0].self_attn.head_dim
    past_kv = torch.zeros((layers, 2, b, heads, pmax, hd), dtype=ref.dtype, device=device)
    new_ids = torch.zeros((b, nmax), dtype=torch.long)
    key_mask = torch.zeros((b, pmax + nmax), dtype=torch.bool)
    for r, (s, (n, entry)) in enumerate(zip(seqs, past)):
        if entry is not None and n:
            past_kv[:, :, r, :, :n] = entry.kv[:, :, :, :n]
        new_ids[r, : nlen[r]] = torch.tensor(s[n:], dtype=torch.long)
        key_mask[r, :n] = True
        key_mask[r, pmax : pmax + nlen[r]] = True
    positions = torch.tensor(plen)[:, None] + torch.arange(nmax)[None, :]
    # query q of row r sees the row's cached keys and its new keys up to q
    q = torch.arange(nmax)[:, None]
    causal_new = torch.arange(nmax)[None, :] <= q  # (nmax, nmax)
    allowed = key_mask[:, None, None, :].expand(b, 1, nmax, pmax + nmax).clone()
    allowed[..., pmax:] &= causal_new[None, None]
    allowed |= ~allowed.any(dim=-1, keepdim=True)  # padding queries: never all-masked
    hidden, kv = _body_forward(
        body, new_ids.to(device), positions.to(device), allowed.to(device),
        past_kv if pmax else None,
    )  # fmt: skip
    full_kv, full_hidden = [], []
    for r, (n, entry) in enumerate(past):
        new_part = torch.stack(
            [torch.stack((k[r, :, pmax : pmax + nlen[r]], v[r, :, pmax : pmax + nlen[r]]))
             for k, v in kv]
        )  # fmt: skip
        h_new = hidden[r, : nlen[r]]
        if entry is not None and n:
            full_kv.append(torch.cat((entry.kv[:, :, :, :n], new_part), dim=3))
            full_hidden.append(torch.cat((entry.hidden[:n], h_new), dim=0))
        else:
            full_kv.append(new_part)
            full_hidden.append(h_new.clone())  # not a view that keeps the batch alive
    return full_kv, full_hidden, plen


def _extend_transformers(
    body: TransformersBody,
    seqs: list[tuple[int, ...]],
    past: list[tuple[int, _Entry | None]],
    device: torch.device,
) -> Extended:
    """One forward of a transformers body over the batch left padded, continuing a
    ``DynamicCache`` of its first ``C`` columns, where ``C`` is the least cached width over
    the rows (pad + cached prefix): a ``DynamicCache`` has one length for the whole batch.

    A row whose cached prefix is longer recomputes the tokens between ``C`` and it; in a
    search every child extends a cached parent by one step, so each row computes about the
    longest new step. ``position_ids`` count real tokens only, so a row's keys and hidden
    states are those of the row alone, whatever its padding.
    """
    from transformers import DynamicCache

    module = body.module
    b = len(seqs)
    width = max(len(s) for s in seqs)
    pads = [width - len(s) for s in seqs]
    cut = min(p + n for p, (n, _) in zip(pads, past, strict=True))
    ids = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, pads[r] :] = torch.tensor(s, dtype=torch.long)
        mask[r, pads[r] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=module.config)
    if cut > 0:
        ref = next(e for n, e in past if e is not None and n).kv
        layers, _, heads, _, hd = ref.shape
        kv = torch.zeros((layers, 2, b, heads, cut, hd), dtype=ref.dtype, device=device)
        for r, (n, entry) in enumerate(past):
            if cut > pads[r]:
                assert entry is not None and n >= cut - pads[r]  # cut is the least cached width
                kv[:, :, r, :, pads[r] :] = entry.kv[:, :, :, : cut - pads[r]].to(device)
        for layer in range(layers):
            cache.update(kv[layer, 0], kv[layer, 1], layer)
    out = module(
        input_ids=ids[:, cut:].to(device),
        attention_mask=mask.to(device),
        position_ids=positions[:, cut:].to(device),
        use_cache=True,
        **{body.cache_arg: cache},
    )
    hidden = getattr(out, "last_hidden_state", None)
    hidden = out[0] if hidden is None else hidden
    done = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or cache
    keys = [layer.keys for layer in done.layers]
    values = [layer.values for layer in done.layers]
    if hidden.shape[1] != width - cut or not keys or keys[0].shape[2] != width:
        raise NotIncremental(
            f"{type(module).__name__} returned {hidden.shape[1]} hidden states and a cache of "
            f"{keys[0].shape[2] if keys else 0} tokens for {width - cut} new tokens after "
            f"{cut} cached ones"
        )
    full_kv, full_hidden, reused = [], [], []
    for r, (_, entry) in enumerate(past):
        took = max(0, cut - pads[r])  # this row's tokens read from ``entry``
        h_new = hidden[r, max(pads[r], cut) - cut :]
        # a copy, not a view: the cache must not keep the whole batch's states alive
        h = torch.cat((entry.hidden[:took].to(h_new.device), h_new)) if took else h_new.clone()
        full_hidden.append(h)
        full_kv.append(
            torch.stack(
                [
                    torch.stack((k[r, :, pads[r] :], v[r, :, pads[r] :]))
                    for k, v in zip(keys, values)
                ]
            )
        )
        reused.append(took)
    return full_kv, full_hidden, reused


@torch.inference_mode()
def cached_hidden(
    body: torch.nn.Module | TransformersBody,
    seqs: Sequence[Sequence[int]],
    cache: ScoringCache,
    device: torch.device,
) -> CachedForward:
    """Final hidden states of ``seqs`` (right padded to one width), computing only the
    tokens past each sequence's longest cached prefix; every sequence is then cached.

    ``body`` is the project's own Llama body (``models/tiny_llama.py``, what the native
    runtime loads, found by its shape with :func:`incremental_body`: this layer imports no
    model code), or a transformers body (:func:`transformers_body`).

    Prefixes that several sequences of one batch share and nothing cached covers yet (the
    question every first step of a search starts from) are computed once first.
    """
    extend: Callable[..., Extended] = (
        _extend_transformers if isinstance(body, TransformersBody) else _extend
    )
    rows = [tuple(int(t) for t in s) for s in seqs]
    looked = [cache.lookup(s) for s in rows]
    paid: list[tuple[tuple[int, ...], int]] = []  # shared prefixes computed, new tokens
    todo_prefixes = _shared_prefixes(rows, [n for n, _ in looked])
    while todo_prefixes:  # one forward per nesting level (one question head per run, ...)
        wave = [
            p for p in todo_prefixes
            if not any(len(q) < len(p) and p[: len(q)] == q for q in todo_prefixes)
        ]  # fmt: skip
        todo_prefixes = [p for p in todo_prefixes if p not in wave]
        got = [cache.lookup(p) for p in wave]
        kv, hid, took = extend(body, wave, got, device)
        for p, k, h, t in zip(wave, kv, hid, took):
            cache.add(p, k, h)
            paid.append((p, len(p) - t))
    looked = [cache.lookup(s) for s in rows]
    # a sequence held whole needs no forward; keep one token to compute otherwise
    full = [n == len(s) for s, (n, _) in zip(rows, looked)]
    todo = [r for r in range(len(rows)) if not full[r]]
    hidden_rows: list[torch.Tensor | None] = [None] * len(rows)
    computed, cached = [0] * len(rows), [0] * len(rows)
    for r in range(len(rows)):
        if full[r]:
            n, entry = looked[r]
            assert entry is not None
            hidden_rows[r] = entry.hidden[:n]
            cached[r] = n
    if todo:
        kv, hid, took = extend(body, [rows[r] for r in todo], [looked[r] for r in todo], device)
        for k, r in enumerate(todo):
            hidden_rows[r] = hid[k]
            cached[r] = took[k]
            computed[r] = len(rows[r]) - took[k]
            cache.add(rows[r], kv[k], hid[k])
    # a shared prefix computed above counts once, with the first sequence that has it
    for prefix, new in paid:
        r = next(r for r, s in enumerate(rows) if s[: len(prefix)] == prefix)
        computed[r] += new
        cached[r] -= new
    width = max(len(s) for s in rows)
    first = hidden_rows[0]
    assert first is not None
    out = torch.zeros((len(rows), width, first.shape[-1]), dtype=first.dtype, device=device)
    for r, h in enumerate(hidden_rows):
        assert h is not None
        out[r, : h.shape[0]] = h
    cache.hits += sum(cached)
    cache.misses += sum(computed)
    return CachedForward(hidden=out, computed=computed, cached=cached)
