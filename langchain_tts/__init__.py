"""langchain-tts: test-time compute scaling (PRM-guided search) as LangGraph graphs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_tts.core.config import SamplingParams, StrategyConfig
from langchain_tts.core.errors import (
    BackendError,
    BudgetExceededError,
    ConfigError,
    InputError,
    PRMOutputError,
    TTSError,
)
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.graph import STRATEGIES, create_tts_graph, strategy_config
from langchain_tts.limits import LimitError, ServeLimits
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.prms.base import PRMResult, ProcessRewardModel
from langchain_tts.strategies import (
    STRATEGY_SPECS,
    StrategyName,
    StrategySpec,
    get_strategy,
    register_strategy,
)
from langchain_tts.strategies.core import TTSInput, TTSOutput, TTSUsageState

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and IDEs
    from langchain_tts.ledger import Ledger, meter
    from langchain_tts.models import load_default, load_default_policy, load_default_prm
    from langchain_tts.policies.chat_model import ChatModelPolicy
    from langchain_tts.policies.hf import HFPolicy
    from langchain_tts.policies.openai import OpenAIPolicy
    from langchain_tts.policies.vllm import VLLMPolicy
    from langchain_tts.prms.equation import EquationPRM
    from langchain_tts.prms.http import HTTPRewardPRM
    from langchain_tts.prms.likelihood import LikelihoodPRM
    from langchain_tts.prms.math_shepherd import MathShepherdPRM
    from langchain_tts.prms.qwen import QwenPRM
    from langchain_tts.prms.rlhflow import RLHFlowPRM
    from langchain_tts.prms.skywork import SkyworkPRM
    from langchain_tts.routing.difficulty import DifficultyEstimate
    from langchain_tts.routing.router import (
        Route,
        RouterConfig,
        RouterOutput,
        create_router_graph,
    )
    from langchain_tts.routing.table import BudgetTable, RouteAllocation
    from langchain_tts.tools import create_tts_tool

__all__ = [
    "BackendError",
    "BudgetExceededError",
    "BudgetTable",
    "ChatModelPolicy",
    "ConfigError",
    "DifficultyEstimate",
    "EquationPRM",
    "HFPolicy",
    "HTTPRewardPRM",
    "InputError",
    "Ledger",
    "LikelihoodPRM",
    "LimitError",
    "MathShepherdPRM",
    "OpenAIPolicy",
    "PRMOutputError",
    "PRMResult",
    "PolicyResult",
    "ProcessRewardModel",
    "QwenPRM",
    "RLHFlowPRM",
    "Route",
    "RouteAllocation",
    "RouterConfig",
    "RouterOutput",
    "STRATEGIES",
    "STRATEGY_SPECS",
    "SamplingParams",
    "ServeLimits",
    "SkyworkPRM",
    "Step",
    "StepPolicy",
    "StrategyConfig",
    "StrategyName",
    "StrategySpec",
    "TTSError",
    "TTSInput",
    "TTSOutput",
    "TTSUsageState",
    "Trajectory",
    "Usage",
    "VLLMPolicy",
    "create_router_graph",
    "create_tts_graph",
    "create_tts_tool",
    "get_strategy",
    "load_default",
    "load_default_policy",
    "load_default_prm",
    "meter",
    "register_strategy",
    "strategy_config",
]

#: name -> module, imported on first use: importing the package must not load torch, httpx
#: or vLLM (the backends and the embedded models need them; the graphs do not)
_LAZY = {
    "load_default": "langchain_tts.models",
    "load_default_policy": "langchain_tts.models",
    "load_default_prm": "langchain_tts.models",
    "HFPolicy": "langchain_tts.policies.hf",
    "OpenAIPolicy": "langchain_tts.policies.openai",
    "ChatModelPolicy": "langchain_tts.policies.chat_model",
    "VLLMPolicy": "langchain_tts.policies.vllm",
    "EquationPRM": "langchain_tts.prms.equation",
    "LikelihoodPRM": "langchain_tts.prms.likelihood",
    "QwenPRM": "langchain_tts.prms.qwen",
    "MathShepherdPRM": "langchain_tts.prms.math_shepherd",
    "SkyworkPRM": "langchain_tts.prms.skywork",
    "RLHFlowPRM": "langchain_tts.prms.rlhflow",
    "HTTPRewardPRM": "langchain_tts.prms.http",
    "Ledger": "langchain_tts.ledger",
    "meter": "langchain_tts.ledger",
    "create_router_graph": "langchain_tts.routing.router",
    "Route": "langchain_tts.routing.router",
    "RouterOutput": "langchain_tts.routing.router",
    "RouterConfig": "langchain_tts.routing.router",
    "DifficultyEstimate": "langchain_tts.routing.difficulty",
    "BudgetTable": "langchain_tts.routing.table",
    "RouteAllocation": "langchain_tts.routing.table",
    "create_tts_tool": "langchain_tts.tools",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'langchain_tts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
