"""The Qwen2.5-Math-PRM interface on ``transformers``: a score at every ``<extra_0>``.

The solution is rendered with the chat template as ``[system, user question, assistant
"<extra_0>".join(steps) + "<extra_0>"]``; a step's score is the class-1 probability at its
tag. The same code serves the embedded PRM, any ``*ForTokenClassification`` PRM and
``Qwen2.5-Math-PRM-7B`` (``trust_remote_code=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from langchain_tts.backends.hf import (
    check_local,
    checked_from_pretrained,
    dtype_kwargs,
    pad_batch,
)
from langchain_tts.backends.text import (
    chat_messages,
    encode_prompt,
    has_chat_template,
    plain_text,
)
from langchain_tts.core.errors import ConfigError, PRMOutputError
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.base import DEFAULT_PRM_SYSTEM_PROMPT
from langchain_tts.prms.local import Encoded, LocalPRM

if TYPE_CHECKING:  # imported on use: the native backend (models/native.py) never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["QwenPRM"]


class QwenPRM(LocalPRM):
    """Scores every step of many trajectories in one (chunked) right-padded forward.

    ``from_pretrained`` loads with ``AutoModelForTokenClassification``, else ``AutoModel``
    (remote-code PRMs such as Qwen2.5-Math-PRM, with ``trust_remote_code=True``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        step_tag: str = "<extra_0>",
        system_prompt: str | None = DEFAULT_PRM_SYSTEM_PROMPT,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        name: str | None = None,
    ):
        ids = tokenizer.encode(step_tag, add_special_tokens=False)
        tag_id = tokenizer.convert_tokens_to_ids(step_tag)
        if len(ids) != 1 or ids[0] != tag_id or tag_id == tokenizer.unk_token_id:
            raise ConfigError(
                f"The PRM tokenizer must encode the step tag {step_tag!r} as one token (got "
                f"{ids}); pass the tag this PRM was trained with via step_tag=..., or add it "
                "to the tokenizer as a special token."
            )
        self._init_local(model, tokenizer, device=device, batch_size=batch_size, name=name)
        self.step_tag = step_tag
        self.step_tag_id = int(tag_id)
        self.system_prompt = system_prompt

    @classmethod
    def _load_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype,
        *,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
    ) -> tuple[Any, ...]:
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        # The embedded PRM's own head class (model_type "llama_checker_prm") is registered
        # with the Auto classes on import, like any Qwen-style PRM's custom head.
        import langchain_tts.models.checker_prm  # noqa: F401

        check_local(path)

        tokenizer = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=trust_remote_code, **(tokenizer_kwargs or {})
        )
        mk = {**dtype_kwargs(dtype), "trust_remote_code": trust_remote_code, **(model_kwargs or {})}
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        archs = list(getattr(config, "architectures", None) or [])
        remote = "AutoModel" in (getattr(config, "auto_map", None) or {})
        # Qwen2.5-Math-PRM registers its head (Qwen2ForProcessRewardModel) only under
        # AutoModel; AutoModelForTokenClassification would load it as Qwen2ForTokenClassification
        # with a fresh random head, silently. So prefer AutoModel for such remote-code PRMs.
        if (
            trust_remote_code
            and remote
            and not any(a.endswith("ForTokenClassification") for a in archs)
        ):
            return checked_from_pretrained(AutoModel, path, **mk), tokenizer
        try:
            model = checked_from_pretrained(AutoModelForTokenClassification, path, **mk)
        except ConfigError:  # a head the checkpoint lacks: it would score noise
            raise
        except (ValueError, KeyError) as first:  # no token-classification class
            try:
                model = checked_from_pretrained(AutoModel, path, **mk)
            except Exception as second:
                raise second from first
        return model, tokenizer

    # -- rendering --------------------------------------------------------------------------
    def render(self, trajectory: Trajectory) -> str:
        """The chat-templated conversation with a step tag after every step.

        A tag inside a step's text (or the question's) is removed: it would add a score the caller did not ask
        for (the counts no longer match) and split one step in two for the PRM.
        """
        # a tag inside a step would be read as a step's end; a space keeps its halves apart
        # (and the texts of other special tokens stay text: plain_text)
        steps = [
            plain_text(self.tokenizer, s.replace(self.step_tag, " ")) for s in trajectory.steps
        ]
        answer = self.step_tag.join(steps) + self.step_tag
        question = plain_text(self.tokenizer, trajectory.question.replace(self.step_tag, " "))
        if not has_chat_template(self.tokenizer):
            return question + "\n\n" + answer
        messages = chat_messages(question, self.system_prompt, answer)
        return str(
            self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=False
            )
        )

    def encode(self, trajectory: Trajectory) -> list[int]:
        return encode_prompt(self.tokenizer, self.render(trajectory))

    # -- scoring ----------------------------------------------------------------------------
    def _encoded(self, trajectory: Trajectory) -> Encoded:
        return self.encode(trajectory), None

    def _reads_hidden(self) -> bool:
        return self._head() is not None

    def _head(self) -> Any:
        """The read-out from the body's final hidden states to per-token logits: the
        embedded PRMs' ``head(hidden, ids, mask)``, or the ``score`` module of a
        ``*ForTokenClassification`` / ``Qwen2ForProcessRewardModel`` (dropout is off in
        eval). None if the model has neither (it then computes every token)."""
        head = getattr(self.model, "head", None)
        if callable(head):
            return head
        score = getattr(self.model, "score", None)
        if isinstance(score, torch.nn.Module):
            return lambda hidden, _ids, _mask: score(hidden)
        return None

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        logits = getattr(out, "logits", None)
        if logits is None:  # remote-code PRMs return a tuple with the logits first
            logits = out[0]
        return logits

    def _score_chunk(
        self, trajectories: list[Trajectory], encoded: list[Encoded]
    ) -> list[list[float]]:
        seqs = [ids for ids, _ in encoded]
        ids, mask = pad_batch(seqs, self.pad_token_id)
        hidden = self._cached_hidden(seqs)
        if hidden is not None:  # the read-out on the (reused) states
            logits = self._head()(hidden, ids.to(self.device), mask.to(self.device))
        else:
            logits = self._logits(ids.to(self.device), mask.to(self.device))
        if logits.ndim != 3 or logits.shape[-1] != 2:
            raise PRMOutputError(
                f"{self.name} produced logits of shape {tuple(logits.shape)}; a Qwen-style PRM "
                "needs per-token logits [batch, tokens, 2] (load it as a token-classification "
                "model with 2 labels)."
            )
        probs = logits.float().softmax(-1)[..., 1].cpu()
        tag = (ids == self.step_tag_id) & mask.bool()
        return [probs[r][tag[r]].tolist() for r in range(len(seqs))]
