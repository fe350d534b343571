"""What a model was trained to answer, and the warning a run carries when asked outside it.

A model object may carry a :class:`TaskDomain` (``model.domain``, set by
:func:`mark_domain`): the embedded models do, since they answer anything with full
confidence although they know only their synthetic task. Strategies read it through
:func:`domain_warnings`; models of no declared domain never get a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("langchain_tts")

#: the embedded policies (``load_default_policy`` names): "small-revise" is the small policy
#: also trained to revise its own attempts
EMBEDDED_POLICIES = ("small", "large", "small-revise")


@dataclass(frozen=True)
class TaskDomain:
    """What a model was trained to answer, and a check of a question against it."""

    name: str
    #: what the models answer, as the end of "trained only on ..."
    summary: str
    #: None when a question is in the domain, else a short reason why not
    reason: Callable[[str], str | None]

    def warning(self, question: str, model: str) -> str | None:
        """The sentence a graph's output carries when ``model`` is asked ``question`` outside
        this domain (None inside it)."""
        why = self.reason(question)
        if why is None:
            return None
        return (
            f"{model} was trained only on {self.summary}; this question is not one ({why}), "
            "so its answer means nothing. For other questions, pass your own models to "
            "create_tts_graph (e.g. HFPolicy.from_pretrained and QwenPRM.from_pretrained: "
            "docs/backends.md)."
        )


def mark_domain(model: object, domain: TaskDomain) -> None:
    """Record on a policy or PRM object what it was trained to answer (``model.domain``)."""
    model.domain = domain  # type: ignore[attr-defined]


def domain_of(model: object) -> TaskDomain | None:
    """The domain :func:`mark_domain` recorded on ``model``; None for models of any domain."""
    domain = getattr(model, "domain", None)
    return domain if isinstance(domain, TaskDomain) else None


def domain_warnings(question: str, model: object) -> list[str]:
    """The warnings of a run of ``model`` (a policy) on ``question``, each also logged on the
    ``langchain_tts`` logger: one when the model is marked with a domain (:func:`mark_domain`)
    that the question is outside of, else none."""
    domain = domain_of(model)
    if domain is None:
        return []
    name = getattr(model, "name", None) or type(model).__name__
    warning = domain.warning(question, name)
    if warning is None:
        return []
    logger.warning(warning)
    return [warning]
