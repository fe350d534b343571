"""Evaluation datasets: MATH-500, AIME-2024 (vendored JSONL copies) and the synthetic set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from langchain_tts.core.errors import ConfigError, InputError
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
    """Problems from a JSONL file with ``problem`` and ``answer`` fields (MATH-500 format),
    optional ``level``, ``id`` (unique: records are matched to problems by it), ``solution``
    and ``subject``. Anything else is an :class:`InputError` naming the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the problems file {path}: {e}") from None
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            r = json.loads(line)
        except ValueError as e:
            raise InputError(f"{where}: not a JSON object ({e})") from None
        if not isinstance(r, dict) or "problem" not in r or "answer" not in r:
            raise InputError(f"{where}: a record is an object with 'problem' and 'answer'")
        if not isinstance(r["problem"], str) or not r["problem"].strip():
            raise InputError(f"{where}: 'problem' must be non-empty text")
        if not isinstance(r["answer"], (str, int, float)) or isinstance(r["answer"], bool):
            raise InputError(f"{where}: 'answer' must be text or a number")
        level = r.get("level", "")
        if not isinstance(level, (str, int)) or isinstance(level, bool):
            raise InputError(f"{where}: 'level' must be a number or text, got {level!r:.50}")
        pid = str(r.get("id", r.get("unique_id", i)))
        if pid in seen:  # a resumed sweep would take one problem's record for the other's
            raise InputError(
                f"{where}: id {pid!r} again (first on line {seen[pid]}); ids are unique"
            )
        seen[pid] = i + 1
        out.append(
            Problem(
                id=pid,
                problem=r["problem"],
                answer=str(r["answer"]),
                level=level,
                solution=str(r.get("solution", "")),
                subject=str(r.get("subject", "")),
            )
        )
    if not out:
        raise InputError(f"the problems file {path} holds no problems")
    return out


def load_synthetic(split: str = "test", n: int = 320) -> list[Problem]:
    """The embedded synthetic task (``level`` = number of operations, 1..8)."""
    return [Problem(**{**p.to_record(), "id": p.uid}) for p in make_split(split, n)]


#: the most problems one sweep loads (the synthetic task would generate any number)
MAX_PROBLEMS = 100_000


def load_dataset(name: str, path: str | Path | None = None, n: int | None = None) -> list[Problem]:
    """``synthetic``, ``math500`` or ``aime24`` (vendored copies), or any JSONL via ``path``."""
    if n is not None and not 0 <= n <= MAX_PROBLEMS:
        raise ConfigError(f"n must be between 0 and {MAX_PROBLEMS} problems, got {n}")
    if path is not None:
        probs = load_jsonl(path)
    elif name == "synthetic":
        probs = load_synthetic(n=n or 320)
    elif name in ("math500", "aime24"):
        probs = load_jsonl(DATA_DIR / f"{name}.jsonl")
    else:
        raise ConfigError(f"unknown dataset {name!r}; use one of {list(DATASETS)} or pass a path")
    return probs[:n] if n else probs
