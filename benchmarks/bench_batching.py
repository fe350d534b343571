"""Batching over HTTP: requests per search step and requests per second.

Beam search with :class:`~langchain_tts.policies.openai.OpenAIPolicy` and
:class:`~langchain_tts.prms.http.HTTPRewardPRM` against a local fake vLLM server
(:class:`~langchain_tts.testing.FakeOpenAIServer` on 127.0.0.1, in its own process so that
it does not share the client's GIL; it answers at once). Every search step must be
exactly one ``/v1/completions`` request (all prefixes x n) and one ``/pooling`` request
(all children), whatever the width. Prints, per number of kept beams, the requests per step
seen by the server and the requests per second for one search and for ``CONCURRENT``
searches at once (one pooled connection set per event loop)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_batching
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import httpx
from langgraph.graph.state import CompiledStateGraph

from benchmarks._util import table
from langchain_tts import create_tts_graph
from langchain_tts.policies.openai import OpenAIPolicy
from langchain_tts.prms.http import HTTPRewardPRM
from langchain_tts.testing import FakeOpenAIServer

DEPTH = 8  # search steps per question: the fake server ends every solution at this depth
CONCURRENT = 8
REPEATS = 3  # best of
WIDTHS = (4, 16, 64)


def _serve(depth: int, ready: Queue, stop: Event) -> None:
    """The fake server's process: also answers ``POST /stats`` with its request counts."""
    server = FakeOpenAIServer(finish_depth=depth)
    server.handler = lambda path, body: (200, dict(server.counts)) if path == "/stats" else None
    ready.put(server.root)
    stop.wait()
    server.close()


@contextmanager
def fake_vllm(depth: int) -> Iterator[str]:
    """A :class:`FakeOpenAIServer` in a child process; yields its root URL."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(depth, ready, stop), daemon=True)
    proc.start()
    try:
        yield ready.get(timeout=60)
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def counts(root: str) -> tuple[int, int]:
    """(``/completions``, ``/pooling``) requests the server has answered so far."""
    c = httpx.post(f"{root}/stats", json={}, timeout=10).json()
    return (
        sum(v for k, v in c.items() if k.endswith("/completions")),
        sum(v for k, v in c.items() if k.endswith("/pooling")),
    )


async def one_search(graph: CompiledStateGraph, question: str) -> int:
    """Runs one search; returns its number of search steps (``step`` updates)."""
    steps = 0
    async for chunk in graph.astream({"question": question}, stream_mode="updates"):
        steps += "step" in chunk
    return steps


async def seconds_of(coro: Awaitable[object]) -> float:
    t0 = time.perf_counter()
    await coro
    return time.perf_counter() - t0


async def concurrent_searches(graph: CompiledStateGraph) -> None:
    await asyncio.gather(*(one_search(graph, f"Start with {i}. Add 4.") for i in range(CONCURRENT)))


async def run_width(root: str, beams: int) -> dict[str, float]:
    url = root + "/v1"
    policy = OpenAIPolicy(url, "fake", chat_template="none", timeout=30)
    prm = HTTPRewardPRM(url, "fake-prm", format="qwen", chat_template="none", timeout=30)
    cfg = {"n": beams * 4, "beam_width": 4, "max_steps": DEPTH + 2}
    graph = create_tts_graph(policy, prm, "beam_search", cfg)
    await concurrent_searches(graph)  # warm-up: opens the pooled connections

    before = counts(root)
    steps = await one_search(graph, "Start with 3. Add 4.")
    after = counts(root)
    completions, pooling = after[0] - before[0], after[1] - before[1]
    single = min(
        [await seconds_of(one_search(graph, "Start with 3. Add 4.")) for _ in range(REPEATS)]
    )
    before = counts(root)
    many = min([await seconds_of(concurrent_searches(graph)) for _ in range(REPEATS)])
    after = counts(root)
    searches = REPEATS * CONCURRENT  # every search takes the same number of steps
    await policy.aclose()
    await prm.aclose()
    return {
        "steps": steps,
        "policy_req_per_step": completions / steps,
        "prm_req_per_step": pooling / steps,
        "rps_single": (completions + pooling) / single,
        "steps_per_s": steps / single,
        "rps_concurrent": 2 * steps * CONCURRENT / many,
        "concurrent_req_per_step": (after[0] - before[0] + after[1] - before[1])
        / (searches * steps),
    }


def main() -> dict[str, dict[str, float]]:
    """Runs the benchmark, prints the table, returns ``{width: measurements}``."""
    results: dict[str, dict[str, float]] = {}
    rows = []
    with fake_vllm(DEPTH) as root:
        for beams in WIDTHS:
            r = asyncio.run(run_width(root, beams))
            results[str(beams)] = r
            rows.append(
                [
                    beams,
                    beams * 4,
                    int(r["steps"]),
                    r["policy_req_per_step"],
                    r["prm_req_per_step"],
                    r["steps_per_s"],
                    r["rps_single"],
                    r["rps_concurrent"],
                ]
            )
    print(f"beam search over HTTP (fake vLLM on 127.0.0.1), {DEPTH} steps per search")
    header = ["beams", "n", "steps", "policy req/step", "PRM req/step", "steps/s", "req/s"]
    print(table([*header, f"req/s x{CONCURRENT}"], rows))
    ok = all(
        r["policy_req_per_step"] == r["prm_req_per_step"] == 1.0
        and r["concurrent_req_per_step"] == 2.0
        for r in results.values()
    )
    print(
        "one policy + one PRM request per search step (alone and concurrent):",
        "yes" if ok else "NO",
    )
    return results


if __name__ == "__main__":
    main()
