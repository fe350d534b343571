"""Answer extraction, normalisation and vote keys, shared by every strategy and the graders."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from fractions import Fraction

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


# -- vote keys: answers that are equal vote together ---------------------------------------
_SIGNED = r"-?\d+(?:\.\d+)?"
_FRAC_BRACED = re.compile(rf"(-?)\\frac\{{({_SIGNED})\}}\{{({_SIGNED})\}}")
_FRAC_DIGITS = re.compile(r"(-?)\\frac(\d)(\d)")  # \frac12: one-digit arguments, no braces
_NUMERIC = re.compile(rf"{_SIGNED}(?:/{_SIGNED})?")


def numeric_value(answer: str | None) -> Fraction | None:
    """The exact value of a numeric answer (``"0.5"``, ``"1/2"``, ``"\\frac12"``,
    ``"-\\frac{3}{4}"``, ``"1,000"``), None when it is not a plain number or fraction."""
    s = normalize_answer(answer)
    if s is None:
        return None
    m = _FRAC_BRACED.fullmatch(s) or _FRAC_DIGITS.fullmatch(s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    if not _NUMERIC.fullmatch(s):
        return None
    num, _, den = s.partition("/")
    try:
        value = Fraction(num) / Fraction(den) if den else Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None
    return value


def canonical_answer(answer: str | None) -> str | None:
    """A vote key: numbers by exact value (``"0.5"``, ``"1/2"`` and ``"\\frac12"`` all give
    ``"1/2"``), anything else as :func:`normalize_answer` writes it."""
    value = numeric_value(answer)
    if value is not None:
        return str(value)
    return normalize_answer(answer)


def vote_keys(answers: Sequence[str | None]) -> list[str | None]:
    """One key per answer, equal for answers that are equal: :func:`canonical_answer`, and
    for the non-numeric ones (``\\sqrt{2}/2`` vs ``\\frac{\\sqrt2}{2}``) math-verify's
    equivalence when it is installed (the ``eval`` extra). A group's key is its first
    answer's. Cheap when every answer is a number: math-verify is then never called."""
    keys = [canonical_answer(a) for a in answers]
    symbolic = list(dict.fromkeys(k for k in keys if k is not None and not _is_number(k)))
    if len(symbolic) < 2 or not _math_verify_available():
        return keys
    rep: dict[str, str] = {}
    firsts: list[str] = []  # group representatives, in order of first appearance
    for k in symbolic:
        rep[k] = next((f for f in firsts if _equivalent(f, k)), k)
        if rep[k] == k:
            firsts.append(k)
    return [rep.get(k, k) if k is not None else None for k in keys]


def _is_number(key: str) -> bool:
    return _NUMERIC.fullmatch(key) is not None


def _math_verify_available() -> bool:
    return importlib.util.find_spec("math_verify") is not None


@functools.lru_cache(maxsize=4096)
def _equivalent(a: str, b: str) -> bool:
    """math-verify's ``verify``, timeouts off (its ``signal.alarm`` fails outside the main
    thread); a parse failure is "not equal"."""
    from math_verify import parse, verify

    try:
        pa = parse(f"${a}$", parsing_timeout=None)
        pb = parse(f"${b}$", parsing_timeout=None)
        return bool(pa and pb and verify(pa, pb, timeout_seconds=None))
    except Exception:  # odd LaTeX: not equal
        return False
