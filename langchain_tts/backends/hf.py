"""In-process torch / ``transformers`` models: loading, the per-model lock, padding, FLOPs.

:class:`LocalModel` is what every local policy and PRM does with its ``(model, tokenizer)``
pair: eval mode on its device, the matmul parameter count (FLOPs = 2 x params x tokens), one
lock per model object, a pad id, and a :class:`~.batching.RequestCoalescer` that merges
concurrent calls into one forward. Nothing here imports transformers until a checkpoint is
loaded: the embedded models run on :mod:`langchain_tts.models.native` without it.
"""

from __future__ import annotations

import threading
import weakref
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from langchain_tts.backends.batching import RequestCoalescer
from langchain_tts.core.errors import ConfigError

if TYPE_CHECKING:  # transformers is imported on use: the native backend never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "LocalModel",
    "dtype_kwargs",
    "load_pretrained",
    "matmul_parameters",
    "model_device",
    "model_lock",
    "generate_with_prefix_cache",
    "pad_batch",
    "supports_prefix_reuse",
]

_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_L = TypeVar("_L", bound="LocalModel")


def model_lock(model: torch.nn.Module) -> threading.Lock:
    """One lock per model object, shared by every backend wrapping it.

    A threading lock (not an asyncio one) because :func:`~.sync.run_sync` may drive calls
    from different event loops and threads; the torch work runs in worker threads anyway.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that cost ``2`` FLOPs per token: all of them but the input embedding.

    The input embedding is a table lookup, so it is excluded; an LM head is a real matmul,
    so it is counted, also when tied to the input embedding.
    """
    params = {id(p): p.numel() for p in model.parameters()}
    total = sum(params.values())
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    emb = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        tied = head is not None and getattr(head, "weight", None) is emb.weight
        if not tied:
            total -= emb.weight.numel()
    return total


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56, else ``torch_dtype``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_pretrained(
    path: str | Path,
    dtype: torch.dtype,
    *,
    model_kwargs: dict[str, Any] | None = None,
    tokenizer_kwargs: dict[str, Any] | None = None,
    model_class: Any = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` from a local checkpoint (or hub id), the tokenizer loaded first;
    ``model_class`` defaults to ``AutoModelForCausalLM``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_class = AutoModelForCausalLM if model_class is None else model_class
    check_local(path)
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    tokenizer = AutoTokenizer.from_pretrained(str(path), **remote, **(tokenizer_kwargs or {}))
    mk = {**dtype_kwargs(dtype), **remote, **(model_kwargs or {})}
    return checked_from_pretrained(model_class, path, **mk), tokenizer


def check_local(path: str | Path) -> None:
    """A :class:`ConfigError` for a local path (absolute, ``./``, ``~``) that does not exist;
    transformers would take it for a hub id and blame its form."""
    text = str(path)
    if text.startswith(("/", ".", "~")) and not Path(text).expanduser().exists():
        raise ConfigError(f"no checkpoint at {text}: the path does not exist")


def checked_from_pretrained(model_class: Any, path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """``model_class.from_pretrained(path)``, refusing a checkpoint that lacks weights the
    class needs: transformers fills them with random values and only logs it, so a causal
    LM loaded as a PRM (or the reverse) would score or write noise."""
    model, info = model_class.from_pretrained(str(path), output_loading_info=True, **kwargs)
    missing = sorted((info or {}).get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:4]) + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
        raise ConfigError(
            f"{path} has no weights for {shown} of {type(model).__name__}: it is not a "
            "checkpoint of this kind (a causal LM loaded as a PRM, or a PRM as a policy?); "
            "load it with the class it was saved for"
        )
    return model


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, *, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token sequences padded to one width.

    Right padding (the default) keeps every real token at its unbatched position, so a
    scoring forward needs no position ids; left padding lets generation continue every row.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[r, span] = torch.tensor(list(s), dtype=torch.long)
        mask[r, span] = 1
    return ids, mask


#: config keys that hold a model's context length, by model family
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length_of(config: Any) -> int | None:
    """The positions a model reads, from its (Hugging Face style) config; None when unknown."""
    for key in CONTEXT_KEYS:
        v = getattr(config, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


class LocalModel:
    """The ``(model, tokenizer)`` pair of an in-process policy or PRM (see the module doc).

    Subclasses call :meth:`_init_local` from their constructor and define ``_run_items(items,
    key)``, which runs one merged batch (at most ``merge`` chunks of ``batch_size``);
    :meth:`from_pretrained` loads a checkpoint with :meth:`_load_pretrained`
    (``AutoModelForCausalLM`` unless overridden) and passes what it returns to the constructor.
    """

    #: a merged batch holds at most ``merge x batch_size`` items
    merge: int = 4

    model: Any
    tokenizer: Any
    device: torch.device
    batch_size: int
    num_parameters: int
    context_length: int | None
    pad_token_id: int
    name: str | None
    _lock: threading.Lock
    _coalescer: RequestCoalescer[Any, Any]

    def _init_local(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | torch.device | None,
        batch_size: int,
        name: str | None,
        eos_token_ids: Sequence[int] = (),
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = model_device(self.model)
        self.num_parameters = matmul_parameters(self.model)
        self.context_length = context_length_of(getattr(model, "config", None))
        label = getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
        self.name = name or f"{type(self).__name__}({label})"
        self._lock = model_lock(self.model)
        self._coalescer = RequestCoalescer(
            self._run_items, self._lock, max_items=batch_size * self.merge
        )
        pad = tokenizer.pad_token_id
        if pad is None:
            eos = list(eos_token_ids) or [tokenizer.eos_token_id]
            pad = eos[0] if eos[0] is not None else 0
        self.pad_token_id = int(pad)
        vocab = _vocab_size(self.model)
        if vocab is not None and not 0 <= self.pad_token_id < vocab:
            raise ConfigError(
                f"{self.name}: the pad token id {self.pad_token_id} is outside the model's "
                f"{vocab} embeddings (a token added to the tokenizer only); call "
                "model.resize_token_embeddings(len(tokenizer)), or set tokenizer.pad_token = "
                "tokenizer.eos_token"
            )

    @abstractmethod
    def _run_items(self, items: list[Any], key: Any) -> list[Any]:
        """One merged batch: a result per item (``key``: what merged requests share)."""

    @classmethod
    def _load_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype,
        **options: Any,
    ) -> tuple[Any, ...]:
        """The constructor's leading arguments, loaded from ``path`` (``options``: those of
        :func:`load_pretrained`)."""
        return load_pretrained(path, dtype, **options)

    @classmethod
    def from_pretrained(
        cls: type[_L],
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        *,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> _L:
        """Load a local checkpoint (or hub id) with transformers.

        ``kw`` goes to the constructor (``device``, ``batch_size``, ...); ``model_kwargs`` /
        ``tokenizer_kwargs`` to the respective ``from_pretrained``; ``trust_remote_code`` to
        both (checkpoints whose head class ships with them).
        """
        args = cls._load_pretrained(
            path,
            dtype,
            trust_remote_code=trust_remote_code,
            model_kwargs=model_kwargs,
            tokenizer_kwargs=tokenizer_kwargs,
        )
        kw.setdefault("name", f"{cls.__name__}({Path(str(path)).name})")
        return cls(*args, **kw)


def _vocab_size(model: Any) -> int | None:
    """The rows of the model's input embeddings (None when it does not say)."""
    try:
        return int(model.get_input_embeddings().weight.shape[0])
    except Exception:  # noqa: BLE001 - a model without the transformers accessors
        return None


def supports_prefix_reuse(model: Any) -> bool:
    """Whether :func:`generate_with_prefix_cache` can reuse keys/values with ``model``: a
    transformers model on the default ``DynamicCache`` with full attention in every layer
    (sliding-window, recurrent and hybrid caches cannot be cut at any token)."""
    try:
        from transformers import DynamicCache, PreTrainedModel
    except ImportError:  # pragma: no cover - the native backend needs no transformers
        return False
    if not isinstance(model, PreTrainedModel) or not model.can_generate():
        return False
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None):
        return False  # a static / offloaded cache of its own: generate refuses one passed in
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a config this cache class cannot read
        return False
    return not any(getattr(layer, "is_sliding", False) for layer in cache.layers) and all(
        type(layer).__name__ == "DynamicLayer" for layer in cache.layers
    )


@torch.inference_mode()
def generate_with_prefix_cache(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any, **kwargs: Any
) -> torch.Tensor:
    """``model.generate`` on a left-padded batch, its prompts' cached keys/values reused.

    transformers continues a ``past_key_values`` that covers the first columns of the
    batch, so the cached columns are the first ``C`` of the left-padded layout, where ``C``
    is the least cached width over the rows (pad + cached prefix): every row keeps its
    padding and positions, as without a cache. After the call each row (prompt and
    sampled tokens) goes into ``cache`` (a :class:`~.prefix_cache.PrefixCache`);
    ``cache.last_rows`` gets ``(computed, read)`` prompt tokens per row.
    """
    from transformers import DynamicCache

    mask = attention_mask.bool()
    batch, width = input_ids.shape
    rows = [input_ids[r][mask[r]].tolist() for r in range(batch)]
    pads = [width - len(row) for row in rows]
    hits = [cache.lookup(row, len(row) - 1) for row in rows]
    cut = min(p + m for p, (_, m) in zip(pads, hits, strict=True))
    past = None
    if cut > 0 and all(m >= cut - p for p, (_, m) in zip(pads, hits, strict=True)):
        filled = [e.prefix_kv(cut - p) if cut > p else None for p, (e, _) in zip(pads, hits)]
        ref = next(kv for kv in filled if kv is not None)
        past = DynamicCache(config=model.config)
        for layer, (k0, _) in enumerate(ref):
            shape = (batch, k0.shape[0], cut, k0.shape[2])
            keys, values = k0.new_zeros(shape), k0.new_zeros(shape)
            for r, kv in enumerate(filled):
                if kv is not None:
                    keys[r, :, pads[r] :] = kv[layer][0].to(keys.device)
                    values[r, :, pads[r] :] = kv[layer][1].to(values.device)
            past.update(keys, values, layer)
    else:
        cut = 0
    import transformers

    # transformers 5 names generate's cache argument ``cache`` (``past_key_values`` before)
    name = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        return_dict_in_generate=True,
        **{name: past},
        **kwargs,
    )
    cache.record([(len(row) - (cut - p), cut - p) for row, p in zip(rows, pads, strict=True)])
    # the v5 name first: reading ``past_key_values`` on a v5 output logs a deprecation
    done = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    layers = [(layer.keys, layer.values) for layer in done.layers]
    stored = layers[0][0].shape[2]  # the last sampled token was never fed
    seqs = out.sequences
    pad = kwargs.get("pad_token_id")
    for r, (row, (entry, _)) in enumerate(zip(rows, hits, strict=True)):
        new = seqs[r, width:stored].tolist()
        while new and new[-1] == pad:  # a finished row's padding (a prefix is still right)
            new.pop()
        reused = max(0, cut - pads[r])  # tokens of this row that came from ``entry``
        start = pads[r] + reused
        cols = torch.arange(start, width + len(new), device=layers[0][0].device)
        own = [(k[r].index_select(1, cols), v[r].index_select(1, cols)) for k, v in layers]
        cache.put(row + new, entry if reused else None, reused, own)
    return seqs
