"""VLLMPolicy against a fake ``vllm`` package (tests/fake_vllm.py) shaped like vLLM's async API.

The fake is injected through ``sys.modules``, so the real glue code runs: engine args, the
engine's own event loop, one request per prefix submitted together, sampling params, output
conversion, usage, errors and cancellation. A real engine runs only where vLLM and a CUDA GPU
are present; that test skips elsewhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import fake_vllm
import pytest

from langchain_tts import create_tts_graph
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BackendError, ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.models.tokenizer import build_tokenizer
from langchain_tts.policies.vllm import (
    VLLMPolicy,
    estimate_matmul_parameters,
    request_outputs_to_steps,
)
from langchain_tts.testing import FakePRM

HAS_VLLM = importlib.util.find_spec("vllm") is not None

HF_CONFIG = SimpleNamespace(  # the fields of an HF LlamaConfig that the estimate reads
    vocab_size=101,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=1,
    num_key_value_heads=1,
)
TINY_PARAMS = 2 * (2 * 64 * 64 + 2 * 64 * 64 + 3 * 64 * 128) + 101 * 64


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


def policy_threads() -> int:
    return sum(t.name == "langchain-tts-vllm" for t in threading.enumerate())


def depth(prompt: str) -> int:
    """Steps in a prompt of the embedded chat template: ``question\\n\\n`` + ``step\\n\\n``s."""
    return prompt.count("\n\n") - 1


def search_script(prompt: str, j: int) -> str:
    """Two steps (with text past the delimiter, which the stop cuts), then a boxed answer."""
    d = depth(prompt)
    if d < 2:
        return f"Step {d}.{j}: keep going\n\nnot part of the step"
    return "So the answer is \\boxed{7}."


@pytest.fixture
def policies() -> Iterator[list[VLLMPolicy]]:
    made: list[VLLMPolicy] = []
    yield made
    for p in made:
        p.close()


def make(policies: list[VLLMPolicy], *args: Any, **kw: Any) -> VLLMPolicy:
    policy = VLLMPolicy(*args, **kw)
    policies.append(policy)
    return policy


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return fake_vllm.install(monkeypatch, search_script, hf_config=HF_CONFIG)


# -- no vLLM ---------------------------------------------------------------------------------
def test_missing_vllm_raises_import_error_with_install_hint(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails everywhere
    before = policy_threads()
    with pytest.raises(ImportError, match=r"pip install 'langchain-tts\[vllm\]'"):
        VLLMPolicy("Qwen/Qwen2.5-Math-1.5B-Instruct")
    assert policy_threads() == before  # nothing started


# -- output conversion (pure) ----------------------------------------------------------------
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
    # 22 prompt tokens, 6 of them prefix-cache hits: 16 computed
    assert (usage.policy_calls, usage.policy_prompt_tokens, usage.policy_generated_tokens) == (
        1,
        16,
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
    assert estimate_matmul_parameters(HF_CONFIG) == TINY_PARAMS


# -- building the engine ---------------------------------------------------------------------
def test_builds_an_async_engine_with_prefix_caching_on_its_own_loop(vllm, policies):
    before = policy_threads()
    policy = make(policies, "tiny", gpu_memory_utilization=0.3, max_model_len=256)
    (engine,) = vllm.engines
    assert policy.engine is engine
    args = engine.engine_args
    assert (args.model, args.enable_prefix_caching, args.gpu_memory_utilization) == (
        "tiny",
        True,
        0.3,
    )
    assert (args.max_model_len, args.enable_log_requests) == (256, False)
    # The engine was built on the policy's loop thread, so its output handler lives there.
    assert engine._loop is policy._loop and policy._thread.is_alive()
    assert policy_threads() == before + 1
    # Tokenizer from the engine (an async get_tokenizer), FLOPs from its HF config.
    assert policy.tokenizer is engine._tokenizer
    assert policy.num_parameters == TINY_PARAMS
    assert policy.name == "VLLMPolicy(tiny)"

    policy.close()
    policy.close()  # idempotent
    assert engine.shutdowns == 1 and not policy._thread.is_alive() and policy._loop.is_closed()
    assert policy_threads() == before
    with pytest.raises(BackendError, match="closed"):
        policy.generate([Trajectory(question="Q")])


def test_engine_args_across_vllm_versions(monkeypatch, policies):
    legacy = fake_vllm.install(monkeypatch, legacy_args=True)
    make(policies, "m", enable_prefix_caching=False)
    args = legacy.engines[0].engine_args
    assert args.disable_log_requests is True and args.enable_prefix_caching is False
    with pytest.raises(ConfigError, match="AsyncEngineArgs.*no_such_arg"):
        VLLMPolicy("m", no_such_arg=1)
    with pytest.raises(ConfigError, match="only apply when VLLMPolicy builds"):
        VLLMPolicy(engine=legacy.engines[0], max_model_len=4)
    with pytest.raises(ConfigError, match="model="):
        VLLMPolicy()


def test_engine_start_failure_is_a_backend_error_and_leaks_no_thread(vllm, monkeypatch):
    def oom(args: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(vllm.AsyncLLMEngine, "from_engine_args", oom)
    before = policy_threads()
    with pytest.raises(BackendError, match="could not set up.*CUDA out of memory"):
        VLLMPolicy("big-model")
    assert policy_threads() == before


# -- one search step -------------------------------------------------------------------------
def test_one_step_submits_every_prefix_at_once(vllm, policies):
    policy = make(policies, "tiny")
    engine = vllm.engines[0]
    prefixes = [Trajectory(question="Start with 3."), Trajectory(question="Q", steps=["1+1=2"])]
    params = SamplingParams(temperature=0.6, top_p=0.9, max_step_tokens=32, seed=3)
    result = policy.generate(prefixes, n=3, params=params)

    assert len(engine.calls) == 2  # one request per prefix ...
    assert [c.running_with for c in engine.calls] == [2, 2]  # ... submitted together
    assert len({c.request_id for c in engine.calls}) == 2
    tok = build_tokenizer()
    # The chat template already opens the solution: no extra special tokens.
    assert (
        engine.calls[1].prompt_token_ids
        == tok("Q\n\n1+1=2\n\n", add_special_tokens=False)["input_ids"]
    )
    for i, call in enumerate(engine.calls):
        sp = call.params
        assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens) == (3, 0.6, 0.9, 32)
        assert sp.stop == ["\n\n"] and sp.include_stop_str_in_output is False
        assert sp.skip_special_tokens is True
        assert sp.output_kind is vllm.sampling_params.RequestOutputKind.FINAL_ONLY
        assert sp.seed == 3 + 3 * i  # prompt i: seed + i * n ...
    # ... so no two samples of the step share a seed (vLLM gives sample j seed + j).
    assert [c.child_seeds for c in engine.calls] == [[3, 4, 5], [6, 7, 8]]

    assert [[s.text for s in row] for row in result.steps] == [
        ["Step 0.0: keep going", "Step 0.1: keep going", "Step 0.2: keep going"],
        ["Step 1.0: keep going", "Step 1.1: keep going", "Step 1.2: keep going"],
    ]
    assert {s.finish_reason for row in result.steps for s in row} == {"step"}
    # Token counts are the engine's token ids: the step and its delimiter.
    assert [s.tokens for s in result.steps[0]] == [len("Step 0.0: keep going\n\n")] * 3
    engine_tokens = sum(len(c.token_ids) for call in engine.calls for c in call.outputs)
    u = result.usage
    assert (u.policy_calls, u.policy_generated_tokens) == (1, engine_tokens)
    assert u.policy_prompt_tokens == sum(len(c.prompt_token_ids) for c in engine.calls)
    # a budget reserves each prompt once, as the engine computes it for all n samples
    assert policy.prompt_tokens_bound(prefixes, 3, params) == u.policy_prompt_tokens
    assert u.policy_flops == 2.0 * TINY_PARAMS * (u.policy_prompt_tokens + engine_tokens)
    assert u.policy_cached_tokens == 0 and u.seconds > 0

    again = policy.generate(prefixes, n=3, params=params)  # the same prompts: cache hits
    hits = sum(c.num_cached_tokens for c in engine.calls[2:])
    assert again.usage.policy_cached_tokens == hits > 0
    # the ledger counts computed prompt tokens: the hits are read, not computed (no FLOPs)
    read = sum(len(c.prompt_token_ids) for c in engine.calls[2:])
    assert again.usage.policy_prompt_tokens == read - hits
    gen = again.usage.policy_generated_tokens
    assert again.usage.policy_flops == 2.0 * TINY_PARAMS * (read - hits + gen)


def test_finish_reasons_and_token_counts(monkeypatch, policies):
    writes = ["a\n\nb", "done", "x" * 50, "yyyyyy\n\n"]
    vllm = fake_vllm.install(monkeypatch, lambda prompt, j: writes[j])
    policy = make(policies, "tiny")
    eos = policy.tokenizer.eos_token_id
    params = SamplingParams(max_step_tokens=8)
    (row,) = policy.generate([Trajectory(question="Q")], n=4, params=params).steps
    assert [(s.text, s.tokens, s.finish_reason) for s in row] == [
        ("a", 3, "step"),  # stop on the delimiter: the step goes on
        ("done", 5, "eos"),  # EOS (its id counted, not in the text): the solution ended
        ("x" * 8, 8, "length"),  # the step cap
        ("yyyyyy", 8, "step"),  # the delimiter completed by the last allowed token
    ]
    outs = vllm.engines[0].calls[0].outputs
    assert [(c.finish_reason, c.stop_reason) for c in outs] == [
        ("stop", "\n\n"),
        ("stop", None),
        ("length", None),
        ("stop", "\n\n"),
    ]
    assert outs[1].token_ids[-1] == eos

    # stop_at_step=False (whole solutions): no stop string is sent; EOS ends it.
    whole = policy.generate(
        [Trajectory(question="Q")], n=1, params=SamplingParams(stop_at_step=False)
    )
    assert vllm.engines[0].calls[-1].params.stop == []
    assert (whole.steps[0][0].text, whole.steps[0][0].finish_reason) == ("a\n\nb", "eos")


def test_greedy_sends_one_sample_per_prefix_and_copies_it(vllm, policies):
    policy = make(policies, "tiny")
    result = policy.generate([Trajectory(question="Q")], n=4, params=SamplingParams(temperature=0))
    (call,) = vllm.engines[0].calls
    assert (call.params.n, call.params.temperature, call.params.top_p) == (1, 0, 1.0)
    assert [s.text for s in result.steps[0]] == ["Step 0.0: keep going"] * 4
    assert result.usage.policy_generated_tokens == len(call.outputs[0].token_ids)


def test_streamed_outputs_are_merged_by_sample_index(vllm, policies, monkeypatch):
    """With vLLM's default CUMULATIVE kind, V1 yields the n samples one child at a time."""
    policy = make(policies, "tiny")
    kind = vllm.sampling_params.RequestOutputKind
    plain = policy.sampling_params

    def cumulative(n: int, params: SamplingParams, seed: int | None = None) -> Any:
        sp = plain(n, params, seed)
        sp.output_kind = kind.CUMULATIVE
        return sp

    monkeypatch.setattr(policy, "sampling_params", cumulative)
    (row,) = policy.generate([Trajectory(question="Q")], n=3).steps
    assert [s.text for s in row] == [f"Step 0.{j}: keep going" for j in range(3)]


# -- in a graph ------------------------------------------------------------------------------
def test_beam_search_graph_one_engine_round_per_search_step(vllm, policies):
    policy = make(policies, "tiny")
    engine = vllm.engines[0]
    prm = FakePRM(lambda t: [0.5 + 0.1 * (len(s) % 3) for s in t.steps])
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2, "max_steps": 6})
    out = graph.invoke({"question": "Start with 3. Add 4."})
    assert out["answer"] == "7"

    rounds: dict[str, list[fake_vllm.Call]] = {}
    for call in engine.calls:
        rounds.setdefault(call.request_id.rsplit("-", 1)[0], []).append(call)
    shapes = [[c.params.n for c in calls] for calls in rounds.values()]
    assert shapes == [[4], [2, 2], [2, 2]]  # step 0: the root; then 2 beams x 2 children
    assert all(c.running_with == len(calls) for calls in rounds.values() for c in calls)
    assert len(rounds) == len(prm.calls) == out["usage"].policy_calls == 3
    for call in engine.calls:
        sp = call.params
        assert sp.stop == ["\n\n"] and (sp.temperature, sp.top_p) == (0.7, 0.95)
        assert sp.max_tokens == 2048 and sp.seed is None
    reasons = [c.finish_reason for call in engine.calls for c in call.outputs]
    assert reasons == ["stop"] * 8 + ["stop"] * 4  # 8 steps, then 4 EOS-ended solutions
    assert all(c.stop_reason is None for c in engine.calls[-1].outputs)

    u = out["usage"]
    assert u.policy_generated_tokens == sum(
        len(c.token_ids) for call in engine.calls for c in call.outputs
    )
    read = sum(len(c.prompt_token_ids) for c in engine.calls)
    assert u.policy_cached_tokens == sum(c.num_cached_tokens for c in engine.calls) > 0
    assert u.policy_prompt_tokens == read - u.policy_cached_tokens  # computed only
    assert u.policy_flops == 2.0 * TINY_PARAMS * (
        u.policy_prompt_tokens + u.policy_generated_tokens
    )
    best = max(out["candidates"], key=lambda t: t.score or 0)
    assert best.finished and best.finish_reason in ("eos", "answer")

    # Sync invoke ran every node on a fresh event loop; the engine saw only its own.
    out2 = graph.invoke({"question": "Start with 3. Add 4."})
    out3 = asyncio.run(graph.ainvoke({"question": "Start with 3. Add 4."}))
    assert out2["answer"] == out3["answer"] == "7" and len(engine.calls) == 15
    assert {c.loop for c in engine.calls} == {policy._loop}


def test_engine_error_mid_search_is_a_backend_error_and_aborts_the_rest(vllm, policies):
    policy = make(policies, "tiny")
    engine = vllm.engines[0]

    def fail(call: fake_vllm.Call) -> BaseException | None:
        prompt = policy.tokenizer.decode(call.prompt_token_ids)
        if depth(prompt) == 2 and call.request_id.endswith("-0"):
            return fake_vllm.EngineGenerateError("boom")
        return None

    engine.fail = fail
    graph = create_tts_graph(
        policy, FakePRM(lambda t: [0.5] * len(t.steps)), "beam_search", {"n": 4, "beam_width": 2}
    )
    with pytest.raises(BackendError, match="vLLM generate failed: EngineGenerateError: boom") as e:
        graph.invoke({"question": "Start with 3. Add 4."})
    assert e.value.progress["step"] == 2 and len(e.value.progress["active"]) == 2
    assert e.value.partial["prompts"] == 2
    failed, sibling = engine.calls[-2:]
    assert failed.request_id.endswith("-0") and engine.aborted == [sibling.request_id]
    assert not engine.running

    # The engine is still usable; a dead one (shut down elsewhere) is a BackendError too.
    engine.fail = None
    assert graph.invoke({"question": "Start with 3. Add 4."})["answer"] == "7"
    engine.shutdown()
    with pytest.raises(BackendError, match="EngineDeadError"):
        policy.generate([Trajectory(question="Q")])


async def test_cancelling_a_call_aborts_its_requests(monkeypatch, policies):
    vllm = fake_vllm.install(monkeypatch, search_script, delay=0.05)
    policy = make(policies, "tiny")
    engine = vllm.engines[0]
    task = asyncio.create_task(
        policy.agenerate([Trajectory(question="A"), Trajectory(question="B")], n=2)
    )
    await asyncio.sleep(0.06)
    assert len(engine.running) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 2
    while engine.running and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert sorted(engine.aborted) == sorted(c.request_id for c in engine.calls)
    assert not engine.running


# -- an engine you built ---------------------------------------------------------------------
async def test_wraps_an_engine_serving_on_the_callers_loop(vllm, policies):
    loop = asyncio.get_running_loop()
    engine = fake_vllm.AsyncLLM(vllm.AsyncEngineArgs(model="mine"), script=search_script)
    assert engine._loop is loop  # built inside a running loop: bound to it
    with pytest.raises(ConfigError, match="tokenizer="):
        VLLMPolicy(engine=engine, loop=loop)
    policy = make(policies, engine=engine, loop=loop, tokenizer=build_tokenizer())
    result = await policy.agenerate([Trajectory(question="Q")], n=2)
    assert [s.text for s in result.steps[0]] == ["Step 0.0: keep going", "Step 0.1: keep going"]
    assert {c.loop for c in engine.calls} == {loop} and policy._thread is None
    assert policy.num_parameters == 0 and policy.name == "VLLMPolicy(AsyncLLM)"
    policy.close()
    assert engine.shutdowns == 0 and not loop.is_closed()  # not ours to shut down


def test_wraps_an_unused_engine_on_the_policys_loop(vllm, policies):
    engine = fake_vllm.AsyncLLM(
        vllm.AsyncEngineArgs(model="mine"),
        script=search_script,
        hf_config=HF_CONFIG,
        async_get_tokenizer=False,  # recent vLLM: a plain method
    )
    policy = make(policies, engine=engine, num_parameters=123)
    assert policy.num_parameters == 123
    result = policy.generate([Trajectory(question="Q")], n=1)
    assert result.steps[0][0].text == "Step 0.0: keep going"
    assert engine._loop is policy._loop
    policy.close()
    assert engine.shutdowns == 0 and not policy._thread.is_alive()


# -- a real engine (CUDA hosts) --------------------------------------------------------------
def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


@pytest.mark.skipif(
    not (HAS_VLLM and _has_cuda()), reason="needs vLLM and a CUDA GPU (CUDA hosts only)"
)
def test_real_engine_on_the_tiny_policy(tiny_policy_dir: Path):  # pragma: no cover - GPU hosts
    policy = VLLMPolicy(
        str(tiny_policy_dir), enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=512
    )
    try:
        result = policy.generate(
            [Trajectory(question="Start with 3. Add 4.")] * 2,
            n=2,
            params=SamplingParams(max_step_tokens=16, seed=0),
        )
        assert [len(r) for r in result.steps] == [2, 2]
        assert result.usage.policy_generated_tokens > 0
        assert all(0 < s.tokens <= 16 for row in result.steps for s in row)
    finally:
        policy.close()
