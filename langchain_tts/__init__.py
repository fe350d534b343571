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
    "create_tts_graph",
    "load_default",
    "strategy_config",
]


def __getattr__(name: str):
    # Lazy: importing the package must not load torch models.
    if name == "load_default":
        from langchain_tts.models import load_default

        return load_default
    raise AttributeError(name)
