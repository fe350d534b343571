"""Run the embedded checkpoints without ``transformers``: the fast-loading default.

The shipped folders are ordinary Hugging Face checkpoints, and ``backend="transformers"``
loads them with ``AutoModelForCausalLM`` / ``AutoTokenizer`` like any other. But importing
transformers' model classes costs ~2 s of a cold start (they pull in ``torch._dynamo``,
``torch.distributed.tensor`` and the generation stack), twenty times what reading 15 MB of
weights does. So ``load_default()`` reads the same files with this module instead:

- :class:`NativeTokenizer`: ``tokenizer.json`` through the ``tokenizers`` library and
  ``chat_template.jinja`` through jinja2, with the slice of the Hugging Face tokenizer API
  the backends use (``__call__``, ``encode``, ``decode``, ``apply_chat_template``, ...).
- :class:`NativeCausalLM`: the project's own Llama (:mod:`.tiny_llama`) with a KV cache
  and a ``generate`` that follows transformers' decoding loop step for step (left padding,
  position ids from the attention mask, logits processors, stopping criteria, EOS then
  padding), so ``HFPolicy`` drives it unchanged and greedy and seeded samples are the same
  tokens as with transformers (tests compare them). Given a
  :class:`~langchain_tts.backends.prefix_cache.PrefixCache`, ``generate`` prefills each
  distinct prompt once, from its longest cached prefix on, and caches every row.
- :class:`NativeCheckerPRM` / :class:`NativeTokenClassifier`: the embedded PRMs' heads.

Only the Llama shapes the project trains are accepted (no GQA, no rope scaling, SiLU); any
other checkpoint gets a :class:`~langchain_tts.core.errors.ConfigError` that says to use the
transformers backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from langchain_tts.backends.prefix_cache import CacheEntry, PrefixCache
from langchain_tts.backends.sampling import top_p_filter
from langchain_tts.core.errors import ConfigError
from langchain_tts.models.tiny_llama import (
    LEFT_PADDING_ERROR,
    LlamaBody,
    TinyLlamaConfig,
    TinyLlamaForCausalLM,
    TinyLlamaForProcessRewardModel,
    TinyLlamaForTokenClassification,
    checker_logits,
)

__all__ = [
    "NativeCausalLM",
    "NativeCheckerPRM",
    "NativeTokenClassifier",
    "NativeTokenizer",
    "load_native",
]

# -- tokenizer -------------------------------------------------------------------------------


class NativeTokenizer:
    """``tokenizer.json`` + ``tokenizer_config.json`` + ``chat_template.jinja`` without
    transformers: the part of ``PreTrainedTokenizerFast`` the backends call."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        folder = Path(path)
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg_file = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        self.name_or_path = str(folder)
        self.padding_side: str = cfg.get("padding_side", "right")
        self.bos_token: str | None = _token_text(cfg.get("bos_token"))
        self.eos_token: str | None = _token_text(cfg.get("eos_token"))
        self.pad_token: str | None = _token_text(cfg.get("pad_token"))
        self.unk_token: str | None = _token_text(cfg.get("unk_token"))
        template_file = folder / "chat_template.jinja"
        self.chat_template: str | None = (
            template_file.read_text() if template_file.exists() else cfg.get("chat_template")
        )
        self._template: Any = None  # compiled on first use

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    bos_token_id = property(lambda self: self._id(self.bos_token))
    eos_token_id = property(lambda self: self._id(self.eos_token))
    pad_token_id = property(lambda self: self._id(self.pad_token))
    unk_token_id = property(lambda self: self._id(self.unk_token))

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def all_special_tokens(self) -> list[str]:
        """The special tokens' texts (as transformers' tokenizers list them)."""
        added = self._tok.get_added_tokens_decoder().values()
        return [t.content for t in added if t.special]

    def convert_tokens_to_ids(self, token: str) -> int | None:
        found = self._tok.token_to_id(token)
        return self.unk_token_id if found is None else found

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(
        self, rows: Sequence[Sequence[int]], skip_special_tokens: bool = False
    ) -> list[str]:
        return self._tok.decode_batch(
            [list(r) for r in rows], skip_special_tokens=skip_special_tokens
        )

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str | list[int]:
        """Render like transformers does (sandboxed jinja2, ``trim_blocks``/``lstrip_blocks``)."""
        if not self.chat_template:
            raise ConfigError(f"the tokenizer at {self.name_or_path} has no chat template")
        if self._template is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise ConfigError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
            )
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        text = self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            pad_token=self.pad_token or "",
            unk_token=self.unk_token or "",
            **kwargs,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _token_text(value: object) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer configs
        value = value.get("content")
    return value if isinstance(value, str) else None


# -- models ----------------------------------------------------------------------------------


def _rope(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (batch, 1, tokens, head_dim) at per-row positions."""
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


KVCache = list[tuple[torch.Tensor, torch.Tensor]]


def body_forward(
    body: LlamaBody,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    allowed: torch.Tensor,
    cache: KVCache | None = None,
) -> tuple[torch.Tensor, KVCache]:
    """The Llama body on new tokens at ``positions`` with boolean attention ``allowed``
    (batch, 1, new tokens, all tokens), appending their keys/values to ``cache``."""
    cos, sin = _rope(body.inv_freq, positions)
    x = body.embed_tokens(input_ids)
    new_cache: KVCache = []
    for i, layer in enumerate(body.layers):
        attn = layer.self_attn
        q, k, v = attn.project(layer.input_layernorm(x), cos, sin)
        if cache is not None:
            k = torch.cat((cache[i][0], k), dim=2)
            v = torch.cat((cache[i][1], v), dim=2)
        new_cache.append((k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return body.norm(x), new_cache


def _allowed(key_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Causal and padding mask for the last ``new_tokens`` queries over all keys. A query
    that may see nothing (a left pad) sees everything instead, as in transformers: its
    output is never used, but an all-masked row would turn into NaN."""
    total = key_mask.shape[1]
    q = torch.arange(total - new_tokens, total)[:, None]
    causal = torch.arange(total)[None, :] <= q
    allowed = causal[None, None] & key_mask[:, None, None, :]
    return allowed | ~allowed.any(dim=-1, keepdim=True)


class _NativeModel(nn.Module):
    """What the backends read off a transformers model: ``config._name_or_path``,
    ``get_input_embeddings`` / ``get_output_embeddings`` (for the FLOPs count), ``eval``."""

    core: nn.Module

    def __init__(self, core: nn.Module, name_or_path: str, config: dict[str, Any]):
        super().__init__()
        self.core = core
        self.config = SimpleNamespace(**config, _name_or_path=name_or_path)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.core.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module | None:
        return getattr(self.core, "lm_head", None)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        body = self.core.model
        if attention_mask is None or bool(attention_mask.all()):
            return body(input_ids)  # no padding: the plain causal forward
        mask = attention_mask.bool()
        positions = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 0)
        hidden, _ = body_forward(body, input_ids, positions, _allowed(mask, input_ids.shape[1]))
        return hidden


class NativeCausalLM(_NativeModel):
    """A ``LlamaForCausalLM`` checkpoint on :class:`~.tiny_llama.TinyLlamaForCausalLM`:
    ``model(input_ids, attention_mask).logits`` and transformers-compatible ``generate``."""

    core: TinyLlamaForCausalLM

    def __init__(self, core: TinyLlamaForCausalLM, name_or_path: str, config: dict[str, Any]):
        super().__init__(core, name_or_path, config)
        self.generation_config = SimpleNamespace(eos_token_id=config.get("eos_token_id"))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> SimpleNamespace:
        return SimpleNamespace(logits=self.core.lm_head(self._hidden(input_ids, attention_mask)))

    #: ``generate`` takes a ``prefix_cache`` (HFPolicy passes its cache only to such models)
    supports_prefix_cache = True

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 20,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        logits_processor: Sequence[Callable[..., torch.Tensor]] | None = None,
        stopping_criteria: Sequence[Callable[..., torch.Tensor]] | None = None,
        prefix_cache: PrefixCache | None = None,
        **unused: Any,
    ) -> torch.Tensor:
        """Decode like ``transformers``' ``generate``: prompt + new tokens, finished rows
        padded with ``pad_token_id``, stopping when every row hit EOS or a criterion.

        With a ``prefix_cache``, identical prompts are prefilled once, each prompt computes
        only what follows its longest cached prefix, and every prompt and row (prompt plus
        its generated tokens) is cached for the next call; ``prefix_cache.last_rows`` then
        says per row how many prompt tokens were computed and how many read from cache.
        The logits processors and stopping criteria see the same ``input_ids`` either way.
        """
        if unused:
            raise ConfigError(
                f"NativeCausalLM.generate does not support {sorted(unused)}; load the model "
                "with backend='transformers' for them"
            )
        if top_k:  # transformers' top-k; HFPolicy always passes 0 (temperature + top-p only)
            raise ConfigError("NativeCausalLM.generate supports top_k=0 only")
        ids = input_ids
        mask = (torch.ones_like(ids) if attention_mask is None else attention_mask).bool()
        eos = torch.tensor(
            [] if eos_token_id is None else
            ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)),
            dtype=torch.long,
        )  # fmt: skip
        pad = 0 if pad_token_id is None else int(pad_token_id)
        body = self.core.model
        rows: list[list[int]] = []
        prompt_entries: list[CacheEntry | None] = []
        if prefix_cache is None:
            positions = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 0)
            hidden, cache = body_forward(body, ids, positions, _allowed(mask, ids.shape[1]))
            last, kv_mask, next_pos = hidden[:, -1], mask, positions[:, -1:] + 1
        else:
            rows = [ids[r][mask[r]].tolist() for r in range(ids.shape[0])]
            last, cache, kv_mask, next_pos, prompt_entries = _prefill_cached(
                body, rows, prefix_cache
            )
        prefilled = cache[0][0].shape[2]
        unfinished = torch.ones(ids.shape[0], dtype=torch.bool)
        emitted = torch.zeros(ids.shape[0], dtype=torch.long)  # tokens before a row ended
        for step in range(max_new_tokens):
            if step:
                new = ids[:, -1:]  # the token sampled last
                hidden, cache = body_forward(body, new, next_pos, _allowed(kv_mask, 1), cache)
                last, next_pos = hidden[:, -1], next_pos + 1
            scores = self.core.lm_head(last).float()
            for proc in logits_processor or ():
                scores = proc(ids, scores)
            if do_sample:
                if temperature is not None and temperature != 1.0:
                    scores = scores / temperature
                if top_p is not None and top_p < 1.0:
                    scores = top_p_filter(scores, top_p)
                nxt = torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
            else:
                nxt = scores.argmax(dim=-1)
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            emitted += unfinished.long()
            ids = torch.cat((ids, nxt[:, None]), dim=1)
            kv_mask = torch.cat((kv_mask, torch.ones_like(kv_mask[:, :1])), dim=1)
            done = torch.isin(nxt, eos)
            for crit in stopping_criteria or ():
                done = done | torch.as_tensor(crit(ids, scores), dtype=torch.bool)
            unfinished = unfinished & ~done
            if not bool(unfinished.any()):
                break
        if prefix_cache is not None:
            # A row's last token was never fed, so its keys/values cover one token less.
            width = input_ids.shape[1]
            for r, (row, entry) in enumerate(zip(rows, prompt_entries, strict=True)):
                g = min(int(emitted[r]) - 1, cache[0][0].shape[2] - prefilled)
                if g <= 0:
                    continue
                own = [(k[r, :, prefilled : prefilled + g], v[r, :, prefilled : prefilled + g])
                       for k, v in cache]  # fmt: skip
                prefix_cache.put(row + ids[r, width : width + g].tolist(), entry, len(row), own)
        return ids


def _prefill_cached(
    body: LlamaBody, rows: list[list[int]], prefix_cache: PrefixCache
) -> tuple[torch.Tensor, KVCache, torch.Tensor, torch.Tensor, list[CacheEntry | None]]:
    """The prompt pass of :meth:`NativeCausalLM.generate` with a prefix cache.

    Each distinct prompt is computed once, from its longest cached prefix on. The batch's
    keys are ``[cached prefix | new tokens]``, each part left-padded, so the padding is a
    gap in the middle of some rows: the boolean mask hides it and positions count real
    tokens only. Returns the last hidden state, keys/values and key mask per row, each
    row's next position, and the cache entry of each row's prompt.
    """
    distinct: dict[tuple[int, ...], int] = {}
    prompts: list[list[int]] = []
    row_u = []
    for row in rows:
        u = distinct.setdefault(tuple(row), len(prompts))
        if u == len(prompts):
            prompts.append(row)
        row_u.append(u)
    hits = [prefix_cache.lookup(p, len(p) - 1) for p in prompts]  # >= 1 token to compute
    past_len = max(m for _, m in hits)
    new_len = max(len(p) - m for p, (_, m) in zip(prompts, hits))
    n, dev = len(prompts), body.embed_tokens.weight.device
    new_ids = torch.zeros((n, new_len), dtype=torch.long, device=dev)
    new_mask = torch.zeros((n, new_len), dtype=torch.bool, device=dev)
    past_mask = torch.zeros((n, past_len), dtype=torch.bool, device=dev)
    past: KVCache | None = None
    for u, (p, (entry, m)) in enumerate(zip(prompts, hits)):
        new_ids[u, new_len - (len(p) - m) :] = torch.tensor(p[m:], dtype=torch.long, device=dev)
        new_mask[u, new_len - (len(p) - m) :] = True
        if entry is None:
            continue
        past_mask[u, past_len - m :] = True
        kv = entry.prefix_kv(m)
        if past is None:
            heads, _, dim = kv[0][0].shape
            shape = (n, heads, past_len, dim)
            past = [(kv[0][0].new_zeros(shape), kv[0][0].new_zeros(shape)) for _ in kv]
        for (pk, pv), (k, v) in zip(past, kv, strict=True):
            pk[u, :, past_len - m :] = k
            pv[u, :, past_len - m :] = v
    starts = torch.tensor([m for _, m in hits], dtype=torch.long, device=dev)[:, None]
    positions = (starts + new_mask.long().cumsum(-1) - 1).masked_fill(~new_mask, 0)
    key_mask = torch.cat((past_mask, new_mask), dim=1)
    hidden, kv = body_forward(body, new_ids, positions, _allowed(key_mask, new_len), past)
    entries = []
    stats: list[tuple[int, int]] = []
    for u, (p, (entry, m)) in enumerate(zip(prompts, hits)):
        cols = slice(past_len + new_len - (len(p) - m), past_len + new_len)
        own = [(k[u, :, cols], v[u, :, cols]) for k, v in kv]
        entries.append(prefix_cache.put(p, entry, m, own))
    seen: set[int] = set()
    for u in row_u:  # the first row of a prompt computed it; its copies read it
        p, m = prompts[u], hits[u][1]
        stats.append((len(p) - m, m) if u not in seen else (0, len(p)))
        seen.add(u)
    prefix_cache.record(stats)
    idx = torch.tensor(row_u, dtype=torch.long, device=dev)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=dev)[:, None]
    return (
        hidden[idx, -1],
        [(k[idx], v[idx]) for k, v in kv],
        key_mask[idx],
        lengths[idx],
        [entries[u] for u in row_u],
    )


class NativeCheckerPRM(_NativeModel):
    """``LlamaForProcessRewardModel`` (models/checker_prm.py) on its training twin:
    per-token ``[bad, good]`` logits from the checker read-out."""

    core: TinyLlamaForProcessRewardModel

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> SimpleNamespace:
        if attention_mask is not None and bool((attention_mask[:, 0] == 0).any()):
            raise ValueError(LEFT_PADDING_ERROR)
        hidden = self._hidden(input_ids, attention_mask)
        return SimpleNamespace(logits=self.head(hidden, input_ids, attention_mask))

    def head(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The read-out on the body's hidden states (also those of a prefix cache)."""
        c = self.core
        return checker_logits(
            hidden, input_ids, c.lm_head.weight, c.gate, c.scale, c.bias, attention_mask
        )


class NativeTokenClassifier(_NativeModel):
    """``LlamaForTokenClassification`` (the weak PRM): per-token class logits."""

    core: TinyLlamaForTokenClassification

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> SimpleNamespace:
        hidden = self._hidden(input_ids, attention_mask)
        return SimpleNamespace(logits=self.head(hidden, input_ids, attention_mask))

    def head(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The read-out on the body's hidden states (also those of a prefix cache)."""
        return self.core.score(hidden)


_ARCHITECTURES: dict[str, tuple[type[_NativeModel], Callable[[TinyLlamaConfig], nn.Module]]] = {
    "LlamaForCausalLM": (NativeCausalLM, TinyLlamaForCausalLM),
    "LlamaForProcessRewardModel": (NativeCheckerPRM, TinyLlamaForProcessRewardModel),
    "LlamaForTokenClassification": (
        NativeTokenClassifier,
        lambda cfg: TinyLlamaForTokenClassification(cfg, num_labels=2),
    ),
}


def _tiny_config(cfg: dict[str, Any], where: str) -> TinyLlamaConfig:
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    unsupported = {
        "num_key_value_heads": cfg.get("num_key_value_heads", heads) != heads,
        "head_dim": cfg.get("head_dim", hidden // heads) != hidden // heads,
        "hidden_act": cfg.get("hidden_act", "silu") != "silu",
        "rope_scaling": bool(cfg.get("rope_scaling")),
        "attention_bias": bool(cfg.get("attention_bias")),
        "mlp_bias": bool(cfg.get("mlp_bias")),
        "num_labels": len(cfg.get("id2label") or {0: 0, 1: 1}) != 2,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ConfigError(
            f"{where}: the native backend runs the embedded Llama shapes only, not {bad}; "
            "load this checkpoint with backend='transformers'"
        )
    return TinyLlamaConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        intermediate_size=int(cfg["intermediate_size"]),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 512)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def load_native(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[_NativeModel, NativeTokenizer]:
    """``(model, tokenizer)`` of an embedded checkpoint folder, without transformers."""
    from safetensors.torch import load_file

    folder = Path(path)
    cfg = json.loads((folder / "config.json").read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in _ARCHITECTURES:
        raise ConfigError(
            f"{folder}: the native backend knows {sorted(_ARCHITECTURES)}, not {arch!r}; load "
            "this checkpoint with backend='transformers'"
        )
    wrapper, build = _ARCHITECTURES[arch]
    tiny = _tiny_config(cfg, str(folder))
    core = build(tiny)
    state = {k: v.to(dtype) for k, v in load_file(str(folder / "model.safetensors")).items()}
    if tiny.tie_word_embeddings and hasattr(core, "lm_head"):
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    core.load_state_dict(state, strict=True)
    core.to(dtype)
    core.model.inv_freq = core.model.inv_freq.float()  # rotary angles stay in fp32
    return wrapper(core.eval(), str(folder), cfg).eval(), NativeTokenizer(folder)
