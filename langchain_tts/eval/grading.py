"""Answer grading: math-verify when installed (LaTeX/number equivalence), else a normaliser.

math-verify uses ``signal.alarm`` for its timeouts, which raises outside the main thread
(under ``ainvoke``, LangServe, ``langgraph dev``), so it is called with its timeouts off.
Grading never raises: unparsable output is simply wrong.
"""

from __future__ import annotations

from fractions import Fraction

from langchain_tts.core.answers import extract_answer, normalize_answer

try:  # optional: pip install "langchain-tts[eval]"
    from math_verify import parse as _mv_parse
    from math_verify import verify as _mv_verify
except ImportError:  # pragma: no cover - exercised when the extra is missing
    _mv_parse = _mv_verify = None


def _as_number(s: str) -> Fraction | None:
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether ``pred`` (an extracted answer) equals the ``gold`` answer."""
    if pred is None:
        return False
    a, b = normalize_answer(pred), normalize_answer(gold)
    if a is not None and a == b:
        return True
    if a is not None and b is not None:
        na, nb = _as_number(a), _as_number(b)
        if na is not None and nb is not None:
            return na == nb
    if _mv_parse is None:
        return False
    try:
        g = _mv_parse(f"${gold}$", parsing_timeout=None)
        p = _mv_parse(f"${pred}$", parsing_timeout=None)
        return bool(g and p and _mv_verify(g, p, timeout_seconds=None))
    except Exception:  # math-verify can fail on odd LaTeX: treat as not equal
        return False


def grade(solution: str, gold: str) -> tuple[str | None, bool]:
    """Extract the answer of a full solution text and grade it."""
    pred = extract_answer(solution)
    return pred, answers_match(pred, gold)
