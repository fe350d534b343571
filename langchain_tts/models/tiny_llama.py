"""A minimal Llama forward pass, fast on CPU, for training and running the embedded models.

No mask building, no cache plumbing, fused SDPA. Parameter names are exactly Hugging Face's,
so ``state_dict()`` saves as a ``LlamaForCausalLM`` or ``LlamaForTokenClassification``
checkpoint; a test checks the logits match transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyLlamaConfig:
    vocab_size: int
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        d, h = cfg.hidden_size, cfg.num_attention_heads
        self.n_heads, self.head_dim = h, cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries and keys, and values: each ``(batch, heads, tokens, head_dim)``."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))


class MLP(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        hd = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        freqs = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class TinyLlamaForCausalLM(nn.Module):
    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(_init_weights)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(input_ids))


class TinyLlamaForTokenClassification(nn.Module):
    """Llama body + per-token 2-class head: the Qwen2.5-Math-PRM read-out contract."""

    def __init__(self, cfg: TinyLlamaConfig, num_labels: int = 2):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaBody(cfg)
        self.score = nn.Linear(cfg.hidden_size, num_labels)
        _init_weights(self.score)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.score(self.model(input_ids))


def checker_logits(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    lm_head_weight: torch.Tensor,
    gate: nn.Linear,
    scale: torch.Tensor,
    bias: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The checker PRM's read-out: per-token ``[bad, good]`` logits from a causal LM's body.

    Token ``t`` is *evidence of an error* when the LM found it unlikely, ``-log p(x_t |
    x_<t)``, weighted by a learned gate on the state that made the prediction (``t-1``): the
    gate learns which predictions are checks (result digits, the tag closing a result) and
    which are not (question text). The evidence so far is the running maximum (after the first
    error every later step is wrong, as the step labels say), and ``P(good) = sigmoid(bias -
    softplus(scale) * evidence)``. A causal read-out: a token's logits see no later token,
    so a step's score at its tag is the same in any longer solution.

    Why this shape: a token-classification head cannot see whether token ``t`` is what the
    body predicted at ``t-1`` unless fresh layers learn to move that prediction one position
    on, which did not train in our budget (docs/model_card.md, items 4 and 9); here the
    comparison is the LM head's own log-probability, and only the gate, scale and bias (and
    optionally the body) are learned from step labels.
    """
    logp = F.log_softmax((hidden[:, :-1] @ lm_head_weight.T).float(), dim=-1)
    token_lp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    weight = torch.sigmoid(gate(hidden[:, :-1]).squeeze(-1).float())
    evidence = F.pad(weight * -token_lp, (1, 0))  # the first token has no prediction
    if attention_mask is not None:
        evidence = evidence * attention_mask.to(evidence.dtype)
    worst = torch.cummax(evidence, dim=1).values
    good = bias.float() - F.softplus(scale.float()) * worst
    return torch.stack([torch.zeros_like(good), good], dim=-1)


class TinyLlamaForProcessRewardModel(TinyLlamaForCausalLM):
    """Training twin of ``LlamaForProcessRewardModel`` (models/checker_prm.py): a causal LM
    body with its (tied) LM head and the checker read-out of :func:`checker_logits`."""

    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__(cfg)
        self.gate = nn.Linear(cfg.hidden_size, 1)
        init_checker_head(self.gate, None, None)
        self.scale = nn.Parameter(torch.tensor(CHECKER_INIT_SCALE))
        self.bias = nn.Parameter(torch.tensor(CHECKER_INIT_BIAS))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.model(input_ids)
        return checker_logits(h, input_ids, self.lm_head.weight, self.gate, self.scale, self.bias)


# The checker PRM's refusal of left padding (it would shift positions and put pad tokens
# before the question), shared by the HF class and the native runtime.
LEFT_PADDING_ERROR = (
    "LlamaForProcessRewardModel scores right-padded batches only (QwenPRM pads on the right); "
    "pad at the end of each row."
)


# Untrained, the read-out already reads "good unless some token cost more than ~3 nats":
# softplus(0.55) ~= 1, bias 3. Gate weights start at zero (every prediction half-counted).
CHECKER_INIT_SCALE = 0.55
CHECKER_INIT_BIAS = 3.0


def init_checker_head(
    gate: nn.Linear, scale: torch.Tensor | None, bias: torch.Tensor | None
) -> None:
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.zero_()
        if scale is not None:
            scale.fill_(CHECKER_INIT_SCALE)
        if bias is not None:
            bias.fill_(CHECKER_INIT_BIAS)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def hf_config_dict(cfg: TinyLlamaConfig, *, architecture: str, **extra: object) -> dict:
    """The ``config.json`` transformers needs to load these weights."""
    return {
        "architectures": [architecture],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_attention_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
        **extra,
    }
