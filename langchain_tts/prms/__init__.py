"""Process reward models. Formats are imported lazily: ``import langchain_tts.prms`` loads no
torch or httpx until a PRM class is used."""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
