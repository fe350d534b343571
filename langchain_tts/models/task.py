"""The embedded models' task, multi-step arithmetic chains, and a check of its question grammar.

The embedded models were trained only on questions like ``Start with 14. Add 9. Multiply by
3.``; asked anything else they still answer with full confidence, so
:func:`out_of_domain_reason` says why a question is outside their task. The grammar lives at
the models layer so this check and the data generator (``eval/synthetic.py``) share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from langchain_tts.core.domain import TaskDomain, domain_of, domain_warnings, mark_domain

__all__ = [
    "EMBEDDED_ARITHMETIC",
    "TaskDomain",
    "domain_of",
    "domain_warnings",
    "in_embedded_domain",
    "mark_domain",
    "out_of_domain_reason",
    "parse_question",
]

STEP_DELIMITER = "\n\n"
MIN_OPS, MAX_OPS = 1, 8
# Values up to three digits: a ~1M-parameter model learns the format and most of the
# arithmetic on a CPU in minutes, yet carries and products still make it err, more often on
# longer chains (with values <= 99 it solved 99% greedily and search had nothing to add).
MAX_VALUE = 999
#: the operands the training data uses (inclusive ranges): start value, + / - and * / /
START_RANGE = (2, 30)
ADD_RANGE = (2, 50)
MUL_RANGE = (2, 5)
_OP_WORDS = {"+": "Add {k}.", "-": "Subtract {k}.", "*": "Multiply by {k}.", "/": "Divide by {k}."}
_WORD_OPS = {"Add": "+", "Subtract": "-", "Multiply by": "*", "Divide by": "/"}
_START_RE = re.compile(r"Start with (\d+)\.")
_OP_RE = re.compile(r" (Add|Subtract|Multiply by|Divide by) (\d+)\.")


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


def parse_question(question: str) -> ArithmeticProblem | None:
    """Rebuild the problem from its text (None if it is not a synthetic question).

    Lenient (text between the operations is skipped): for grading generated data. Whether a
    question is one the embedded models can answer is :func:`out_of_domain_reason`.
    """
    m = re.match(r"^\s*Start with (\d+)\.(.*)$", question.strip(), re.S)
    if not m:
        return None
    ops = [
        Operation(_WORD_OPS[word], int(k))
        for word, k in re.findall(r"(Add|Subtract|Multiply by|Divide by) (\d+)\.", m.group(2))
    ]
    return ArithmeticProblem(start=int(m.group(1)), ops=tuple(ops))


def out_of_domain_reason(question: str) -> str | None:
    """Why the embedded models cannot answer ``question``, or None when they were trained on
    its kind: ``Start with N.`` and 1 to 8 operations (``Add K.``, ``Subtract K.``,
    ``Multiply by K.``, ``Divide by K.``), sentences separated by single spaces, operands in
    the trained ranges, exact division, and every running value in 0..999."""
    q = question.strip()
    m = _START_RE.match(q)
    if m is None:
        return "it does not begin with 'Start with N.'"
    ops: list[Operation] = []
    pos = m.end()
    while pos < len(q):
        op = _OP_RE.match(q, pos)
        if op is None:
            rest = q[pos:].strip()
            return (
                f"{rest[:40]!r} is not an operation ' Add K.', ' Subtract K.', "
                "' Multiply by K.' or ' Divide by K.'"
            )
        ops.append(Operation(_WORD_OPS[op.group(1)], int(op.group(2))))
        pos = op.end()
    if not MIN_OPS <= len(ops) <= MAX_OPS:
        return f"it has {len(ops)} operations; the models were trained on {MIN_OPS} to {MAX_OPS}"
    value = int(m.group(1))
    if value > MAX_VALUE:
        return f"its start value {value} is above {MAX_VALUE}"
    for o in ops:
        lo, hi = ADD_RANGE if o.op in "+-" else MUL_RANGE
        if not lo <= o.operand <= hi:
            return f"{o.words()!r} is outside the trained operands ({lo} to {hi} for {o.op})"
        if o.op == "/" and value % o.operand:
            return f"{o.words()!r} does not divide {value} exactly"
        value = o.apply(value)
        if not 0 <= value <= MAX_VALUE:
            return f"a running value ({value}) leaves 0..{MAX_VALUE}"
    return None


def in_embedded_domain(question: str) -> bool:
    """Whether ``question`` is of the kind the embedded models were trained on."""
    return out_of_domain_reason(question) is None


EMBEDDED_ARITHMETIC = TaskDomain(
    name="embedded-arithmetic",
    summary=(
        "arithmetic chains like 'Start with 14. Add 9. Multiply by 3. Subtract 17.' "
        f"({MIN_OPS} to {MAX_OPS} operations, values 0..{MAX_VALUE})"
    ),
    reason=out_of_domain_reason,
)
