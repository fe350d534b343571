"""Threads over HTTP: one run per thread across workers, resuming interrupted runs, API keys.

A served graph with a checkpointer keeps each ``thread_id``'s state in the database;
:class:`ThreadLocks`, :class:`ThreadRuns` and an auth hook (:func:`api_key_auth`) make that
safe to expose to several clients and workers.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage

from langchain_tts.core.errors import ConfigError, InputError, TTSError, check_unicode

if TYPE_CHECKING:
    from fastapi import Request
    from langgraph.graph.state import CompiledStateGraph

#: checkpoint metadata key: digest of the input and knobs of the run that wrote it
INPUT_DIGEST = "tts_input_digest"
#: an auth hook: the request's namespace, or None (then the request is refused with 401)
AuthHook = Callable[["Request"], "str | None | Awaitable[str | None]"]
# configurable keys that identify the thread or checkpoint, not the run's knobs
_NOT_KNOBS = {"thread_id", "checkpoint_id", "checkpoint_ns", "checkpoint_map"}


class ThreadBusyError(TTSError):
    """A run on this thread is already in progress (here or on another worker): a 409."""

    def __init__(self, thread_id: str):
        super().__init__(
            f"thread {thread_id!r} has a run in progress; wait for it to finish, or use "
            "another thread_id"
        )
        self.thread_id = thread_id


# ---------------------------------------------------------------------------------------
# locks: one run per thread
# ---------------------------------------------------------------------------------------


class ThreadLocks:
    """In-process thread locks (a saver that lives in this process only)."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    async def acquire(self, thread_id: str) -> Callable[[], Awaitable[None]]:
        """Take ``thread_id``'s lock or raise :class:`ThreadBusyError`; returns the release."""
        if thread_id in self._held:
            raise ThreadBusyError(thread_id)
        self._held.add(thread_id)

        async def release() -> None:
            self._held.discard(thread_id)

        return release

    @asynccontextmanager
    async def hold(self, thread_id: str) -> AsyncIterator[None]:
        release = await self.acquire(thread_id)
        try:
            yield
        finally:
            await asyncio.shield(release())

    async def check(self, thread_id: str) -> None:
        """Raise :class:`ThreadBusyError` now if ``thread_id`` is running (a cheap pre-check,
        so a stream is refused before it starts; :meth:`hold` is the authoritative one)."""
        release = await self.acquire(thread_id)
        await asyncio.shield(release())  # a client leaving now must not keep the lock

    async def aclose(self) -> None:
        """Release what the backend holds open."""


class SqliteThreadLocks(ThreadLocks):
    """Leases in a ``tts_thread_leases`` table of the checkpoint database, so that workers
    sharing one SQLite file see each other's runs. A lease lasts ``ttl`` seconds and is
    renewed while its run lives; one whose holder died (expired, or its process is gone on
    this host) is taken over."""

    def __init__(self, path: str | Path, *, ttl: float = 30.0):
        super().__init__()
        self.path, self.ttl = str(path), ttl
        self.owner_host, self.owner_pid = socket.gethostname(), os.getpid()
        self._undoing: set[asyncio.Future] = set()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS tts_thread_leases (thread_id TEXT PRIMARY KEY, "
            "host TEXT NOT NULL, pid INTEGER NOT NULL, token TEXT NOT NULL, "
            "expires REAL NOT NULL)"
        )
        return conn

    def _holder_alive(self, host: str, pid: int, expires: float) -> bool:
        if expires < time.time():
            return False
        if host == self.owner_host and pid != self.owner_pid:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False  # the worker that held it was killed: take it over
            except PermissionError:
                pass
        return True

    def _take(self, thread_id: str, token: str) -> bool:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT host, pid, expires FROM tts_thread_leases WHERE thread_id = ?",
                (thread_id,),
            ).fetchone()
            if row is not None and self._holder_alive(*row):
                conn.execute("ROLLBACK")
                return False
            conn.execute(
                "INSERT OR REPLACE INTO tts_thread_leases VALUES (?, ?, ?, ?, ?)",
                (thread_id, self.owner_host, self.owner_pid, token, time.time() + self.ttl),
            )
            # leases of holders that died without a release: no run comes back for them all
            conn.execute("DELETE FROM tts_thread_leases WHERE expires < ?", (time.time(),))
            conn.execute("COMMIT")
            return True
        finally:
            conn.close()

    def _renew(self, thread_id: str, token: str) -> None:
        conn = self._connect()
        try:
            conn.execute(
                "UPDATE tts_thread_leases SET expires = ? WHERE thread_id = ? AND token = ?",
                (time.time() + self.ttl, thread_id, token),
            )
        finally:
            conn.close()

    def _drop(self, thread_id: str, token: str) -> None:
        conn = self._connect()
        try:
            conn.execute(
                "DELETE FROM tts_thread_leases WHERE thread_id = ? AND token = ?",
                (thread_id, token),
            )
        finally:
            conn.close()

    async def acquire(self, thread_id: str) -> Callable[[], Awaitable[None]]:
        token = uuid.uuid4().hex
        take = asyncio.ensure_future(asyncio.to_thread(self._take, thread_id, token))
        try:
            taken = await asyncio.shield(take)
        except asyncio.CancelledError:
            # the client left while the worker thread was writing the lease: it still
            # writes it, and no run will release it (the thread would answer 409 for ttl)
            take.add_done_callback(lambda f: self._undo(f, thread_id, token))
            raise
        if not taken:
            raise ThreadBusyError(thread_id)

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.ttl / 3)
                await asyncio.to_thread(self._renew, thread_id, token)

        renewing = asyncio.create_task(renew())

        async def release() -> None:
            renewing.cancel()
            # shielded: a cancelled to_thread whose job has not started never runs it
            await asyncio.shield(asyncio.to_thread(self._drop, thread_id, token))

        return release

    def _undo(self, take: asyncio.Future, thread_id: str, token: str) -> None:
        """Drop the lease a cancelled :meth:`acquire` took after all."""
        if take.cancelled() or take.exception() is not None or not take.result():
            return
        undo = asyncio.ensure_future(asyncio.to_thread(self._drop, thread_id, token))
        self._undoing.add(undo)  # a reference until it is done (tasks are weakly held)
        undo.add_done_callback(self._undoing.discard)


class PostgresThreadLocks(ThreadLocks):
    """Session advisory locks: a run holds one connection with ``pg_try_advisory_lock`` on
    its thread; the server releases it when the run ends or its worker dies."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    async def acquire(self, thread_id: str) -> Callable[[], Awaitable[None]]:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        try:
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (thread_id,)
            )
            row = await cur.fetchone()
        except BaseException:
            await conn.close()
            raise
        if not (row and row[0]):
            await conn.close()
            raise ThreadBusyError(thread_id)

        async def release() -> None:
            # Unlock before closing: the server drops a closed session's locks only once
            # its backend exits, which may be after the next run on this thread asks.
            try:
                await conn.execute(
                    "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (thread_id,)
                )
            finally:
                await conn.close()

        return release


def thread_locks(db: str | Path | None) -> ThreadLocks:
    """The locks for a checkpoint database (see :func:`~langchain_tts.checkpoint.parse_db`);
    in-process ones without a database."""
    from langchain_tts.checkpoint import parse_db

    if db is None:
        return ThreadLocks()
    kind, target = parse_db(db)
    if kind == "postgres":
        return PostgresThreadLocks(target)
    if target == ":memory:":
        return ThreadLocks()
    return SqliteThreadLocks(target)


# ---------------------------------------------------------------------------------------
# runs: resume or new turn, then retention
# ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-able form of a graph input, for its digest."""
    if isinstance(value, BaseMessage):
        return {"type": value.type, "content": _plain(value.content)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def input_digest(input: Any, configurable: Mapping[str, Any]) -> str:
    """A digest of a run's input and knobs: equal digests mean "the same request again"."""
    knobs = {
        k: v
        for k, v in configurable.items()
        if k not in _NOT_KNOBS and not k.startswith("__") and not k.startswith("langgraph_")
    }
    text = json.dumps([_plain(input), _plain(knobs)], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class ThreadRuns:
    """Runs on checkpointed threads: locked, resumed when interrupted, pruned after.

    ``keep_checkpoints``: after a run finishes, its thread keeps only its last this many
    checkpoints (``None``: all of them).

    * **One run per thread.** :class:`ThreadLocks` refuses a second run on a thread that is
      running (:class:`ThreadBusyError`, a 409), in this process and in every other worker on
      the same database: Postgres session advisory locks (released by the server when a worker
      dies), a lease table in SQLite (renewed while the run lives; a dead holder's lease is
      taken over), a set in memory for an in-process saver.
    * **Resume.** A run that was interrupted (the thread's latest checkpoint still has nodes
      to run) resumes from that checkpoint when a request resends the same input and knobs on
      its thread: no finished step is recomputed and usage is counted once. Any other input
      starts a new turn. Each run records a digest of its input and knobs in its checkpoints'
      metadata (:data:`INPUT_DIGEST`) to tell the two apart.
    * **Namespaces.** With an auth hook (e.g. :func:`api_key_auth`), a thread id is stored as
      ``<namespace>:<thread_id>``: a client naming another client's thread gets its own.
    """

    def __init__(self, locks: ThreadLocks, *, keep_checkpoints: int | None = None):
        if keep_checkpoints is not None and keep_checkpoints < 1:
            raise ConfigError(
                f"keep_checkpoints={keep_checkpoints}: keep at least 1 checkpoint per thread "
                "(the latest holds the thread's state), or None to keep all"
            )
        self.locks, self.keep_checkpoints = locks, keep_checkpoints

    @asynccontextmanager
    async def run(
        self, graph: CompiledStateGraph, input: Any, config: dict[str, Any]
    ) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
        """Hold the thread while the body runs the graph on the ``(input, config)`` this
        yields: ``input`` is ``None`` when the request resumes an interrupted run."""
        conf = dict(config.get("configurable") or {})
        thread_id = conf.get("thread_id")
        if graph.checkpointer is None or not thread_id:
            yield input, config
            return
        digest = input_digest(input, conf)
        async with self.locks.hold(str(thread_id)):
            snapshot = await graph.aget_state({"configurable": {"thread_id": thread_id}})
            if snapshot.next and (snapshot.metadata or {}).get(INPUT_DIGEST) == digest:
                input = None  # the same request, interrupted: go on from its last checkpoint
            metadata = {**(config.get("metadata") or {}), INPUT_DIGEST: digest}
            yield input, {**config, "metadata": metadata}
            if self.keep_checkpoints is not None:
                await prune_thread(graph.checkpointer, str(thread_id), self.keep_checkpoints)


async def prune_thread(saver: Any, thread_id: str, keep: int) -> None:
    """Delete all but the last ``keep`` checkpoints of ``thread_id`` (and their writes).

    The latest checkpoint holds the whole state, so later turns are unaffected; only
    history (time travel to older steps) is lost.
    """
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    if isinstance(saver, AsyncSqliteSaver):
        async with saver.lock:
            for table in ("writes", "checkpoints"):
                await saver.conn.execute(
                    f"DELETE FROM {table} WHERE thread_id = ? AND checkpoint_id NOT IN "
                    "(SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? "
                    "ORDER BY checkpoint_id DESC LIMIT ?)",
                    (thread_id, thread_id, keep),
                )
            await saver.conn.commit()
        return
    if type(saver).__name__ == "AsyncPostgresSaver":
        await _prune_postgres(saver, thread_id, keep)
        return
    from langgraph.checkpoint.memory import InMemorySaver

    if isinstance(saver, InMemorySaver):
        _prune_memory(saver, thread_id, keep)


def _prune_memory(saver: Any, thread_id: str, keep: int) -> None:
    """:func:`prune_thread` for LangGraph's ``InMemorySaver``: its checkpoints by namespace,
    their pending writes, and the channel values no kept checkpoint points to."""
    kept: set[tuple[str, str, Any]] = set()  # (namespace, channel, version) still needed
    for ns, checkpoints in list(saver.storage.get(thread_id, {}).items()):
        ids = sorted(checkpoints)  # checkpoint ids sort by time
        for cid in ids[: max(0, len(ids) - keep)]:
            del checkpoints[cid]
            saver.writes.pop((thread_id, ns, cid), None)
        for stored, _, _ in checkpoints.values():
            versions = saver.serde.loads_typed(stored).get("channel_versions", {})
            kept.update((ns, ch, v) for ch, v in versions.items())
    for key in [k for k in saver.blobs if k[0] == thread_id]:
        if (key[1], key[2], key[3]) not in kept:
            del saver.blobs[key]


async def _prune_postgres(saver: Any, thread_id: str, keep: int) -> None:
    async with saver._cursor() as cur:  # the saver's pool or connection
        for table in ("checkpoint_writes", "checkpoints"):
            await cur.execute(
                f"DELETE FROM {table} t WHERE t.thread_id = %s AND t.checkpoint_id NOT IN "
                "(SELECT c.checkpoint_id FROM checkpoints c WHERE c.thread_id = %s "
                "AND c.checkpoint_ns = t.checkpoint_ns ORDER BY c.checkpoint_id DESC "
                "LIMIT %s)",
                (thread_id, thread_id, keep),
            )
        # channel values no kept checkpoint points to
        await cur.execute(
            "DELETE FROM checkpoint_blobs b WHERE b.thread_id = %s AND NOT EXISTS "
            "(SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id "
            "AND c.checkpoint_ns = b.checkpoint_ns "
            "AND c.checkpoint -> 'channel_versions' ->> b.channel = b.version)",
            (thread_id,),
        )


# ---------------------------------------------------------------------------------------
# auth: API keys -> namespaces
# ---------------------------------------------------------------------------------------


def _key_hash(key: str) -> str:
    # Compare hashes, not keys: a dict lookup on the key itself could leak it by timing.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_namespace(namespace: str) -> str:
    """``namespace`` if it can prefix thread ids (non-empty, no ``:``), else ConfigError."""
    if not isinstance(namespace, str) or not namespace or ":" in namespace:
        raise ConfigError(
            f"namespace {namespace!r}: use a non-empty name without ':' (thread ids are "
            "stored as '<namespace>:<thread_id>')"
        )
    return namespace


def load_api_keys(path: str | Path) -> dict[str, str]:
    """API key -> namespace from a file: one ``KEY NAMESPACE`` pair per line (``#``
    comments and blank lines ignored), or a JSON object ``{"KEY": "NAMESPACE"}``."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            keys = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--api-keys {path}: not valid JSON ({e})") from None
        if not isinstance(keys, dict):
            raise ConfigError(f"--api-keys {path}: expected an object of key: namespace")
    else:
        keys = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"--api-keys {path}:{n}: write 'KEY NAMESPACE' per line")
            if parts[0] in keys:
                raise ConfigError(f"--api-keys {path}:{n}: the key is listed twice")
            keys[parts[0]] = parts[1]
    if not keys:
        raise ConfigError(f"--api-keys {path}: no keys (write 'KEY NAMESPACE' per line)")
    return {str(k): check_namespace(v) for k, v in keys.items()}


def api_key_auth(keys: Mapping[str, str]) -> AuthHook:
    """An auth hook for ``create_app(auth=...)``: the namespace of the request's API key
    (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), ``None`` when missing/unknown."""
    table = {_key_hash(k): check_namespace(ns) for k, ns in keys.items()}

    def auth(request: Request) -> str | None:
        key = request.headers.get("x-api-key")
        header = request.headers.get("authorization", "")
        if key is None and header[:7].lower() == "bearer ":
            key = header[7:].strip()
        return table.get(_key_hash(key)) if key else None

    return auth


async def request_namespace(auth: AuthHook, request: Request) -> str | None:
    """Call an auth hook (sync or async); its namespace, checked, or None."""
    ns = auth(request)
    if inspect.isawaitable(ns):
        ns = await ns
    return None if ns is None else check_namespace(ns)


#: the longest thread id a client may send
MAX_THREAD_ID_CHARS = 1024


def client_thread_id(value: Any) -> str:
    """A client's ``thread_id`` as stored: text, or a whole number as its digits; anything
    else (a list, an object, true) is an :class:`InputError`, as is text a database cannot
    store (a NUL, a lone surrogate) or over :data:`MAX_THREAD_ID_CHARS`. ``str()`` of a list
    would alias the thread ``"[1, 2]"``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"thread_id must be text (or a whole number), got {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_THREAD_ID_CHARS:
        raise InputError(f"thread_id is {len(text)} characters; at most {MAX_THREAD_ID_CHARS}")
    if "\x00" in text:
        raise InputError("thread_id holds a NUL character, which no database stores; drop it")
    check_unicode(text, "thread_id")
    return text


def namespaced(namespace: str | None, thread_id: str) -> str:
    """The stored id of a client's ``thread_id``: ``<namespace>:<thread_id>`` with auth."""
    return thread_id if namespace is None else f"{namespace}:{thread_id}"
