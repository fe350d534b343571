"""Loading the embedded models, and what seeded sampling and the native runtime cost.

Each load is timed in a fresh Python process (``HF_HUB_OFFLINE=1``), split into importing
``langchain_tts`` (LangGraph, LangChain core, pydantic; torch is not imported yet), the
first ``load_default()`` (torch, the weights, and with ``backend="transformers"``
transformers' model modules) and a second ``load_default()`` in the same process (weights
only), for both backends. Then, in this process: whole solutions of the embedded small
policy for 4 questions x 16 samples, seeded (per-row random streams, Gumbel-max) vs
unseeded (multinomial draw), and the native decoding loop vs transformers' ``generate``
(same tokens; the ratios should be close to 1 or above)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_load
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks._util import table

REPEATS = 3

_CHILD = """
import json, time
t0 = time.perf_counter()
import langchain_tts
from langchain_tts.models import load_default
t1 = time.perf_counter()
load_default(prm={prm!r}, backend={backend!r})
t2 = time.perf_counter()
load_default(prm={prm!r}, backend={backend!r})
t3 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "first": t2 - t1, "again": t3 - t2}}))
"""


def load_times(prm: str, backend: str = "native") -> dict[str, float]:
    """The fastest of REPEATS fresh processes, per phase (seconds)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = []
    for _ in range(REPEATS):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD.format(prm=prm, backend=backend)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: min(r[k] for r in runs) for k in runs[0]}


def sampling_ratio() -> dict[str, float]:
    from langchain_tts.core.config import SamplingParams
    from langchain_tts.core.types import Trajectory
    from langchain_tts.eval.synthetic import make_split
    from langchain_tts.models import load_default_policy

    policies = {b: load_default_policy(backend=b) for b in ("native", "transformers")}
    prefixes = [Trajectory(question=p.question) for p in make_split("test", 4)]
    best: dict[str, float] = {}
    for _ in range(REPEATS):
        for backend, policy in policies.items():
            for label, seed in (("unseeded", None), ("seeded", 0)):
                params = SamplingParams(
                    temperature=0.8, seed=seed, max_step_tokens=256, stop_at_step=False
                )
                t0 = time.perf_counter()
                res = policy.generate(prefixes, n=16, params=params)
                rate = res.usage.policy_generated_tokens / (time.perf_counter() - t0)
                key = f"{backend} {label}"
                best[key] = max(best.get(key, 0.0), rate)
    return {
        **best,
        "ratio": best["native seeded"] / best["native unseeded"],
        "native_over_transformers": best["native seeded"] / best["transformers seeded"],
    }


def main() -> dict[str, object]:
    rows, loads = [], {}
    for backend in ("native", "transformers"):
        for prm in ("strong", "calculator"):
            t = loads[f"{prm} {backend}"] = load_times(prm, backend)
            rows.append(
                [f"small + {prm}, {backend}", f"{t['import']:.2f}", f"{t['first']:.2f}",
                 f"{t['again']:.2f}", f"{t['import'] + t['first']:.2f}"]
            )  # fmt: skip
    print(
        table(["load_default()", "import s", "first load s", "second load s", "cold total s"], rows)
    )
    s = sampling_ratio()
    print(
        table(
            ["sampling (4 x 16 whole solutions)", "tokens/s"],
            [*[[k, f"{v:.0f}"] for k, v in s.items() if " " in k],
             ["ratio seeded / unseeded (native)", f"{s['ratio']:.2f}"],
             ["ratio native / transformers (seeded)", f"{s['native_over_transformers']:.2f}"]],
        )
    )  # fmt: skip
    return {"load": loads, "sampling": s}


if __name__ == "__main__":
    main()
