"""The shared loop of the in-process PRMs: encode, one right-padded forward per chunk, read out.

Every trajectory with steps is encoded to token ids (plus what its read-out needs); the
encodings are sorted by length and scored ``batch_size`` at a time, so similar lengths share
a chunk. Right padding keeps every real token at the position it has when scored alone and
causal attention never looks at the padding, so a batched score equals the unbatched one;
that is also why concurrent calls can share one forward (the request coalescer).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from langchain_tts.backends.hf import LocalModel
from langchain_tts.backends.sync import run_in_worker
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

__all__ = ["Encoded", "LocalPRM"]

#: token ids of one PRM input, and what the read-out needs (positions, owners, ...)
Encoded = tuple[list[int], Any]


class LocalPRM(LocalModel, ProcessRewardModel):
    """A PRM on an in-process model: subclasses say how to encode and how to score a chunk.

    ``num_parameters`` counts every parameter but the input embedding (``prm_flops = 2 *
    num_parameters * tokens``). Calls on one model are serialized and run in a worker thread.
    """

    merge = 8

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

    def _score_coalesced(self, trajectories: list[Trajectory]) -> PRMResult:
        items = self._coalescer.run(trajectories, None)
        seconds = max((it[2] for it in items), default=0.0)
        usage = self._call_usage(sum(it[1] for it in items), seconds)
        return PRMResult(scores=[it[0] for it in items], usage=usage)

    @torch.inference_mode()
    def _run_items(
        self, trajectories: list[Trajectory], _key: object = None
    ) -> list[tuple[list[float], int, float]]:
        """Per trajectory: its step scores, its tokens, the batch's seconds."""
        t0 = time.perf_counter()
        scores: list[list[float]] = [[] for _ in trajectories]
        lengths = [0] * len(trajectories)
        # Trajectories without steps have nothing to score and never enter the batch.
        todo = [(i, self._encoded(t)) for i, t in enumerate(trajectories) if t.steps]
        todo.sort(key=lambda item: len(item[1][0]))  # similar lengths share a chunk
        for c in range(0, len(todo), self.batch_size):
            chunk = todo[c : c + self.batch_size]
            rows = self._score_chunk([trajectories[i] for i, _ in chunk], [e for _, e in chunk])
            for (i, enc), row in zip(chunk, rows, strict=True):
                scores[i], lengths[i] = row, len(enc[0])
        seconds = time.perf_counter() - t0
        return [(scores[i], lengths[i], seconds) for i in range(len(trajectories))]
