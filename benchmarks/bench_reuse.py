"""Prefix reuse: beam search N=16 vs best-of-16 on the embedded models, reuse on and off.

Beam search re-reads every beam's whole prefix at each step; with the policy's prefix KV
cache (``HFPolicy(prefix_cache=True)``, the default) a beam's children prefill only what
their parent's cached row lacks. This runs both strategies, seeded, on the same embedded
test problems with the cache on and off (a policy object per variant on the same weights,
each with its own cache), interleaved problem by problem, and prints per question the
computed FLOPs (policy and PRM apart), wall time, prompt tokens computed and read from
cache, and the accuracy; then the ratios beam / best-of-n and off / on, and whether every
seeded answer is the same either way::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_reuse [problems] [--all]
        [--prm calculator|strong|weak|likelihood] [--prm-backend native|transformers]

``--all`` adds DVTS, MCTS, particle filtering and revision by backtracking (FLOPs per
question, reuse on and off). "Reuse off" turns off both the policy's KV cache and the
PRM's incremental scoring. ``--prm-backend transformers`` loads the verifier's weights as
a transformers model, the way a hub PRM runs (its incremental scoring continues a
``DynamicCache``).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._util import table  # noqa: E402
from langchain_tts.core.types import Usage  # noqa: E402
from langchain_tts.eval.datasets import load_synthetic  # noqa: E402
from langchain_tts.eval.grading import grade  # noqa: E402
from langchain_tts.graph import create_tts_graph  # noqa: E402
from langchain_tts.models import load_default_policy, load_default_prm  # noqa: E402
from langchain_tts.policies.hf import HFPolicy  # noqa: E402

PROBLEMS = 20
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "beam_search": ("beam_search", {"n": 16, "beam_width": 4}),
    "best_of_16": ("best_of_n", {"n": 16}),
}
#: ``--all``: the other step-level searches, their FLOPs per question with reuse on and off
MORE_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "dvts": ("dvts", {"n": 16, "beam_width": 4}),
    "mcts": ("mcts", {"simulations": 16}),
    "particle_filtering": ("particle_filtering", {"n": 16}),
    "revision (backtrack)": ("revision", {"revise": "backtrack"}),
}


class _Run:
    """One variant (strategy x reuse): its graph, its own policy object, running totals."""

    def __init__(self, policy: HFPolicy, prm: Any, strategy: str, cfg: dict):
        self.graph = create_tts_graph(policy, prm, strategy, {**cfg, "seed": 0})
        self.usage, self.seconds, self.correct = Usage(), 0.0, 0
        self.answers: list[str | None] = []

    def solve(self, problem: Any) -> None:
        t0 = time.perf_counter()
        out = self.graph.invoke({"question": problem.problem})
        self.seconds += time.perf_counter() - t0
        self.usage = self.usage + out["usage"]
        self.answers.append(out["answer"])
        self.correct += grade(out["solution"] or "", problem.answer)[1]

    def per_question(self) -> dict[str, Any]:
        usage, k = self.usage, len(self.answers)
        return {
            "policy_gflops": usage.policy_flops / k / 1e9,
            "prm_gflops": usage.prm_flops / k / 1e9,
            "gflops": usage.flops / k / 1e9,
            "seconds": self.seconds / k,
            "prompt": usage.policy_prompt_tokens / k,
            "cached": usage.policy_cached_tokens / k,
            "prm_tokens": usage.prm_tokens / k,
            "prm_cached": usage.prm_cached_tokens / k,
            "generated": usage.policy_generated_tokens / k,
            "accuracy": self.correct / k,
            "answers": self.answers,
        }


def _verifier(reuse: bool, kind: str = "calculator", backend: str = "native") -> Any:
    """A variant's own verifier (its own incremental-scoring cache, or none with ``reuse``
    off). Identical candidates are scored once either way (the strategies' own dedupe)."""
    prm = load_default_prm(kind, backend=backend)
    if not reuse:
        prm.cache_tokens = 0
    return prm


def main(
    problems: int = PROBLEMS,
    more: bool = False,
    prm_kind: str = "calculator",
    prm_backend: str = "native",
) -> dict[str, Any]:
    base = load_default_policy()
    prm = _verifier(True, prm_kind, prm_backend)
    data = load_synthetic("test", problems)
    cases = {**CASES, **(MORE_CASES if more else {})}
    runs: dict[str, _Run] = {}
    for case, (strategy, cfg) in cases.items():
        for reuse in ("on", "off"):
            # a policy object per variant (same weights): no variant reads another's cache
            policy = HFPolicy(base.model, base.tokenizer, prefix_cache=reuse == "on")
            verifier = _verifier(reuse == "on", prm_kind, prm_backend)
            runs[f"{case} reuse {reuse}"] = _Run(policy, verifier, strategy, cfg)
    _Run(base, prm, "best_of_n", {"n": 4}).solve(data[0])  # warm-up: first-call costs
    for p in data:  # interleaved: background load spreads evenly over the variants
        for run in runs.values():
            run.solve(p)
    results = {name: run.per_question() for name, run in runs.items()}
    rows = [
        [name, r["policy_gflops"], r["prm_gflops"], r["gflops"], r["seconds"], r["prompt"],
         r["cached"], r["generated"], r["prm_tokens"], f"{r['accuracy']:.0%}"]
        for name, r in results.items()
    ]  # fmt: skip
    print(
        f"{problems} embedded test problems, per question, seeded (seed 0); verifier "
        f"{prm_kind} on the {prm_backend} backend:"
    )
    print(
        table(
            ["run", "policy GFLOPs", "PRM GFLOPs", "GFLOPs", "wall s", "prompt computed",
             "prompt cached", "generated", "PRM tokens", "accuracy"],
            rows,
        )
    )  # fmt: skip
    ratios: dict[str, float | bool] = {}
    for reuse in ("on", "off"):
        beam, bon = results[f"beam_search reuse {reuse}"], results[f"best_of_16 reuse {reuse}"]
        ratios[f"beam/bon flops reuse {reuse}"] = beam["gflops"] / bon["gflops"]
        policy_ratio = beam["policy_gflops"] / bon["policy_gflops"]
        ratios[f"beam/bon policy flops reuse {reuse}"] = policy_ratio
        ratios[f"beam/bon wall reuse {reuse}"] = beam["seconds"] / bon["seconds"]
    for case in cases:
        a, b = results[f"{case} reuse off"], results[f"{case} reuse on"]
        ratios[f"{case} off/on flops"] = a["gflops"] / b["gflops"]
        ratios[f"{case} off/on policy flops"] = a["policy_gflops"] / b["policy_gflops"]
        ratios[f"{case} off/on wall"] = a["seconds"] / b["seconds"]
        ratios[f"{case} same answers"] = a["answers"] == b["answers"]
    print()
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}" if not isinstance(v, bool) else f"{k}: {v}")
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_reuse")
    ap.add_argument("problems", nargs="?", type=int, default=PROBLEMS)
    ap.add_argument("--all", action="store_true", help="DVTS, MCTS, PF and revision too")
    ap.add_argument("--prm", default="calculator",
                    choices=("calculator", "strong", "weak", "likelihood"))  # fmt: skip
    ap.add_argument("--prm-backend", default="native", choices=("native", "transformers"))
    a = ap.parse_args()
    main(a.problems, more=a.all, prm_kind=a.prm, prm_backend=a.prm_backend)
