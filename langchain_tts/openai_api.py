"""An OpenAI-compatible front for the served strategy graphs: the model name picks the strategy.

``POST /v1/chat/completions`` runs the graph named by ``model`` on the request's messages (the
last user message is the question); ``GET /v1/models`` lists the served strategies. Any client
of the OpenAI API (``openai``, ``ChatOpenAI``, curl) can then use a TTS graph.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_messages
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ValidationError

from langchain_tts.core.config import did_you_mean
from langchain_tts.core.errors import BackendError, ConfigError, InputError, check_unicode_in
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.limits import LimitError, ServeLimits, budget_defaults, check_knobs
from langchain_tts.strategies.core import check_context, question_of
from langchain_tts.tracing import token_usage

__all__ = ["OpenAIError", "add_openai_routes", "parse_model"]

#: default limit of a request body (``tts serve`` passes its own); larger ones are a 413
MAX_BODY_BYTES = 4 * 1024 * 1024
#: OpenAI request fields that set a knob of the same meaning
_SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    # max_completion_tokens replaced max_tokens in OpenAI's API: set last, it wins
    "max_tokens": "max_total_tokens",
    "max_completion_tokens": "max_total_tokens",
}
logger = logging.getLogger("langchain_tts")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class OpenAIError(Exception):
    """A request error in OpenAI's format: HTTP ``status`` and the ``error`` object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def parse_model(model: Any, served: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """``"beam_search?n=8&beam_width=4"`` -> ``("beam_search", {"n": "8", ...})``; an unknown
    strategy is a 404 naming the served ones."""
    if not isinstance(model, str) or not model.strip():
        raise OpenAIError(
            400, "model must name a served strategy, e.g. 'beam_search'", param="model"
        )
    name, _, query = model.strip().partition("?")
    if name not in served:
        raise OpenAIError(
            404,
            f"model {name!r} is not served{did_you_mean(name, served)}; served: "
            f"{sorted(served)} (knobs go after '?', e.g. 'beam_search?n=8')",
            param="model",
            code="model_not_found",
        )
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise OpenAIError(
            400,
            f"knobs in the model name must be a query string like 'n=8&beam_width=4': {e}",
            param="model",
            code="invalid_knob",
        ) from None
    return name, dict(pairs)


def _knobs(
    graph: CompiledStateGraph,
    body: Mapping[str, Any],
    query: dict[str, str],
    limits: ServeLimits | None = None,
    route: str = "",
) -> dict:
    """This request's knobs (model query < OpenAI sampling fields < ``tts``), validated and
    checked against the server's ``limits``."""
    knobs: dict[str, Any] = {
        k: (None if v.lower() in ("none", "null") else v) for k, v in query.items()
    }
    schema: type[BaseModel] | None = graph.context_schema
    fields = set(schema.model_fields) if schema is not None else set()
    for field, knob in _SAMPLING_FIELDS.items():
        if body.get(field) is None:
            continue
        if knob not in fields:  # the router: its table sets each strategy's sampling
            raise OpenAIError(
                400,
                f"{field} does not apply to {route or repr(graph.name)}, which has no "
                f"{knob!r} knob "
                f"(its knobs: {sorted(fields)}); drop {field}",
                param=field,
                code="invalid_knob",
            )
        knobs[knob] = body[field]
    extra = body.get("tts")
    if extra is not None and not isinstance(extra, Mapping):
        raise OpenAIError(400, "tts must be an object of knobs, e.g. {'n': 8}", param="tts")
    knobs.update(extra or {})
    for k in knobs:
        if k not in fields:
            raise OpenAIError(
                400,
                f"unknown knob {k!r} for {route or graph.name}{did_you_mean(k, fields)}; valid "
                "knobs: "
                f"{sorted(fields)}",
                param=k,
                code="invalid_knob",
            )
    if limits is not None:
        try:
            check_knobs(limits, knobs, route=route or f"model {graph.name!r}")
        except LimitError as e:
            raise OpenAIError(400, str(e), param=e.knob, code="limit_exceeded") from None
        except ConfigError as e:  # no number at all (NaN)
            raise OpenAIError(400, str(e), code="invalid_knob") from None
    if knobs and schema is not None:
        try:
            checked = schema.model_validate(knobs)
        except (ValidationError, ConfigError) as e:
            # a knobs model raises ConfigError from pydantic's own error: report that one
            inner = _validation_error(e)
            if inner is None:
                raise OpenAIError(400, str(e), code="invalid_knob") from None
            err = inner.errors(include_url=False)[0]
            loc = ".".join(str(x) for x in err.get("loc", ())) or None
            where = f" {loc!r}" if loc else "s"
            raise OpenAIError(
                400,
                f"bad knob{where} for {route or graph.name}: {err['msg']} "
                f"(got {err.get('input')!r})",
                param=loc,
                code="invalid_knob",
            ) from None
        # the validated values (typed: "8" -> 8), only for the knobs the request set
        knobs = {k: getattr(checked, k) for k in knobs}
    return knobs


def _validation_error(e: BaseException | None) -> ValidationError | None:
    """The innermost pydantic error of ``e`` (knobs models wrap theirs in a ConfigError)."""
    found = None
    for _ in range(8):  # a short chain: validator error -> ConfigError -> ValidationError
        if e is None:
            break
        if isinstance(e, ValidationError):
            found = e
            errs = e.errors(include_url=False)
            ctx_err = (errs[0].get("ctx") or {}).get("error") if errs else None
            e = ctx_err.__cause__ if isinstance(ctx_err, BaseException) else None
        else:
            e = e.__cause__
    return found


def _messages(body: Mapping[str, Any], max_messages: int) -> list[BaseMessage]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise OpenAIError(
            400,
            "messages must be a non-empty list, e.g. [{'role': 'user', 'content': '...'}]",
            param="messages",
        )
    if len(raw) > max_messages:  # converting them runs on the event loop: bounded
        raise OpenAIError(
            400,
            f"messages holds {len(raw)} messages; the limit is {max_messages} (send the "
            "recent turns only)",
            param="messages",
            code="too_many_messages",
        )
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, Mapping) else None
        if not isinstance(role, str) or role not in _ROLES:
            raise OpenAIError(
                400,
                f"messages[{i}] must be an object with a 'role' in {sorted(_ROLES)}",
                param=f"messages[{i}]",
            )
    try:
        msgs = convert_to_messages(
            [{**m, "content": _text(m.get("content"), i)} for i, m in enumerate(raw)]
        )
    except (NotImplementedError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise OpenAIError(400, f"messages are not chat messages: {e}", param="messages") from None
    for i, m in enumerate(msgs):  # the reply echoes none of it, but traces and logs do
        try:
            check_unicode_in(m.model_dump(), f"messages[{i}]")
        except InputError as e:
            raise OpenAIError(400, str(e), param=f"messages[{i}]") from None
    if not any(isinstance(m, HumanMessage) for m in msgs):
        raise OpenAIError(400, "messages hold no user message to answer", param="messages")
    try:
        question_of({"messages": msgs})
    except InputError as e:
        raise OpenAIError(400, str(e), param="messages") from None
    return msgs


def _text(content: Any, i: int) -> str:
    """Message ``i``'s text: a string, or OpenAI's list of content parts, whose text parts
    are joined by newlines (as vLLM joins them); any other part is refused, not dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(
            400, "message content must be a string or a list of parts", param=f"messages[{i}]"
        )
    texts = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if not isinstance(part, Mapping):
            raise OpenAIError(
                400,
                f"{where} must be a content part like {{'type': 'text', 'text': '...'}}",
                param=where,
            )
        if part.get("type") != "text":
            raise OpenAIError(
                400,
                f"{where} is a {part.get('type')!r} part; the strategies read text parts only",
                param=where,
            )
        if not isinstance(part.get("text"), str):
            raise OpenAIError(400, f"{where}.text must be a string", param=where)
        texts.append(part["text"])
    return "\n".join(texts)


def openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` (the policy's tokens) with the whole ledger under ``tts``."""
    tokens: dict[str, Any] = token_usage(usage)
    cached = tokens.pop("cached_tokens")
    return {**tokens, "prompt_tokens_details": {"cached_tokens": cached}, "tts": usage.summary()}


class _Request:
    """A validated chat completion request."""

    def __init__(
        self,
        body: Any,
        graphs: Mapping[str, CompiledStateGraph],
        limits: ServeLimits | None = None,
        models: tuple[Any, Any] = (None, None),
    ):
        if not isinstance(body, Mapping):
            raise OpenAIError(400, "the request body must be a JSON object")
        self.model = body.get("model")
        name, query = parse_model(self.model, graphs)
        self.strategy, self.graph = name, graphs[name]
        n = body.get("n")
        if n is not None and (isinstance(n, bool) or n != 1):
            raise OpenAIError(
                400,
                "n (choices) must be 1; the strategy's samples are the knob 'n' under tts",
                param="n",
            )
        _refuse_unsupported(body)
        self.knobs = _knobs(self.graph, body, query, limits, route=f"model {name!r}")
        self.limits = limits
        self.messages = _messages(body, (limits or ServeLimits()).max_messages)
        try:  # before a stream starts: an over-long question is a 400, not an error event
            check_context(question_of({"messages": self.messages}), *models)
        except InputError as e:
            raise OpenAIError(
                400, str(e), param="messages", code="context_length_exceeded"
            ) from None
        self.stream = _flag(body.get("stream"), "stream")
        opts = body.get("stream_options") or {}
        if not isinstance(opts, Mapping):
            raise OpenAIError(400, "stream_options must be an object", param="stream_options")
        self.include_usage = _flag(opts.get("include_usage"), "stream_options.include_usage")
        if opts and not self.stream:
            raise OpenAIError(
                400, "stream_options is only allowed with stream: true", param="stream_options"
            )
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        saver = self.graph.checkpointer
        self.thread_id = f"openai-{uuid.uuid4().hex}" if saver not in (None, False) else None

    async def forget(self) -> None:
        """Delete the run's thread: nobody can address it again (its id is never returned),
        so a server would keep every request's checkpoints for ever."""
        delete = getattr(self.graph.checkpointer, "adelete_thread", None)
        if self.thread_id is None or delete is None:
            return
        with anyio.CancelScope(shield=True):  # also when the client left mid-run
            try:
                await delete(self.thread_id)
            except Exception:  # noqa: BLE001 - a failed clean-up must not fail the reply
                logger.warning("could not delete thread %s", self.thread_id, exc_info=True)

    def config(self) -> dict[str, Any]:
        conf: dict[str, Any] = dict(self.knobs)
        if self.limits is not None and self.graph.context_schema is not None:
            base = self.graph.context_schema()  # the route's config: its knobs' defaults
            budget = {k: conf.get(k, getattr(base, k, None)) for k in ("max_flops", "max_tokens")}
            conf.update(budget_defaults(self.limits, budget, type(base).model_fields))
        if self.thread_id is not None:  # the API is stateless: a thread per request
            conf["thread_id"] = self.thread_id
        return {"configurable": conf, "metadata": {"tts_endpoint": "openai"}}

    def extension(self, out: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "knobs": self.knobs,
            "answer": out.get("answer"),
            "stop_reason": out.get("stop_reason", ""),
            "warnings": out.get("warnings") or [],
        }

    def chunk(self, delta: dict, finish: str | None = None, **extra: Any) -> str:
        data = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n"


#: OpenAI fields whose non-default values would change the reply in ways the strategies do
#: not honour: refused, since a 200 that ignored them would mislead the client
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "stop": (None, [], ""),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "response_format": (None, {"type": "text"}),
    "tool_choice": (None, "none", "auto"),  # a model may always choose to call no tool
    "audio": (None,),
    "prediction": (None,),
}


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for field, defaults in _UNSUPPORTED.items():
        value = body.get(field)
        if not any(value == d and type(value) is type(d) for d in defaults):
            raise OpenAIError(
                400,
                f"{field}={value!r} is not supported: the strategies cannot honour it; "
                f"drop {field}",
                param=field,
                code="unsupported_parameter",
            )


def _flag(value: Any, param: str) -> bool:
    """A boolean field (absent or null: false); ``"no"`` is a client's mistake, not true."""
    if value is None or isinstance(value, bool):
        return bool(value)
    raise OpenAIError(400, f"{param} must be true or false, got {value!r}", param=param)


def _content(out: Mapping[str, Any]) -> str:
    msgs = out.get("messages") or []
    if msgs and isinstance(msgs[-1], AIMessage) and isinstance(msgs[-1].content, str):
        return msgs[-1].content
    return out.get("solution") or "(no solution found)"


def _finish_reason(out: Mapping[str, Any]) -> str:
    """``"length"`` when the reply was cut (the budget, ``max_tokens`` or the context ended
    it before its answer), else ``"stop"``."""
    if out.get("stop_reason") == "budget":
        return "length"
    solution = out.get("solution")
    for c in out.get("candidates") or []:
        if isinstance(c, Trajectory) and c.text == solution:
            return "stop" if c.finish_reason in ("answer", "eos") else "length"
    return "stop"


def _run_error(e: Exception) -> OpenAIError:
    """A failure of the graph run in OpenAI's form (4xx: the request; 502: the backend)."""
    if isinstance(e, InputError):
        return OpenAIError(400, str(e), param="messages")
    if isinstance(e, ConfigError):
        return OpenAIError(400, str(e), code="invalid_knob")
    if isinstance(e, BackendError):
        return OpenAIError(502, str(e), type="server_error", code="backend_error")
    return OpenAIError(500, f"{type(e).__name__}: {e}", type="server_error")


class _CompletionResponse(Response):
    """The JSON answer of a non-streaming request, computed while the response is sent, so
    that a client hanging up cancels its search (as a stream's does): the disconnect is
    watched on the ASGI channel itself, which the app's HTTP middlewares pass through."""

    def __init__(self, req: _Request):
        self.req, self.background = req, None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        result: tuple[int, dict[str, Any]] | None = None

        async with anyio.create_task_group() as tg:

            async def run() -> None:
                nonlocal result
                try:
                    result = 200, await _complete(self.req)
                except OpenAIError as e:
                    result = e.status, e.body()
                tg.cancel_scope.cancel()

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()  # the client left: stop its search

            tg.start_soon(run)
            tg.start_soon(watch)
        if result is not None:
            await AsciiJSONResponse(result[1], status_code=result[0])(scope, receive, send)


class _ClosingStreamingResponse(StreamingResponse):
    """A stream whose generator is closed when the response ends, a client that left
    included: Starlette leaves it to the garbage collector, and until then its run (a task
    of its own) would go on computing for nobody."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def _complete(req: _Request) -> dict[str, Any]:
    try:
        out = await req.graph.ainvoke({"messages": req.messages}, req.config())
    except Exception as e:
        raise _run_error(e) from e
    finally:
        await req.forget()
    return {
        "id": req.id,
        "object": "chat.completion",
        "created": req.created,
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _content(out)},
                "finish_reason": _finish_reason(out),
                "logprobs": None,
            }
        ],
        "usage": openai_usage(out.get("usage") or Usage()),
        "tts": req.extension(out),
        "system_fingerprint": None,
    }


async def _stream(req: _Request) -> AsyncIterator[str]:
    """SSE: progress comments while the graph runs, then the answer, then ``[DONE]``."""
    yield req.chunk({"role": "assistant", "content": ""})
    out: dict[str, Any] = {}
    # The run is a task of its own, cancelled and awaited when the client leaves: closing
    # `astream` at a `yield` would leave its node tasks (a subgraph's included) running, and
    # their checkpoint writes would land after the thread is deleted.
    events: asyncio.Queue[Any] = asyncio.Queue()
    run = asyncio.create_task(_produce(req, events))
    try:
        while (item := await events.get()) is not _END:
            if isinstance(item, Exception):  # the stream has started: an error event, the end
                yield f"data: {json.dumps(_run_error(item).body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            mode, data = item
            if mode == "values":
                out = data
                continue
            for node, update in (data or {}).items():
                yield f": tts {json.dumps(_progress(node, update))}\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            run.cancel()
            await asyncio.wait([run])
        await req.forget()
    for piece in _pieces(_content(out)):
        yield req.chunk({"content": piece})
    yield req.chunk({}, _finish_reason(out), tts=req.extension(out))
    if req.include_usage:
        usage = openai_usage(out.get("usage") or Usage())
        data = {
            "id": req.id,
            "object": "chat.completion.chunk",
            "created": req.created,
            "model": req.model,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(data)}\n\n"
    yield "data: [DONE]\n\n"


_END = object()


async def _produce(req: _Request, events: asyncio.Queue[Any]) -> None:
    """Run the graph, putting each ``(mode, data)`` on ``events``, then an error or the end."""
    try:
        async for item in req.graph.astream(
            {"messages": req.messages}, req.config(), stream_mode=["updates", "values"]
        ):
            events.put_nowait(item)
    except Exception as e:  # noqa: BLE001 - the stream reports it
        events.put_nowait(e)
    else:
        events.put_nowait(_END)


def _progress(node: str, update: Any) -> dict[str, Any]:
    """What a progress comment says about one node's update (counts, not the beams)."""
    info: dict[str, Any] = {"node": node}
    if isinstance(update, Mapping):
        for key in ("step", "stop_reason"):
            if update.get(key) not in (None, ""):
                info[key] = update[key]
        for key in ("active", "finished"):
            if isinstance(update.get(key), list):
                info[key] = len(update[key])
    return info


def _pieces(text: str) -> list[str]:
    """The answer as content deltas, a step (paragraph) each."""
    parts = text.split("\n\n")
    return [p + ("\n\n" if i < len(parts) - 1 else "") for i, p in enumerate(parts)] or [""]


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error that echoes the client's input (a lone
    surrogate included, e.g. an unknown knob's name) still renders, where UTF-8 encoding
    would be a 500. The error responses of every served route use it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def _error_response(e: OpenAIError) -> Response:
    return AsciiJSONResponse(e.body(), status_code=e.status)


def add_openai_routes(
    app: FastAPI,
    graphs: Mapping[str, CompiledStateGraph],
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    limits: ServeLimits | None = None,
    models: tuple[Any, Any] = (None, None),
) -> None:
    """Mount ``POST /v1/chat/completions`` and ``GET /v1/models`` serving ``graphs`` (strategy
    name -> compiled graph) on ``app``; bodies over ``max_body_bytes`` are a 413; knobs are
    checked against ``limits`` (None: no limits) and runs without a budget get its default;
    questions too long for ``models`` (the policy and PRM) are a 400.

    Knobs: in the model name as a query string (``"beam_search?n=8&beam_width=4"``) and/or
    under ``"tts"`` in the body (``extra_body={"tts": {"n": 8}}`` with the ``openai`` client),
    the body winning; OpenAI's ``temperature``, ``top_p`` and ``seed`` set the knobs of the
    same name and ``max_completion_tokens`` / ``max_tokens`` set ``max_total_tokens``.
    ``usage`` counts the policy's tokens the OpenAI way and carries the whole ledger under
    ``usage.tts``; the top-level ``tts`` field says what ran (strategy, knobs, stop reason,
    answer, warnings).

    ``stream=true``: Server-Sent Events; one SSE comment per graph node as the search goes
    (``: tts {"node": "step", "step": 2, ...}``, ignored by OpenAI clients), then the solution
    as content deltas, a final chunk with ``finish_reason``, a usage chunk when
    ``stream_options.include_usage`` is set, and ``data: [DONE]``. Errors follow OpenAI's
    ``{"error": {"message", "type", "param", "code"}}`` with 4xx codes for the client's
    mistakes.
    """
    created = int(time.time())

    async def limit(request: Request, call_next: Any) -> Any:
        # Before the app's own body check: an over-long body gets OpenAI's error format here.
        if request.url.path.startswith("/v1/") and request.method == "POST":
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > max_body_bytes:
                return _too_large(size, max_body_bytes)
            body = await request.body()
            if len(body) > max_body_bytes:
                return _too_large(len(body), max_body_bytes)
        return await call_next(request)

    app.middleware("http")(limit)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """The served strategies, as OpenAI models (knobs: ``"<name>?n=8&..."``)."""
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "langchain-tts"}
            for name in sorted(graphs)
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        """Run the strategy ``model`` names on ``messages``; OpenAI's request and response."""
        try:
            raw = await request.body()
            try:  # UTF-8 only (json.loads would take UTF-16 and UTF-32 too)
                body = json.loads(raw.decode("utf-8"))
            except ValueError as e:  # not UTF-8, not JSON, or an int past Python's limit
                raise OpenAIError(400, f"the request body is not valid JSON: {e}") from None
            except RecursionError:
                raise OpenAIError(
                    400, "the request body is JSON nested too deeply; send a flatter body"
                ) from None
            req = _Request(body, graphs, limits, models)
            if req.stream:
                return _ClosingStreamingResponse(
                    _stream(req),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            return _CompletionResponse(req)
        except OpenAIError as e:
            return _error_response(e)


def _too_large(size: int | str, limit: int) -> Response:
    return _error_response(
        OpenAIError(
            413,
            f"request body is {size} bytes; the limit is {limit}",
            code="request_too_large",
        )
    )
