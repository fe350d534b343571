"""A step policy on Hugging Face ``transformers``: one batched ``generate`` per call.

Every prefix x sample becomes one row of a single left-padded ``model.generate`` call
(chunked by ``batch_size`` only when needed), so a search step costs one decoding loop
instead of ``len(prefixes) * n``. Works on CPU or GPU with any causal LM checkpoint, and
with any model exposing the same ``generate`` contract: the embedded models run on
:class:`~langchain_tts.models.native.NativeCausalLM` (no transformers import). Nothing here
imports transformers until ``from_pretrained`` is called.

Seeds: with ``SamplingParams.seed`` set, row ``j`` of prefix ``i`` of a call samples with
its own random stream, seeded ``seed + i * n + j`` as vLLM does (:mod:`.vllm`), and token
``t`` of that row uses draw ``t`` of the stream (Gumbel-max sampling,
:class:`~langchain_tts.backends.sampling.SeededSampler`).
So a seeded call returns the same samples whatever other calls share its batch: concurrent
graph runs, which the request coalescer merges, stay reproducible. Unseeded calls sample
with ``generate``'s own multinomial draw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from langchain_tts.backends.batching import item_cancel_tokens
from langchain_tts.backends.hf import (
    LocalModel,
    generate_with_prefix_cache,
    pad_batch,
    supports_prefix_reuse,
)
from langchain_tts.backends.prefix_cache import DEFAULT_PREFIX_CACHE_MB, CacheEntry, PrefixCache
from langchain_tts.backends.sampling import SeededSampler
from langchain_tts.backends.sync import run_in_worker
from langchain_tts.backends.text import (
    DEFAULT_STEP_DELIMITER,
    cut_at_delimiter,
    encode_prompt,
    prompt_text,
)
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import ConfigError, check_seed, check_unicode
from langchain_tts.core.types import FinishReason, Step, Trajectory
from langchain_tts.policies.base import PolicyResult, StepPolicy

if TYPE_CHECKING:  # transformers is imported on use: the native backend never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["HFPolicy"]


class _StopAtDelimiter:
    """Per-sequence stop once the *generated* text contains the step delimiter.

    Not HF's ``stop_strings``: the prompt itself ends with the delimiter, and a stop string
    that matches across the prompt/generation boundary (prompt ``"\\n\\n"`` + generated
    ``"\\n"``) would stop a step that contains no delimiter. Only the last few generated
    tokens are decoded each step (the delimiter is completed by the newest token), so the
    cost stays linear in the step length.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        delimiter: str,
        prompt_width: int,
        completers: torch.Tensor | None = None,
    ):
        self.tokenizer = tokenizer
        self.delimiter = delimiter
        self.prompt_width = prompt_width
        # Per token id: whether it can complete the delimiter (see delimiter_completers);
        # a row whose newest token cannot is not decoded at all.
        self.completers = completers
        # Enough tokens to hold the delimiter even with byte-level (one byte per token) pieces.
        self.window = len(delimiter.encode()) + 2
        self.stop_len: dict[int, int] = {}  # row -> generated tokens incl. the delimiter

    def __call__(
        self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any
    ) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        rows = [i for i in range(input_ids.shape[0]) if i not in self.stop_len]
        if rows and generated > 0 and self.completers is not None:
            newest = input_ids[rows, -1].clamp(0, len(self.completers) - 1).cpu()
            rows = [i for i, ok in zip(rows, self.completers[newest].tolist()) if ok]
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


class _StopCancelled:
    """Per-row stop once the row's request was cancelled (its token set): checked every
    decoding step, so a cancelled caller's rows end while a merged batch goes on for the
    others (and ``generate`` returns once every row is done)."""

    def __init__(self, tokens: Sequence[threading.Event | None]):
        self.tokens = list(tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kw: Any) -> torch.Tensor:
        flags = [t is not None and t.is_set() for t in self.tokens]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


class _StopAtRoom:
    """Ends each row at its own room: the tokens its prompt leaves of the context."""

    def __init__(self, width: int, rooms: Sequence[int]):
        self.width, self.rooms = width, torch.tensor(rooms, dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kw: Any) -> torch.Tensor:
        written = input_ids.shape[1] - self.width
        return (self.rooms <= written).to(input_ids.device)


def delimiter_completers(tokenizer: PreTrainedTokenizerBase, delimiter: str) -> torch.Tensor | None:
    """Per token id, whether the token's own text holds the delimiter's last character.

    The token that completes the delimiter in the generated text supplies its last
    character, so only rows whose newest token is such a token need decoding. Exact for an
    ASCII last character other than a space (a byte-level or byte-fallback token holding
    that byte decodes to it on its own); None (decode every row) otherwise.
    """
    last = delimiter[-1]
    if not last.isascii() or last == " ":
        return None
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([last in t for t in texts], dtype=torch.bool)


class HFPolicy(LocalModel, StepPolicy):
    """Continue many partial solutions by one step each with a ``transformers`` causal LM.

    The prompt is the tokenizer's chat template over ``[system?, user question]`` with the
    generation prompt opened (or ``question + delimiter`` when the tokenizer has no
    template), followed by the steps so far, each ending with the delimiter.

    ``num_parameters`` counts every parameter except the input embedding table (see
    :func:`~langchain_tts.backends.hf.matmul_parameters`), so ``policy_flops = 2 *
    num_parameters * tokens`` over the tokens computed.

    Prefix reuse (``prefix_cache=True``, the default): the keys/values of every prompt and
    sampled row stay in a :class:`~langchain_tts.backends.prefix_cache.PrefixCache` of at
    most ``prefix_cache_mb``, so a beam's children prefill only the tokens their parent's
    cache lacks, and the ``n`` samples of one prompt prefill it once. Cached prompt tokens
    are booked as ``policy_cached_tokens``, not computed. Seeded samples are the same with
    the cache on or off. Transformers models on a plain ``DynamicCache`` reuse the cache too
    (:func:`~langchain_tts.backends.hf.generate_with_prefix_cache`: every row prefills
    what follows the batch's shortest cached width); others run without it.
    Calls on one model are serialized by a lock and run in a
    worker thread; concurrent calls with the same sampling parameters share one generate.
    ``from_pretrained(path)`` loads a checkpoint with ``AutoModelForCausalLM``.
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
        prefix_cache: bool = True,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
    ):
        if not step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string")
        if not callable(getattr(model, "generate", None)):
            raise ConfigError(
                f"HFPolicy needs a model that generates (a causal LM), got "
                f"{type(model).__name__}; load it with AutoModelForCausalLM"
            )
        ids = tokenizer.encode(step_delimiter, add_special_tokens=False)
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and unk in ids:  # the model could never write it: no step would end
            raise ConfigError(
                f"the tokenizer has no tokens for part of step_delimiter {step_delimiter!r} (it "
                "encodes to the unknown token); pick a delimiter of text it knows, e.g. '\\n\\n'"
            )
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_token_ids: list[int] = (
            [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
        )
        self._init_local(
            model,
            tokenizer,
            device=device,
            batch_size=batch_size,
            name=name,
            eos_token_ids=self.eos_token_ids,
        )
        self.step_delimiter = step_delimiter
        self.system_prompt = system_prompt
        if prefix_cache_mb <= 0:
            raise ConfigError(f"prefix_cache_mb must be > 0, got {prefix_cache_mb}")
        #: the KV cache carried between calls (None: off, or the model cannot take one)
        self.prefix_cache: PrefixCache | None = None
        self._completers: tuple[torch.Tensor | None] | None = None  # computed on first use
        native = getattr(model, "supports_prefix_cache", False)
        self._native_cache = bool(native)
        if prefix_cache and (native or supports_prefix_reuse(model)):
            self.prefix_cache = PrefixCache(prefix_cache_mb * 2**20)

    # -- prompts ----------------------------------------------------------------------------
    def render_prompt(self, prefix: Trajectory) -> str:
        """Chat-templated question + the steps so far (each ending with the delimiter)."""
        return prompt_text(self.tokenizer, prefix, self.system_prompt, self.step_delimiter)

    def clear_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def encode(self, prefix: Trajectory) -> list[int]:
        """Token ids of the prompt of ``prefix``."""
        return encode_prompt(self.tokenizer, self.render_prompt(prefix))

    def prompt_tokens_bound(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> int | None:
        """The prompt tokens a call computes at most, whatever the cache holds: each row's
        prompt; with the native runtime's cache, each distinct prompt once per batch chunk
        its copies can span (cache hits are not credited: a concurrent call may evict them
        before this one runs; the ledger books what the call really computed)."""
        lengths = self._prompt_rows(prefixes, n, params)
        if self.prefix_cache is None or not self._native_cache:  # a prefill per row
            return sum(len(ids) * rows for ids, rows in lengths.items())
        return sum(len(ids) * self._spans(rows) for ids, rows in lengths.items())

    def _prompt_rows(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> dict[tuple[int, ...], int]:
        """Each distinct prompt's token ids and the rows that decode from it (greedy: one
        per prefix, the step copied ``n`` times)."""
        copies = 1 if params.temperature == 0 else n
        rows: dict[tuple[int, ...], int] = {}
        for p in prefixes:
            ids = tuple(self.encode(p))
            rows[ids] = rows.get(ids, 0) + copies
        return rows

    def _spans(self, rows: int) -> int:
        """Batch chunks ``rows`` side-by-side copies of one prompt can span (each prefills
        what the cache does not hold)."""
        return min(rows, -(-rows // self.batch_size) + 1)

    @property
    def reuses_prefixes(self) -> bool:
        # only the native runtime's cache is credited call by call (lease_prompt_tokens);
        # the transformers path cuts every row of a batch at their shortest shared hit
        return self.prefix_cache is not None and self._native_cache

    def lease_prompt_tokens(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> tuple[int | None, Callable[[], None]]:
        """With the native runtime's cache: each distinct prompt's tokens beyond the cached
        prefix it shares with an entry, once per batch chunk its copies can span; the entry
        is pinned (not evicted) until ``release()``, so the call finds at least that prefix.
        Otherwise :meth:`prompt_tokens_bound`, crediting nothing."""
        cache = self.prefix_cache
        if cache is None or not self._native_cache:
            return super().lease_prompt_tokens(prefixes, n, params)
        lengths = self._prompt_rows(prefixes, n, params)
        pinned: list[CacheEntry] = []
        tokens = 0
        for ids, rows in lengths.items():
            entry, hit = cache.pin(ids, len(ids) - 1)  # the prefill computes >= 1 token
            if entry is not None:
                pinned.append(entry)
            tokens += (len(ids) - hit) * self._spans(rows)

        def release() -> None:
            for entry in pinned:
                cache.unpin(entry)

        return tokens, release

    # -- generation -------------------------------------------------------------------------
    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        # Client mistakes fail here, typed, before the call joins a batch shared with others.
        check_seed(params.seed, len(prefixes) * n)
        for text in {t for p in prefixes for t in (p.question, *p.steps)}:
            check_unicode(text, "the question or a step")
        return await run_in_worker(self._generate_locked, list(prefixes), n, params)

    def _generate_locked(
        self, prefixes: list[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        # Concurrent calls with the same sampling parameters share one generate (see
        # backends/batching.py); a lone call runs as it is. The seed is each item's own
        # (its rows draw from their own streams), so runs that differ only in their seeds
        # batch together; seeded and unseeded calls do not.
        shared = params.model_copy(update={"seed": None if params.seed is None else 0})
        items = self._coalescer.run(
            [(p, i, params.seed) for i, p in enumerate(prefixes)], (n, shared.model_dump_json())
        )
        steps = [it[0] for it in items]
        computed = sum(it[1] for it in items)
        cached = sum(it[2] for it in items)
        generated = sum(
            s.tokens for row in steps for s in row[: 1 if params.temperature == 0 else n]
        )
        seconds = max((it[3] for it in items), default=0.0)
        usage = self._call_usage(computed + cached, generated, cached=cached, seconds=seconds)
        return PolicyResult(steps=steps, usage=usage)

    def _run_items(
        self, items: Sequence[tuple[Trajectory, int, int | None]], key: tuple[int, str]
    ) -> list[tuple[list[Step], int, int, float]]:
        """Per ``(prefix, its index in its caller's call, its caller's seed)``: its n steps,
        the prompt tokens computed for it and read from the prefix cache, the batch's
        seconds."""
        n, params = key[0], SamplingParams.model_validate_json(key[1])
        t0 = time.perf_counter()
        greedy = params.temperature == 0
        # A merged batch holds several callers' prefixes: seeds count from each caller's own
        # first prefix (``local``), so a call's samples do not depend on its batch-mates.
        prefixes = [p for p, _, _ in items]
        local = [i for _, i, _ in items]
        item_seeds = [seed for _, _, seed in items]
        prompts = [self.encode(p) for p in prefixes]
        # Greedy samples are identical: decode each prefix once and copy the step n times.
        copies = 1 if greedy else n
        rows = [(i, ids, j) for i, ids in enumerate(prompts) for j in range(copies)]
        order = list(range(len(rows)))
        if len(rows) > self.batch_size:  # several chunks: group similar lengths, and copies
            # of one prompt side by side (prefilled once per chunk: see prompt_tokens_bound)
            order.sort(key=lambda r: (len(rows[r][1]), rows[r][1]))
        steps_by_row: dict[int, Step] = {}
        computed, cached = [0] * len(prefixes), [0] * len(prefixes)
        tokens = item_cancel_tokens(len(items))  # per item: its caller's cancellation
        for c in range(0, len(order), self.batch_size):
            chunk = order[c : c + self.batch_size]
            row_tokens = [tokens[rows[r][0]] for r in chunk]
            if all(t is not None and t.is_set() for t in row_tokens):  # nobody waits for it
                steps_by_row.update((r, Step(text="", finish_reason="length")) for r in chunk)
                continue
            seeds = None
            if params.seed is not None and not greedy:
                seeds = [item_seeds[rows[r][0]] + local[rows[r][0]] * n + rows[r][2] for r in chunk]
            steps, counts = self._generate_chunk(
                [rows[r][1] for r in chunk], params, seeds, row_tokens
            )
            steps_by_row.update(zip(chunk, steps, strict=True))
            for r, (done, read) in zip(chunk, counts, strict=True):
                computed[rows[r][0]] += done
                cached[rows[r][0]] += read
        out: list[list[Step]] = [[] for _ in prefixes]
        for r, (i, _, _) in enumerate(rows):
            out[i].append(steps_by_row[r])
        if greedy:
            out = [s * n for s in out]
        seconds = time.perf_counter() - t0
        return [(out[i], computed[i], cached[i], seconds) for i in range(len(prefixes))]

    @torch.inference_mode()
    def _generate_chunk(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seeds: list[int] | None = None,
        cancel: Sequence[threading.Event | None] | None = None,
    ) -> tuple[list[Step], list[tuple[int, int]]]:
        """The steps of one ``generate`` and, per row, ``(prompt tokens computed, read from
        the prefix cache)``; a row whose ``cancel`` token is set stops decoding."""
        # Each row's own room: past the model's positions it writes noise, or fails. Rows
        # read their own positions (from the mask), so a long batch-mate takes none of it.
        rooms = [params.max_step_tokens] * len(prompts)
        if self.context_length:
            rooms = [min(r, self.context_length - len(p)) for r, p in zip(rooms, prompts)]
        if min(rooms) <= 0:  # those prefixes fill the context: nothing more can be written
            return self._generate_live(prompts, rooms, params, seeds, cancel)
        ids, mask = pad_batch(prompts, self.pad_token_id, left=True)
        width = ids.shape[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(rooms),
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids or None,
        }
        if params.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        elif seeds is not None:  # per-row streams; generate's argmax picks the Gumbel draw
            sampler = SeededSampler(seeds, width, params.temperature, params.top_p)
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                          logits_processor=[sampler])  # fmt: skip
        else:
            # top_k=0 disables HF's default top-k 50: sampling is temperature + top-p only.
            kwargs.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0
            )
        stopper = None
        if params.stop_at_step:
            if self._completers is None:
                self._completers = (delimiter_completers(self.tokenizer, self.step_delimiter),)
            stopper = _StopAtDelimiter(
                self.tokenizer, self.step_delimiter, width, self._completers[0]
            )
            kwargs["stopping_criteria"] = [stopper]
        if min(rooms) < max(rooms):  # a long prefix's row stops at its own room
            kwargs["stopping_criteria"] = [*kwargs.get("stopping_criteria", []),
                                           _StopAtRoom(width, rooms)]  # fmt: skip
        if cancel is not None and any(t is not None for t in cancel):
            kwargs["stopping_criteria"] = [*kwargs.get("stopping_criteria", []),
                                           _StopCancelled(cancel)]  # fmt: skip
        counts = [(len(p), 0) for p in prompts]
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self.prefix_cache is None:
            gen = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        elif self._native_cache:
            kwargs["prefix_cache"] = self.prefix_cache
            gen = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        else:
            gen = generate_with_prefix_cache(self.model, ids, mask, self.prefix_cache, **kwargs)
        if self.prefix_cache is not None:
            counts = self.prefix_cache.last_rows
        gen = gen[:, width:].cpu().tolist()
        steps = [self._to_step(r, row[: rooms[r]], stopper) for r, row in enumerate(gen)]
        return steps, counts

    def _generate_live(
        self,
        prompts: list[list[int]],
        rooms: list[int],
        params: SamplingParams,
        seeds: list[int] | None,
        cancel: Sequence[threading.Event | None] | None,
    ) -> tuple[list[Step], list[tuple[int, int]]]:
        """:meth:`_generate_chunk` of the rows with room left; the others write nothing."""
        live = [r for r, room in enumerate(rooms) if room > 0]
        steps = [Step(text="", finish_reason="length") for _ in prompts]
        counts = [(0, 0) for _ in prompts]
        if live:
            pick = lambda xs: None if xs is None else [xs[r] for r in live]  # noqa: E731
            got, done = self._generate_chunk([prompts[r] for r in live], params,
                                             pick(seeds), pick(cancel))  # fmt: skip
            for r, step, count in zip(live, got, done, strict=True):
                steps[r], counts[r] = step, count
        return steps, counts

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
            text, finish, found = cut_at_delimiter(text, finish, self.step_delimiter)
            if not found and finish == "step":  # decoding the window and the whole row disagreed
                finish = "length"
        return Step(text=text, tokens=length, finish_reason=finish)
