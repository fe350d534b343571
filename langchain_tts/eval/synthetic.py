"""The embedded synthetic task: multi-step arithmetic chains with exact step labels.

Every step is a checkable equation (``7+5=12``), so answers grade exactly and every step of
any model's rollout gets an automatic label, which is what trains the embedded PRM. The
question grammar lives in :mod:`langchain_tts.models.task`; this module generates the data
and labels rollouts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from langchain_tts.models.task import (
    ADD_RANGE,
    MAX_OPS,
    MAX_VALUE,
    MIN_OPS,
    MUL_RANGE,
    START_RANGE,
    STEP_DELIMITER,
    ArithmeticProblem,
    Operation,
    parse_question,
)

__all__ = [
    "MAX_OPS",
    "MAX_VALUE",
    "MIN_OPS",
    "SPLIT_SEEDS",
    "STEP_DELIMITER",
    "ArithmeticProblem",
    "Operation",
    "StepLabels",
    "label_steps",
    "make_problem",
    "make_split",
    "parse_question",
]

_STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+\-*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_BOXED_RE = re.compile(r"^\s*\\boxed\{\s*(-?\d+)\s*\}\s*$")


def _valid_ops(value: int, rng: random.Random) -> list[Operation]:
    cands: list[Operation] = []
    for _ in range(6):
        k = rng.randint(*ADD_RANGE)
        if value + k <= MAX_VALUE:
            cands.append(Operation("+", k))
        if value - k >= 0:
            cands.append(Operation("-", k))
    for k in range(MUL_RANGE[0], MUL_RANGE[1] + 1):
        if 2 <= value * k <= MAX_VALUE:
            cands.append(Operation("*", k))
        if value >= k and value % k == 0:
            cands.append(Operation("/", k))
    return cands


def make_problem(rng: random.Random, n_ops: int, uid: str = "") -> ArithmeticProblem:
    """A random chain of ``n_ops`` operations whose running values stay in 0..MAX_VALUE."""
    start = rng.randint(*START_RANGE)
    ops: list[Operation] = []
    value = start
    for _ in range(n_ops):
        cands = _valid_ops(value, rng)
        # Multiplication and division are rarer in the candidate list; weight them up so
        # every chain exercises more than addition.
        mul_div = [c for c in cands if c.op in "*/"]
        pick = rng.choice(mul_div) if mul_div and rng.random() < 0.4 else rng.choice(cands)
        ops.append(pick)
        value = pick.apply(value)
    return ArithmeticProblem(start=start, ops=tuple(ops), uid=uid)


SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}


def make_split(
    split: str, n: int, min_ops: int = MIN_OPS, max_ops: int = MAX_OPS
) -> list[ArithmeticProblem]:
    """A reproducible split, balanced over difficulty levels and disjoint from the others.

    Disjointness is by question text: validation excludes test questions, and train excludes
    both, so no held-out question is ever trained on.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLIT_SEEDS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    exclude: set[str] = set()
    if split in ("train", "validation"):
        exclude |= {p.question for p in _raw_split("test", 1000, min_ops, max_ops)}
    if split == "train":
        exclude |= {p.question for p in _raw_split("validation", 1000, min_ops, max_ops)}
    rng = random.Random(SPLIT_SEEDS[split])
    out: list[ArithmeticProblem] = []
    seen: set[str] = set()
    levels = list(range(min_ops, max_ops + 1))
    i = 0
    while len(out) < n:
        level = levels[i % len(levels)]
        p = make_problem(rng, level, uid=f"{split}-{len(out)}")
        i += 1
        if p.question in exclude or p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def _raw_split(split: str, n: int, min_ops: int, max_ops: int) -> list[ArithmeticProblem]:
    rng = random.Random(SPLIT_SEEDS[split])
    levels = list(range(min_ops, max_ops + 1))
    out, seen, i = [], set(), 0
    while len(out) < n:
        p = make_problem(rng, levels[i % len(levels)])
        i += 1
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


@dataclass
class StepLabels:
    """Automatic labels of a rollout: labels[i] is True while the solution is still on track."""

    labels: list[bool] = field(default_factory=list)
    final_correct: bool = False


def label_steps(problem: ArithmeticProblem, steps: list[str]) -> StepLabels:
    """Label each step of a rollout.

    A step is correct when its equation is exactly the next gold operation applied to the
    current running value and its arithmetic is right; after the first wrong step every later
    step is wrong too (the prefix can no longer reach the gold answer by valid steps). A boxed
    step is correct when all steps before it were and it boxes the final value.
    """
    vals = problem.values
    labels: list[bool] = []
    on_track = True
    i = 0
    final_correct = False
    for step in steps:
        ok = False
        if on_track:
            m = _STEP_RE.match(step)
            b = _BOXED_RE.match(step)
            if m and i < len(problem.ops):
                a, op, k, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                gold = problem.ops[i]
                ok = a == vals[i] and op == gold.op and k == gold.operand and c == vals[i + 1]
                i += 1
            elif b and i == len(problem.ops):
                ok = int(b.group(1)) == vals[-1]
                final_correct = ok
        on_track = on_track and ok
        labels.append(on_track)
    return StepLabels(labels=labels, final_correct=final_correct)


def corrupt_steps_at(problem: ArithmeticProblem, rng: random.Random) -> tuple[list[str], int]:
    """The gold steps with one result nudged, and the index of the nudged step.

    Later steps continue consistently from the wrong value, as a policy that slipped would,
    so only that one step is wrong: the negative a verifier must catch.
    """
    steps = list(problem.gold_steps)
    i = rng.randrange(len(problem.ops))
    lhs, rhs = steps[i].split("=")
    wrong = int(rhs) + rng.choice([-10, -2, -1, 1, 2, 10])
    steps[i] = f"{lhs}={wrong}"
    value = wrong
    for j in range(i + 1, len(problem.ops)):
        o = problem.ops[j]
        nxt = o.apply(value)
        steps[j] = f"{value}{o.op}{o.operand}={nxt}"
        value = nxt
    steps[-1] = f"\\boxed{{{value}}}"
    return steps, i


def corrupt_steps(problem: ArithmeticProblem, rng: random.Random) -> list[str]:
    """The gold steps with one result nudged (see :func:`corrupt_steps_at`)."""
    return corrupt_steps_at(problem, rng)[0]
