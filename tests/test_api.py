"""The public API: what ``langchain_tts`` exports, that every export resolves, that importing
the package stays light, and that one class name means one thing across the packages."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import langchain_tts
from langchain_tts.testing import FakePolicy

ROOT = Path(__file__).resolve().parent.parent

# Changing this list changes the public API: update it on purpose, with the docs.
PUBLIC = [
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
#: the subpackages whose ``__all__`` a user imports from
SUBPACKAGES = [
    "langchain_tts.ledger",
    "langchain_tts.policies",
    "langchain_tts.prms",
    "langchain_tts.routing",
    "langchain_tts.scaling",
]


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this one has imported torch long ago)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not an installed copy
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_all_is_pinned():
    assert PUBLIC == sorted(PUBLIC)
    assert langchain_tts.__all__ == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves(name: str):
    value = getattr(langchain_tts, name)
    assert value is not None
    assert name in dir(langchain_tts)
    home = getattr(value, "__module__", None)
    if home is not None and home.startswith("langchain_tts."):
        # the top-level name is the class/function itself, not a copy or a shim
        assert getattr(importlib.import_module(home), name) is value


def test_star_import_and_unknown_names():
    namespace: dict = {}
    exec("from langchain_tts import *", namespace)
    assert set(PUBLIC) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'Allocation'"):
        langchain_tts.Allocation  # noqa: B018


def test_import_loads_no_torch_transformers_or_backends():
    loaded = json.loads(
        _python(
            "import json, sys, langchain_tts\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'vllm', 'httpx') or m.startswith('langchain_tts.'))))"
        )
    )
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "transformers", "vllm")]
    # the backends and the embedded models load on first use of their names
    lazy_homes = {
        m
        for m in langchain_tts._LAZY.values()
        if m.startswith(("langchain_tts.models", "langchain_tts.policies.", "langchain_tts.prms."))
    }
    assert lazy_homes and not lazy_homes & set(loaded)
    # httpx only when LangGraph itself brings it (langgraph.runtime imports langgraph_sdk)
    langgraph_loads_httpx = _python("import sys, langgraph.graph; print('httpx' in sys.modules)")
    if langgraph_loads_httpx == "False":
        assert "httpx" not in loaded


def test_one_class_name_means_one_class():
    homes: dict[str, set[int]] = {}
    for module in ["langchain_tts", *SUBPACKAGES]:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            value = getattr(mod, name)
            if isinstance(value, type):
                homes.setdefault(name, set()).add(id(value))
    assert {name for name, ids in homes.items() if len(ids) > 1} == set()
    assert "RouteAllocation" in homes and "ComputeOptimalAllocation" in homes


def test_load_default_returns_the_exported_verifier():
    prm = langchain_tts.load_default_prm()
    assert isinstance(prm, langchain_tts.EquationPRM)
    assert isinstance(prm, langchain_tts.LikelihoodPRM)  # EquationPRM reads a calculator LM


async def test_a_strict_ledger_raises_the_exported_budget_error():
    policy = langchain_tts.meter(
        FakePolicy(lambda t, i: "1 + 1 = 2"), langchain_tts.Ledger(max_tokens=1, strict=True)
    )
    with pytest.raises(langchain_tts.BudgetExceededError) as info:
        await policy.agenerate([langchain_tts.Trajectory(question="What is 1 + 1?")], n=2)
    assert info.value.left_tokens == 1
