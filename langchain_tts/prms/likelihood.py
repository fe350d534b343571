"""A verifier from any causal language model: how likely it finds each step.

It needs no PRM training, and it helps when the model knows other things than the sampling
policy (a larger model judging a smaller one's samples).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from langchain_tts.backends.hf import pad_batch
from langchain_tts.backends.text import (
    DEFAULT_STEP_DELIMITER,
    encode_prompt,
    plain_text,
    prompt_head,
)
from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.local import Encoded, LocalPRM

if TYPE_CHECKING:  # imported on use: the native backend (models/native.py) never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LikelihoodPRM"]


class LikelihoodPRM(LocalPRM):
    """Step scores from a causal LM's token log-probabilities (one forward per chunk).

    ``LikelihoodPRM(model, tokenizer)`` renders the question and the steps the way a policy
    reads them (chat template, steps joined by the delimiter), runs one teacher-forced
    forward, and scores step ``j`` with ``exp(min log-prob)`` over the tokens of steps
    ``1..j``: the least likely token so far. The score is cumulative, as P(all steps so far
    are right) is for a Qwen-style PRM, so ``aggregation="last"`` (the default) judges the
    whole solution.

    It is useful when the model knows *other things* than the sampling policy: on the embedded
    task, picking among 16 samples of the small policy by the large policy's likelihood gives
    67.5% against greedy CoT's 61.2%, while picking by the small policy's own likelihood gives
    60.0% (it shares the sampler's beliefs; see ``python -m research.diagnose``).
    ``num_parameters`` counts the model's matmul parameters, so its FLOPs are ``2 *
    num_parameters * tokens`` like any PRM's.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        system_prompt: str | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        name: str | None = None,
    ):
        if not step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string")
        self._init_local(model, tokenizer, device=device, batch_size=batch_size, name=name)
        self.step_delimiter = step_delimiter
        self.system_prompt = system_prompt

    def encode(self, trajectory: Trajectory) -> tuple[list[int], list[int]]:
        """Token ids, and for each token after the head the index of the step it belongs to
        (the delimiter after a step counts with that step; -1 for the head)."""
        head = prompt_head(
            self.tokenizer, trajectory.question, self.system_prompt, self.step_delimiter
        )
        ids = encode_prompt(self.tokenizer, head)
        owner = [-1] * len(ids)
        for j, step in enumerate(trajectory.steps):
            text = plain_text(self.tokenizer, step)
            text += self.step_delimiter if j < len(trajectory.steps) - 1 else ""
            piece = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            owner += [j] * len(piece)
        return ids, owner

    def _encoded(self, trajectory: Trajectory) -> Encoded:
        return self.encode(trajectory)

    def _reads_hidden(self) -> bool:
        return self.model.get_output_embeddings() is not None  # log-probs from the LM head

    def _score_chunk(
        self, trajectories: list[Trajectory], encoded: list[Encoded]
    ) -> list[list[float]]:
        logps = self._token_logprobs([ids for ids, _ in encoded])
        return [
            _cumulative_min(lp, owner, len(t.steps))
            for t, (_, owner), lp in zip(trajectories, encoded, logps, strict=True)
        ]

    def _token_logprobs(self, seqs: list[list[int]]) -> list[list[float]]:
        """log P(token t | tokens < t) for t >= 1 of each sequence (right padding)."""
        ids, mask = pad_batch(seqs, self.pad_token_id)
        hidden = self._cached_hidden(seqs)
        if hidden is not None:  # a native causal LM: its LM head on the (reused) states
            logits = self.model.get_output_embeddings()(hidden)
        else:
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            logits = out.logits
        logp = logits.float().log_softmax(-1)[:, :-1]
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
