"""In-flight HTTP requests of ``tts serve``: their work stops when nobody waits for it.

Starlette lets a request handler run to its end after the client hung up, and LangServe's
``invoke`` and ``batch`` never look: a client that gives up after 10 s would leave its
search running for minutes. :class:`CancelOnDisconnect` runs each POST next to a watcher
of the ASGI channel and cancels it when the client disconnects; the cancellation reaches
the search (and, through :func:`~langchain_tts.backends.sync.run_in_worker`, the local
model's decoding loop) within one step. :func:`run_server` runs uvicorn so that SIGTERM
cancels every request in flight at once instead of waiting for them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

__all__ = ["CancelOnDisconnect", "InFlight", "run_server"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

#: seconds uvicorn waits for requests after SIGTERM before it cancels what is left
SHUTDOWN_GRACE_SECONDS = 3.0


class InFlight:
    """The cancel scopes of the requests running now; :meth:`cancel_all` on shutdown."""

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.closing = False

    def cancel_all(self) -> int:
        """Cancel every request in flight (they answer 503); returns how many."""
        self.closing = True
        for scope in list(self.scopes):
            scope.cancel()
        return len(self.scopes)


class CancelOnDisconnect:
    """ASGI middleware: a POST whose client disconnects is cancelled.

    The body is read first (at most ``max_body_bytes``; a larger one passes through
    unwatched, for the size limit to refuse) and replayed to the app; meanwhile the real
    channel is watched for ``http.disconnect``. The app's later ``receive()`` calls (a
    streaming response listening for the disconnect) get it too.
    """

    def __init__(self, app: ASGIApp, *, inflight: InFlight, max_body_bytes: int) -> None:
        self.app, self.inflight, self.max_body_bytes = app, inflight, max_body_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # gone before its request was read: nothing to answer
            body.append(msg)
            size += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
            if size > self.max_body_bytes:
                await self.app(scope, _replay(body, receive), send)
                return

        gone = anyio.Event()
        started = False

        async def app_receive() -> Message:
            if body:
                return body.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def app_send(msg: Message) -> None:
            nonlocal started
            started = True
            await send(msg)

        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()
                tg.cancel_scope.cancel()  # the client left: stop its work

            self.inflight.scopes.add(tg.cancel_scope)
            tg.start_soon(watch)
            try:
                await self.app(scope, app_receive, app_send)
            finally:
                self.inflight.scopes.discard(tg.cancel_scope)
                tg.cancel_scope.cancel()  # answered (or failed): stop watching
        if not started and not gone.is_set() and self.inflight.closing:
            await _shutting_down(send)


def _replay(body: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        return body.pop(0) if body else await receive()

    return replay


async def _shutting_down(send: Send) -> None:
    """503 for a request cancelled by the server's shutdown (its client is still there)."""
    payload = json.dumps({"detail": "the server is shutting down; retry"}).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def run_server(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    grace_seconds: float = SHUTDOWN_GRACE_SECONDS,
) -> None:
    """``uvicorn.run`` where SIGTERM / Ctrl-C cancels the requests in flight at once
    (``app.state.inflight``, an :class:`InFlight`), and whatever is still running after
    ``grace_seconds`` is cancelled by uvicorn."""
    import uvicorn

    inflight: InFlight | None = getattr(getattr(app, "state", None), "inflight", None)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            if inflight is not None:
                inflight.cancel_all()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=max(1, round(grace_seconds)),
    )
    Server(config).run()
