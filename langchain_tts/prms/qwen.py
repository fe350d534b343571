"""The Qwen2.5-Math-PRM interface on ``transformers``: a score at every ``<extra_0>``.

The solution is rendered as ``[system, user question, assistant "<extra_0>".join(steps) +
"<extra_0>"]`` with the tokenizer's chat template; the step score is the class-1
probability of the 2-way softmax at each step-tag position. The same code serves the
embedded PRM (``LlamaForProcessRewardModel``, models/checker_prm.py), any
``*ForTokenClassification`` PRM and the real ``Qwen2.5-Math-PRM-7B``
(``trust_remote_code=True``, logits in ``outputs[0]``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from langchain_tts.core.errors import PRMOutputError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.batching import RequestCoalescer
from langchain_tts.policies.hf import (
    dtype_kwargs,
    matmul_parameters,
    model_device,
    model_lock,
    pad_batch,
)
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

if TYPE_CHECKING:  # imported on use: the native backend (models/native.py) never needs it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DEFAULT_PRM_SYSTEM_PROMPT", "QwenPRM"]

DEFAULT_PRM_SYSTEM_PROMPT = (
    "Please reason step by step, and put your final answer within \\boxed{}."
)


class QwenPRM(ProcessRewardModel):
    """Scores every step of many trajectories in one (chunked) right-padded forward.

    Right padding keeps every real token at the positions it has when scored alone (no
    position ids needed), and causal attention never looks at the padding, so a batched
    score equals the unbatched one. ``num_parameters`` counts every parameter except the
    input embedding table, so ``prm_flops = 2 * num_parameters * tokens``.
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
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ids = tokenizer.encode(step_tag, add_special_tokens=False)
        tag_id = tokenizer.convert_tokens_to_ids(step_tag)
        if len(ids) != 1 or ids[0] != tag_id or tag_id == tokenizer.unk_token_id:
            raise ValueError(
                f"The PRM tokenizer must encode the step tag {step_tag!r} as one token (got "
                f"{ids}); pass the tag this PRM was trained with via step_tag=..., or add it "
                "to the tokenizer as a special token."
            )
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.step_tag = step_tag
        self.step_tag_id = int(tag_id)
        self.system_prompt = system_prompt
        self.batch_size = batch_size
        self.device = model_device(self.model)
        self.num_parameters = matmul_parameters(self.model)
        self.name = name or f"QwenPRM({getattr(model.config, '_name_or_path', '') or 'model'})"
        self._lock = model_lock(self.model)
        self._coalescer: RequestCoalescer[Trajectory, tuple[list[float], int, float]] = (
            RequestCoalescer(self._score_items, self._lock, max_items=max(batch_size, 1) * 8)
        )
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        *,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> QwenPRM:
        """Load with ``AutoModelForTokenClassification``, else ``AutoModel`` (remote code).

        ``kw`` goes to the constructor (``device``, ``step_tag``, ...);
        ``model_kwargs`` / ``tokenizer_kwargs`` to the respective ``from_pretrained``.
        """
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        # The embedded PRM's own head class (model_type "llama_checker_prm") is registered
        # with the Auto classes on import, like any Qwen-style PRM's custom head.
        import langchain_tts.models.checker_prm  # noqa: F401

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
            model = AutoModel.from_pretrained(str(path), **mk)
        else:
            try:
                model = AutoModelForTokenClassification.from_pretrained(str(path), **mk)
            except (ValueError, KeyError) as first:  # no token-classification class
                try:
                    model = AutoModel.from_pretrained(str(path), **mk)
                except Exception as second:
                    raise second from first
        kw.setdefault("name", f"QwenPRM({Path(str(path)).name})")
        return cls(model, tokenizer, **kw)

    # -- rendering --------------------------------------------------------------------------
    def render(self, trajectory: Trajectory) -> str:
        """The chat-templated conversation with a step tag after every step.

        A tag inside a step's text is removed: it would add a score the caller did not ask
        for (the counts no longer match) and split one step in two for the PRM.
        """
        steps = [s.replace(self.step_tag, "") for s in trajectory.steps]
        answer = self.step_tag.join(steps) + self.step_tag
        if getattr(self.tokenizer, "chat_template", None):
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": trajectory.question})
            messages.append({"role": "assistant", "content": answer})
            return str(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=False
                )
            )
        return trajectory.question + "\n\n" + answer

    def encode(self, trajectory: Trajectory) -> list[int]:
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        text = self.render(trajectory)
        return list(self.tokenizer(text, add_special_tokens=not templated)["input_ids"])

    # -- scoring ----------------------------------------------------------------------------
    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        return await asyncio.to_thread(self._score_locked, list(trajectories))

    def _score_locked(self, trajectories: list[Trajectory]) -> PRMResult:
        # Concurrent calls share one forward (see policies/batching.py).
        items = self._coalescer.run(trajectories, None)
        tokens = sum(it[1] for it in items)
        usage = Usage(
            prm_calls=1,
            prm_tokens=tokens,
            prm_flops=2.0 * self.num_parameters * tokens,
            seconds=max((it[2] for it in items), default=0.0),
        )
        return PRMResult(scores=[it[0] for it in items], usage=usage)

    def _score_sync(self, trajectories: list[Trajectory]) -> PRMResult:
        """One batched scoring pass (no locking, no coalescing)."""
        items = self._score_items(trajectories, None)
        tokens = sum(it[1] for it in items)
        usage = Usage(
            prm_calls=1,
            prm_tokens=tokens,
            prm_flops=2.0 * self.num_parameters * tokens,
            seconds=max((it[2] for it in items), default=0.0),
        )
        return PRMResult(scores=[it[0] for it in items], usage=usage)

    def _score_items(
        self, trajectories: list[Trajectory], _key: object
    ) -> list[tuple[list[float], int, float]]:
        """Per trajectory: its step scores, its tokens, the batch's seconds."""
        t0 = time.perf_counter()
        scores: list[list[float]] = [[] for _ in trajectories]
        lengths = [0] * len(trajectories)
        # Trajectories without steps have nothing to score and never enter the batch.
        todo = [(i, self.encode(t)) for i, t in enumerate(trajectories) if t.steps]
        todo.sort(key=lambda item: len(item[1]))  # similar lengths share a chunk
        for c in range(0, len(todo), self.batch_size):
            chunk = todo[c : c + self.batch_size]
            rows = self._score_chunk([ids for _, ids in chunk])
            for (i, ids), row in zip(chunk, rows, strict=True):
                scores[i] = row
                lengths[i] = len(ids)
        seconds = time.perf_counter() - t0
        return [(scores[i], lengths[i], seconds) for i in range(len(trajectories))]

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        logits = getattr(out, "logits", None)
        if logits is None:  # remote-code PRMs return a tuple with the logits first
            logits = out[0]
        return logits

    @torch.inference_mode()
    def _score_chunk(self, seqs: list[list[int]]) -> list[list[float]]:
        ids, mask = pad_batch(seqs, self.pad_token_id)
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
