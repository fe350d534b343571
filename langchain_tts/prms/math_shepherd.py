"""The Math-Shepherd PRM interface on ``transformers``: P("+") at every step tag ``ки``.

Also home of :class:`CausalLMPRM`, the shared machinery of the decoder-based PRMs
(Math-Shepherd, RLHFlow, Skywork).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from langchain_tts.backends.hf import pad_batch
from langchain_tts.backends.text import plain_text
from langchain_tts.core.errors import ConfigError, PRMOutputError
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.local import LocalPRM

__all__ = ["CausalLMPRM", "LabelTokenPRM", "MathShepherdPRM", "label_token_ids", "lm_head_logits"]

Encoded = tuple[list[int], list[int]]  # token ids, one read-out position per step


def label_token_ids(tokenizer: PreTrainedTokenizerBase, good: str, bad: str) -> list[int]:
    """Token ids of the good/bad labels, as the reference implementations derive them."""
    ids = tokenizer.encode(f"{good} {bad}", add_special_tokens=False)
    ids = [i for i in ids if tokenizer.decode([i]).strip()]  # drop a lone-space piece
    if len(ids) == 2:
        return ids
    pair = [tokenizer.encode(t, add_special_tokens=False) for t in (good, bad)]
    if not all(pair) or pair[0][-1] == pair[1][-1]:
        raise ConfigError(
            f"cannot find single tokens for the labels {good!r} / {bad!r} in this tokenizer; "
            "pass candidate_token_ids=[good_id, bad_id]"
        )
    return [pair[0][-1], pair[1][-1]]


def lm_head_logits(
    model: torch.nn.Module, hidden: torch.Tensor, token_ids: list[int]
) -> torch.Tensor:
    """``model``'s LM-head logits of ``token_ids`` for ``hidden`` ([k, H] -> [k, len(ids)]).

    Equal to ``model(...).logits[..., token_ids]`` at those positions (logit scaling and
    final soft-capping, where the config has them, are applied too).
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ConfigError(f"{type(model).__name__} has no LM head; load it as a causal LM")
    idx = torch.tensor(token_ids, device=head.weight.device)
    w = head.weight.index_select(0, idx).float()
    logits = hidden.float().to(w.device) @ w.T
    bias = getattr(head, "bias", None)
    if bias is not None:
        logits = logits + bias.index_select(0, idx).float()
    cfg = getattr(model, "config", None)
    scale = getattr(cfg, "logit_scale", None)
    if isinstance(scale, (int, float)):
        logits = logits * scale
    cap = getattr(cfg, "final_logit_softcapping", None)
    if isinstance(cap, (int, float)) and cap > 0:
        logits = torch.tanh(logits / cap) * cap
    return logits


class CausalLMPRM(LocalPRM):
    """Decoder PRM base: encode -> one batched forward of the body -> read-out per step.

    ``from_pretrained`` loads with ``AutoModelForCausalLM`` (e.g.
    ``peiyi9979/math-shepherd-mistral-7b-prm`` for :class:`MathShepherdPRM`,
    ``RLHFlow/Llama3.1-8B-PRM-Deepseek-Data`` for :class:`~langchain_tts.prms.rlhflow.RLHFlowPRM`).

    The shared machinery of the decoder-based PRMs (Math-Shepherd, RLHFlow, Skywork): every
    trajectory is encoded to token ids plus one read-out position per step, all trajectories
    go through **one** right-padded forward of the model body (chunked by ``batch_size`` only
    when needed), and only the hidden states at the read-out positions are projected -- onto
    the two candidate rows of the LM head here, so a 32k-128k vocabulary is never materialised
    for every token.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        name: str | None = None,
    ):
        self._init_local(model, tokenizer, device=device, batch_size=batch_size, name=name)

    # -- the format: subclasses define these ----------------------------------------------
    @abstractmethod
    def encode(self, trajectory: Trajectory) -> Encoded:
        """Token ids of the PRM input and the position whose output scores each step."""

    @abstractmethod
    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states at the read-out positions [k, H] -> P(step correct) [k]."""

    def body(self) -> torch.nn.Module:
        """The transformer without its head (``base_model`` of a ``*ForCausalLM``)."""
        body = getattr(self.model, "base_model", None)
        return body if isinstance(body, torch.nn.Module) else self.model

    # -- scoring ----------------------------------------------------------------------------
    def _encoded(self, trajectory: Trajectory) -> Encoded:
        ids, pos = self.encode(trajectory)
        if len(pos) != len(trajectory.steps):
            raise PRMOutputError(
                f"{self.name}: the encoded input has {len(pos)} score positions for "
                f"{len(trajectory.steps)} steps; the tokenizer merged or split a step tag "
                "(check the tag/label tokens of this PRM)."
            )
        return ids, pos

    def _reads_hidden(self) -> bool:
        return True  # every read-out here is on the body's final hidden states

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, T, H] of the body (after its final norm)."""
        out = self.body()(input_ids=input_ids, attention_mask=attention_mask)
        hidden = getattr(out, "last_hidden_state", None)
        return hidden if hidden is not None else out[0]

    def _score_chunk(
        self, trajectories: list[Trajectory], encoded: list[Encoded]
    ) -> list[list[float]]:
        seqs = [seq for seq, _ in encoded]
        hidden = self._cached_hidden(seqs)  # through the prefix cache, where it can
        if hidden is None:
            ids, mask = pad_batch(seqs, self.pad_token_id)
            hidden = self.hidden_states(ids.to(self.device), mask.to(self.device))
        rows = torch.cat(
            [torch.full((len(p),), r, dtype=torch.long) for r, (_, p) in enumerate(encoded)]
        )
        cols = torch.tensor([q for _, p in encoded for q in p], dtype=torch.long)
        probs = self.readout(hidden[rows.to(hidden.device), cols.to(hidden.device)])
        flat = probs.float().cpu().tolist()
        out, k = [], 0
        for _, p in encoded:
            out.append(flat[k : k + len(p)])
            k += len(p)
        return out


class LabelTokenPRM(CausalLMPRM):
    """A causal LM read as a judge: at each read-out position, P(good label) against the bad
    label from the two LM-head rows (``candidate_token_ids``, else derived by
    :meth:`label_ids` from ``good_token`` / ``bad_token``)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        good_token: str = "+",
        bad_token: str = "-",
        candidate_token_ids: Sequence[int] | None = None,
        **kw: Any,
    ):
        super().__init__(model, tokenizer, **kw)
        if candidate_token_ids is None:
            candidate_token_ids = self.label_ids(tokenizer, good_token, bad_token)
        ids = [int(i) for i in candidate_token_ids]
        if len(ids) != 2 or ids[0] == ids[1]:
            raise ConfigError(f"candidate_token_ids must be [good_id, bad_id], got {ids}")
        self.good_token = good_token
        self.candidate_ids = ids

    @staticmethod
    def label_ids(tokenizer: PreTrainedTokenizerBase, good: str, bad: str) -> list[int]:
        return label_token_ids(tokenizer, good, bad)

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        return lm_head_logits(self.model, hidden, self.candidate_ids).softmax(-1)[:, 0]


class MathShepherdPRM(LabelTokenPRM):
    r"""Math-Shepherd: a causal LM read at every ``ки``; score = P("+") vs "-".

    Exact contract of ``peiyi9979/math-shepherd-mistral-7b-prm`` (its model card):

    * input text: ``f"{question} {step_1} ки\n{step_2} ки\n...{step_n} ки"``, i.e. the
      question, one space, then the steps joined by ``"\n"``, each followed by ``" ки"``;
      tokenized with the tokenizer's special tokens (BOS for Mistral). A ``ки`` inside a
      step's text is removed;
    * step tag id: the last id of ``tokenizer.encode("ки")`` (12902 for Mistral);
    * candidate ids: ``tokenizer.encode("+ -")`` without BOS (``[648, 387]`` for Mistral), or
      the last id of ``"+"`` and of ``"-"`` encoded separately when the pair does not give two
      ids;
    * score of step ``k``: ``softmax(logits[tag_k, [good, bad]])[0]``, the LM's probability of
      ``+`` (vs ``-``) as the token after the k-th tag.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        step_tag: str = "ки",
        step_separator: str = "\n",
        **kw: Any,
    ):
        super().__init__(model, tokenizer, **kw)
        tag_ids = tokenizer.encode(step_tag, add_special_tokens=False)
        # the tag's own token is the last (a SentencePiece tokenizer may put a word-start
        # piece before it); a tag cut into bytes would be read at a byte other text shares
        whole = bool(tag_ids) and tokenizer.decode(tag_ids[-1:]).strip() == step_tag.strip()
        if not whole or tokenizer.convert_ids_to_tokens(tag_ids[-1]) == tokenizer.unk_token:
            raise ConfigError(
                f"the tokenizer has no token for the step tag {step_tag!r} (it encodes as "
                f"{tag_ids}); pass the tag this PRM was trained with via step_tag=..., or add "
                "it to the tokenizer"
            )
        self.step_tag = step_tag
        self.step_tag_id = int(tag_ids[-1])
        self.step_separator = step_separator

    def render(self, trajectory: Trajectory) -> str:
        """``"{question} {step_1} ки\\n{step_2} ки..."`` (tags inside steps removed)."""
        tok = self.tokenizer  # special tokens' texts stay text (plain_text)
        steps = [plain_text(tok, s.replace(self.step_tag, "").strip()) for s in trajectory.steps]
        body = self.step_separator.join(f"{s} {self.step_tag}" for s in steps)
        return f"{plain_text(tok, trajectory.question)} {body}"

    def encode(self, trajectory: Trajectory) -> Encoded:
        ids = list(self.tokenizer(self.render(trajectory))["input_ids"])
        pos = [k for k, t in enumerate(ids) if t == self.step_tag_id]
        # A tag-like token inside the question (Russian text) precedes the steps' tags.
        return ids, pos[len(pos) - len(trajectory.steps) :] if len(pos) > len(
            trajectory.steps
        ) else pos
