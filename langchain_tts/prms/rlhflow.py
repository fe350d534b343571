"""The RLHFlow PRM interface on ``transformers``: each step is a chat turn judged "+" / "-".

The reference runs one forward per prefix; with causal attention one forward over the whole
conversation gives every step's score, and all trajectories share one batched forward.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from langchain_tts.core.errors import ConfigError, PRMOutputError
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.math_shepherd import Encoded, LabelTokenPRM

__all__ = ["RLHFlowPRM"]

_SLOT = "@@LANGCHAIN_TTS_PRM_REPLY@@"


class RLHFlowPRM(LabelTokenPRM):
    r"""RLHFlow: multi-turn chat, P("+") vs "-" at every assistant reply.

    Exact contract of ``RLHFlow/Llama3.1-8B-PRM-Deepseek-Data`` / ``-Mistral-Data`` (their
    ``math-rm`` inference code):

    * conversation: ``user: question + " " + step_1``, ``assistant: "+"``, ``user: step_2``,
      ``assistant: "+"``, ... -- one user/assistant pair per step, every assistant reply the
      good label; rendered with the tokenizer's chat template (``tokenize=False``) and
      tokenized without extra special tokens (the template writes ``<|begin_of_text|>``);
    * candidate ids: the last id of ``tokenizer.encode("+")`` and of
      ``tokenizer.encode("-")``;
    * score of step ``k``: ``softmax(logits[p_k, [good, bad]])[0]`` where ``p_k`` is the
      position just before the k-th assistant reply token (the reference reads ``logits[:,
      -3]`` of the conversation cut after reply ``k``: ``... <|end_header_id|> "\n\n" | "+"
      <|eot_id|>``).

    The reply positions are found without guessing the template: every assistant reply is
    first rendered as a unique sentinel, then replaced by ``"+"`` while recording its
    character offset, and the token starting at that offset (fast-tokenizer offsets) must be
    the ``"+"`` token.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kw: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("RLHFlowPRM needs a tokenizer with a chat template")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("RLHFlowPRM needs a fast tokenizer (character offsets)")
        super().__init__(model, tokenizer, **kw)

    @staticmethod
    def label_ids(tokenizer: PreTrainedTokenizerBase, good: str, bad: str) -> list[int]:
        """The last id of each label encoded alone, as the reference code takes them."""
        return [tokenizer.encode(t, add_special_tokens=False)[-1] for t in (good, bad)]

    def conversation(self, trajectory: Trajectory, reply: str | None = None) -> list[dict]:
        """The chat turns: ``question + " " + step_1``, reply, ``step_2``, reply, ..."""
        reply = self.good_token if reply is None else reply
        turns: list[dict] = []
        for k, step in enumerate(trajectory.steps):
            text = f"{trajectory.question} {step}" if k == 0 else step
            turns.append({"role": "user", "content": text})
            turns.append({"role": "assistant", "content": reply})
        return turns

    def render(self, trajectory: Trajectory) -> tuple[str, list[int]]:
        """The rendered conversation and the character offset of every assistant reply."""
        if _SLOT in trajectory.question or any(_SLOT in s for s in trajectory.steps):
            raise PRMOutputError(f"{self.name}: the text contains the reserved marker {_SLOT}")
        text = str(
            self.tokenizer.apply_chat_template(
                self.conversation(trajectory, reply=_SLOT), tokenize=False
            )
        )
        parts = text.split(_SLOT)
        if len(parts) != len(trajectory.steps) + 1:
            raise PRMOutputError(
                f"{self.name}: the chat template rendered {len(parts) - 1} assistant replies for "
                f"{len(trajectory.steps)} steps"
            )
        out, offsets = parts[0], []
        for part in parts[1:]:
            offsets.append(len(out))
            out += self.good_token + part
        return out, offsets

    def encode(self, trajectory: Trajectory) -> Encoded:
        text, offsets = self.render(trajectory)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        starts = {int(s): t for t, (s, e) in enumerate(enc["offset_mapping"]) if e > s}
        positions = []
        for k, c in enumerate(offsets):
            t = starts.get(c)
            if t is None or t == 0 or ids[t] != self.candidate_ids[0]:
                raise PRMOutputError(
                    f"{self.name}: the reply of step {k} is not tokenized as the label token "
                    f"{self.good_token!r} (id {self.candidate_ids[0]}); it merged with the "
                    "text around it, so this chat template does not fit this PRM"
                )
            positions.append(t - 1)  # the logits that predict the reply
        return ids, positions
