"""Choosing the final answer among candidate trajectories: PRM-max, majority, PRM-vote."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from langchain_tts.core.answers import vote_keys
from langchain_tts.core.config import Aggregation, Selection
from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.aggregate import aggregate_scores

SELECTIONS = ("prm_max", "majority", "prm_vote")


def with_scores(cands: Sequence[Trajectory], aggregation: Aggregation | str) -> list[Trajectory]:
    """Copies of the candidates with ``score`` set to their aggregated PRM score."""
    return [c.copy_with(score=aggregate_scores(c.step_scores, aggregation)) for c in cands]


def top_k(cands: Sequence[Trajectory], k: int, aggregation: Aggregation | str) -> list[Trajectory]:
    """The k best by aggregated score; ties keep generation order (stable sort)."""
    scores = [aggregate_scores(c.step_scores, aggregation) for c in cands]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [cands[i].copy_with(score=scores[i]) for i in order[:k]]  # copies only the kept


def select_answer(
    cands: Sequence[Trajectory],
    method: Selection | str = "prm_max",
    aggregation: Aggregation | str = "last",
) -> tuple[Trajectory | None, str | None, list[Trajectory]]:
    """Pick the final answer.

    Returns ``(chosen trajectory, answer, candidates with scores)``. Equal answers vote
    together (:func:`~langchain_tts.core.answers.vote_keys`: ``0.5``, ``1/2`` and
    ``\\frac12`` are one answer). Ties: majority and PRM-vote break them by the higher
    best score of the tied answers, then by first appearance; PRM-max by first appearance.
    When no candidate has an answer, the best-scored trajectory is returned with answer None.
    """
    if method not in SELECTIONS:
        raise ConfigError(f"unknown selection {method!r}; use one of {list(SELECTIONS)}")
    scored = with_scores(cands, aggregation)
    if not scored:
        return None, None, []
    best_idx = max(range(len(scored)), key=lambda i: (scored[i].score or 0.0, -i))
    if method == "prm_max":
        chosen = scored[best_idx]
        return chosen, chosen.answer, scored

    weight: dict[str, float] = defaultdict(float)
    best_of: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for i, (c, key) in enumerate(zip(scored, vote_keys([c.answer for c in scored]))):
        if key is None:
            continue
        weight[key] += 1.0 if method == "majority" else (c.score or 0.0)
        first_seen.setdefault(key, i)
        if key not in best_of or (c.score or 0.0) > (scored[best_of[key]].score or 0.0):
            best_of[key] = i
    if not weight:
        chosen = scored[best_idx]
        return chosen, None, scored
    winner = max(
        weight,
        key=lambda a: (weight[a], scored[best_of[a]].score or 0.0, -first_seen[a]),
    )
    chosen = scored[best_of[winner]]
    return chosen, chosen.answer, scored
