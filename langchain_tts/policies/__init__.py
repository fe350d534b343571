"""Step policies. Backends are imported lazily: ``import langchain_tts.policies`` loads no
torch, httpx or vLLM until a backend class is used."""

from __future__ import annotations

from langchain_tts.core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "base": ("StepPolicy", "PolicyResult"),
        "hf": ("HFPolicy",),
        "openai": ("OpenAIPolicy",),
        "chat_model": ("ChatModelPolicy",),
        "vllm": ("VLLMPolicy",),
    },
)
