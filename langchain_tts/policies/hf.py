"""A step policy on Hugging Face ``transformers``: one batched ``generate`` per call.

Every prefix x sample becomes one row of a single left-padded ``model.generate`` call
(chunked by ``batch_size`` only when needed), so a search step costs one decoding loop
instead of ``len(prefixes) * n``. Works on CPU or GPU with any causal LM checkpoint, and
with any model exposing the same ``generate`` contract: the embedded models run on
:class:`~langchain_tts.models.native.NativeCausalLM` (no transformers import). Nothing here
imports transformers until ``from_pretrained`` is called.

Seeds: with ``SamplingParams.seed`` set, row ``j`` of prefix ``i`` of a call samples with
its own random stream, seeded ``seed + i * n + j`` as vLLM does (:mod:`.vllm`), and token
``t`` of that row uses draw ``t`` of the stream (Gumbel-max sampling, :class:`_SeededSampler`).
So a seeded call returns the same samples whatever other calls share its batch: concurrent
graph runs, which the request coalescer merges, stay reproducible. Unseeded calls sample
with ``generate``'s own multinomial draw.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import FinishReason, Step, Trajectory, Usage
from langchain_tts.models.native import top_p_filter
from langchain_tts.policies.base import DEFAULT_STEP_DELIMITER, PolicyResult, StepPolicy
from langchain_tts.policies.batching import RequestCoalescer

if TYPE_CHECKING:  # transformers is imported on use: the native backend never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["HFPolicy", "matmul_parameters", "model_lock"]

_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.Lock:
    """One lock per model object, shared by every backend wrapping it.

    A threading lock (not an asyncio one) because :func:`run_sync` may drive calls from
    different event loops and threads; the torch work runs in worker threads anyway.
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
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` from a local checkpoint (or hub id), the tokenizer loaded first;
    ``model_class`` defaults to ``AutoModelForCausalLM``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_class = AutoModelForCausalLM if model_class is None else model_class
    tokenizer = AutoTokenizer.from_pretrained(str(path), **(tokenizer_kwargs or {}))
    model = model_class.from_pretrained(str(path), **dtype_kwargs(dtype), **(model_kwargs or {}))
    return model, tokenizer


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


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 torch stores."""
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))  # fmt: skip
_STEP = _signed(0xD1B54A32D192ED03)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 (wrapping multiplication)."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def seeded_uniforms(seeds: torch.Tensor, step: int, width: int) -> torch.Tensor:
    """``(len(seeds), width)`` uniforms in (0, 1): draw ``step`` of each row's stream.

    A counter-based generator (SplitMix64 over seed, step, then column), so each row's
    numbers depend on its seed alone, on any device, in one vectorised pass.
    """
    dev = seeds.device
    const = {k: torch.tensor(v, dtype=torch.int64, device=dev) for k, v in
             (("golden", _GOLDEN), ("step", _STEP))}  # fmt: skip
    key = _mix(seeds.to(torch.int64) * const["golden"] + step * const["step"])
    cols = torch.arange(1, width + 1, device=dev, dtype=torch.int64)
    z = _mix(key[:, None] + cols[None, :] * const["golden"])
    return (_shr(z, 11).to(torch.float64) + 0.5) / float(1 << 53)


class _SeededSampler:
    """Temperature + top-p sampling by Gumbel-max with per-row random streams.

    ``argmax(logits / T + Gumbel)`` over the top-p nucleus is a draw from the same
    distribution as ``generate``'s multinomial sampling; run with ``do_sample=False``, the
    argmax is ``generate``'s greedy pick, and the noise of row ``r`` at its ``t``-th new
    token comes from :func:`seeded_uniforms` of ``seeds[r]`` -- never from another row.
    A plain callable (not a ``transformers.LogitsProcessor`` subclass), so the native
    backend runs it without importing transformers; ``generate`` accepts any callable.
    """

    def __init__(self, seeds: list[int], width: int, temperature: float, top_p: float):
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.width, self.temperature = width, temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.seeds.device != scores.device:  # once, not at every token
            self.seeds = self.seeds.to(scores.device)
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            logits = top_p_filter(logits, self.top_p)
        u = seeded_uniforms(self.seeds, input_ids.shape[1] - self.width, scores.shape[-1])
        return logits - torch.log(-torch.log(u)).to(logits.dtype)


class _StopAtDelimiter:
    """Per-sequence stop once the *generated* text contains the step delimiter.

    Not HF's ``stop_strings``: the prompt itself ends with the delimiter, and a stop string
    that matches across the prompt/generation boundary (prompt ``"\\n\\n"`` + generated
    ``"\\n"``) would stop a step that contains no delimiter. Only the last few generated
    tokens are decoded each step (the delimiter is completed by the newest token), so the
    cost stays linear in the step length.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, delimiter: str, prompt_width: int):
        self.tokenizer = tokenizer
        self.delimiter = delimiter
        self.prompt_width = prompt_width
        # Enough tokens to hold the delimiter even with byte-level (one byte per token) pieces.
        self.window = len(delimiter.encode()) + 2
        self.stop_len: dict[int, int] = {}  # row -> generated tokens incl. the delimiter

    def __call__(
        self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any
    ) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        rows = [i for i in range(input_ids.shape[0]) if i not in self.stop_len]
        if rows and generated > 0:
            start = input_ids.shape[1] - min(generated, self.window)
            tails = input_ids[rows, start:].tolist()
            texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
            for i, text in zip(rows, texts, strict=True):
                if self.delimiter in text:
                    self.stop_len[i] = generated
        for i in self.stop_len:
            done[i] = True
        return done  # type: ignore[return-value]


class HFPolicy(StepPolicy):
    """Continue many partial solutions by one step each with a ``transformers`` causal LM.

    The prompt is the tokenizer's chat template over ``[system?, user question]`` with the
    generation prompt opened (or ``question + delimiter`` when the tokenizer has no
    template), followed by the steps so far, each ending with the delimiter.

    ``num_parameters`` counts every parameter except the input embedding table (see
    :func:`matmul_parameters`), so ``policy_flops = 2 * num_parameters * tokens``.
    Calls on one model are serialized by a lock and run in a worker thread.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        system_prompt: str | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        name: str | None = None,
    ):
        if not step_delimiter:
            raise ValueError("step_delimiter must be a non-empty string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.step_delimiter = step_delimiter
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.device = model_device(self.model)
        self.num_parameters = matmul_parameters(self.model)
        self.name = name or f"HFPolicy({getattr(model.config, '_name_or_path', '') or 'model'})"
        self._lock = model_lock(self.model)
        self._coalescer: RequestCoalescer[Trajectory, tuple[list[Step], int, float]] = (
            RequestCoalescer(self._generate_items, self._lock, max_items=max(batch_size, 1) * 4)
        )
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids: list[int] = (
            [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
        )
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id: int = int(pad)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        *,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> HFPolicy:
        """Load a local checkpoint (or hub id) with ``AutoModelForCausalLM``.

        ``kw`` goes to the constructor (``device``, ``step_delimiter``, ...);
        ``model_kwargs`` / ``tokenizer_kwargs`` to the respective ``from_pretrained``.
        """
        model, tokenizer = load_pretrained(
            path, dtype, model_kwargs=model_kwargs, tokenizer_kwargs=tokenizer_kwargs
        )
        kw.setdefault("name", f"HFPolicy({Path(str(path)).name})")
        return cls(model, tokenizer, **kw)

    # -- prompts ----------------------------------------------------------------------------
    def render_prompt(self, prefix: Trajectory) -> str:
        """Chat-templated question + the steps so far (each ending with the delimiter)."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": prefix.question})
            head = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            head = prefix.question + self.step_delimiter
        return str(head) + self.render_prefix(prefix)

    def _encode(self, prefix: Trajectory) -> list[int]:
        # A chat template already writes BOS and friends; a bare prompt gets them here.
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        text = self.render_prompt(prefix)
        return list(self.tokenizer(text, add_special_tokens=not templated)["input_ids"])

    # -- generation -------------------------------------------------------------------------
    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        return await asyncio.to_thread(self._generate_locked, list(prefixes), n, params)

    def _generate_locked(
        self, prefixes: list[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        # Concurrent calls with the same sampling parameters share one generate (see
        # policies/batching.py); a lone call runs as it is.
        items = self._coalescer.run(
            [(p, i) for i, p in enumerate(prefixes)], (n, params.model_dump_json())
        )
        steps = [it[0] for it in items]
        prompt = sum(it[1] for it in items)
        generated = sum(
            s.tokens for row in steps for s in row[: 1 if params.temperature == 0 else n]
        )
        usage = Usage(
            policy_calls=1,
            policy_prompt_tokens=prompt,
            policy_generated_tokens=generated,
            policy_flops=2.0 * self.num_parameters * (prompt + generated),
            seconds=max((it[2] for it in items), default=0.0),
        )
        return PolicyResult(steps=steps, usage=usage)

    def _generate_sync(
        self, prefixes: list[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        """One batched generate for ``prefixes`` (no locking, no coalescing)."""
        items = self._generate_items(
            [(p, i) for i, p in enumerate(prefixes)], (n, params.model_dump_json())
        )
        prompt = sum(it[1] for it in items)
        generated = sum(
            s.tokens for it in items for s in it[0][: 1 if params.temperature == 0 else n]
        )
        return PolicyResult(
            steps=[it[0] for it in items],
            usage=Usage(
                policy_calls=1,
                policy_prompt_tokens=prompt,
                policy_generated_tokens=generated,
                policy_flops=2.0 * self.num_parameters * (prompt + generated),
                seconds=max((it[2] for it in items), default=0.0),
            ),
        )

    def _generate_items(
        self, items: Sequence[tuple[Trajectory, int]], key: tuple[int, str]
    ) -> list[tuple[list[Step], int, float]]:
        """Per ``(prefix, its index in its caller's call)``: its n steps, the prompt tokens
        computed for it, the batch's seconds."""
        n, params = key[0], SamplingParams.model_validate_json(key[1])
        t0 = time.perf_counter()
        greedy = params.temperature == 0
        # A merged batch holds several callers' prefixes: seeds count from each caller's own
        # first prefix (``local``), so a call's samples do not depend on its batch-mates.
        prefixes = [p for p, _ in items]
        local = [i for _, i in items]
        prompts = [self._encode(p) for p in prefixes]
        # Greedy samples are identical: decode each prefix once and copy the step n times.
        copies = 1 if greedy else n
        rows = [(i, ids, j) for i, ids in enumerate(prompts) for j in range(copies)]
        order = list(range(len(rows)))
        if len(rows) > self.batch_size:  # several chunks: group similar lengths
            order.sort(key=lambda r: len(rows[r][1]))
        steps_by_row: dict[int, Step] = {}
        for c in range(0, len(order), self.batch_size):
            chunk = order[c : c + self.batch_size]
            seeds = None
            if params.seed is not None and not greedy:
                seeds = [params.seed + local[rows[r][0]] * n + rows[r][2] for r in chunk]
            steps = self._generate_chunk([rows[r][1] for r in chunk], params, seeds)
            steps_by_row.update(zip(chunk, steps, strict=True))
        out: list[list[Step]] = [[] for _ in prefixes]
        for r, (i, _, _) in enumerate(rows):
            out[i].append(steps_by_row[r])
        if greedy:
            out = [s * n for s in out]
        seconds = time.perf_counter() - t0
        return [(out[i], len(prompts[i]) * copies, seconds) for i in range(len(prefixes))]

    @torch.inference_mode()
    def _generate_chunk(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> list[Step]:
        ids, mask = pad_batch(prompts, self.pad_token_id, left=True)
        width = ids.shape[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_step_tokens,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids or None,
        }
        if params.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        elif seeds is not None:  # per-row streams; generate's argmax picks the Gumbel draw
            sampler = _SeededSampler(seeds, width, params.temperature, params.top_p)
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                          logits_processor=[sampler])  # fmt: skip
        else:
            # top_k=0 disables HF's default top-k 50: sampling is temperature + top-p only.
            kwargs.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0
            )
        stopper = None
        if params.stop_at_step:
            stopper = _StopAtDelimiter(self.tokenizer, self.step_delimiter, width)
            kwargs["stopping_criteria"] = [stopper]
        gen = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
        )
        gen = gen[:, width:].cpu().tolist()
        return [self._to_step(r, row, stopper) for r, row in enumerate(gen)]

    def _to_step(self, r: int, row: list[int], stopper: _StopAtDelimiter | None) -> Step:
        """Cut a generated row at the first delimiter / EOS and label why it ended."""
        eos_set = set(self.eos_token_ids)
        eos_at = next((k for k, t in enumerate(row) if t in eos_set), None)
        stop_len = stopper.stop_len.get(r) if stopper is not None else None
        if stop_len is not None and (eos_at is None or stop_len <= eos_at):
            length, reason = stop_len, "step"
        elif eos_at is not None:
            length, reason = eos_at + 1, "eos"
        else:
            length, reason = len(row), "length"
        text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
        finish: FinishReason = reason  # type: ignore[assignment]
        if stopper is not None:
            head, found, _ = text.partition(self.step_delimiter)
            if found:
                text, finish = head, "step"
            elif finish == "step":  # decoding the window and the whole row disagreed
                finish = "length"
        return Step(text=text, tokens=length, finish_reason=finish)
