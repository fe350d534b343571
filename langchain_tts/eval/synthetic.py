"""The embedded synthetic task: multi-step arithmetic chains with exact step labels.

A problem is a chain of operations on a running value::

    Start with 7. Add 5. Multiply by 3. Subtract 4.

and its gold solution is one step per operation, steps separated by the step delimiter,
ending in a boxed answer::

    7+5=12

    12*3=36

    36-4=32

    \\boxed{32}

Difficulty is the number of operations. Because every step is a checkable equation,
answers grade exactly and every step of any model's rollout gets an automatic label,
which is what trains the embedded PRM.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

STEP_DELIMITER = "\n\n"
MIN_OPS, MAX_OPS = 1, 8
# Values up to three digits: a ~1M-parameter model learns the format and most of the
# arithmetic on a CPU in minutes, yet carries and products still make it err, more often on
# longer chains (with values <= 99 it solved 99% greedily and search had nothing to add).
MAX_VALUE = 999
_OP_WORDS = {"+": "Add {k}.", "-": "Subtract {k}.", "*": "Multiply by {k}.", "/": "Divide by {k}."}
_STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+\-*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_BOXED_RE = re.compile(r"^\s*\\boxed\{\s*(-?\d+)\s*\}\s*$")


@dataclass(frozen=True)
class Operation:
    op: str  # one of + - * /
    operand: int

    def apply(self, value: int) -> int:
        if self.op == "+":
            return value + self.operand
        if self.op == "-":
            return value - self.operand
        if self.op == "*":
            return value * self.operand
        return value // self.operand

    def words(self) -> str:
        return _OP_WORDS[self.op].format(k=self.operand)


@dataclass(frozen=True)
class ArithmeticProblem:
    start: int
    ops: tuple[Operation, ...]
    uid: str = ""

    @property
    def difficulty(self) -> int:
        return len(self.ops)

    @property
    def question(self) -> str:
        return " ".join([f"Start with {self.start}."] + [o.words() for o in self.ops])

    @property
    def values(self) -> list[int]:
        """Running values: values[0] is the start, values[i] after the i-th operation."""
        vals = [self.start]
        for o in self.ops:
            vals.append(o.apply(vals[-1]))
        return vals

    @property
    def answer(self) -> str:
        return str(self.values[-1])

    @property
    def gold_steps(self) -> list[str]:
        vals = self.values
        steps = [f"{vals[i]}{o.op}{o.operand}={vals[i + 1]}" for i, o in enumerate(self.ops)]
        return steps + [f"\\boxed{{{vals[-1]}}}"]

    @property
    def solution(self) -> str:
        return STEP_DELIMITER.join(self.gold_steps)

    def to_record(self) -> dict:
        return {
            "id": self.uid,
            "problem": self.question,
            "solution": self.solution,
            "answer": self.answer,
            "level": self.difficulty,
            "subject": "arithmetic",
        }


def _valid_ops(value: int, rng: random.Random) -> list[Operation]:
    cands: list[Operation] = []
    for _ in range(6):
        k = rng.randint(2, 50)
        if value + k <= MAX_VALUE:
            cands.append(Operation("+", k))
        if value - k >= 0:
            cands.append(Operation("-", k))
    for k in range(2, 6):
        if 2 <= value * k <= MAX_VALUE:
            cands.append(Operation("*", k))
        if value >= k and value % k == 0:
            cands.append(Operation("/", k))
    return cands


def make_problem(rng: random.Random, n_ops: int, uid: str = "") -> ArithmeticProblem:
    """A random chain of ``n_ops`` operations whose running values stay in 0..MAX_VALUE."""
    start = rng.randint(2, 30)
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


def parse_question(question: str) -> ArithmeticProblem | None:
    """Rebuild the problem from its text (None if it is not a synthetic question)."""
    m = re.match(r"^\s*Start with (\d+)\.(.*)$", question.strip(), re.S)
    if not m:
        return None
    ops: list[Operation] = []
    for part in re.findall(r"(Add|Subtract|Multiply by|Divide by) (\d+)\.", m.group(2)):
        word, k = part
        op = {"Add": "+", "Subtract": "-", "Multiply by": "*", "Divide by": "/"}[word]
        ops.append(Operation(op, int(k)))
    return ArithmeticProblem(start=int(m.group(1)), ops=tuple(ops))


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
