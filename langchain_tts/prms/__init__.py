"""Process reward models. Formats are imported lazily: ``import langchain_tts.prms`` loads no
torch or httpx until a PRM class is used."""

from __future__ import annotations

from langchain_tts.backends.lazy import lazy_exports

_LAZY = {
    "ProcessRewardModel": "langchain_tts.prms.base",
    "PRMResult": "langchain_tts.prms.base",
    "QwenPRM": "langchain_tts.prms.qwen",
    "MathShepherdPRM": "langchain_tts.prms.math_shepherd",
    "SkyworkPRM": "langchain_tts.prms.skywork",
    "RLHFlowPRM": "langchain_tts.prms.rlhflow",
    "HTTPRewardPRM": "langchain_tts.prms.http",
    "LikelihoodPRM": "langchain_tts.prms.likelihood",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
