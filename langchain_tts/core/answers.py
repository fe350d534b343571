"""Answer extraction and normalisation, shared by every strategy and the graders."""

from __future__ import annotations

import re

_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces handled."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = text.find("{", idx)
    if i < 0:
        # "\boxed 5" form
        m = re.match(r"\\boxed\s+([^\s$]+)", text[idx:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: the solution was cut off


def extract_answer(text: str, fallback: bool = True) -> str | None:
    """The final answer of a solution: the last boxed expression, else the last number.

    ``fallback=False`` only accepts a boxed answer (used to decide that a step ends a
    solution).
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if not fallback:
        return None
    nums = _NUMBER_RE.findall(text)
    return nums[-1] if nums else None


_STRIP = [
    r"\left",
    r"\right",
    r"\!",
    r"\,",
    r"\;",
    r"\:",
    "$",
    r"\displaystyle",
    r"^\circ",
    "^{\\circ}",
]


def normalize_answer(answer: str | None) -> str | None:
    """A canonical string for comparing answers (used by voting and by the fallback grader).

    Cheap and deterministic: it unifies spacing, ``\\dfrac``/``\\tfrac``, ``\\text{}``
    wrappers, thousands separators, ``x =`` prefixes and integral floats.
    """
    if answer is None:
        return None
    s = answer.strip()
    for tok in _STRIP:
        s = s.replace(tok, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    s = re.sub(r"\\mbox\{\s*([^}]*)\}", r"\1", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    m = re.fullmatch(r"\\frac\{(-?\d+)\}\{(\d+)\}", s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    return s or None
