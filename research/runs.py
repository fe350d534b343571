"""What the record-writing research commands share: their run options and the command line
their tables name (every number in the docs names the command that regenerates it)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


def add_run_options(ap: argparse.ArgumentParser, default_out: Path) -> None:
    """``--seed``, ``--concurrency``, ``--out`` (``<out>.md`` and ``<out>.jsonl``),
    ``--resume`` and ``--quiet``."""
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=default_out, help="writes <out>.md, <out>.jsonl")
    ap.add_argument("--resume", action="store_true", help="keep earlier records")
    ap.add_argument("--quiet", action="store_true")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """``python -m <module> <argv>``, as the user typed it (``sys.argv`` when ``argv`` is
    None)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return f"python -m {module} {shlex.join(args)}".strip()
