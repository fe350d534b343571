"""``tts serve`` under concurrent load with its limits on, on loopback.

Starts ``tts serve`` (embedded models, the default limits: at most 64 runs in flight, then
429 + ``Retry-After``) as a subprocess on 127.0.0.1, then for each strategy and concurrency
fires that many requests at once (httpx async client, one connection each) and reports the
latency of the answered ones (p50 / p95), how many were refused with 429, other statuses,
and the server's resident memory. Last, a heavy client (a ``/batch`` of 32 best_of_n runs
with n=256) hangs up after a second and the server's CPU time is watched until it stops
growing: how long the server takes to go idle after a client leaves (it depends on the
abandoned runs being cancelled)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_serve_load [--concurrency 50 200]

Counts are bounded (at most ``sum(concurrency) x strategies`` requests); numbers depend on
the machine's other load, so run it on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks._util import table

STRATEGIES = {"cot": {}, "best_of_n": {"n": 4}}
#: the abandoned request, within the default limits (max_batch 32, n <= 256): 8,192 samples
HEAVY_BATCH, HEAVY = 32, {"n": 256}
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "langchain_tts.cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    for s in STRATEGIES:
        cmd += ["--strategy", s]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("tts serve did not start in 120 s")


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of ``pid`` in MB (Linux /proc)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / TICK  # utime + stime


async def burst(url: str, strategy: str, knobs: dict, questions: list[str]) -> dict:
    """All of ``questions`` at once; latency of the answered ones, counts by status."""
    limits = httpx.Limits(max_connections=len(questions), max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:

        async def one(q: str) -> tuple[int, float]:
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    f"{url}/tts/{strategy}/invoke",
                    json={"input": {"question": q}, "config": {"configurable": knobs}},
                )
                status = r.status_code
            except httpx.HTTPError:
                status = -1
            return status, time.perf_counter() - t0

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(q) for q in questions))
        wall = time.perf_counter() - t0
    ok = sorted(t for s, t in results if s == 200)
    counts: dict[int, int] = {}
    for s, _ in results:
        counts[s] = counts.get(s, 0) + 1
    return {
        "ok": len(ok),
        "rejected_429": counts.get(429, 0),
        "other": {k: v for k, v in counts.items() if k not in (200, 429)},
        "p50_s": statistics.median(ok) if ok else float("nan"),
        "p95_s": ok[min(len(ok) - 1, int(0.95 * len(ok)))] if ok else float("nan"),
        "wall_s": wall,
    }


async def idle_after_hangup(url: str, pid: int, budget_s: float = 300.0) -> dict:
    """A heavy batch abandoned after 1 s: seconds until the server's CPU use stops."""
    q = "Start with 3. Add 4. Multiply by 2. Subtract 5."
    body = {"inputs": [{"question": q}] * HEAVY_BATCH, "config": {"configurable": HEAVY}}
    async with httpx.AsyncClient(timeout=1.0) as client:
        try:
            await client.post(f"{url}/tts/best_of_n/batch", json=body)
        except httpx.TimeoutException:
            pass
    left = time.monotonic()
    prev = cpu_seconds(pid)
    while time.monotonic() - left < budget_s:
        await asyncio.sleep(0.5)
        now = cpu_seconds(pid)
        if now - prev < 0.05:  # under 10% of a core for half a second: idle
            return {"idle_after_s": round(time.monotonic() - left, 1), "gave_up": False}
        prev = now
    return {"idle_after_s": budget_s, "gave_up": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    from langchain_tts.eval.synthetic import make_split

    questions = [p.question for p in make_split("test", max(args.concurrency))]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port)
    results: dict = {"rss_start_mb": rss_mb(proc.pid)[0], "runs": []}
    try:
        # one request each first: the first call warms the models up (not timed)
        asyncio.run(burst(url, "cot", {}, questions[:1]))
        for strategy, knobs in STRATEGIES.items():
            for c in args.concurrency:
                r = asyncio.run(burst(url, strategy, knobs, questions[:c]))
                r.update(strategy=strategy, knobs=knobs, concurrency=c, rss_mb=rss_mb(proc.pid)[0])
                results["runs"].append(r)
                print(json.dumps(r), file=sys.stderr)
        results["idle"] = asyncio.run(idle_after_hangup(url, proc.pid))
        results["rss_peak_mb"] = rss_mb(proc.pid)[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = [
        (
            r["strategy"] + (f" n={r['knobs']['n']}" if r["knobs"] else ""),
            r["concurrency"],
            r["ok"],
            r["rejected_429"],
            sum(r["other"].values()),
            r["p50_s"],
            r["p95_s"],
            r["wall_s"],
            r["rss_mb"],
        )
        for r in results["runs"]
    ]
    header = ["strategy", "concurrent", "200", "429", "other", "p50 s", "p95 s", "wall s"]
    print(table([*header, "RSS MB"], rows))
    print(
        f"RSS at start {results['rss_start_mb']:.0f} MB, peak {results['rss_peak_mb']:.0f} MB; "
        f"idle {results['idle']['idle_after_s']} s after a client of a best_of_n n=256 batch "
        f"of {HEAVY_BATCH} hung up"
        + (" (still busy: gave up)" if results["idle"]["gave_up"] else "")
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
