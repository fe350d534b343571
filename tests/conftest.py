"""Shared fixtures: tiny random-weight checkpoints, so backend tests need no trained weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Never reach the model hub from tests: every model is built locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models on 2 shared cores run 10-40x faster on one torch thread than on two.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _tiny_config():  # imported lazily: collecting tests should not need torch
    from langchain_tts.models.tiny_llama import TinyLlamaConfig

    return TinyLlamaConfig(
        vocab_size=101,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=128,
        max_position_embeddings=512,
    )


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ``LlamaForCausalLM`` with the embedded char-level tokenizer."""
    import torch

    from langchain_tts.models.io import save_hf
    from langchain_tts.models.tiny_llama import TinyLlamaForCausalLM

    torch.manual_seed(0)
    cfg = _tiny_config()
    out = tmp_path_factory.mktemp("tiny-policy")
    save_hf(TinyLlamaForCausalLM(cfg), cfg, out, "LlamaForCausalLM")
    return out


@pytest.fixture(scope="session")
def tiny_prm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 2-label ``LlamaForTokenClassification`` PRM (Qwen PRM read-out)."""
    import torch

    from langchain_tts.models.io import save_hf
    from langchain_tts.models.tiny_llama import TinyLlamaForTokenClassification
    from langchain_tts.models.tokenizer import STEP_TAG

    torch.manual_seed(1)
    cfg = _tiny_config()
    model = TinyLlamaForTokenClassification(cfg)
    # Spread the head so scores differ visibly between positions (std 0.02 gives ~0.5).
    torch.nn.init.normal_(model.score.weight, std=1.0)
    out = tmp_path_factory.mktemp("tiny-prm")
    save_hf(
        model,
        cfg,
        out,
        "LlamaForTokenClassification",
        id2label={0: "bad", 1: "good"},
        label2id={"bad": 0, "good": 1},
        step_tag=STEP_TAG,
    )
    return out


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback (tests/pg.py) for the session: its URL."""
    import pg

    reason = pg.unavailable()
    if reason is not None:
        pytest.skip(reason)
    cluster = pg.Cluster()
    try:
        yield cluster.start().url
    finally:
        cluster.stop()
