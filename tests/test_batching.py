"""Dynamic batching: concurrent calls on one local model merge into one forward pass."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from langchain_tts.backends.batching import RequestCoalescer
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Trajectory
from langchain_tts.policies.hf import HFPolicy
from langchain_tts.prms.qwen import QwenPRM


def test_coalescer_merges_requests_that_arrive_while_busy():
    calls: list[list[int]] = []
    lock = threading.Lock()

    def fn(items: list[int], key: object) -> list[int]:
        calls.append(list(items))
        time.sleep(0.05)  # the model is busy: later requests pile up
        return [x * 10 for x in items]

    co: RequestCoalescer[int, int] = RequestCoalescer(fn, lock)
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = co.run([i, i + 100], key="k")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join(5)
    assert results == {i: [i * 10, (i + 100) * 10] for i in range(6)}
    assert len(calls) < 6  # at least some requests were merged
    assert sum(len(c) for c in calls) == 12


def test_coalescer_never_merges_different_keys_and_propagates_errors():
    lock = threading.Lock()
    seen: list[tuple] = []

    def fn(items: list[int], key: object) -> list[int]:
        seen.append((key, tuple(items)))
        if key == "bad":
            raise ValueError("boom")
        return items

    co: RequestCoalescer[int, int] = RequestCoalescer(fn, lock)
    assert co.run([1], "a") == [1]
    with pytest.raises(ValueError, match="boom"):
        co.run([2], "bad")
    assert all(len({k for k, _ in seen if k == key}) == 1 for key in ("a", "bad"))


async def test_hf_policy_merges_concurrent_graph_calls(tiny_policy_dir, tiny_prm_dir):
    policy = HFPolicy.from_pretrained(tiny_policy_dir)
    prm = QwenPRM.from_pretrained(tiny_prm_dir)
    params = SamplingParams(temperature=0.0, max_step_tokens=6)
    prefixes = [Trajectory(question=f"Start with {i}. Add 3.") for i in range(8)]
    alone = [policy.generate([p], 2, params).steps[0] for p in prefixes]
    before = policy._coalescer.batches_run
    together = await asyncio.gather(*(policy.agenerate([p], 2, params) for p in prefixes))
    assert [r.steps[0] for r in together] == alone  # same greedy steps, merged or not
    assert max(policy._coalescer.sizes_since(before)) > 1
    assert policy._coalescer.batches_run - before < 8
    # Each caller is billed for its own tokens only.
    assert all(r.usage.policy_generated_tokens == r.steps[0][0].tokens for r in together)

    # Sampled calls that differ only in their seeds share a generate too, each drawing the
    # samples it draws alone (the seed is per row, not the batch's)
    seeded = [SamplingParams(temperature=1.0, seed=1000 * i, max_step_tokens=6) for i in range(8)]
    alone_seeded = [policy.generate([p], 2, q).steps[0] for p, q in zip(prefixes, seeded)]
    before = policy._coalescer.batches_run
    together = await asyncio.gather(
        *(policy.agenerate([p], 2, q) for p, q in zip(prefixes, seeded))
    )
    assert [r.steps[0] for r in together] == alone_seeded
    assert policy._coalescer.batches_run - before < 8

    trajs = [Trajectory(question="q", steps=[s[0].text or "x"]) for s in alone]
    one_by_one = [prm.score([t]).scores[0] for t in trajs]
    merged = await asyncio.gather(*(prm.ascore([t]) for t in trajs))
    for a, b in zip(one_by_one, merged):
        assert b.scores[0] == pytest.approx(a, abs=1e-5)
