"""A verifier from any causal language model: how likely it finds each step.

``LikelihoodPRM(model, tokenizer)`` renders the question and the steps the way a policy
reads them (chat template, steps joined by the delimiter), runs one teacher-forced forward,
and scores step ``j`` with ``exp(min log-prob)`` over the tokens of steps ``1..j``: the
least likely token so far. The score is cumulative, as P(all steps so far are right) is
for a Qwen-style PRM, so ``aggregation="last"`` (the default) judges the whole solution.

It needs no PRM training, and it is useful when the model knows *other things* than the
sampling policy: on the embedded task, picking among 16 samples of the small policy by the
large policy's likelihood gives 67.5% against greedy CoT's 61.2%, while picking by the
small policy's own likelihood gives 60.0% (it shares the sampler's beliefs; see
``python -m research.diagnose``). ``num_parameters`` counts the model's matmul
parameters, so its FLOPs are ``2 * num_parameters * tokens`` like any PRM's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import DEFAULT_STEP_DELIMITER
from langchain_tts.policies.hf import (
    load_pretrained,
    matmul_parameters,
    model_device,
    model_lock,
    pad_batch,
)
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

if TYPE_CHECKING:  # imported on use: the native backend (models/native.py) never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LikelihoodPRM"]


class LikelihoodPRM(ProcessRewardModel):
    """Step scores from a causal LM's token log-probabilities (one forward per chunk)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        system_prompt: str | None = None,
        batch_size: int = 32,
        name: str | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.step_delimiter = step_delimiter
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.device = model_device(self.model)
        self.num_parameters = matmul_parameters(self.model)
        self.name = (
            name or f"LikelihoodPRM({getattr(model.config, '_name_or_path', '') or 'model'})"
        )
        self._lock = model_lock(self.model)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, **kw: Any
    ) -> LikelihoodPRM:
        """Load a causal LM and its tokenizer with transformers (``kw`` go to the constructor)."""
        model, tokenizer = load_pretrained(path, dtype)
        kw.setdefault("name", f"LikelihoodPRM({Path(str(path)).name})")
        return cls(model, tokenizer, **kw)

    # -- rendering --------------------------------------------------------------------------
    def _head(self, question: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": question})
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(question + self.step_delimiter)["input_ids"])

    def encode(self, trajectory: Trajectory) -> tuple[list[int], list[int]]:
        """Token ids, and for each token after the head the index of the step it belongs to
        (the delimiter after a step counts with that step; -1 for the head)."""
        ids = self._head(trajectory.question)
        owner = [-1] * len(ids)
        for j, step in enumerate(trajectory.steps):
            text = step + (self.step_delimiter if j < len(trajectory.steps) - 1 else "")
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            owner += [j] * len(piece)
        return ids, owner

    # -- scoring ----------------------------------------------------------------------------
    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        return await asyncio.to_thread(self._score, list(trajectories))

    def _score(self, trajectories: list[Trajectory]) -> PRMResult:
        t0 = time.perf_counter()
        scores: list[list[float]] = [[] for _ in trajectories]
        tokens = 0
        todo = [(i, *self.encode(t)) for i, t in enumerate(trajectories) if t.steps]
        todo.sort(key=lambda item: len(item[1]))
        with self._lock:
            for c in range(0, len(todo), self.batch_size):
                chunk = todo[c : c + self.batch_size]
                logps = self._token_logprobs([ids for _, ids, _ in chunk])
                for (i, ids, owner), lp in zip(chunk, logps, strict=True):
                    scores[i] = _cumulative_min(lp, owner, len(trajectories[i].steps))
                    tokens += len(ids)
        usage = Usage(
            prm_calls=1,
            prm_tokens=tokens,
            prm_flops=2.0 * self.num_parameters * tokens,
            seconds=time.perf_counter() - t0,
        )
        return PRMResult(scores=scores, usage=usage)

    @torch.inference_mode()
    def _token_logprobs(self, seqs: list[list[int]]) -> list[list[float]]:
        """log P(token t | tokens < t) for t >= 1 of each sequence (right padding)."""
        ids, mask = pad_batch(seqs, self.pad_token_id)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        logp = logits.logits.float().log_softmax(-1)[:, :-1]
        picked = logp.gather(2, ids[:, 1:, None].to(logp.device))[..., 0].cpu()
        return [picked[r, : len(s) - 1].tolist() for r, s in enumerate(seqs)]


def _cumulative_min(logprobs: list[float], owner: list[int], n_steps: int) -> list[float]:
    """exp(min log-prob over the tokens of steps 0..j), for each step j."""
    per_step = [0.0] * n_steps  # log 1: a step with no tokens changes nothing
    for lp, j in zip(logprobs, owner[1:]):
        if j >= 0 and lp < per_step[j]:
            per_step[j] = lp
    out, running = [], 0.0
    for v in per_step:
        running = min(running, v)
        out.append(math.exp(running))
    return out
