"""Evaluation datasets: MATH-500, AIME-2024 (vendored JSONL copies) and the synthetic set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from langchain_tts.eval.synthetic import make_split

DATA_DIR = Path(__file__).parent / "data"
DATASETS = ("synthetic", "math500", "aime24")


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str
    level: int | str = ""
    solution: str = ""
    subject: str = ""


def load_jsonl(path: str | Path) -> list[Problem]:
    """Problems from a JSONL file with ``problem`` and ``answer`` fields (MATH-500 format)."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        if "problem" not in r or "answer" not in r:
            raise ValueError(f"{path}:{i + 1}: a record needs 'problem' and 'answer' fields")
        out.append(
            Problem(
                id=str(r.get("id", r.get("unique_id", i))),
                problem=r["problem"],
                answer=str(r["answer"]),
                level=r.get("level", ""),
                solution=r.get("solution", ""),
                subject=r.get("subject", ""),
            )
        )
    return out


def load_synthetic(split: str = "test", n: int = 320) -> list[Problem]:
    """The embedded synthetic task (``level`` = number of operations, 1..8)."""
    return [Problem(**{**p.to_record(), "id": p.uid}) for p in make_split(split, n)]


def load_dataset(name: str, path: str | Path | None = None, n: int | None = None) -> list[Problem]:
    """``synthetic``, ``math500`` or ``aime24`` (vendored copies), or any JSONL via ``path``."""
    if path is not None:
        probs = load_jsonl(path)
    elif name == "synthetic":
        probs = load_synthetic(n=n or 320)
    elif name in ("math500", "aime24"):
        probs = load_jsonl(DATA_DIR / f"{name}.jsonl")
    else:
        raise ValueError(f"unknown dataset {name!r}; use one of {list(DATASETS)} or pass a path")
    return probs[:n] if n else probs
