"""A verifier that checks each equation step on its own: ``EquationPRM``.

The model never sees the question: it is a *calculator*, not a second policy. That is enough
when a policy's mistakes are arithmetic slips (on the embedded task every first wrong step is
one), and why it can be much better at checking than the policy is at writing.
"""

from __future__ import annotations

import re

from langchain_tts.core.types import Trajectory
from langchain_tts.prms.likelihood import LikelihoodPRM

__all__ = ["EquationPRM"]

_EQUATION = re.compile(r"^\s*(?P<lhs>[^=]+=)\s*(?P<result>[^=\s][^=]*?)\s*$", re.S)


class EquationPRM(LikelihoodPRM):
    r"""Step scores from a calculator LM's likelihood of each equation step's result.

    A step of the form ``<expression>=<result>`` is scored by a causal LM that reads the
    expression and says how likely the written result is; the step's score is the least likely
    result token, cumulated over the steps like :class:`~.likelihood.LikelihoodPRM` (step
    ``j`` scores ``exp(min log-prob)`` over the results of steps ``1..j``), so
    ``aggregation="last"`` judges the whole solution. Steps that are not equations (a final
    ``\boxed{}``) add nothing.

    The equations are packed into one causal sequence, so a step's score also depends on the
    equations before it; a child scored after its parent computes only its new equation,
    through the prefix cache of :class:`~.local.LocalPRM`.

    The embedded one (``load_default_prm("calculator")``) is a 1.06M-parameter Llama trained
    from scratch on bare equations of the synthetic task (``docs/model_card.md``).
    """

    def encode(self, trajectory: Trajectory) -> tuple[list[int], list[int]]:
        """The equations packed one after the other (``lhs=result`` + delimiter), and for
        each token the step whose *result* it is (-1 for the expressions)."""
        ids: list[int] = []
        owner: list[int] = []
        for j, step in enumerate(trajectory.steps):
            m = _EQUATION.match(step)
            if not m:
                continue
            lhs = "".join(m.group("lhs").split())  # "12 * 3 =" reads as "12*3="
            head = self.tokenizer(lhs, add_special_tokens=False)["input_ids"]
            tail = self.tokenizer(m.group("result") + self.step_delimiter,
                                  add_special_tokens=False)["input_ids"]  # fmt: skip
            ids += head + tail
            owner += [-1] * len(head) + [j] * len(tail)
        if not ids:  # no equation at all: one neutral token, nothing scored
            ids, owner = [self.pad_token_id], [-1]
        return ids, owner
