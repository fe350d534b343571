"""Monte Carlo tree search over reasoning steps, with UCB1 selection and PRM evaluation.

The tree holds one node per reasoning step (the root is the bare question). Each
simulation:

1. **selection**: from the root, descend to a leaf, at each node taking the child with
   the highest UCB1 score ``value / visits + c * sqrt(ln(parent visits) / visits)``
   (``c`` defaults to 1.414 ~ sqrt 2); an unvisited child is always taken first (the first
   one in generation order); ties go to the earlier child.
2. **expansion**: sample ``expand_k`` next steps of the leaf (one policy call).
3. **evaluation**: the PRM scores the new children (one PRM call); a child's value is its
   aggregated PRM score (``aggregation``). Each new child starts with one visit of that value.
4. **backpropagation**: the mean value of the new children is added along the path, root
   to leaf (``visits += 1``, ``value_sum += mean``).

A selected leaf that is terminal (a finished solution, or at ``max_depth``; a node at
``max_steps`` counts as finished, reason ``max_steps``) is not expanded, which keeps every simulation at most one policy call and one PRM call: it
re-backpropagates its own value instead (and costs no model call).

The final answer (``final``):

* ``"most_visited"`` (default): follow the most-visited child (ties: higher mean value,
  then the earlier child) from the root to a leaf. If that leaf is not a finished solution,
  the answer falls back to the best finished leaf (chosen with ``selection``), and to the
  leaf itself when nothing finished.
* ``"best_leaf"``: the best finished leaf by ``selection`` (``prm_max``: highest PRM score).

The tree is plain serializable data in the graph state (``tree``: a list of
:class:`MCTSNode`, index = node id), so runs checkpoint and resume.

Graph: ``prepare -> simulate (loops, one update per simulation) -> finalize``. When
LangGraph's recursion limit is close, ``simulate`` runs the remaining simulations inside
itself instead of failing (200 simulations under ``recursion_limit=25`` are fine).

With a budget (``max_flops`` / ``max_tokens``) the search also stops at the first
simulation the budget cannot pay in full (``stop_reason="budget"``); the answer is chosen
from the tree as above (finished leaves first). When the tree has no finished leaf, the
finished children of a last expansion whose scoring was refused are voted on instead (and
when the tree has no leaf at all, its unscored children are the candidates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

from langgraph.graph import StateGraph
from pydantic import BaseModel, Field

from langchain_tts.core.channels import PlainValue
from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.types import Trajectory, Usage, model_replace
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.aggregate import aggregate_scores
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.core import (
    BUDGET,
    TTSState,
    budget_final_update,
    budget_stopped,
    expand,
    finalize_update,
    score,
)
from langchain_tts.strategies.loop import Search, SearchLoop, require_prm, search_graph
from langchain_tts.strategies.registry import StrategySpec
from langchain_tts.strategies.selection import with_scores

FinalRule = Literal["most_visited", "best_leaf"]


class MCTSConfig(StrategyConfig):
    """MCTS knobs. Sampling defaults follow the papers (temperature 0.7, top_p 0.95, 2048
    tokens per step, 8192 per trajectory); UCB1's ``c`` defaults to 1.414 (~sqrt 2)."""

    simulations: int = Field(50, ge=1, description="simulations (at most one policy call each)")
    expand_k: int = Field(4, ge=1, description="next steps sampled when a leaf is expanded")
    c: float = Field(1.414, ge=0.0, description="UCB1 exploration constant (0: greedy)")
    max_depth: int = Field(
        40, ge=1, description="steps below the root; deeper nodes are not expanded"
    )
    final: FinalRule = Field(
        "most_visited", description="answer: the most-visited path, or the best finished leaf"
    )


class MCTSNode(BaseModel):
    """One node of the search tree: the step it adds to its parent's prefix, and statistics."""

    parent: int | None = None
    depth: int = 0
    step: str = Field("", description="the reasoning step this node adds ('' at the root)")
    step_scores: list[float] = Field(default_factory=list, description="PRM scores, root->here")
    tokens: int = Field(0, description="policy tokens of the prefix root->here")
    finished: bool = False
    finish_reason: str | None = None
    children: list[int] = Field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    score: float = Field(0.0, description="the node's own evaluation: aggregated PRM score")

    @property
    def value(self) -> float:
        """Mean backed-up value."""
        return self.value_sum / self.visits if self.visits else 0.0


class MCTSState(TTSState, total=False):
    #: the search tree; ``tree[0]`` is the root, a node's id is its index
    tree: Annotated[list[MCTSNode], PlainValue(list[MCTSNode])]


def ucb1(child: MCTSNode, parent_visits: int, c: float) -> float:
    """UCB1 score of ``child``; ``inf`` when it was never visited."""
    if child.visits == 0:
        return math.inf
    explore = math.sqrt(math.log(max(parent_visits, 1)) / child.visits)
    return child.value + c * explore


def select_child(tree: Sequence[MCTSNode], idx: int, c: float) -> int:
    """The child of ``tree[idx]`` UCB1 picks: the first unvisited one, else the best score."""
    parent = tree[idx]
    best, best_score = parent.children[0], -math.inf
    for j in parent.children:
        s = ucb1(tree[j], parent.visits, c)
        if s == math.inf:
            return j
        if s > best_score:  # strict: ties keep the earlier child
            best, best_score = j, s
    return best


def select_path(tree: Sequence[MCTSNode], c: float) -> list[int]:
    """Node ids from the root down to the leaf that UCB1 selects."""
    path = [0]
    while tree[path[-1]].children:
        path.append(select_child(tree, path[-1], c))
    return path


def trajectory_of(tree: Sequence[MCTSNode], idx: int, question: str) -> Trajectory:
    """The (partial) solution a node stands for: the steps root->node with their scores."""
    steps: list[str] = []
    i: int | None = idx
    while i is not None and tree[i].parent is not None:
        steps.append(tree[i].step)
        i = tree[i].parent
    n = tree[idx]
    return Trajectory(
        question=question,
        steps=steps[::-1],
        step_scores=list(n.step_scores),
        tokens=n.tokens,
        finished=n.finished,
        finish_reason=n.finish_reason,
    )


def is_terminal(n: MCTSNode, cfg: MCTSConfig) -> bool:
    return n.finished or n.depth >= cfg.max_depth


def backprop(tree: list[MCTSNode], path: Sequence[int], value: float) -> None:
    """Add one visit of ``value`` to every node on ``path`` (copies them: no in-place edits)."""
    for i in path:
        n = tree[i]
        tree[i] = model_replace(n, visits=n.visits + 1, value_sum=n.value_sum + value)


async def simulate(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: MCTSConfig,
    question: str,
    tree: Sequence[MCTSNode],
) -> tuple[list[MCTSNode], Usage]:
    """One simulation; returns the new tree (the input is not modified) and its usage."""
    tree = list(tree)
    path = select_path(tree, cfg.c)
    leaf_id = path[-1]
    leaf = tree[leaf_id]
    if is_terminal(leaf, cfg):
        backprop(tree, path, leaf.score)
        return tree, Usage()
    children, usage = await expand(
        policy, [trajectory_of(tree, leaf_id, question)], cfg.expand_k, cfg
    )
    children, prm_usage = await score(prm, children, in_place=True)  # fresh children
    values = [aggregate_scores(c.step_scores, cfg.aggregation) for c in children]
    new_ids = list(range(len(tree), len(tree) + len(children)))
    for child, value in zip(children, values):
        tree.append(
            MCTSNode(
                parent=leaf_id,
                depth=leaf.depth + 1,
                step=child.steps[-1],
                step_scores=child.step_scores,
                tokens=child.tokens,
                finished=child.finished,
                finish_reason=child.finish_reason,
                visits=1,
                value_sum=value,
                score=value,
            )
        )
    tree[leaf_id] = model_replace(leaf, children=[*leaf.children, *new_ids])
    backprop(tree, path, sum(values) / len(values))
    return tree, usage + prm_usage


def most_visited_leaf(tree: Sequence[MCTSNode]) -> int:
    """Follow the most-visited child (ties: higher mean value, then earlier) to a leaf."""
    i = 0
    while tree[i].children:
        kids = tree[i].children
        i = max(kids, key=lambda j: (tree[j].visits, tree[j].value, -kids.index(j)))
    return i


def leaves(tree: Sequence[MCTSNode]) -> list[int]:
    return [i for i, n in enumerate(tree) if i and not n.children]


def mcts_final_update(state: MCTSState, cfg: MCTSConfig) -> dict:
    """The ``finalize`` update: the answer from the tree (see ``final`` in the module doc)."""
    tree, q = state["tree"], state["question"]
    ends = leaves(tree)
    done = [trajectory_of(tree, i, q) for i in ends if tree[i].finished]
    reason = "simulations"
    if budget_stopped(state, cfg):
        reason = BUDGET
        # The children a refused evaluation left unscored: answers when the tree has none.
        unscored = state.get("finished") or []
        if unscored and not done and (len(tree) == 1 or any(t.finished for t in unscored)):
            return budget_final_update(state, unscored, cfg)
    if cfg.final == "most_visited":
        leaf = most_visited_leaf(tree)
        path_end = trajectory_of(tree, leaf, q)
        if path_end.finished or not done:
            update = finalize_update(state, [path_end], cfg, reason)
            cands = done if path_end.finished else [path_end]
        else:  # the most-visited path is unfinished: best finished leaf instead
            update = finalize_update(state, done, cfg, reason)
            cands = done
    else:
        cands = done or [trajectory_of(tree, i, q) for i in ends]
        update = finalize_update(state, cands, cfg, reason)
    update["candidates"] = sorted(
        with_scores(cands, cfg.aggregation), key=lambda t: -(t.score or 0.0)
    )
    return update


async def _simulate(
    policy: StepPolicy, prm: ProcessRewardModel, cfg: MCTSConfig, q: str, s: Search, i: int
) -> tuple[Search, Usage]:
    tree, usage = await simulate(policy, prm, cfg, q, s["tree"])
    return {"tree": tree}, usage


MCTS_LOOP: SearchLoop[MCTSConfig] = SearchLoop(
    node="simulate",
    step=_simulate,
    done=lambda s, i, cfg: "simulations" if i >= cfg.simulations else "",
    start=lambda state: {"tree": state["tree"]},
    # Not paid for: the tree stays as it was; the refused evaluation's children are kept
    # for the answer (see mcts_final_update).
    refused=lambda s, unscored: {**s, "finished": unscored},
    answer=mcts_final_update,  # it answers budget stops too: from the tree
    budget_candidates=None,
    fresh=lambda: {"tree": [MCTSNode()]},
    state_schema=MCTSState,
)


def build_mcts_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: MCTSConfig
) -> StateGraph:
    return search_graph(MCTS_LOOP, policy, require_prm(prm, "mcts", " (its evaluation step)"), base)


SPEC = StrategySpec(
    name="mcts",
    config=MCTSConfig,
    build=build_mcts_graph,
    budget_config=lambda n: {"simulations": n, "expand_k": 4},
    cost_units=lambda cfg, steps, reused: (
        cfg.simulations * (cfg.expand_k / steps + 1),
        float(cfg.simulations * cfg.expand_k),
    ),
    state_types=(MCTSNode,),
    summary="Monte Carlo tree search over reasoning steps: UCB1 selection, PRM evaluation",
)
