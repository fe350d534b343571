"""``LlamaForProcessRewardModel``: the embedded PRM's architecture, in Hugging Face form.

A Qwen2.5-Math-PRM-style model (steps separated by ``<extra_0>``; ``P(good)`` at each tag is
the step's score) whose head is the *checker* read-out of
:func:`langchain_tts.models.tiny_llama.checker_logits`. ``QwenPRM.from_pretrained`` registers
it with transformers' Auto classes; outside this package, call :func:`register` first.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForTokenClassification,
    LlamaConfig,
    LlamaModel,
    LlamaPreTrainedModel,
)
from transformers.modeling_outputs import TokenClassifierOutput

from langchain_tts.models.tiny_llama import LEFT_PADDING_ERROR, checker_logits, init_checker_head

__all__ = ["LlamaForProcessRewardModel", "LlamaPRMConfig", "register"]


class LlamaPRMConfig(LlamaConfig):
    model_type = "llama_checker_prm"


class LlamaForProcessRewardModel(LlamaPreTrainedModel):
    """Llama body + tied LM head + checker read-out; ``forward`` returns per-token logits
    ``[batch, tokens, 2]`` (class 1 = the solution so far is correct)."""

    config_class = LlamaPRMConfig
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlamaPRMConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gate = nn.Linear(config.hidden_size, 1)
        self.scale = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(()))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:  # the read-out starts where the training twin starts
            init_checker_head(self.gate, self.scale, self.bias)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> TokenClassifierOutput:
        if attention_mask is not None and bool((attention_mask[:, 0] == 0).any()):
            # Left padding would shift positions and put pad tokens before the question.
            raise ValueError(LEFT_PADDING_ERROR)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return TokenClassifierOutput(logits=self.head(hidden, input_ids, attention_mask))

    def head(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The checker read-out on the body's final hidden states (right padded): what
        ``forward`` returns, and what a PRM scoring through its prefix cache applies to the
        cached and new hidden states."""
        return checker_logits(
            hidden, input_ids, self.lm_head.weight, self.gate, self.scale, self.bias,
            attention_mask,
        )  # fmt: skip


_registered = False


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForTokenClassification`` load
    ``model_type: llama_checker_prm`` folders (idempotent)."""
    global _registered
    if _registered:
        return
    AutoConfig.register(LlamaPRMConfig.model_type, LlamaPRMConfig, exist_ok=True)
    AutoModel.register(LlamaPRMConfig, LlamaForProcessRewardModel, exist_ok=True)
    AutoModelForTokenClassification.register(
        LlamaPRMConfig, LlamaForProcessRewardModel, exist_ok=True
    )
    _registered = True


register()
