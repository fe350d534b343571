"""Typed errors. Each message says what was wrong and how to fix it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TTSError(Exception):
    """Base class of every langchain-tts error."""


class ConfigError(TTSError, ValueError):
    """A strategy, budget or backend configuration is invalid."""


class InputError(TTSError, ValueError):
    """The graph input is unusable (empty question, wrong types, ...)."""


class PRMOutputError(TTSError, ValueError):
    """A PRM returned scores that are not finite probabilities, one per step.

    ``progress``: as for :class:`BackendError`, the search state before the failed node
    when the error stopped a search graph (the best answer so far can still be picked).
    """

    def __init__(self, message: str, *, progress: dict | None = None):
        super().__init__(message)
        self.progress = progress


class BackendError(TTSError, RuntimeError):
    """A policy or PRM backend failed (after its retries). Carries what was done so far.

    ``partial``: what the backend itself got done (HTTP attempts and errors, the steps it
    generated before failing). ``progress``: set when the failure stopped a search graph --
    its state before the failed node (``step``, the ``active`` / ``finished`` beams, the
    MCTS ``tree``, ``usage``), so the best answer so far can still be picked; with a
    checkpointer, the run also resumes from there.
    """

    def __init__(self, message: str, *, partial: Any = None, progress: dict | None = None):
        super().__init__(message)
        self.partial = partial
        self.progress = progress


#: seeds are signed 64-bit integers in torch and in vLLM
SEED_MAX = 2**63 - 1


def check_seed(seed: int | None, streams: int = 1) -> None:
    """A :class:`ConfigError` unless ``seed`` .. ``seed + streams - 1`` (one random stream
    per sample) are seeds the backends accept: 0 to :data:`SEED_MAX`."""
    if seed is not None and not 0 <= seed <= SEED_MAX - max(0, streams - 1):
        raise ConfigError(
            f"seed must be between 0 and {SEED_MAX - max(0, streams - 1)} (a 64-bit seed per "
            f"sample stream), got {seed}"
        )


def check_unicode(text: str, what: str = "the question") -> None:
    """An :class:`InputError` if ``text`` cannot be encoded as UTF-8 (a lone surrogate, as a
    JSON ``"\\ud800"`` escape decodes to): no tokenizer or server can read it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} is not valid Unicode: {e.reason} {text[e.start : e.end]!r} at character "
            f"{e.start}; send UTF-8 text (a lone surrogate cannot be encoded)"
        ) from None


def check_unicode_in(value: Any, what: str) -> None:
    """:func:`check_unicode` on every string in ``value`` (a message, its content parts and
    fields, nested lists and dicts): a reply or a checkpoint holding one could not be
    encoded, after the whole run."""
    todo = [value]  # a stack, not recursion: client data may nest deep
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            check_unicode(v, what)
        elif isinstance(v, Mapping):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, (list, tuple)):
            todo.extend(v)


class BudgetExceededError(TTSError):
    """A model call the compute budget cannot pay, refused before it was made.

    Raised by the metered models of a strict :class:`~langchain_tts.ledger.Ledger`. The
    strategy graphs catch it and stop their search gracefully (``stop_reason="budget"``);
    you see it only when calling strictly metered models yourself. ``need_*``: the least
    the call would cost (one token per sample); ``left_*``: what the budget had left
    (``inf``: no cap); ``unscored``: trajectories a refused PRM call left without scores.
    """

    def __init__(
        self,
        message: str,
        *,
        need_tokens: float = 0.0,
        need_flops: float = 0.0,
        left_tokens: float = float("inf"),
        left_flops: float = float("inf"),
    ):
        super().__init__(message)
        self.need_tokens, self.need_flops = need_tokens, need_flops
        self.left_tokens, self.left_flops = left_tokens, left_flops
        self.unscored: list[Any] = []


def warn_caller(message: str) -> None:
    """A ``UserWarning`` pointing at the first frame outside this package (the user's call),
    however deep inside the package it was raised."""
    import sys
    import warnings
    from pathlib import Path

    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 2  # stacklevel 1 is this function
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)
