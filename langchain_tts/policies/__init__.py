"""Step policies. Backends are imported lazily: ``import langchain_tts.policies`` loads no
torch, httpx or vLLM until a backend class is used."""

from __future__ import annotations

from langchain_tts.backends.lazy import lazy_exports

_LAZY = {
    "StepPolicy": "langchain_tts.policies.base",
    "PolicyResult": "langchain_tts.policies.base",
    "HFPolicy": "langchain_tts.policies.hf",
    "OpenAIPolicy": "langchain_tts.policies.openai",
    "ChatModelPolicy": "langchain_tts.policies.chat_model",
    "VLLMPolicy": "langchain_tts.policies.vllm",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
