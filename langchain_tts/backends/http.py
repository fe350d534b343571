"""The HTTP client of OpenAI-compatible / vLLM servers, shared by the policy and the PRM.

:class:`HTTPBackend` is a pooled async JSON client with timeouts, retries and typed errors;
:class:`ServerClient` holds what every client of one served model needs on top of it: the
lazily loaded client-side tokenizer and the server's own chat template (vLLM's
``/tokenize`` + ``/detokenize``).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx

from langchain_tts.core.errors import BackendError, ConfigError, InputError

__all__ = ["ChatTemplateMode", "HTTPBackend", "ServerClient", "server_root"]

ChatTemplateMode = Literal["server", "client", "none"]
_RETRY_STATUS = frozenset({408, 425, 429})
#: the largest response body read by default (a step's completions are kilobytes)
DEFAULT_MAX_RESPONSE_BYTES = 32 * 2**20


def by_index(items: list, expected: int, where: str, data: Any) -> list:
    """``items`` (a response's choices or results) in the order of their ``index``, which
    must number them 0..expected-1 once each (a server numbering each prompt's samples from
    0 again would hand one prompt another's answer); in the order given when none has one.
    A :class:`BackendError` otherwise, naming ``where``."""

    def bad(why: str) -> BackendError:
        return BackendError(
            f"{where} returned items {why}; expected one per index 0..{expected - 1} "
            "(prompt-major: prompt i's sample j at i x n + j, as vLLM numbers them)",
            partial={"response": str(data)[:500]},
        )

    if not all(isinstance(c, Mapping) for c in items):
        raise bad("that are not objects")
    indices = [c.get("index") for c in items]
    if all(i is None for i in indices):
        return items
    if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise bad(f"with indices {indices[:8]!r}")
    if sorted(indices) != list(range(expected)):
        raise bad(f"numbered {sorted(indices)[:8]!r}{'...' if expected > 8 else ''}")
    return sorted(items, key=lambda c: c["index"])


def usage_of(data: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """A response's ``usage`` object (``{}`` when absent); a :class:`BackendError` when it is
    something else."""
    raw = data.get("usage")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise BackendError(f"{where}: usage is {raw!r:.100}, not an object of token counts")
    return raw


def token_count(raw: Mapping[str, Any], key: str, where: str) -> int | None:
    """A token count a server reported (None when absent): budgets and FLOPs are booked from
    it, so anything but a non-negative whole number is a :class:`BackendError`."""
    v = raw.get(key)
    if v is None:
        return None
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and v >= 0
    if not ok or (isinstance(v, float) and not v.is_integer()):
        raise BackendError(
            f"{where}: reported {key}={v!r:.50}; a token count is a whole number >= 0 (a "
            "server bug or a proxy that rewrites usage)"
        )
    return int(v)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class _TooLarge(Exception):
    pass


def server_root(base_url: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000``: vLLM serves its extras at the root."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def _close_at_loop_shutdown(client: httpx.AsyncClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await client.aclose()


class HTTPBackend:
    """Pooled async HTTP JSON client with timeouts, retries and :class:`BackendError`.

    One ``httpx.AsyncClient`` per event loop, created lazily: :func:`~.sync.run_sync` may drive the
    same backend from several loops (and threads), and an httpx client must not cross loops.
    Retries (exponential backoff, ``Retry-After`` honoured) on 408/425/429/5xx, timeouts and
    connection errors; any other status fails at once.

    ``timeout`` is a deadline per attempt: connecting, sending and reading the whole body
    (not httpx's gap between two reads, which a server trickling a byte now and then never
    hits), so a call ends after at most ``(max_retries + 1) * timeout`` plus the backoff
    sleeps and the wait for a free connection. That wait (more calls at once than
    ``max_connections``) is outside the deadline: a call waiting its turn has not been sent,
    and timing it out would retry work the server never saw, or drop work it is doing. A body larger than ``max_response_bytes`` is dropped as it streams in (a
    :class:`BackendError` naming the limit, not retried).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_connections: int = 64,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        name: str = "backend",
    ):
        if not _number(timeout) or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {max_connections}")
        if max_response_bytes < 1:
            raise ConfigError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        self.max_response_bytes = int(max_response_bytes)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = max(0.0, float(backoff))
        self.max_connections = int(max_connections)
        self.name = name
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # loop -> (client, closer): the closer is an async generator parked in the loop, so
        # the loop's shutdown_asyncgens() (run by asyncio.run) closes the client in time.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]]
        self._clients = weakref.WeakKeyDictionary()
        # loop -> the slots of its connections: a call waits for one before its deadline runs
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._slots = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()

    async def client(self) -> httpx.AsyncClient:
        """The pooled client of the running event loop (created on first use).

        It is closed when that loop shuts down (``asyncio.run`` finalizes async generators
        before closing the loop), so sync calls through :func:`~.sync.run_sync` leak no sockets.
        """
        loop = asyncio.get_running_loop()
        with self._guard:
            entry = self._clients.get(loop)
            if entry is not None and not entry[0].is_closed:
                return entry[0]
            client = httpx.AsyncClient(
                headers=self._headers,
                # no pool timeout: calls queue for a connection on the slots, not in httpx
                timeout=httpx.Timeout(self.timeout, pool=None),
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
            )
            closer = _close_at_loop_shutdown(client)
            self._clients[loop] = (client, closer)
        await closer.asend(None)  # park it: registered with the loop's async generators
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop (others close when their loop shuts down)."""
        loop = asyncio.get_running_loop()
        with self._guard:
            entry = self._clients.pop(loop, None)
        if entry is not None:
            await entry[1].aclose()  # runs the closer's finally: client.aclose()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * (2 ** (attempt - 1))
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), 60.0))
            except ValueError:
                pass
        return delay

    async def post_json(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload``; the decoded JSON object, or :class:`BackendError` after retries.

        ``BackendError.partial`` is a dict with ``url``, ``attempts``, ``status`` (last HTTP
        status or None) and ``errors`` (one line per failed attempt). Text that cannot be
        sent (not valid Unicode) is an :class:`InputError`, before any request.
        """
        try:
            content = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(
                f"{self.name}: the request holds text that is not valid Unicode ({e.reason}: "
                f"{e.object[e.start : e.end]!r}); send UTF-8 text"
            ) from None
        except ValueError as e:  # NaN / infinity: not JSON
            raise ConfigError(f"{self.name}: the request is not valid JSON: {e}") from None
        errors: list[str] = []
        status: int | None = None
        retry_after: str | None = None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt, retry_after))
            attempts += 1
            retry_after = None
            try:
                async with self._slot():
                    status, headers, body = await asyncio.wait_for(
                        self._attempt(url, content), self.timeout
                    )
            except asyncio.TimeoutError:
                errors.append(f"timed out: no full response within the {self.timeout:g}s deadline")
                continue
            except httpx.TimeoutException as e:
                errors.append(f"timed out after {self.timeout:g}s ({type(e).__name__})")
                continue
            except httpx.TransportError as e:
                errors.append(f"connection error: {type(e).__name__}: {e}")
                continue
            except httpx.DecodingError as e:  # a compressed body that does not decode
                errors.append(f"the response body did not decode: {e}")
                continue
            except _TooLarge:
                errors.append(f"the response exceeded max_response_bytes={self.max_response_bytes}")
                raise self._error(
                    url, attempts, status, errors,
                    f"the response is larger than max_response_bytes={self.max_response_bytes}; "
                    "raise max_response_bytes if the server's answers are really this large",
                ) from None  # fmt: skip
            text = body.decode("utf-8", errors="replace")
            if 200 <= status < 300:
                try:
                    data = json.loads(body)
                except (ValueError, RecursionError):  # RecursionError: nested past the parser
                    errors.append(f"HTTP {status} with a body that is not JSON: {text[:300]!r}")
                    continue
                if not isinstance(data, dict):
                    raise self._error(
                        url, attempts, status, errors, f"unexpected body {data!r:.300}"
                    )
                if data.get("error") is not None:  # some servers answer failures with a 200
                    raise self._error(
                        url, attempts, status, errors,
                        f"HTTP {status} with an error object: {data['error']!r:.500}",
                    )  # fmt: skip
                return data
            errors.append(f"HTTP {status}: {text[:500]}")
            if status in _RETRY_STATUS or status >= 500:
                retry_after = headers.get("retry-after")
                continue
            raise self._error(url, attempts, status, errors, f"HTTP {status}: {text[:500]}")
        raise self._error(
            url, attempts, status, errors, f"gave up after {attempts} attempts; last: {errors[-1]}"
        )

    def _slot(self) -> asyncio.Semaphore:
        """The running loop's connection slots (``max_connections``)."""
        loop = asyncio.get_running_loop()
        with self._guard:
            slots = self._slots.get(loop)
            if slots is None:
                slots = self._slots[loop] = asyncio.Semaphore(self.max_connections)
        return slots

    async def _attempt(self, url: str, content: bytes) -> tuple[int, httpx.Headers, bytes]:
        """One POST, its body read in chunks up to :attr:`max_response_bytes`."""
        client = await self.client()
        async with client.stream("POST", url, content=content) as resp:
            size = resp.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > self.max_response_bytes:
                raise _TooLarge
            chunks, total = [], 0
            async for chunk in resp.aiter_bytes():  # decoded: the size is what memory holds
                total += len(chunk)
                if total > self.max_response_bytes:
                    raise _TooLarge
                chunks.append(chunk)
        return resp.status_code, resp.headers, b"".join(chunks)

    def _error(
        self, url: str, attempts: int, status: int | None, errors: list[str], what: str
    ) -> BackendError:
        partial = {"url": url, "attempts": attempts, "status": status, "errors": list(errors)}
        return BackendError(f"{self.name}: POST {url} failed: {what}", partial=partial)


#: conversations a server client keeps rendered (one per question in flight is what counts)
MAX_RENDERED_CHATS = 1024


class ServerClient:
    """Shared set-up of the clients of a vLLM / OpenAI-compatible server.

    Holds the :class:`HTTPBackend`, the lazily loaded client-side tokenizer and the chat
    template, rendered by that tokenizer (``chat_template="client"``) or by the server itself
    (``"server"``: ``/tokenize`` + ``/detokenize``, counted in ``templating_requests``). Used
    by :class:`~langchain_tts.policies.openai.OpenAIPolicy` and
    :class:`~langchain_tts.prms.http.HTTPRewardPRM`.
    """

    name: Any
    http: HTTPBackend

    def _init_client(
        self,
        base_url: str,
        model: str,
        *,
        name: str,
        chat_template: ChatTemplateMode,
        tokenizer: Any,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_connections: int,
        num_parameters: int,
        extra_body: dict[str, Any] | None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if chat_template not in ("server", "client", "none"):
            raise ConfigError(
                f"chat_template must be 'server', 'client' or 'none', got {chat_template!r}"
            )
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url must be an http(s) URL like 'http://127.0.0.1:8000/v1', got "
                f"{base_url!r:.100}"
            )
        try:  # a port out of range fails here, not as a retried connection error
            port = httpx.URL(base_url).port
        except (httpx.InvalidURL, ValueError) as e:
            raise ConfigError(f"base_url {base_url!r:.100} is not a valid URL: {e}") from None
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"base_url {base_url!r:.100} has port {port}, outside 1..65535")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.chat_template = chat_template
        self._tokenizer_spec = tokenizer
        self._tokenizer: Any = None if isinstance(tokenizer, (str, Path)) else tokenizer
        self.num_parameters = int(num_parameters)
        self.extra_body = dict(extra_body or {})
        self.name = name
        self.http = HTTPBackend(
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_connections=max_connections,
            max_response_bytes=max_response_bytes,
            name=name,
        )
        #: rendered conversations, the most recently used last (a bounded LRU: a server
        #: answering strangers sees a new question with every request)
        self._rendered: OrderedDict[tuple[Any, ...], str] = OrderedDict()
        #: requests sent to /tokenize + /detokenize (``chat_template="server"``), not model calls
        self.templating_requests = 0

    def clear_cache(self) -> None:
        """Forget the rendered chat templates (and the model's cache, where it has one)."""
        self._rendered.clear()
        super().clear_cache()  # type: ignore[misc]

    @property
    def tokenizer(self) -> Any:
        """The client-side HF tokenizer (loaded lazily from a path or hub id)."""
        if self._tokenizer is None and self._tokenizer_spec is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self._tokenizer_spec))
        return self._tokenizer

    def rendered_chat(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool
    ) -> str | None:
        """What :meth:`render_chat` returned for ``messages`` before, or None."""
        return self._rendered.get(_chat_key(messages, add_generation_prompt))

    async def render_chat(
        self,
        messages: list[dict[str, str]],
        *,
        add_generation_prompt: bool,
        advice: str,
        note: str = "",
    ) -> str:
        """``messages`` through the chat template of ``chat_template`` (``"client"`` or
        ``"server"``), cached per conversation.

        On a server failure a :class:`BackendError` that names the endpoints, then ``note``
        and ``advice`` (what to configure instead).
        """
        key = _chat_key(messages, add_generation_prompt)
        if key in self._rendered:
            self._rendered.move_to_end(key)
            return self._rendered[key]
        if self.chat_template == "client":
            text = str(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=add_generation_prompt
                )
            )
        else:
            text = await self._server_chat_template(
                messages, add_generation_prompt=add_generation_prompt, advice=advice, note=note
            )
        self._rendered[key] = text
        while len(self._rendered) > MAX_RENDERED_CHATS:
            self._rendered.popitem(last=False)
        return text

    async def _server_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool, advice: str, note: str
    ) -> str:
        root = server_root(self.base_url)
        try:
            tok = await self.http.post_json(
                f"{root}/tokenize",
                {
                    "model": self.model,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "add_special_tokens": False,
                },
            )
            detok = await self.http.post_json(
                f"{root}/detokenize", {"model": self.model, "tokens": tok["tokens"]}
            )
            self.templating_requests += 2
            prompt = detok["prompt"]
            if not isinstance(prompt, str) or not prompt:
                raise TypeError(f"/detokenize returned {prompt!r} as the prompt, not its text")
            return prompt
        except (BackendError, KeyError, TypeError) as e:
            raise BackendError(
                f"{self.name}: could not apply the server's chat template through {root}/tokenize "
                f"and /detokenize{note}: {e}. {advice}",
                partial=getattr(e, "partial", None),
            ) from e

    async def aclose(self) -> None:
        """Close the pooled connections of the running event loop."""
        await self.http.aclose()


def _chat_key(messages: list[dict[str, str]], add_generation_prompt: bool) -> tuple[Any, ...]:
    return (add_generation_prompt, *((m["role"], m["content"]) for m in messages))
