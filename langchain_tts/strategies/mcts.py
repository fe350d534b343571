"""Monte Carlo tree search over reasoning steps: policy rollouts, PRM values, and selection
that branches where the PRM's step scores say a path went wrong (or by UCB1).

Each search step selects ``parallel`` nodes, rolls a whole solution out from each in one
policy call, scores the rollouts in one PRM call, adds their steps to the tree and backs
their values up; the answer is chosen among the finished rollouts. The algorithm and its deviations from the
reference are in :func:`build_mcts_graph`.
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
from langchain_tts.strategies.core import TTSState, expand, finalize_update, root_of, score
from langchain_tts.strategies.loop import Search, SearchLoop, require_prm, search_graph
from langchain_tts.strategies.registry import StrategySpec

FinalRule = Literal["finished", "most_visited", "best_leaf"]
TreePolicy = Literal["ucb1", "prm"]
Grow = Literal["step", "rollout"]


class MCTSConfig(StrategyConfig):
    """MCTS knobs; defaults and deviations from the reference MCTS in build_mcts_graph."""

    temperature: float = Field(0.8, ge=0.0, le=5.0)
    simulations: int = Field(24, ge=1, description="selections (each: expand_k rollouts)")
    parallel: int = Field(
        4, ge=1, description="selections per search step: one policy call and one PRM call"
    )
    expand_k: int = Field(1, ge=1, description="rollouts (new children) per selected node")
    width: int = Field(
        4,
        ge=1,
        description="children of one node (grow='step': expansions) before it stops growing",
    )
    c: float = Field(
        1.414, ge=0.0, description="UCB1 exploration constant (tree_policy='ucb1'; 0: greedy)"
    )
    max_depth: int = Field(10, ge=1, description="steps below the root; deeper nodes stay leaves")
    tree_policy: TreePolicy = Field(
        "prm",
        description="how a selection descends: 'ucb1' on backed-up values, or 'prm': wider or "
        "deeper by the PRM's score of each partial path (see build_mcts_graph)",
    )
    grow: Grow = Field(
        "rollout",
        description="what a rollout adds to the tree: its first step ('step') or every step "
        "('rollout'), so that later selections can branch at any depth of it",
    )
    tries: int = Field(
        8,
        ge=1,
        description="grow='rollout': rollouts started from one node before it stops growing "
        "(a rollout that repeats a child's step adds no child; width caps the children)",
    )
    retry_decay: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="tree_policy='prm': each rollout already started from a node multiplies "
        "the promise of one more from it by this factor",
    )
    final: FinalRule = Field(
        "finished",
        description="answer: selection among all finished rollouts, or those through the "
        "most-visited path, or the best one by PRM score",
    )


class MCTSNode(BaseModel):
    """One node of the search tree: the step it adds to its parent's prefix, and statistics."""

    parent: int | None = None
    depth: int = 0
    step: str = Field("", description="the reasoning step this node adds ('' at the root)")
    step_scores: list[float] = Field(default_factory=list, description="PRM scores, root->here")
    path_score: float = Field(1.0, description="step_scores aggregated (1 at the root)")
    tokens: int = Field(0, description="policy tokens of the prefix root->here")
    finished: bool = False
    finish_reason: str | None = None
    children: list[int] = Field(default_factory=list)
    expansions: int = Field(0, description="rollouts started from this node")
    pending: int = Field(0, description="rollouts of this search step not yet back (selection)")
    exhausted: bool = Field(False, description="nothing below this node can grow")
    visits: int = 0
    value_sum: float = 0.0
    score: float = Field(0.0, description="value of the rollout that created this node")

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
    """The child of ``tree[idx]`` UCB1 picks among those not exhausted: the first unvisited
    one, else the best score (ties: the earlier child); -1 when all are exhausted."""
    parent = tree[idx]
    best, best_score = -1, -math.inf
    for j in parent.children:
        if tree[j].exhausted:
            continue
        s = ucb1(tree[j], parent.visits, c)
        if s == math.inf:
            return j
        if s > best_score:  # strict: ties keep the earlier child
            best, best_score = j, s
    return best


def is_terminal(n: MCTSNode, cfg: MCTSConfig) -> bool:
    return n.finished or n.depth >= cfg.max_depth


def is_full(n: MCTSNode, cfg: MCTSConfig) -> bool:
    """No more rollouts from ``n``: ``width`` expansions (``grow="step"``, one child each), or
    ``width`` children or ``tries`` rollouts (``grow="rollout"``, where repeats merge)."""
    if cfg.grow == "step":
        return n.expansions >= cfg.width
    # a pending rollout may add a child: count it, so one step's selections keep to width
    kids = len(n.children) + n.pending
    return kids >= cfg.width or n.expansions >= max(cfg.tries, cfg.width)


def can_grow(n: MCTSNode, cfg: MCTSConfig) -> bool:
    return not is_terminal(n, cfg) and not is_full(n, cfg)


def _gen_promise(n: MCTSNode, cfg: MCTSConfig) -> float:
    if not can_grow(n, cfg):
        return -math.inf
    return n.path_score * cfg.retry_decay**n.expansions


def _node_promise(tree: Sequence[MCTSNode], i: int, cfg: MCTSConfig, best: list[float]) -> float:
    n = tree[i]
    if n.exhausted:
        return -math.inf
    return max([_gen_promise(n, cfg), *(best[j] for j in n.children)])


def promise(tree: Sequence[MCTSNode], cfg: MCTSConfig) -> list[float]:
    """Per node, the best that one more rollout at or below it promises: a rollout from the
    node promises its prefix score, decayed by the rollouts already started there
    (``retry_decay``); a node promises the most of that and its children's promise
    (``-inf`` when exhausted). Children come after their parent in ``tree``."""
    out = [-math.inf] * len(tree)
    for i in range(len(tree) - 1, -1, -1):
        out[i] = _node_promise(tree, i, cfg, out)
    return out


def select_path_prm(
    tree: Sequence[MCTSNode], cfg: MCTSConfig, best: list[float] | None = None
) -> list[int]:
    """Wider or deeper by the PRM: from the root, descend to the child of most promise
    unless a new rollout from the node itself promises more (ties go deeper). ``best``:
    :func:`promise` of ``tree``, when the caller keeps it up to date."""
    best = promise(tree, cfg) if best is None else best
    path = [0]
    while True:
        n = tree[path[-1]]
        kids = [j for j in n.children if not tree[j].exhausted]
        if not kids:
            return path
        j = max(kids, key=lambda j: (best[j], -kids.index(j)))  # ties: the earlier child
        if best[j] < _gen_promise(n, cfg):
            return path
        path.append(j)


def select_path(
    tree: Sequence[MCTSNode], cfg: MCTSConfig, best: list[float] | None = None
) -> list[int]:
    """Node ids from the root down to the node ``tree_policy`` selects for expansion."""
    if cfg.tree_policy == "prm":
        return select_path_prm(tree, cfg, best)
    path = [0]
    while not can_grow(tree[path[-1]], cfg):
        j = select_child(tree, path[-1], cfg.c)
        if j < 0:  # every child is exhausted, or pending in this step's batch
            break
        path.append(j)
    return path


def trajectory_of(tree: Sequence[MCTSNode], idx: int, root: Trajectory) -> Trajectory:
    """The (partial) solution a node stands for: ``root``'s steps (the caller's
    ``prefix_steps``), then the steps root->node, with their scores."""
    steps: list[str] = []
    i: int | None = idx
    while i is not None and tree[i].parent is not None:
        steps.append(tree[i].step)
        i = tree[i].parent
    n = tree[idx]
    return Trajectory(
        question=root.question,
        steps=[*root.steps, *steps[::-1]],
        step_scores=list(n.step_scores),
        tokens=n.tokens,
        finished=n.finished,
        finish_reason=n.finish_reason,
    )


def backprop(tree: list[MCTSNode], path: Sequence[int], value: float) -> None:
    """Add one visit of ``value`` to every node on ``path`` (copies them: no in-place edits)."""
    for i in path:
        n = tree[i]
        tree[i] = model_replace(n, visits=n.visits + 1, value_sum=n.value_sum + value)


def mark_exhausted(tree: list[MCTSNode], path: Sequence[int], cfg: MCTSConfig) -> None:
    """Refresh ``exhausted`` bottom-up along ``path`` (only its nodes can have changed)."""
    for i in reversed(path):
        n = tree[i]
        done = is_terminal(n, cfg) or (
            is_full(n, cfg) and all(tree[j].exhausted for j in n.children)
        )
        if done == n.exhausted:
            return  # nothing above changes either
        tree[i] = model_replace(n, exhausted=done)


def select_leaves(tree: list[MCTSNode], cfg: MCTSConfig, k: int) -> list[list[int]]:
    """Up to ``k`` paths to expand; each counts as a pending visit (virtual loss) and
    a pending expansion, so the next selection looks elsewhere. ``tree`` is left as it was."""
    paths: list[list[int]] = []
    saved: dict[int, MCTSNode] = {}
    # promise once per step; a selection changes it only along its own path
    best = promise(tree, cfg) if cfg.tree_policy == "prm" else None
    for _ in range(k):
        if tree[0].exhausted:
            break
        path = select_path(tree, cfg, best)
        if not can_grow(tree[path[-1]], cfg):
            break
        paths.append(path)
        for i in path:
            saved.setdefault(i, tree[i])
            tree[i] = model_replace(tree[i], visits=tree[i].visits + 1)
        leaf = tree[path[-1]]
        tree[path[-1]] = model_replace(
            leaf, expansions=leaf.expansions + cfg.expand_k, pending=leaf.pending + cfg.expand_k
        )
        mark_exhausted(tree, path, cfg)
        if best is not None:
            for i in reversed(path):
                best[i] = _node_promise(tree, i, cfg, best)
    for i, n in saved.items():
        tree[i] = n
    return paths


def _child(
    parent: MCTSNode, pid: int, rollout: Trajectory, value: float, cfg: MCTSConfig, above: int = 0
) -> MCTSNode | None:
    """The node of a rollout's first new step (None when the rollout wrote no step);
    ``above``: the prefix steps the root stands for (the rollout's first steps)."""
    d = parent.depth
    if len(rollout.steps) <= above + d:
        return None
    only = len(rollout.steps) == above + d + 1  # the step that ends the rollout ends it all
    return MCTSNode(
        parent=pid,
        depth=d + 1,
        step=rollout.steps[above + d],
        step_scores=list(rollout.step_scores[: above + d + 1]),
        path_score=aggregate_scores(rollout.step_scores[: above + d + 1], cfg.aggregation),
        tokens=rollout.tokens if only else parent.tokens,
        finished=only and rollout.finished,
        finish_reason=rollout.finish_reason if only else None,
        visits=1,
        value_sum=value,
        score=value,
    )


def _insert_rollout(
    tree: list[MCTSNode],
    pid: int,
    rollout: Trajectory,
    value: float,
    cfg: MCTSConfig,
    above: int = 0,
) -> list[int]:
    """Every step a rollout wrote below ``tree[pid]`` as a path of nodes, reusing a child that
    has the same step; returns the ids below ``pid``, unvisited until backed up. ``above``:
    the prefix steps the root stands for (the rollout's first steps, not nodes)."""
    ids: list[int] = []
    parent, cur = tree[pid], pid
    d0, n_steps = parent.depth, len(rollout.steps) - above
    for d in range(d0, n_steps):
        step, last = rollout.steps[above + d], d == n_steps - 1
        same = [j for j in tree[cur].children if tree[j].step == step]
        if same:
            cur = same[0]
        else:
            # a prefix's tokens: the rollout's, shared out evenly over its new steps
            tokens = parent.tokens + (rollout.tokens - parent.tokens) * (d + 1 - d0) // (
                n_steps - d0
            )
            tree.append(
                MCTSNode(
                    parent=cur,
                    depth=d + 1,
                    step=step,
                    step_scores=list(rollout.step_scores[: above + d + 1]),
                    path_score=aggregate_scores(
                        rollout.step_scores[: above + d + 1], cfg.aggregation
                    ),
                    tokens=rollout.tokens if last else tokens,
                    finished=last and rollout.finished,
                    finish_reason=rollout.finish_reason if last else None,
                    score=value,
                )
            )
            tree[cur] = model_replace(tree[cur], children=[*tree[cur].children, len(tree) - 1])
            cur = len(tree) - 1
        ids.append(cur)
    return ids


async def simulate(
    policy: StepPolicy,
    prm: ProcessRewardModel,
    cfg: MCTSConfig,
    root: Trajectory,
    search: Search,
    i: int,
) -> tuple[Search, Usage]:
    """One search step: up to ``parallel`` selections, their rollouts in one policy call,
    one PRM call. Returns the new search (the input is not modified) and its usage."""
    tree = list(search["tree"])
    paths = select_leaves(tree, cfg, min(cfg.parallel, cfg.simulations - i * cfg.parallel))
    if not paths:
        return search, Usage()
    parents = [trajectory_of(tree, p[-1], root) for p in paths]
    above = len(root.steps)
    # seed_offset: a node expanded again must not repeat its earlier rollouts
    rollouts, usage = await expand(
        policy,
        parents,
        cfg.expand_k,
        cfg,
        stop_at_step=False,
        seed_offset=i * cfg.parallel * cfg.expand_k,
    )
    done = [r for r in rollouts if r.finished]  # a rollout the budget cut is no solution
    done, prm_usage = await score(prm, done, in_place=True)  # fresh rollouts
    for k, path in enumerate(paths):
        pid = path[-1]
        leaf = tree[pid]
        tree[pid] = leaf = model_replace(leaf, expansions=leaf.expansions + cfg.expand_k)
        for r in rollouts[k * cfg.expand_k : (k + 1) * cfg.expand_k]:
            if not r.finished:
                continue
            value = aggregate_scores(r.step_scores, cfg.aggregation)
            if cfg.grow == "rollout":
                below = _insert_rollout(tree, pid, r, value, cfg, above)
                backprop(tree, [*path, *below], value)
                mark_exhausted(tree, [*path, *below], cfg)
                continue
            child = _child(leaf, pid, r, value, cfg, above)
            if child is not None:
                tree.append(child)
                leaf = model_replace(leaf, children=[*leaf.children, len(tree) - 1])
                tree[pid] = leaf
            backprop(tree, path, value)
        if cfg.grow == "step" and (child_ids := tree[pid].children):
            for j in child_ids[-cfg.expand_k :]:
                mark_exhausted(tree, [*path, j], cfg)
        mark_exhausted(tree, path, cfg)
    return {
        "tree": tree,
        "finished": search["finished"] + done,
        "active": search["active"] + [r for r in rollouts if not r.finished],
    }, usage + prm_usage


def most_visited_path(tree: Sequence[MCTSNode]) -> list[int]:
    """Follow the most-visited child (ties: higher mean value, then earlier) to a leaf."""
    path = [0]
    while tree[path[-1]].children:
        kids = tree[path[-1]].children
        path.append(max(kids, key=lambda j: (tree[j].visits, tree[j].value, -kids.index(j))))
    return path


def _search_done(search: Search, sims: int, cfg: MCTSConfig) -> str:
    if search["tree"][0].exhausted:
        return "exhausted"
    return "simulations" if sims * cfg.parallel >= cfg.simulations else ""


def mcts_final_update(state: MCTSState, cfg: MCTSConfig) -> dict:
    """The ``finalize`` update: the answer among the finished rollouts (``final``)."""
    tree, done = state["tree"], state.get("finished") or []
    reason = _search_done({"tree": tree}, state.get("step", 0), cfg) or "simulations"
    if not done:  # every rollout was cut short: the partial ones compete
        return finalize_update(state, state.get("active") or [], cfg, reason)
    if cfg.final == "best_leaf":
        return finalize_update(state, done, cfg, reason, selection="prm_max")
    if cfg.final == "most_visited":
        path = most_visited_path(tree)
        prefix = trajectory_of(tree, path[-1], root_of(state)).steps
        through = [t for t in done if t.steps[: len(prefix)] == prefix]
        return finalize_update(state, through or done, cfg, reason)
    return finalize_update(state, done, cfg, reason)


MCTS_LOOP: SearchLoop[MCTSConfig] = SearchLoop(
    node="simulate",
    step=simulate,
    done=_search_done,
    start=lambda state: {
        "tree": state["tree"],
        "finished": state.get("finished") or [],
        "active": state.get("active") or [],
    },
    answer=mcts_final_update,
    fresh=lambda: {"tree": [MCTSNode()]},
    state_schema=MCTSState,
)


def build_mcts_graph(
    policy: StepPolicy, prm: ProcessRewardModel | None, base: MCTSConfig
) -> StateGraph:
    """The tree holds one node per reasoning step (the root is the bare question). Each search
    step is one policy call and one PRM call:

    1. **selection** (``parallel`` times), by ``tree_policy``:

       - ``"prm"`` (default), wider or deeper by the verifier: a new rollout from a node
         promises the PRM's score of the node's partial path (``aggregation`` of its step
         scores; 1 at the root), times ``retry_decay`` per rollout already started there; a
         node promises the most of that and its children's promise. From the root, descend to
         the child of most promise unless a rollout from the node itself promises more (ties
         go deeper). A path whose step the PRM doubts promises little, so the search branches
         just above that step, and from the root once the known prefixes are doubted.
       - ``"ucb1"``: descend by UCB1 ``value / visits + c * sqrt(ln(parent visits) /
         visits)`` among the children that are not exhausted, to a node that may still grow.

       A selection counts at once as a visit and an expansion (a virtual loss), so the next
       one looks elsewhere.
    2. **expansion + rollout**: the policy writes ``expand_k`` whole remaining solutions from
       every selected node, all in one call. Every step of a rollout becomes a node
       (``grow="rollout"``, default; a step equal to an existing child's joins it), or only
       its first step (``grow="step"``).
    3. **evaluation**: the PRM scores the rollouts, all in one call; a rollout's value is its
       aggregated score (``aggregation``): the value of a terminal state. The same call gives
       the score of every partial path of the rollout, which ``tree_policy="prm"`` reads.
    4. **backpropagation**: each rollout's value is added along its path from the root.

    A node is terminal when its own step finished the solution or it is ``max_depth`` steps
    deep. It is full after ``width`` expansions (``grow="step"``), or once it has ``width``
    children or ``tries`` rollouts started from it (``grow="rollout"``: a rollout that repeats
    a child's step adds no child, so a node may be tried more often than it branches). It is
    exhausted when terminal, or when full and all its children are exhausted. The search stops after ``simulations`` selections or when the root is exhausted
    (``stop_reason="exhausted"``), so a huge ``simulations`` on a small tree returns at once.

    The answer is chosen among every finished solution the search wrote (the rollouts) with
    ``selection`` (``final="finished"``, the default), or among those through the most-visited
    path (``final="most_visited"``, classic MCTS), or the best by PRM score (``"best_leaf"``).

    Defaults follow the reference design's MCTS (depth 10, temperature 0.8, one child per
    expansion, branching ``b=4``; ``c`` = 1.414 for UCB1), with these deviations, each
    measured in docs/strategies.md: every expansion runs a rollout to a terminal state where
    the reference values a partial prefix (on 5-8 step problems a prefix-valued tree rarely
    finishes a solution); the rollout's steps all join the tree and the PRM's partial-path
    scores pick where to branch (the selection of "Wider or Deeper? Scaling LLM
    Inference-Time Compute with Adaptive Branching Tree Search", Inoue et al., with the
    verifier's step scores as the evidence); ``parallel=4`` selections share each policy call;
    and ``simulations`` is 24, not 200: on the embedded models that costs about what beam
    search N=16 does (0.9x its FLOPs), the strategies' common default budget.

    The tree is plain serializable data in the graph state (``tree``: a list of
    :class:`MCTSNode`, index = node id), so runs checkpoint and resume. With a budget
    (``max_flops`` / ``max_tokens``) the search stops at the first simulation the budget cannot
    pay (``stop_reason="budget"``); the answer is then chosen among the rollouts so far (those
    of a last, refused PRM call by majority when none was scored).
    """
    return search_graph(MCTS_LOOP, policy, require_prm(prm, "mcts", " (its evaluation step)"), base)


def mcts_units(cfg: MCTSConfig, steps: float, reused: int) -> tuple[float, float]:
    """A rollout writes the rest of a solution from a prefix it re-reads (at most one
    solution in all: less when it starts deep in the tree); the PRM reads it whole."""
    rollouts = float(cfg.simulations * cfg.expand_k)
    return rollouts, rollouts


SPEC = StrategySpec(
    name="mcts",
    config=MCTSConfig,
    build=build_mcts_graph,
    budget_config=lambda n: {"simulations": n},
    cost_units=mcts_units,
    computed_units=mcts_units,  # a rollout writes at most the rest of one solution
    state_types=(MCTSNode,),
    summary="Monte Carlo tree search over reasoning steps: policy rollouts scored by the PRM, "
    "branching where the PRM's step scores doubt a path",
)
