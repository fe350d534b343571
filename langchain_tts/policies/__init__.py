"""Step policies. Backends are imported lazily: ``import langchain_tts.policies`` loads no
torch, httpx or vLLM until a backend class is used."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "StepPolicy": "langchain_tts.policies.base",
    "PolicyResult": "langchain_tts.policies.base",
    "HFPolicy": "langchain_tts.policies.hf",
    "OpenAIPolicy": "langchain_tts.policies.openai",
    "ChatModelPolicy": "langchain_tts.policies.chat_model",
    "VLLMPolicy": "langchain_tts.policies.vllm",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
