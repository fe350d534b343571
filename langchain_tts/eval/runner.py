"""Sweeps of strategies x budgets over a dataset, resumable, with accuracy-vs-compute summaries.

Each solved problem is one JSONL record and re-running skips the records already there, so a
sweep can be interrupted and resumed. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from langgraph.graph.state import CompiledStateGraph
from tqdm.auto import tqdm

from langchain_tts.core.errors import InputError
from langchain_tts.core.types import Usage
from langchain_tts.eval.datasets import Problem
from langchain_tts.eval.grading import answers_match

# The config that spends N samples per question belongs to each strategy's registry
# record; sweeps name their runs (strategy, budget), so it is re-exported here.
from langchain_tts.strategies.registry import budget_config as budget_config

RECORD_KEY = ("dataset", "policy", "prm", "strategy", "budget", "id")


def _key(r: dict) -> tuple:
    return tuple(str(r.get(k)) for k in RECORD_KEY)


def read_records(path: str | Path) -> list[dict]:
    """The records of one JSONL file (``[]`` when it does not exist yet).

    A sweep killed mid-write can leave a truncated last line: it is skipped (that problem
    is simply solved again on resume). A malformed line anywhere else is an error.
    """
    p = Path(path)
    if not p.exists():
        return []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not a file of eval records (not UTF-8: {e.reason})") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    out = []
    for k, (i, line) in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if k == len(lines) - 1:
                continue  # an interrupted write: redo that problem
            raise InputError(f"{p}:{i + 1}: not a JSON record ({e})") from None
    return out


def load_records(*paths: str | Path) -> list[dict]:
    """The records of several JSONL files (shards of one sweep, or several sweeps), in order.

    A directory stands for every ``*.jsonl`` file in it; a missing file is an error here
    (unlike :func:`read_records`, which treats it as an empty sweep to resume).
    """
    out: list[dict] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(p.glob("*.jsonl"))
        elif p.exists():
            files = [p]
        else:
            raise FileNotFoundError(f"no such results file: {str(p)!r}")
        for f in files:
            out.extend(read_records(f))
    return out


def calibration_records(
    records: Iterable[dict],
    *,
    dataset: str | None = None,
    policy: str | None = None,
    prm: str | None = None,
) -> list[dict]:
    """The records of one (dataset, policy, prm), ready for ``routing.calibrate``.

    ``calibrate`` wants the runs of one policy/PRM pair, while a results file may hold
    several (a model-card sweep has small and large policies, and its PRM-free runs --
    ``cot``, ``majority_vote`` -- are labelled ``prm="none"``). This picks ``dataset`` and
    ``policy`` (each may be left out when the records have only one), the PRM ``prm``
    (default: the only one besides ``"none"``), and keeps the PRM-free runs of that policy
    too, relabelled with that PRM: they do not depend on it, and they are valid routes for
    a router that has it. Raises ``ValueError`` naming the choices when one is ambiguous.
    """
    recs = [dict(r) for r in records]

    def pick(field: str, value: str | None, pool: list[dict], ignore: tuple = ()) -> str:
        if value is not None:
            return value
        seen = sorted({str(r.get(field)) for r in pool} - set(ignore))
        if len(seen) == 1:
            return seen[0]
        if not seen and ignore:
            return ignore[0]
        raise ValueError(f"records hold several {field} values {seen}; pass {field}=...")

    dataset = pick("dataset", dataset, recs)
    recs = [r for r in recs if str(r.get("dataset")) == dataset]
    policy = pick("policy", policy, recs)
    recs = [r for r in recs if str(r.get("policy")) == policy]
    prm = pick("prm", prm, recs, ignore=("none",))
    out = [
        {**r, "prm": prm} if str(r.get("prm")) == "none" else r
        for r in recs
        if str(r.get("prm")) in (prm, "none")
    ]
    if not out:
        raise ValueError(f"no records for dataset={dataset!r}, policy={policy!r}, prm={prm!r}")
    return out


async def run_eval(
    graph: CompiledStateGraph,
    problems: Iterable[Problem],
    *,
    meta: dict[str, Any],
    out: str | Path | None = None,
    concurrency: int = 1,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Solve each problem with ``graph`` and grade it; append records to ``out`` (resumable).

    ``meta`` names the run (dataset, policy, prm, strategy, budget) and is copied into
    every record.
    """
    problems = list(problems)
    earlier = read_records(out) if out else []
    for i, r in enumerate(earlier):  # e.g. the problems file passed as --out: never append
        why = _not_a_record(r)
        if why:
            raise InputError(
                f"{out} is not a file of eval records (record {i + 1}: {why}); pass a new or "
                "an earlier --out"
            )
    done = {_key(r) for r in earlier}
    todo = [p for p in problems if _key({**meta, "id": p.id}) not in done]
    sem = asyncio.Semaphore(max(1, concurrency))
    records: list[dict] = []
    bar = tqdm(total=len(todo), desc=f"{meta.get('strategy')}@{meta.get('budget')}",
               disable=not progress, mininterval=2)  # fmt: skip
    fh = _open_for_append(out) if out else None
    try:

        async def one(p: Problem) -> None:
            async with sem:
                t0 = time.perf_counter()
                error = None
                try:
                    res = await graph.ainvoke({"question": p.problem})
                except InputError as e:
                    # a problem the models cannot take (longer than their context): a wrong
                    # answer at no cost, recorded, so the sweep and its resume go on past it
                    res, error = {"usage": Usage(), "answer": None, "stop_reason": "input"}, e
                u = res["usage"]
                pred = res.get("answer")
                rec = {
                    **meta,
                    "id": p.id,
                    "level": p.level,
                    "gold": p.answer,
                    "pred": pred,
                    "correct": answers_match(pred, p.answer),
                    "tokens": u.tokens,
                    "policy_tokens": u.policy_prompt_tokens + u.policy_generated_tokens,
                    "generated_tokens": u.policy_generated_tokens,
                    "prm_tokens": u.prm_tokens,
                    "flops": u.flops,
                    "policy_flops": u.policy_flops,
                    "prm_flops": u.prm_flops,
                    "seconds": round(time.perf_counter() - t0, 4),
                    "stop_reason": res.get("stop_reason"),
                }
                if error is not None:
                    rec["error"] = str(error)[:500]
                records.append(rec)
                if fh:
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                if on_record:
                    on_record(rec)
                bar.update(1)

        await asyncio.gather(*(one(p) for p in todo))
    finally:
        bar.close()
        if fh:
            fh.close()
    return records


def _open_for_append(path: str | Path):
    """Open ``path`` to append records, first dropping a record a killed sweep left half
    written (:func:`read_records` skipped it, so that problem is solved again)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() and p.stat().st_size:
        data = p.read_bytes()
        first = data.split(b"\n", 1)[0]
        if not first.lstrip().startswith(b"{"):  # someone's other file: never cut it
            raise InputError(
                f"{p} is not a file of eval records (its first line is no JSON record); "
                "pass a new or an earlier --out"
            )
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            try:  # complete but unterminated: keep it (it was counted as done)
                json.loads(data[cut:])
                with open(p, "ab") as f:
                    f.write(b"\n")
            except ValueError:
                with open(p, "r+b") as f:
                    f.truncate(cut)
    return open(p, "a")  # noqa: SIM115 - kept open for the whole sweep


#: what every eval record holds, for :func:`summarize`
RECORD_FIELDS = ("id", "correct", "tokens", "flops", "seconds")


def _not_a_record(r: object) -> str:
    """Why ``r`` is not an eval record ("" when it is one)."""
    if not isinstance(r, dict):
        return f"a {type(r).__name__}, not an object"
    missing = [k for k in RECORD_FIELDS if k not in r]
    if missing:
        return f"no {', '.join(missing)}"
    if isinstance(r.get("level"), (list, dict)):
        return "its level is neither a number nor text"
    return ""


def summarize(records: Iterable[dict]) -> list[dict]:
    """Accuracy and mean compute per (dataset, policy, prm, strategy, budget). A problem
    recorded twice for the same run (overlapping shards, a file read twice) counts once, the
    last record, as in :func:`~langchain_tts.eval.report.run_rows`."""
    records = list(records)
    for i, r in enumerate(records):
        why = _not_a_record(r)
        if why:
            raise InputError(f"record {i + 1} is no eval record ({why}); `tts eval` writes them")
    per_run: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        per_run[tuple(r.get(k) for k in RECORD_KEY[:-1])][str(r["id"])] = r
    rows = []
    for key, by_id in per_run.items():
        rs = list(by_id.values())
        by_level: dict[Any, list[bool]] = defaultdict(list)
        for r in rs:
            by_level[r.get("level")].append(bool(r["correct"]))
        n = len(rs)
        rows.append(
            {
                **dict(zip(RECORD_KEY[:-1], key)),
                "n": n,
                "accuracy": sum(r["correct"] for r in rs) / n,
                "by_level": {
                    str(lv): sum(v) / len(v) for lv, v in sorted(by_level.items(), key=_lv)
                },
                "mean_tokens": sum(r["tokens"] for r in rs) / n,
                "mean_flops": sum(r["flops"] for r in rs) / n,
                "mean_seconds": sum(r["seconds"] for r in rs) / n,
            }
        )
    return sorted(rows, key=lambda r: (str(r["policy"]), str(r["strategy"]), int(r["budget"])))


def _lv(item: tuple) -> tuple:
    lv = item[0]
    return (0, int(lv), "") if str(lv).isdigit() else (1, 0, str(lv))


def markdown_table(rows: list[dict], levels: bool = True) -> str:
    """A markdown table: one row per run, accuracy overall and per level, compute."""
    all_levels = sorted({lv for r in rows for lv in r["by_level"]}, key=lambda x: _lv((x,)))
    head = ["policy", "prm", "strategy", "N", "acc %"]
    if levels:
        head += [f"L{lv}" for lv in all_levels]
    head += ["tokens/q", "FLOPs/q", "s/q"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["policy"], r["prm"], r["strategy"], str(r["budget"]),
                 f"{100 * r['accuracy']:.1f}"]  # fmt: skip
        if levels:
            cells += [f"{100 * r['by_level'].get(lv, float('nan')):.0f}" for lv in all_levels]
        cells += [f"{r['mean_tokens']:.0f}", f"{r['mean_flops']:.2e}", f"{r['mean_seconds']:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
