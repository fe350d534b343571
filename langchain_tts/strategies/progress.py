"""Per-step progress events: what a search is doing, wherever the graph runs.

Once a graph is a subgraph or deployed, its state updates are filtered to its output schema,
so each search step is also sent as a small plain-JSON event to LangGraph's custom stream and
to LangChain callbacks. Nothing is built when neither listens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.callbacks import adispatch_custom_event
from langchain_core.runnables import RunnableConfig

from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.types import Trajectory, Usage

#: event names (the ``event`` field and the LangChain custom event's name)
STEP_EVENT = "tts_step"
DONE_EVENT = "tts_done"
ROUTE_EVENT = "tts_route"  #: the router's, once it has chosen a strategy
#: the best this many beams / candidates of a step are listed (an event stays small)
TOP_BEAMS = 8
#: characters of a beam's last step shown
TEXT_CHARS = 160

_RUNTIME = "__pregel_runtime"  # langgraph's CONFIG_KEY_RUNTIME: the run's stream writer


class Progress:
    """Where one node run sends its events; :attr:`active` is False when nobody listens.

    Events: ``{"event": "tts_step", ...}`` per search step and ``{"event": "tts_done", ...}``
    when the graph answers, sent to:

    * LangGraph's custom stream (``stream_mode="custom"``, also from a parent with
      ``subgraphs=True`` and through ``langgraph_sdk``), and
    * LangChain callbacks as a custom event of the same name (``astream_events`` shows it as
      ``on_custom_event``; LangServe's ``/stream_events`` and LangSmith traces carry it).

    Nothing is built when neither listens: the cost of a run nobody streams is a few attribute
    reads per step.
    """

    __slots__ = ("config", "dispatch", "writer")

    def __init__(self, config: RunnableConfig | None):
        self.config = config
        conf = (config or {}).get("configurable") or {}
        writer = getattr(conf.get(_RUNTIME), "stream_writer", None)
        self.writer = writer if _writes(writer) else None
        self.dispatch = _listens(config)

    @property
    def active(self) -> bool:
        return self.writer is not None or self.dispatch

    async def emit(self, event: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer(event)
        if self.dispatch:
            await adispatch_custom_event(event["event"], event, config=self.config)


def _writes(writer: Any) -> bool:
    """Whether LangGraph's stream writer sends anywhere. Without ``stream_mode="custom"``
    LangGraph hands nodes a ``def stream_writer(c): pass``: a function that reads no name
    and closes over nothing (the real one closes over the run's stream)."""
    if writer is None:
        return False
    code = getattr(writer, "__code__", None)
    return code is None or bool(code.co_names or code.co_freevars)


def _listens(config: RunnableConfig | None) -> bool:
    """Whether a callback handler of this run takes custom events (``astream_events``, a
    tracer, a handler of the user's)."""
    callbacks = (config or {}).get("callbacks")
    if callbacks is None:
        return False
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", [])
    return any(not getattr(h, "ignore_custom_event", False) for h in handlers)


def strategy_of(cfg: StrategyConfig) -> str:
    """The registered strategy whose config class ``cfg`` is ("" when none is)."""
    name = _STRATEGY.get(type(cfg))
    if name is None:
        from langchain_tts.strategies.registry import STRATEGY_SPECS

        name = next((n for n, s in STRATEGY_SPECS.items() if s.config is type(cfg)), "")
        _STRATEGY[type(cfg)] = name
    return name


_STRATEGY: dict[type, str] = {}


def _beams(values: Iterable[Any]) -> tuple[list[dict[str, Any]], int, int]:
    """``(the best TOP_BEAMS beams, how many there are, how many are finished)``.

    A beam is a :class:`Trajectory`, or a tree node (``step``, ``depth``, ``step_scores``,
    ``children``: MCTS), of which only the leaves count."""
    rows: list[tuple[float, dict[str, Any]]] = []
    finished = 0
    for v in values:
        if isinstance(v, Trajectory):
            n, last = len(v.steps), (v.steps[-1] if v.steps else "")
        elif hasattr(v, "step_scores") and hasattr(v, "depth"):
            if getattr(v, "children", None) or not v.depth:  # inner nodes, the root
                continue
            n, last = v.depth, v.step
        else:
            continue
        scores = v.step_scores
        s = float(scores[-1]) if scores and len(scores) == n else None
        finished += bool(v.finished)
        beam = {"score": s, "steps": n, "finished": bool(v.finished), "text": last[:TEXT_CHARS]}
        rows.append((-1.0 if s is None else s, beam))
    rows.sort(key=lambda r: -r[0])  # stable: unscored beams keep their order, last
    return [b for _, b in rows[:TOP_BEAMS]], len(rows), finished


def step_event(
    cfg: StrategyConfig, node: str, step: int, search: Mapping[str, Any], usage: Usage
) -> dict[str, Any]:
    """A ``tts_step`` event: the beams (the search's trajectories or tree leaves), their last
    step scores, and what this step spent (plain JSON)."""
    values: list[Any] = []
    for v in search.values():
        if isinstance(v, list):
            values += v
    beams, total, finished = _beams(values)
    return {
        "event": STEP_EVENT,
        "graph": cfg._graph_name or "",
        "strategy": strategy_of(cfg),
        "node": node,
        "step": step,
        "beams": beams,
        "candidates": total,
        "finished": finished,
        "usage": usage.summary(),
    }


def done_event(cfg: StrategyConfig, state: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """The ``tts_done`` event: the answer, why the search stopped, the run's usage."""
    usage = state.get("usage") or Usage()
    return {
        "event": DONE_EVENT,
        "graph": cfg._graph_name or "",
        "strategy": strategy_of(cfg),
        "answer": update.get("answer"),
        "stop_reason": update.get("stop_reason") or state.get("stop_reason") or "",
        "steps": state.get("step", 0),
        "candidates": len(update.get("candidates") or []),
        "usage": usage.summary(),
    }
