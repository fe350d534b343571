"""Checkpointing TTS graphs: state channels that checkpoint plain data, a serializer, savers.

Every strategy graph accepts a LangGraph checkpointer (``create_tts_graph(...,
checkpointer=saver)``); with one, each search step is a checkpoint, so a killed run resumes
where it stopped with ``graph.invoke(None, {"configurable": {"thread_id": ...}})`` and
finished steps are not recomputed.

The state holds pydantic objects (:class:`~langchain_tts.core.types.Trajectory`,
:class:`~langchain_tts.core.types.Usage`, MCTS tree nodes). Their keys are
:class:`~langchain_tts.core.channels.PlainValue` / ``PlainAggregate`` channels, which checkpoint them as plain
JSON-like data and rebuild the objects on load: any saver with LangGraph's default
serializer (a plain ``InMemorySaver()``, ``SqliteSaver``, ``langgraph dev``) stores them
without "Deserializing unregistered type ..." warnings. :func:`serializer` additionally
registers the classes, for savers that also load a step's pending writes under
``LANGGRAPH_STRICT_MSGPACK=true``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

if TYPE_CHECKING:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver


def state_types() -> list[type]:
    """The pydantic classes that TTS graph state stores (and checkpoints hold): the shared
    ones and those of every registered strategy (``StrategySpec.state_types``)."""
    from langchain_tts.core.types import Step, Trajectory, Usage
    from langchain_tts.strategies import STRATEGY_SPECS

    out: list[type] = [Trajectory, Usage, Step]
    for spec in STRATEGY_SPECS.values():
        out += [t for t in spec.state_types if t not in out]
    return out


def allowed_msgpack_modules(extra: Iterable[type | tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """``(module, class name)`` pairs for ``JsonPlusSerializer(allowed_msgpack_modules=...)``.

    ``extra``: your own state types (classes or pairs) when a TTS graph is a node of a graph
    whose state holds other pydantic/dataclass objects.
    """
    out: list[tuple[str, str]] = []
    for t in [*state_types(), *extra]:
        pair = (t.__module__, t.__qualname__) if isinstance(t, type) else tuple(t)
        if pair not in out:
            out.append(pair)  # type: ignore[arg-type]
    return out


def serializer(extra: Iterable[type | tuple[str, str]] = ()) -> JsonPlusSerializer:
    """A checkpoint serializer with the package's types registered (no warnings, strict-safe).

    LangGraph's safe built-ins (messages, ``Send``, datetimes, ...) stay allowed; anything
    else unregistered is blocked instead of being imported on load.
    """
    return JsonPlusSerializer(allowed_msgpack_modules=allowed_msgpack_modules(extra))


@contextmanager
def sqlite_saver(path: str | Path = ":memory:") -> Iterator[SqliteSaver]:
    """A sync ``SqliteSaver`` on ``path`` using :func:`serializer` (for ``invoke``/``stream``).

    Needs ``pip install langgraph-checkpoint-sqlite``.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        yield SqliteSaver(conn, serde=serializer())
    finally:
        conn.close()


@asynccontextmanager
async def async_sqlite_saver(path: str | Path = ":memory:") -> AsyncIterator[AsyncSqliteSaver]:
    """An ``AsyncSqliteSaver`` on ``path`` using :func:`serializer`.

    Use it under ``ainvoke``/``astream`` and in servers (LangServe runs graphs async, and the
    sync ``SqliteSaver`` does not support async calls). Open it inside the event loop that
    will use it, e.g. a FastAPI lifespan.
    """
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    async with aiosqlite.connect(str(path)) as conn:
        yield AsyncSqliteSaver(conn, serde=serializer())
