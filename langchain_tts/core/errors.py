"""Typed errors. Each message says what was wrong and how to fix it."""

from __future__ import annotations

from typing import Any


class TTSError(Exception):
    """Base class of every langchain-tts error."""


class ConfigError(TTSError, ValueError):
    """A strategy, budget or backend configuration is invalid."""


class InputError(TTSError, ValueError):
    """The graph input is unusable (empty question, wrong types, ...)."""


class PRMOutputError(TTSError, ValueError):
    """A PRM returned scores that are not finite probabilities, one per step."""


class BackendError(TTSError, RuntimeError):
    """A policy or PRM backend failed (after its retries). Carries what was done so far."""

    def __init__(self, message: str, *, partial: Any = None):
        super().__init__(message)
        self.partial = partial


class BudgetExceededError(TTSError):
    """Raised only by ``Budget.check(strict=True)``; searches stop gracefully instead."""
