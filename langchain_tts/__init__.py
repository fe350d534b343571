"""langchain-tts: test-time compute scaling (PRM-guided search) as LangGraph graphs."""

from langchain_tts.core.config import SamplingParams, StrategyConfig
from langchain_tts.core.errors import (
    BackendError,
    ConfigError,
    InputError,
    PRMOutputError,
    TTSError,
)
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.graph import STRATEGIES, create_tts_graph, strategy_config
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel

__all__ = [
    "STRATEGIES",
    "BackendError",
    "BudgetTable",
    "ChatModelPolicy",
    "HFPolicy",
    "HTTPRewardPRM",
    "MathShepherdPRM",
    "OpenAIPolicy",
    "QwenPRM",
    "RLHFlowPRM",
    "SkyworkPRM",
    "VLLMPolicy",
    "ConfigError",
    "InputError",
    "PRMOutputError",
    "ProcessRewardModel",
    "SamplingParams",
    "Step",
    "StepPolicy",
    "StrategyConfig",
    "TTSError",
    "Trajectory",
    "Usage",
    "create_router_graph",
    "create_tts_graph",
    "load_default",
    "strategy_config",
]


_LAZY = {
    "load_default": "langchain_tts.models",
    "create_router_graph": "langchain_tts.routing.router",
    "BudgetTable": "langchain_tts.routing.table",
    "HFPolicy": "langchain_tts.policies.hf",
    "OpenAIPolicy": "langchain_tts.policies.openai",
    "ChatModelPolicy": "langchain_tts.policies.chat_model",
    "VLLMPolicy": "langchain_tts.policies.vllm",
    "QwenPRM": "langchain_tts.prms.qwen",
    "MathShepherdPRM": "langchain_tts.prms.math_shepherd",
    "SkyworkPRM": "langchain_tts.prms.skywork",
    "RLHFlowPRM": "langchain_tts.prms.rlhflow",
    "HTTPRewardPRM": "langchain_tts.prms.http",
}


def __getattr__(name: str):
    # Lazy: importing the package must not load torch, httpx or vLLM.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'langchain_tts' has no attribute {name!r}")
