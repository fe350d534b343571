"""Save a tiny Llama in Hugging Face format (fp16 ``model.safetensors``, ``config.json`` and
the char-level tokenizer), the layout the embedded models ship in and every loader reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from langchain_tts.models.tiny_llama import TinyLlamaConfig, hf_config_dict
from langchain_tts.models.tokenizer import build_tokenizer

__all__ = ["save_hf"]


def save_hf(
    model: torch.nn.Module, cfg: TinyLlamaConfig, out: Path, architecture: str, **extra: object
) -> None:
    """Write ``model`` to the folder ``out`` as ``architecture`` (a transformers class name);
    ``extra`` goes into ``config.json`` (e.g. ``id2label``, ``step_tag``)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied: transformers rebuilds it from the embeddings
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    conf = hf_config_dict(cfg, architecture=architecture, **extra)
    tok = build_tokenizer()
    conf.update(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    conf["eos_token_id"] = tok.eos_token_id
    (out / "config.json").write_text(json.dumps(conf, indent=2))
    tok.save_pretrained(str(out))
