"""Checkpointing TTS graphs: state channels that checkpoint plain data, a serializer, savers.

With a checkpointer (``create_tts_graph(..., checkpointer=saver)``) each search step is a
checkpoint, so a killed run resumes where it stopped with ``graph.invoke(None, {"configurable":
{"thread_id": ...}})``. State objects checkpoint as plain JSON-like data
(:class:`~langchain_tts.core.channels.PlainValue`), so any saver with LangGraph's default
serializer stores them without "Deserializing unregistered type" warnings.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from langchain_tts.core.errors import ConfigError

if TYPE_CHECKING:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver


def state_types() -> list[type]:
    """The pydantic classes that TTS graph state stores (and checkpoints hold): the shared
    ones, the router's and those of every registered strategy (``StrategySpec.state_types``)."""
    from langchain_tts.core.types import Step, Trajectory, Usage
    from langchain_tts.routing.router import ROUTER_STATE_TYPES
    from langchain_tts.strategies import STRATEGY_SPECS

    out: list[type] = [Trajectory, Usage, Step, *ROUTER_STATE_TYPES]
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

    The graphs' channels checkpoint their objects as plain data, but a step's pending
    writes (loaded by ``get_state_history`` and by a resumed run) hold them as the nodes
    wrote them: without this serializer that load logs "unregistered type" warnings, and
    under ``LANGGRAPH_STRICT_MSGPACK=true`` the objects come back as dicts.
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


def parse_db(db: str | Path) -> tuple[str, str]:
    """``("sqlite", path)`` or ``("postgres", url)`` for a checkpoint database given as a
    file path, ``sqlite:///path`` or ``postgresql://user@host:port/dbname``."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        return "postgres", text
    if text.startswith("sqlite://"):
        path = text.removeprefix("sqlite://")
        if path.startswith("/") and not path.startswith("//"):
            path = path[1:]  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
        elif path.startswith("//"):
            path = path[1:]
        if not path:
            raise ConfigError(f"checkpoint db {text!r}: name a file, e.g. sqlite:///threads.db")
        return "sqlite", path
    if "://" in text:
        raise ConfigError(
            f"checkpoint db {text!r}: use a file path, sqlite:///FILE or postgresql://..."
        )
    return "sqlite", text


def check_database(db: str | Path, timeout: float = 10.0) -> None:
    """A :class:`ConfigError` now, with the database's own reason, when a Postgres ``db``
    cannot be reached (a server would otherwise retry for 30 s at startup, then fail with a
    pool timeout), or a SQLite file cannot be created where it is named."""
    kind, target = parse_db(db)
    if kind == "sqlite":  # opened when used: a path that cannot be would fail at startup
        path = Path(target)
        if path.is_dir() or not path.parent.is_dir():
            raise ConfigError(
                f"checkpoint db {str(target)!r}: "
                + ("is a directory" if path.is_dir() else "its folder does not exist")
                + "; give a SQLite file path in an existing folder"
            )
        return
    try:
        import psycopg
    except ImportError as e:
        raise ConfigError(
            f"checkpoint db {_redacted(target)!r} needs the Postgres saver: pip install "
            f"'langchain-tts[postgres]' ({e})"
        ) from None
    try:
        psycopg.connect(target, connect_timeout=max(1, int(timeout))).close()
    except psycopg.Error as e:
        raise ConfigError(
            f"cannot connect to the checkpoint database {_redacted(target)!r}: "
            f"{' '.join(str(e).split()) or type(e).__name__}"
        ) from None


def _redacted(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


#: the session-level advisory lock under which one process creates the Postgres tables
SETUP_LOCK = "hashtextextended('tts-setup', 0)"


async def _try_lock(conn: Any) -> bool:
    cur = await conn.execute(f"SELECT pg_try_advisory_lock({SETUP_LOCK}) AS locked")
    return bool((await cur.fetchone())["locked"])


@asynccontextmanager
async def async_saver(
    db: str | Path, *, extra: Iterable[type | tuple[str, str]] = (), pool_size: int = 10
) -> AsyncIterator[BaseCheckpointSaver]:
    """An async saver on ``db`` (see :func:`parse_db`) using :func:`serializer` with
    ``extra`` types, its tables created: ``AsyncSqliteSaver`` or ``AsyncPostgresSaver``
    (``pip install 'langchain-tts[postgres]'``) on a pool of ``pool_size`` connections.

    Open it inside the event loop that will use it (e.g. a FastAPI lifespan). Several
    processes may share one Postgres database: the tables are created under a lock.
    """
    kind, target = parse_db(db)
    serde = serializer(extra)
    if kind == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with aiosqlite.connect(target, timeout=30) as conn:
            saver = AsyncSqliteSaver(conn, serde=serde)
            await saver.setup()
            yield saver
        return
    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool
    except ImportError as e:
        raise ConfigError(
            f"checkpoint db {target!r} needs the Postgres saver: pip install "
            f"'langchain-tts[postgres]' ({e})"
        ) from None
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    pool = AsyncConnectionPool(
        target, min_size=1, max_size=max(2, pool_size), kwargs=kwargs, open=False
    )
    await pool.open(wait=True, timeout=30)
    try:
        saver = AsyncPostgresSaver(pool, serde=serde)
        async with pool.connection() as conn:
            # Workers starting together must not run the migrations twice. A worker waits by
            # polling, not in `pg_advisory_lock`: a statement blocked there holds a snapshot,
            # and the migrations' CREATE INDEX CONCURRENTLY waits for every older snapshot to
            # end, so the two would wait for each other forever, out of Postgres's sight.
            while not await _try_lock(conn):
                await asyncio.sleep(0.1)
            try:
                await saver.setup()
            finally:
                await conn.execute(f"SELECT pg_advisory_unlock({SETUP_LOCK})")
        yield saver
    finally:
        await pool.close()
