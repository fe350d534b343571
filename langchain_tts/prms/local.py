"""The shared loop of the in-process PRMs: encode, one right-padded forward per chunk, read out.

Right padding keeps every real token at the position it has when scored alone, so a batched
score equals the unbatched one and concurrent calls can share one forward.
"""

from __future__ import annotations

import time
import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from langchain_tts.backends.hf import LocalModel
from langchain_tts.backends.sync import run_in_worker
from langchain_tts.core.errors import InputError
from langchain_tts.core.types import Trajectory, Usage, nothing_to_release
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

if TYPE_CHECKING:
    from langchain_tts.backends.scoring_cache import ScoringCache

__all__ = ["Encoded", "LocalPRM"]

#: step scores through the cache may differ from a plain forward's by float rounding (left
#: vs right padding, bf16); a forward that ignores the cache is off by far more
INCREMENTAL_TOLERANCE = 2e-2


#: token ids of one PRM input, and what the read-out needs (positions, owners, ...)
Encoded = tuple[list[int], Any]


class LocalPRM(LocalModel, ProcessRewardModel):
    """A PRM on an in-process model: subclasses say how to encode and how to score a chunk.

    ``num_parameters`` counts every parameter but the input embedding (``prm_flops = 2 *
    num_parameters * tokens``). Calls on one model are serialized and run in a worker thread.

    Every trajectory with steps is encoded to token ids (plus what its read-out needs); the
    encodings are sorted by length and scored ``batch_size`` at a time, so similar lengths
    share a chunk.

    A :class:`~langchain_tts.backends.scoring_cache.ScoringCache` makes scoring
    incremental: a child that is its parent plus one step computes only the new step's
    tokens (``cache_tokens`` bounds it; ``0`` turns it off). Tokens read from the cache are
    booked as ``prm_cached_tokens``, only computed ones as ``prm_tokens`` / ``prm_flops``.
    On a transformers model (a decoder body on a full-attention ``DynamicCache``) the first
    scores read from the cache are checked against a plain forward once; a model whose
    scores differ (a remote-code forward that ignores the cache, a read-out that is not the
    documented head) scores every token from then on, with a warning.
    """

    merge = 8
    #: tokens the prefix cache holds (0: every token is computed). A token costs
    #: ``(2 x layers x kv_heads x head_dim + hidden)`` values: 4.6 KB on the embedded PRMs
    #: (~150 MB when full); on a 7B Qwen2.5 PRM in bf16 about 64 KB (2 GB when full).
    cache_tokens: int = 32_768
    _prefix_cache: ScoringCache | None = None
    _counts: tuple[list[int], list[int]] | None = None
    #: transformers models: None until the first cached scores are checked, then whether
    #: they matched a plain forward
    _incremental_ok: bool | None = None

    @abstractmethod
    def _encoded(self, trajectory: Trajectory) -> Encoded:
        """The input of one trajectory (it has at least one step)."""

    @abstractmethod
    def _score_chunk(
        self, trajectories: list[Trajectory], encoded: list[Encoded]
    ) -> list[list[float]]:
        """One forward over a chunk: the step scores of each trajectory."""

    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        return await run_in_worker(self._score_coalesced, list(trajectories))

    def tokens_bound(self, trajectories: Sequence[Trajectory]) -> int | None:
        """Every input's tokens: what a call computes with nothing cached (cache hits are
        not credited: a concurrent call may evict them first; the ledger books what the call
        really computed). None when an input does not encode (the call itself says why)."""
        try:
            return sum(len(self._encoded(t)[0]) for t in trajectories if t.steps)
        except Exception:
            return None

    @property
    def reuses_prefixes(self) -> bool:
        # as lease_tokens credits the cache: the native body, or a checked transformers one
        from langchain_tts.backends.scoring_cache import incremental_body

        if self.prefix_cache() is None:
            return False
        return incremental_body(self.model) is not None or self._incremental_ok is True

    def lease_tokens(
        self, trajectories: Sequence[Trajectory]
    ) -> tuple[int | None, Callable[[], None]]:
        """Where scoring is surely incremental (the native runtime's body, or a transformers
        body whose cached scores were checked and whose window holds every input): each
        input's tokens past its longest cached prefix, that entry pinned until ``release()``,
        so the call finds at least that prefix. Otherwise :meth:`tokens_bound`."""
        cache = self.prefix_cache()
        try:
            seqs = [self._encoded(t)[0] for t in trajectories if t.steps]
        except Exception:
            return None, nothing_to_release
        if cache is None or not seqs or not self._credits_cache(max(map(len, seqs))):
            return sum(map(len, seqs)), nothing_to_release
        pinned = []
        tokens = 0
        for ids in seqs:
            hit, entry = cache.pin(ids)
            if entry is not None:
                pinned.append(entry)
            tokens += len(ids) - hit

        def release() -> None:
            for entry in pinned:
                cache.unpin(entry)

        return tokens, release

    def _credits_cache(self, longest: int) -> bool:
        from langchain_tts.backends.scoring_cache import TransformersBody, incremental_body

        if incremental_body(self.model) is not None:
            return True
        body = self._transformers_body()
        return (
            self._incremental_ok is True and isinstance(body, TransformersBody)
            and body.holds(longest)
        )  # fmt: skip

    def _score_coalesced(self, trajectories: list[Trajectory]) -> PRMResult:
        items = self._coalescer.run(trajectories, None)
        for it in items:  # this caller's own input error (its batch-mates got their scores)
            if isinstance(it[0], InputError):
                raise it[0]
        seconds = max((it[3] for it in items), default=0.0)
        usage = self._call_usage(sum(it[1] for it in items), seconds) + Usage(
            prm_cached_tokens=sum(it[2] for it in items)
        )
        return PRMResult(scores=[it[0] for it in items], usage=usage)

    @torch.inference_mode()
    def _run_items(
        self, trajectories: list[Trajectory], _key: object = None
    ) -> list[tuple[list[float], int, int, float]]:
        """Per trajectory: its step scores, its computed and cached tokens, the batch's
        seconds."""
        t0 = time.perf_counter()
        scores: list[list[float]] = [[] for _ in trajectories]
        computed = [0] * len(trajectories)
        cached = [0] * len(trajectories)
        # Trajectories without steps have nothing to score and never enter the batch, nor
        # do those past the model's positions (noise past them, or an IndexError).
        todo = [(i, self._encoded(t)) for i, t in enumerate(trajectories) if t.steps]
        too_long = {i: self._too_long(trajectories[i], len(e[0])) for i, e in todo}
        todo = [item for item in todo if too_long[item[0]] is None]
        todo.sort(key=lambda item: len(item[1][0]))  # similar lengths share a chunk
        for c in range(0, len(todo), self.batch_size):
            chunk = todo[c : c + self.batch_size]
            self._counts = None
            trajs, encs = [trajectories[i] for i, _ in chunk], [e for _, e in chunk]
            rows = self._score_chunk(trajs, encs)
            counts = self._counts or ([len(e[0]) for _, e in chunk], [0] * len(chunk))
            if self._incremental_ok is None and any(counts[1]) and self._transformers_body():
                rows, counts = self._check_incremental(trajs, encs, rows, counts)
            for k, ((i, _), row) in enumerate(zip(chunk, rows, strict=True)):
                scores[i], computed[i], cached[i] = row, counts[0][k], counts[1][k]
        seconds = time.perf_counter() - t0
        return [
            (too_long.get(i) or scores[i], computed[i], cached[i], seconds)
            for i in range(len(trajectories))
        ]

    def _too_long(self, trajectory: Trajectory, tokens: int) -> InputError | None:
        limit = self.context_length
        if not limit or tokens <= limit:
            return None
        return InputError(
            f"{self.name}: a trajectory to score is {tokens} tokens (its question and "
            f"{len(trajectory.steps)} steps), over the PRM's context of {limit} tokens; shorten "
            "the question or cap the solution (max_total_tokens), or use a PRM with a longer "
            "context"
        )

    # -- prefix reuse -----------------------------------------------------------------------
    def clear_cache(self) -> None:
        if self._prefix_cache is not None:
            self._prefix_cache.clear()

    def prefix_cache(self) -> ScoringCache | None:
        """The cache of this PRM's scored prefixes, or None where scoring is not incremental
        (``cache_tokens == 0``, a model without a body that can continue a cache, or a
        transformers model whose cached scores did not match a plain forward)."""
        from langchain_tts.backends.scoring_cache import ScoringCache

        if self.cache_tokens <= 0 or self._incremental_ok is False or not self._reads_hidden():
            return None
        if self._scoring_body() is None:
            return None
        if self._prefix_cache is None or self._prefix_cache.max_tokens != self.cache_tokens:
            self._prefix_cache = ScoringCache(self.cache_tokens)
        return self._prefix_cache

    def _scoring_body(self) -> Any:
        """The body the cache continues: the native runtime's, else a transformers one."""
        from langchain_tts.backends.scoring_cache import incremental_body

        native = incremental_body(self.model)
        return native if native is not None else self._transformers_body()

    def _transformers_body(self) -> Any:
        from langchain_tts.backends.scoring_cache import transformers_body

        return transformers_body(self.model)

    def _check_incremental(
        self,
        trajectories: list[Trajectory],
        encoded: list[Encoded],
        rows: list[list[float]],
        counts: tuple[list[int], list[int]],
    ) -> tuple[list[list[float]], tuple[list[int], list[int]]]:
        """Score the chunk again without the cache and keep incremental scoring only if
        both agree (once per PRM: a transformers model's forward is not ours to read)."""
        self._incremental_ok = False  # prefix_cache() is None: a plain forward
        self._counts = None
        plain = self._score_chunk(trajectories, encoded)
        gap = max(
            (abs(a - b) for r, p in zip(rows, plain, strict=True) for a, b in zip(r, p)),
            default=0.0,
        )
        if gap <= INCREMENTAL_TOLERANCE and all(
            len(r) == len(p) for r, p in zip(rows, plain, strict=True)
        ):
            self._incremental_ok = True
            return rows, counts
        warnings.warn(
            f"{self.name}: scores read through the prefix cache differ from a plain forward "
            f"by {gap:.3g}; this PRM now computes every token (its forward or read-out does "
            "not continue a DynamicCache as transformers' own models do)",
            RuntimeWarning,
            stacklevel=2,
        )
        self.clear_cache()
        computed = [a + b for a, b in zip(*counts, strict=True)]
        return plain, (computed, [0] * len(computed))

    def _reads_hidden(self) -> bool:
        """Whether this PRM's read-out can run on the body's final hidden states (what the
        prefix cache returns)."""
        return False

    def _cached_hidden(self, seqs: list[list[int]]) -> torch.Tensor | None:
        """The final hidden states of ``seqs`` (right padded) through the prefix cache, with
        the computed / cached token counts recorded for the chunk; None without a cache."""
        cache = self.prefix_cache()
        if cache is None:
            return None
        from langchain_tts.backends.scoring_cache import (
            NotIncremental,
            TransformersBody,
            cached_hidden,
        )

        body = self._scoring_body()
        assert body is not None  # prefix_cache() checked it
        if isinstance(body, TransformersBody) and not body.holds(max(map(len, seqs))):
            return None  # longer than a sliding window keeps: this chunk computes every token
        try:
            out = cached_hidden(body, seqs, cache, self.device)
        except Exception as e:
            # Until a transformers model's cached scores have been checked, a forward that
            # cannot continue a cache (older remote code) only turns the cache off.
            unchecked = self._incremental_ok is None and isinstance(body, TransformersBody)
            if not (isinstance(e, NotIncremental) or unchecked):
                raise
            warnings.warn(
                f"{self.name}: scoring through the prefix cache failed ({type(e).__name__}: "
                f"{e}); this PRM now computes every token",
                RuntimeWarning,
                stacklevel=2,
            )
            self._incremental_ok = False
            self.clear_cache()
            return None
        self._counts = (out.computed, out.cached)
        return out.hidden
