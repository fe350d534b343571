"""Sequential revision: the policy writes a solution, then revises its previous attempt.

``revise="prompt"`` puts the attempt into the question (for a policy trained to revise, as in
Snell et al.); ``revise="backtrack"`` cuts the attempt before its weakest PRM-scored step and
lets any policy write the rest again. The same machinery runs
:mod:`~langchain_tts.strategies.hybrid` (M chains side by side; here M is 1).
"""

from __future__ import annotations

import re
from typing import Literal

from langgraph.graph import StateGraph
from pydantic import Field, field_validator

from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.errors import ConfigError, warn_caller
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import TTSState, expand, finalize_update, score
from langchain_tts.strategies.loop import Search, SearchLoop, search_graph
from langchain_tts.strategies.registry import StrategySpec
from langchain_tts.strategies.selection import with_scores

#: the revision prompt with the verifier's feedback (which step of the attempt the PRM scores
#: lowest, and its score), the default; the embedded ``small-revise`` policy is trained on it
FEEDBACK_REVISION_TEMPLATE = (
    "{question}\n\nPrevious attempt:\n{attempt}\n\n{feedback}\n\nRevise the solution."
)
#: the same without feedback (Snell et al.'s form: the previous attempt only)
PLAIN_REVISION_TEMPLATE = "{question}\n\nPrevious attempt:\n{attempt}\n\nRevise the solution."
DEFAULT_REVISION_TEMPLATE = FEEDBACK_REVISION_TEMPLATE
_FIELD = re.compile(r"\{(question|attempt|feedback)\}")


def verifier_feedback(attempt: Trajectory) -> str:
    """One sentence on the attempt's weakest step by its PRM scores ("" when unscored)."""
    scores = attempt.step_scores or []
    if not scores:
        return ""
    k = min(range(len(scores)), key=scores.__getitem__)
    return f"The verifier doubts step {k + 1} (score {scores[k]:.2f}): {attempt.steps[k]}"


def render_revision_prompt(template: str, question: str, attempt: str, feedback: str = "") -> str:
    """``template`` with ``{question}``, ``{attempt}`` and ``{feedback}`` (optional) filled in
    (other braces untouched, so a template may mention ``\\boxed{}``)."""
    if not feedback:  # no PRM, or an unscored attempt: no empty paragraph in its place
        template = template.replace("\n\n{feedback}", "").replace("{feedback}", "")
    values = {"question": question, "attempt": attempt, "feedback": feedback}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


class RevisionConfig(StrategyConfig):
    """Sequential revision knobs. Sampling defaults follow the papers (temperature 0.7,
    top_p 0.95, 2048 tokens per step, 8192 per trajectory)."""

    revisions: int = Field(4, ge=0, description="T: revision rounds after the first attempt")
    stop_threshold: float | None = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="stop revising once an attempt's aggregated PRM score reaches this "
        "(None: always run every round)",
    )
    revision_template: str = Field(
        DEFAULT_REVISION_TEMPLATE,
        description="prompt of a revision round; {question} and {attempt} are filled in, and "
        "{feedback} (optional) with the PRM's weakest step of the attempt and its score",
    )

    revise: Literal["prompt", "backtrack"] = Field(
        "prompt",
        description="how a round revises: 'prompt' (the attempt in the prompt, for a policy "
        "trained to revise) or 'backtrack' (rewrite from the attempt's weakest PRM-scored "
        "step; any policy, needs a PRM)",
    )

    @field_validator("revision_template")
    @classmethod
    def _template(cls, v: str) -> str:
        missing = [f"{{{f}}}" for f in ("question", "attempt") if f"{{{f}}}" not in v]
        if missing:
            raise ValueError(
                f"revision_template must contain {' and '.join(missing)} (the original "
                f"question and the previous attempt are substituted there); e.g. "
                f"{DEFAULT_REVISION_TEMPLATE!r}"
            )
        return v

    @property
    def chain_plan(self) -> tuple[int, int]:
        """(parallel chains M, revision rounds T after each chain's first attempt)."""
        return 1, self.revisions


def _done(active: list[Trajectory], rounds_done: int, cfg: RevisionConfig) -> str:
    if rounds_done and not active:
        return "confident"
    if rounds_done > cfg.chain_plan[1]:
        return "max_revisions"
    return ""


async def revision_round(
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    cfg: RevisionConfig,
    root: Trajectory,
    active: list[Trajectory],
    round_idx: int,
) -> tuple[list[Trajectory], Usage]:
    """One round for every chain still revising: one policy call, one PRM call.

    Round 0 writes the chains' first attempts (continuing ``root``: the question and any
    ``prefix_steps``); later rounds revise ``active`` (each chain's latest attempt), a
    revision being a whole new solution. Returns the new attempts, scored against the
    question.
    """
    question = root.question
    if round_idx == 0:
        prompts, n_each = [root], cfg.chain_plan[0]
    elif cfg.revise == "backtrack":
        prompts, n_each = [backtrack_prefix(a) for a in active], 1
    else:
        prompts = [
            Trajectory(
                question=render_revision_prompt(
                    cfg.revision_template, question, a.text, verifier_feedback(a)
                )
            )
            for a in active
        ]
        n_each = 1
    attempts, usage = await expand(
        policy, prompts, n_each, cfg, stop_at_step=False, seed_offset=round_idx
    )
    # The PRM judges the solution to the original question, not to the revision prompt.
    attempts = [a.model_copy(update={"question": question}) for a in attempts]
    if prm is not None:
        attempts, prm_usage = await score(prm, attempts)
        attempts, usage = with_scores(attempts, cfg.aggregation), usage + prm_usage
    return attempts, usage


def backtrack_prefix(attempt: Trajectory) -> Trajectory:
    """The attempt cut before its weakest step: the first step with the lowest PRM score
    (the whole attempt is dropped when it has no scores). Its ``tokens`` start at 0: an
    attempt counts the tokens generated for it, and the kept steps were paid for before."""
    scores = attempt.step_scores[: len(attempt.steps)]
    cut = scores.index(min(scores)) if scores else 0
    return Trajectory(question=attempt.question, steps=attempt.steps[:cut])


def _confident(t: Trajectory, cfg: RevisionConfig, has_prm: bool) -> bool:
    return has_prm and cfg.stop_threshold is not None and (t.score or 0.0) >= cfg.stop_threshold


async def _round(
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    cfg: RevisionConfig,
    root: Trajectory,
    s: Search,
    i: int,
) -> tuple[Search, Usage]:
    new, usage = await revision_round(policy, prm, cfg, root, s["active"], i)
    active = [t for t in new if not _confident(t, cfg, prm is not None)]
    return {"active": active, "finished": s["finished"] + new}, usage


def revision_final_update(state: TTSState, cfg: RevisionConfig) -> dict:
    """The ``finalize`` update: the answer among every attempt of every chain."""
    reason = _done(state.get("active") or [], state.get("step", 0), cfg) or "max_revisions"
    return finalize_update(state, state.get("finished") or [], cfg, reason)


REVISION_LOOP: SearchLoop[RevisionConfig] = SearchLoop(
    node="round",
    step=_round,
    done=lambda s, i, cfg: _done(s["active"], i, cfg),
    answer=revision_final_update,
    # a refused round's attempts rank below every scored attempt
    refused=lambda s, unscored: {**s, "finished": s["finished"] + unscored},
    budget_candidates=lambda state: state.get("finished") or [],
)


def build_revision_graph(
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    base: RevisionConfig,
    *,
    strategy: str = "revision",
) -> StateGraph:
    """The revision graph: ``prepare -> round (loops, one update per round) -> finalize``.

    Round 0: the policy writes a whole solution. Rounds 1..T (``revisions``) write a new whole
    solution from the previous attempt, in one of two ways (``revise``):

    - ``"prompt"`` (the papers' way, for a policy fine-tuned to revise, as in Snell et al.):
      the attempt goes into the question text through ``revision_template`` (``{question}``
      and ``{attempt}`` are substituted) and the policy writes a new solution from scratch.
    - ``"backtrack"`` (any policy, PRM required): the attempt is cut before its weakest step,
      the first step with the lowest PRM step score, and the policy writes the rest again from
      there. A policy never trained on revision prompts cannot use them (the embedded one
      scores ~4% that way), but every policy can continue a prefix of its own solution; the
      PRM says where the attempt went wrong. With cumulative scores (``LikelihoodPRM``, a
      Qwen-style P(correct so far)) that is the step where the score dropped to its minimum.

    Every attempt is scored by the PRM against the *original* question; the revisions stop
    early once the latest attempt's aggregated score reaches ``stop_threshold`` (the verifier
    is confident). The answer is selected with ``selection`` among all attempts (a revision
    can make things worse, so the last one is not privileged). Without a PRM, only
    ``selection="majority"`` is possible (no scores, no early stop).

    Round 0 is the first attempt; each round is one policy call and one PRM call. When
    LangGraph's recursion limit is close, ``round`` runs the remaining rounds inside itself
    instead of failing.

    With a budget (``max_flops`` / ``max_tokens``) the revisions also stop at the first round
    the budget cannot pay in full (``stop_reason="budget"``): the answer is selected among the
    scored attempts so far; when none was scored, the last round's (unscored) attempts are
    voted on.
    """

    def check(cfg: RevisionConfig) -> None:
        if prm is None and cfg.revise == "backtrack":
            raise ConfigError(
                f"{strategy} with revise='backtrack' needs a PRM (its step scores say where "
                "to cut the previous attempt): pass prm=..., or use revise='prompt'"
            )

    check(base)
    if base.revise == "prompt" and getattr(policy, "trained_to_revise", None) is False:
        warn_caller(
            f"{strategy} with revise='prompt' on {getattr(policy, 'name', 'this policy')}, "
            "which was not trained to revise: its revisions are worse than its first "
            "attempts. Use load_default_policy('small-revise'), or revise='backtrack'"
        )
    if prm is None and base.selection != "majority":
        raise ConfigError(
            f"{strategy} with selection={base.selection!r} needs a PRM: pass prm=..., or use "
            "selection='majority' without one"
        )
    return search_graph(REVISION_LOOP, policy, prm, base, check=check)


def attempts_units(cfg: RevisionConfig, steps: float, reused: int) -> tuple[float, float]:
    """Cost units of M chains x (1 + T) attempts: a revision prompt holds the last attempt
    (two solutions read or written per attempt), and the PRM scores every attempt."""
    chains, revisions = cfg.chain_plan
    attempts = chains * (revisions + 1)
    return 2.0 * attempts, float(attempts)


SPEC = StrategySpec(
    name="revision",
    config=RevisionConfig,
    build=build_revision_graph,
    budget_config=lambda n: {"revisions": max(0, n - 1)},
    cost_units=attempts_units,
    embedded_policy="small-revise",  # its prompts need a policy trained to revise
    summary="Sequential revision: write a solution, then revise the previous attempt T times",
)
