"""VLLMPolicy: the missing-vLLM error, the output conversion and the call shape (fake engine).

A real engine runs only where vLLM is installed (CUDA hosts); that test skips elsewhere.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BackendError
from langchain_tts.core.types import Trajectory
from langchain_tts.policies import vllm as vllm_policy
from langchain_tts.policies.vllm import (
    VLLMPolicy,
    estimate_matmul_parameters,
    request_outputs_to_steps,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def completion(index: int, text: str, n_tokens: int, finish: str, stop: Any = None) -> Any:
    return SimpleNamespace(
        index=index,
        text=text,
        token_ids=list(range(n_tokens)),
        finish_reason=finish,
        stop_reason=stop,
    )


def request(prompt_len: int, outputs: list[Any], cached: int | None = None) -> Any:
    return SimpleNamespace(
        prompt_token_ids=list(range(prompt_len)), outputs=outputs, num_cached_tokens=cached
    )


def test_missing_vllm_raises_import_error_with_install_hint(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails everywhere
    with pytest.raises(ImportError, match=r"pip install 'langchain-tts\[vllm\]'"):
        VLLMPolicy("Qwen/Qwen2.5-Math-1.5B-Instruct")


def test_request_outputs_to_steps_orders_labels_and_counts():
    outputs = [
        request(
            10,
            [  # out of order on purpose: placed by CompletionOutput.index
                completion(1, "b", 4, "stop", None),  # EOS
                completion(0, "a", 3, "stop", "\n\n"),  # the stop string -> a step
            ],
            cached=6,
        ),
        request(
            12,
            [
                completion(0, "c" * 5, 8, "length"),
                completion(1, "d\n\ne", 5, "stop", 128009),  # overshoot, then a stop token
            ],
        ),
    ]
    steps, usage = request_outputs_to_steps(outputs, 2, delimiter="\n\n", stop_at_step=True)
    assert [[(s.text, s.tokens, s.finish_reason) for s in row] for row in steps] == [
        [("a", 3, "step"), ("b", 4, "eos")],
        [("ccccc", 8, "length"), ("d", 5, "step")],
    ]
    assert (usage.policy_calls, usage.policy_prompt_tokens, usage.policy_generated_tokens) == (
        1,
        22,
        20,
    )
    assert usage.policy_cached_tokens == 6

    whole, _ = request_outputs_to_steps(
        [request(3, [completion(0, "x\n\ny", 2, "stop", None)])],
        1,
        delimiter="\n\n",
        stop_at_step=False,
    )
    assert (whole[0][0].text, whole[0][0].finish_reason) == ("x\n\ny", "eos")


def test_request_outputs_to_steps_rejects_bad_batches():
    with pytest.raises(BackendError, match="expected n=2"):
        request_outputs_to_steps(
            [request(3, [completion(0, "a", 1, "stop")])], 2, delimiter="\n\n", stop_at_step=True
        )
    with pytest.raises(BackendError, match="abort"):
        request_outputs_to_steps(
            [request(3, [completion(0, "a", 1, "abort")])], 1, delimiter="\n\n", stop_at_step=True
        )


class FakeSamplingParams:
    def __init__(self, **kw: Any):
        self.kw = kw


class FakeLLM:
    """Records ``generate`` calls; sample j of prompt i says ``p{i}s{j}``."""

    def __init__(self, tokenizer: Any, hf_config: Any):
        self.tokenizer = tokenizer
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config))
        self.calls: list[tuple[list[dict], FakeSamplingParams, bool]] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[dict], sp: FakeSamplingParams, use_tqdm: bool = True):
        self.calls.append((prompts, sp, use_tqdm))
        n = sp.kw["n"]
        return [
            request(
                len(p["prompt_token_ids"]),
                [completion(j, f"p{i}s{j}", 2, "stop", "\n\n") for j in reversed(range(n))],
                cached=1,
            )
            for i, p in enumerate(prompts)
        ]


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> FakeLLM:
    from langchain_tts.models.tokenizer import build_tokenizer

    monkeypatch.setattr(
        vllm_policy, "import_vllm", lambda: SimpleNamespace(SamplingParams=FakeSamplingParams)
    )
    cfg = SimpleNamespace(  # the fields of an HF LlamaConfig that the estimate reads
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    return FakeLLM(build_tokenizer(), cfg)


def test_one_generate_per_call_with_token_prompts(fake_engine: FakeLLM):
    policy = VLLMPolicy(llm=fake_engine)
    assert policy.num_parameters == 2 * (2 * 64 * 64 + 2 * 64 * 64 + 3 * 64 * 128) + 101 * 64
    assert policy.num_parameters == estimate_matmul_parameters(
        fake_engine.llm_engine.model_config.hf_config
    )
    prefixes = [Trajectory(question="Start with 3."), Trajectory(question="Q", steps=["1+1=2"])]
    params = SamplingParams(temperature=0.6, top_p=0.9, max_step_tokens=32, seed=3)
    result = policy.generate(prefixes, n=3, params=params)

    assert len(fake_engine.calls) == 1
    prompts, sp, use_tqdm = fake_engine.calls[0]
    tok = fake_engine.tokenizer
    # The chat template already opens the solution: no extra special tokens.
    assert (
        prompts[1]["prompt_token_ids"]
        == tok("Q\n\n1+1=2\n\n", add_special_tokens=False)["input_ids"]
    )
    assert sp.kw == {
        "n": 3,
        "temperature": 0.6,
        "top_p": 0.9,
        "max_tokens": 32,
        "stop": ["\n\n"],
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
        "seed": 3,
    }
    assert use_tqdm is False
    assert [[s.text for s in row] for row in result.steps] == [
        ["p0s0", "p0s1", "p0s2"],
        ["p1s0", "p1s1", "p1s2"],
    ]
    u = result.usage
    assert u.policy_calls == 1 and u.policy_generated_tokens == 12 and u.policy_cached_tokens == 2
    assert u.policy_flops == 2.0 * policy.num_parameters * (u.policy_prompt_tokens + 12)


def test_greedy_generates_once_per_prefix(fake_engine: FakeLLM):
    policy = VLLMPolicy(llm=fake_engine)
    result = policy.generate([Trajectory(question="Q")], n=4, params=SamplingParams(temperature=0))
    assert fake_engine.calls[0][1].kw["n"] == 1 and fake_engine.calls[0][1].kw["top_p"] == 1.0
    assert [s.text for s in result.steps[0]] == ["p0s0"] * 4


def test_estimate_matches_counted_parameters():
    from langchain_tts.models.tiny_llama import TinyLlamaConfig, TinyLlamaForCausalLM

    cfg = TinyLlamaConfig(vocab_size=101, hidden_size=64, num_hidden_layers=3, intermediate_size=96)
    model = TinyLlamaForCausalLM(cfg)
    # Tied embeddings: the shared matrix is counted once, as the LM head (a real matmul).
    counted = sum(p.numel() for p in model.parameters())
    norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size  # ignored by the estimate
    hf_like = SimpleNamespace(**{k: getattr(cfg, k) for k in vars(cfg)}, num_key_value_heads=2)
    assert estimate_matmul_parameters(hf_like) == counted - norms
    assert estimate_matmul_parameters(object()) == 0


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (CUDA hosts only)")
def test_real_engine_on_the_tiny_policy(tiny_policy_dir: Path):  # pragma: no cover - GPU hosts
    policy = VLLMPolicy(
        str(tiny_policy_dir), enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=512
    )
    result = policy.generate(
        [Trajectory(question="Start with 3. Add 4.")] * 2,
        n=2,
        params=SamplingParams(max_step_tokens=16, seed=0),
    )
    assert [len(r) for r in result.steps] == [2, 2]
    assert result.usage.policy_generated_tokens > 0
