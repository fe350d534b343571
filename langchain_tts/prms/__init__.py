"""Process reward models. Formats are imported lazily: ``import langchain_tts.prms`` loads no
torch or httpx until a PRM class is used."""

from __future__ import annotations

from langchain_tts.core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "base": ("ProcessRewardModel", "PRMResult"),
        "qwen": ("QwenPRM",),
        "math_shepherd": ("MathShepherdPRM",),
        "skywork": ("SkyworkPRM",),
        "rlhflow": ("RLHFlowPRM",),
        "http": ("HTTPRewardPRM",),
        "likelihood": ("LikelihoodPRM",),
    },
)
