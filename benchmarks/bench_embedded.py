"""Embedded models on CPU: ``HFPolicy`` tokens/s vs plain ``model.generate``.

The embedded small policy (``load_default_policy()``) continues a batch of synthetic
questions, greedily (both sides then generate the same tokens), through the policy's full
path (``policy.generate``: prompt rendering and tokenization, worker thread, model lock,
request coalescer, padding, decoding into ``Step`` objects) and through one plain
``model.generate`` call on the same pre-tokenized, left-padded batch with the same
stopping rule. Two modes: one reasoning step (stop at the step delimiter) and a whole
solution (stop at EOS). The ratio policy / plain should be close to 1::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_embedded
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from benchmarks._util import table  # noqa: E402
from langchain_tts.core.config import SamplingParams  # noqa: E402
from langchain_tts.core.types import Trajectory  # noqa: E402
from langchain_tts.eval.synthetic import make_split  # noqa: E402
from langchain_tts.models import load_default_policy  # noqa: E402
from langchain_tts.policies.hf import HFPolicy, _StopAtDelimiter  # noqa: E402

REPEATS = 3
BATCHES = (16, 64)
MAX_NEW_TOKENS = 128


def plain_generate(policy: HFPolicy, prompts: list[list[int]], stop_at_step: bool) -> int:
    """One ``model.generate`` on the left-padded batch; returns the tokens generated.

    Tokens are counted as the policy counts them: up to and including the delimiter /
    EOS that ended each row.
    """
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), policy.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    stopper = _StopAtDelimiter(policy.tokenizer, policy.step_delimiter, width)
    with torch.inference_mode():
        out = policy.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=policy.pad_token_id,
            eos_token_id=policy.eos_token_ids,
            stopping_criteria=[stopper] if stop_at_step else None,
        )
    eos = set(policy.eos_token_ids)
    total = 0
    for r, row in enumerate(out[:, width:].tolist()):
        eos_at = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
        total += min(stopper.stop_len.get(r, eos_at), eos_at)
    return total


def measure(policy: HFPolicy, batch: int, stop_at_step: bool) -> dict[str, float]:
    prefixes = [Trajectory(question=p.question) for p in make_split("test", batch)]
    params = SamplingParams(
        temperature=0.0, max_step_tokens=MAX_NEW_TOKENS, stop_at_step=stop_at_step
    )
    prompts = [policy.encode(p) for p in prefixes]  # the plain side gets them for free
    best = {"policy": float("inf"), "plain": float("inf")}
    tokens = {"policy": 0, "plain": 0}
    for _ in range(REPEATS):  # interleaved: background load hits both sides alike
        policy.clear_cache()  # like for like: the plain side prefills every prompt each time
        t0 = time.perf_counter()
        result = policy.generate(prefixes, 1, params)
        best["policy"] = min(best["policy"], time.perf_counter() - t0)
        tokens["policy"] = result.usage.policy_generated_tokens
        t0 = time.perf_counter()
        tokens["plain"] = plain_generate(policy, prompts, stop_at_step)
        best["plain"] = min(best["plain"], time.perf_counter() - t0)
    tps = {k: tokens[k] / best[k] for k in best}
    return {
        "policy_tokens": tokens["policy"],
        "plain_tokens": tokens["plain"],
        "policy_tps": tps["policy"],
        "plain_tps": tps["plain"],
        "ratio": tps["policy"] / tps["plain"],
    }


def main() -> dict[str, dict[str, float]]:
    """Runs the benchmark, prints the table, returns ``{mode/batch: measurements}``."""
    policy = load_default_policy()
    warm = [Trajectory(question=p.question) for p in make_split("test", 4)]
    policy.generate(warm, 1, SamplingParams(temperature=0.0, max_step_tokens=8))
    results: dict[str, dict[str, float]] = {}
    rows = []
    for stop_at_step, mode in ((True, "step"), (False, "solution")):
        for batch in BATCHES:
            r = measure(policy, batch, stop_at_step)
            results[f"{mode}/{batch}"] = r
            rows.append(
                [mode, batch, int(r["policy_tokens"]), int(r["plain_tokens"]), r["policy_tps"]]
                + [r["plain_tps"], r["ratio"]]
            )
    print(
        f"embedded policy ({policy.num_parameters / 1e6:.1f}M matmul params) on CPU, "
        f"{torch.get_num_threads()} torch thread(s), greedy, best of {REPEATS}"
    )
    header = ["mode", "batch", "tokens", "plain tokens", "HFPolicy tok/s", "generate tok/s"]
    print(table([*header, "ratio"], rows))
    return results


if __name__ == "__main__":
    main()
