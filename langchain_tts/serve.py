"""Serve TTS graphs over HTTP with LangServe: one route per strategy, knobs per request.

``create_app()`` returns a FastAPI app with ``/tts/<strategy>/invoke|batch|stream|...`` for
every strategy, ``/tts/router`` and ``/health``; ``tts serve`` runs it with uvicorn. Around
``add_routes`` it checks knobs with the graph's own rules, turns client mistakes into 4xx,
opens async checkpointers, and applies :mod:`~langchain_tts.threads` and
:mod:`~langchain_tts.limits` (``docs/deployment.md``).
A client that hangs up cancels its run (:class:`CancelOnDisconnect`); ``tts serve``
(:func:`run_server`) cancels the runs in flight on SIGTERM instead of waiting for them.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AnyMessage, BaseMessage, convert_to_messages
from langchain_core.runnables import Runnable, RunnableBinding
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from langchain_tts.core.config import StrategyConfig, knobs_model
from langchain_tts.core.errors import BackendError, ConfigError, InputError, check_unicode_in
from langchain_tts.graph import create_tts_graph, embedded_policies
from langchain_tts.limits import (
    Admission,
    RunGate,
    ServeLimits,
    budget_defaults,
    check_knobs,
    limited_knobs,
)
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies import STRATEGY_SPECS, strategy_config
from langchain_tts.strategies.core import (
    MAX_PREFIX_STEPS,
    check_context,
    prefix_of,
    question_of,
    resolve_config,
)
from langchain_tts.threads import (
    AuthHook,
    ThreadBusyError,
    ThreadLocks,
    ThreadRuns,
    client_thread_id,
    namespaced,
    request_namespace,
    thread_locks,
)

if TYPE_CHECKING:
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

#: requests larger than this are refused with 413 before they are parsed
MAX_BODY_BYTES = 4 * 1024 * 1024
#: the route of the router graph (``/tts/router``): difficulty probe + budget table
ROUTER = "router"


class TTSRequest(BaseModel):
    """What a served graph accepts: ``{"question": str}`` or chat ``{"messages": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    question: str | None = Field(None, description="the problem text")
    messages: list[AnyMessage] = Field(
        default_factory=list, description="chat input; the last human message is the question"
    )
    prefix_steps: list[Any] | None = Field(
        None,
        description="steps already written that the search continues from (strategy routes only)",
        max_length=MAX_PREFIX_STEPS,
    )

    @field_validator("messages", mode="before")
    @classmethod
    def _chat_messages(cls, value: Any) -> Any:
        # LangChain's AnyMessage discriminator raises TypeError on anything but a message or
        # a dict with a "type" (pydantic lets that through as a 500), and it rejects forms
        # the graph accepts. Convert like the graph does; a ValueError here is a 422.
        if not isinstance(value, list):
            return value  # pydantic's own "valid list" error
        out: list[BaseMessage] = []
        for i, item in enumerate(value):
            if isinstance(item, BaseMessage):
                out.append(item)
                continue
            try:
                out.extend(convert_to_messages([item]))
            except (NotImplementedError, ValueError, TypeError, KeyError, AttributeError) as e:
                raise ValueError(
                    f"messages[{i}] is not a chat message ({type(item).__name__}): pass "
                    "{'role': 'user', 'content': '...'} or {'type': 'human', 'content': '...'} "
                    f"dicts, ['human', '...'] pairs or strings ({str(e).splitlines()[0]})"
                ) from None
        return out

    @model_validator(mode="after")
    def _has_question(self) -> TTSRequest:
        # The graph's own check, run before the graph so errors are 422s, also for streams.
        question_of({"question": self.question, "messages": self.messages})
        for i, m in enumerate(self.messages):  # the reply carries them back: UTF-8 only
            check_unicode_in(m.model_dump(), f"messages[{i}]")
        prefix_of({"prefix_steps": self.prefix_steps})
        return self


def knobs_schema(strategy: str, base: StrategyConfig | dict | None = None) -> type[BaseModel]:
    """The per-call knobs of ``strategy`` as a pydantic model, defaulting to ``base``: the
    ``context_schema`` a graph built on that config carries (what LangGraph Studio shows)."""
    cfg = strategy_config(strategy, base)
    title = "".join(p.title() for p in strategy.split("_")) + "Knobs"
    knobs = knobs_model(cfg, title=title)
    knobs.__doc__ = _knobs_doc(STRATEGY_SPECS[strategy].summary, strategy)
    return knobs


def _knobs_doc(summary: str, what: str) -> str:
    return f"{summary}. Per-call knobs of {what} (config['configurable'] or run context)."


def servable_graph(
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    strategy: str,
    config: StrategyConfig | dict | None = None,
    *,
    checkpointer: BaseCheckpointSaver | None = None,
    limits: ServeLimits | None = None,
) -> CompiledStateGraph:
    """``create_tts_graph`` for LangServe and LangGraph Studio: its knobs (``context_schema``,
    defaulting to ``config``) carry the strategy's summary as their description.

    ``limits``: as for :func:`create_tts_graph`, for a deployment that calls the graph
    directly (``langgraph.json``); ``create_app`` checks each request before the run."""
    graph = create_tts_graph(
        policy, prm, strategy, config, checkpointer=checkpointer, limits=limits
    )
    graph.context_schema.__doc__ = _knobs_doc(STRATEGY_SPECS[strategy].summary, strategy)
    return graph


def servable_router(
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    *,
    checkpointer: BaseCheckpointSaver | None = None,
    limits: ServeLimits | None = None,
    **kwargs: Any,
) -> CompiledStateGraph:
    """``create_router_graph`` (its default table unless ``table=`` is given) for LangServe
    and LangGraph Studio; ``kwargs`` go to :func:`create_router_graph`; ``limits`` as for
    :func:`servable_graph`."""
    from langchain_tts.routing.router import create_router_graph

    graph = create_router_graph(policy, prm, checkpointer=checkpointer, limits=limits, **kwargs)
    graph.context_schema.__doc__ = _knobs_doc(
        "Estimates each question's difficulty and runs the budget table's strategy for it",
        "the router",
    )
    return graph


class _ServedGraph(RunnableBinding):
    """A graph with :class:`TTSRequest` as input type that keeps the graph's config schema.

    LangServe applies ``input_type`` with ``with_types``, whose binding reports an empty
    config schema, so ``configurable`` would be dropped; this binding delegates instead.
    """

    #: runs on checkpointed threads: locked, resumed, pruned (None: plain runs)
    thread_runs: Any = None

    def config_schema(self, *, include: Sequence[str] | None = None) -> type[BaseModel]:
        with warnings.catch_warnings():  # LangGraph 1.x deprecates it; LangServe needs it
            warnings.simplefilter("ignore", DeprecationWarning)
            schema = self.bound.config_schema(include=include)
        # the knobs with the server's maxima (set by create_app): what /config_schema shows
        knobs = getattr(self.bound, "served_knobs", None)
        if knobs is None or "configurable" not in schema.model_fields:
            return schema
        from pydantic import create_model

        # the same shape as the graph's: LangServe copies it without constraints to check
        # requests; the limits are checked per request, with messages that name them
        field = schema.model_fields["configurable"]
        return create_model(schema.__name__, __base__=schema, configurable=(knobs, field.default))

    @asynccontextmanager
    async def _thread_run(self, input: Any, config: Any) -> AsyncIterator[tuple[Any, Any]]:
        if self.thread_runs is None:
            yield input, config
            return
        async with self.thread_runs.run(self.bound, input, self._merge_configs(config)) as run:
            yield run

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        async with self._thread_run(input, config) as (inp, cfg):
            return await super().ainvoke(inp, cfg, **kwargs)

    async def abatch(self, inputs: list[Any], config: Any = None, **kwargs: Any) -> list[Any]:
        # each input through ainvoke above (the binding's own abatch would skip it)
        return await Runnable.abatch(self, inputs, config, **kwargs)

    async def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator:
        async with self._thread_run(input, config) as (inp, cfg):
            async for chunk in super().astream(inp, cfg, **kwargs):
                yield chunk

    def astream_events(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("version") == "v3":
            return super().astream_events(input, config, **kwargs)

        async def events() -> AsyncIterator:
            async with self._thread_run(input, config) as (inp, cfg):
                async for event in super(_ServedGraph, self).astream_events(inp, cfg, **kwargs):
                    yield event

        return events()


def default_configs(budget: int = 16) -> dict[str, dict[str, Any]]:
    """A config per registered strategy that spends about ``budget`` samples per question."""
    return {name: spec.budget_config(budget) for name, spec in STRATEGY_SPECS.items()}


def _configurable_from_body(body: Any) -> dict[str, Any]:
    """``config["configurable"]`` of a request body as the client sent it (or ``{}``)."""
    cfg = body.get("config") if isinstance(body, dict) else None
    conf = cfg.get("configurable") if isinstance(cfg, dict) else None
    return dict(conf) if isinstance(conf, dict) else {}


def create_app(
    policy: StepPolicy | None = None,
    prm: ProcessRewardModel | None = None,
    strategies: Sequence[str] | None = None,
    *,
    configs: dict[str, StrategyConfig | dict] | None = None,
    budget: int = 16,
    checkpointer: BaseCheckpointSaver | str | Path | None = None,
    title: str = "langchain-tts",
    openai_api: bool = True,
    auth: AuthHook | None = None,
    keep_checkpoints: int | None = None,
    limits: ServeLimits | None = None,
    policies: Mapping[str, StepPolicy] | None = None,
) -> FastAPI:
    """A FastAPI app serving one LangServe route per strategy at ``/tts/<strategy>``.

    ``policy``/``prm``: default to the embedded models (``load_default()``, and for
    ``revision`` and ``hybrid`` the embedded policy trained to revise:
    :func:`~langchain_tts.graph.embedded_policies`); with a policy of your own and
    ``prm=None``, only strategies that need no PRM are served. ``policies``: strategy ->
    policy, for the strategies that should run on another policy than ``policy``.
    ``strategies``: default every registered one that can run with these models, and
    :data:`ROUTER` (``/tts/router``, on its default table).
    ``configs``: per-strategy base configs (default: :func:`default_configs` at ``budget``);
    ``configs["router"]``: keyword arguments of ``create_router_graph``. Knobs are
    overridable per request through ``configurable``. ``checkpointer``: an
    async-capable saver, or a SQLite path opened as ``AsyncSqliteSaver`` for the app's
    lifetime; with one, requests without a ``thread_id`` get a fresh one. A database is
    a SQLite path, ``sqlite:///FILE`` or ``postgresql://...`` (workers sharing it share
    threads). ``keep_checkpoints``: after each run its thread keeps only its last this many
    checkpoints (default: all).

    ``auth``: ``auth(request) -> namespace`` (sync or async), e.g.
    :func:`~langchain_tts.threads.api_key_auth`; ``None`` from it is a 401 on ``/tts/*`` and
    ``/v1/*``, and a thread id is stored as ``<namespace>:<thread_id>``, so clients never
    see each other's threads.
    ``limits``: what one client may ask for (default: :class:`ServeLimits`' defaults, with
    ``max_total_tokens`` / ``max_step_tokens`` at most the policy's context length).
    """
    from fastapi import FastAPI  # noqa: F811 - runtime import

    if policy is None:  # the embedded models; the embedded PRM too unless one is given
        from langchain_tts.models import load_default_policy, load_default_prm

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        policy = load_default_policy()
        prm = prm if prm is not None else load_default_prm()
        names = [s for s in strategies or STRATEGY_SPECS if s in STRATEGY_SPECS]
        defaults = embedded_policies(names, loaded={"small": policy})
        policies = {**defaults, **(policies or {})}
    base_configs = {**default_configs(budget), **(configs or {})}
    saver, saver_path, saver_name = _saver(checkpointer)
    graphs = _served_graphs(policy, prm, strategies, base_configs, saver, policies or {})
    thread_runs = _thread_runs(checkpointer, saver_path, keep_checkpoints)
    app = FastAPI(
        title=title,
        version="1",
        description="Test-time compute scaling strategies (PRM beam search, best-of-N, ...)",
        lifespan=_lifespan(graphs, saver_path),
    )
    limits = (limits or ServeLimits()).for_context(getattr(policy, "context_length", None))
    _limit_graphs(graphs, limits)
    app.state.thread_runs = thread_runs  # before the routes: their runs go through it
    # Added first, so it runs inside the body-size limit: a client that leaves cancels its run.
    app.state.inflight = InFlight()
    app.add_middleware(
        CancelOnDisconnect, inflight=app.state.inflight, max_body_bytes=MAX_BODY_BYTES
    )
    app.middleware("http")(_limit_body)
    _add_error_handlers(app)
    _add_health(app, graphs, policy, prm, saver_name)
    _add_strategy_routes(
        app, graphs, uses_threads=checkpointer is not None, limits=limits, models=(policy, prm)
    )
    if openai_api:  # /v1/chat/completions and /v1/models, the model naming the strategy
        from langchain_tts.openai_api import add_openai_routes

        add_openai_routes(
            app, graphs, max_body_bytes=MAX_BODY_BYTES, limits=limits, models=(policy, prm)
        )
    _add_auth(app, auth)
    gate = RunGate(limits)  # outermost: a refused run costs no body parsing or validation
    app.add_middleware(Admission, gate=gate, max_body_bytes=MAX_BODY_BYTES)
    app.state.graphs, app.state.limits, app.state.runs = graphs, limits, gate
    return app


def _limit_graphs(graphs: dict[str, CompiledStateGraph], limits: ServeLimits) -> None:
    """Give each served graph its knobs with the server's maxima, for ``/config_schema``
    (the graph's own ``context_schema`` stays as built)."""
    for graph in graphs.values():
        graph.served_knobs = limited_knobs(graph.context_schema, limits)  # type: ignore[attr-defined]


def _saver(
    checkpointer: BaseCheckpointSaver | str | Path | None,
) -> tuple[BaseCheckpointSaver | None, str | Path | None, str | None]:
    """``(saver, database the lifespan opens, saver class name)`` of ``checkpointer``."""
    if isinstance(checkpointer, (str, Path)):
        from langchain_tts.checkpoint import parse_db

        if parse_db(checkpointer)[0] == "postgres":
            try:  # fail early if missing
                from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
            except ImportError as e:
                raise ConfigError(
                    f"checkpointer {str(checkpointer)!r} needs the Postgres saver: "
                    f"pip install 'langchain-tts[postgres]' ({e})"
                ) from None
            return None, checkpointer, AsyncPostgresSaver.__name__
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver  # fail early if missing

        return None, checkpointer, AsyncSqliteSaver.__name__
    if isinstance(checkpointer, BaseCheckpointSaver):
        return checkpointer, None, type(checkpointer).__name__
    return None, None, None


def _served_graphs(
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    strategies: Sequence[str] | None,
    configs: dict[str, StrategyConfig | dict],
    saver: BaseCheckpointSaver | None,
    policies: Mapping[str, StepPolicy],
) -> dict[str, CompiledStateGraph]:
    """A servable graph per strategy (and the router, :data:`ROUTER`), on its policy in
    ``policies`` or else ``policy``; when none were named, those these models can run. ``configs["router"]``: keyword arguments of
    :func:`~langchain_tts.routing.create_router_graph` (``table``, ``max_flops``, ...)."""
    graphs: dict[str, CompiledStateGraph] = {}
    for name in strategies or [*STRATEGY_SPECS, ROUTER]:
        try:
            if name == ROUTER:
                kwargs = dict(configs.get(ROUTER) or {})
                graphs[name] = servable_router(policy, prm, checkpointer=saver, **kwargs)
            else:
                graphs[name] = servable_graph(
                    policies.get(name, policy), prm, name, configs.get(name), checkpointer=saver
                )
        except ConfigError:
            if strategies is not None:  # asked for explicitly: say why it cannot be served
                raise
    if not graphs:
        raise ConfigError("no strategy can be served with these models (pass a PRM?)")
    return graphs


def _lifespan(graphs: dict[str, CompiledStateGraph], saver_path: str | Path | None) -> Any:
    """The app's lifespan: a SQLite saver at ``saver_path`` is open while the app runs."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if saver_path is not None:
                from langchain_tts.checkpoint import async_saver
                from langchain_tts.routing.router import ROUTER_STATE_TYPES

                # the router's state holds its Route and DifficultyEstimate too
                opened = await stack.enter_async_context(
                    async_saver(saver_path, extra=ROUTER_STATE_TYPES)
                )
                for g in graphs.values():
                    g.checkpointer = opened
            try:
                yield
            finally:  # the connection closes with the lifespan: do not keep a dead saver
                if saver_path is not None:
                    for g in graphs.values():
                        g.checkpointer = None

    return lifespan


def _too_large(size: int | str) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        {"detail": f"request body is {size} bytes; the limit is {MAX_BODY_BYTES}"},
        status_code=413,
    )


async def _limit_body(request: Request, call_next: Any) -> Any:
    """Refuse bodies over :data:`MAX_BODY_BYTES` (413), bodies that are not UTF-8 and JSON
    the parser cannot take (422)."""
    from fastapi.responses import JSONResponse

    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        return _too_large(size)
    # the OpenAI routes parse and refuse their own bodies, in OpenAI's error format
    if request.method in ("POST", "PUT", "PATCH") and not request.url.path.startswith("/v1/"):
        # LangServe parses bodies with json.loads and catches only JSONDecodeError: a body
        # that is not UTF-8 would be a 500. The body is cached for the route to reuse.
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:  # chunked (no content-length): refuse before parsing
            return _too_large(len(body))
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            return JSONResponse(
                {
                    "detail": f"Invalid JSON body: not valid UTF-8 (byte 0x{body[e.start]:02x} "
                    f"at position {e.start})"
                },
                status_code=422,
            )
        unparsable = _unparsable(body)
        if unparsable is not None:
            return JSONResponse({"detail": unparsable}, status_code=422)
    return await call_next(request)


def _unparsable(body: bytes) -> str | None:
    """Why ``body`` cannot be parsed safely where LangServe's parser would let the error
    through as a 500 (nesting past the recursion limit, an integer past Python's digit
    limit); None otherwise."""
    try:
        json.loads(body)
    except RecursionError:
        return (
            "Invalid JSON body: nested too deeply (arrays / objects inside each other past the "
            "parser's recursion limit); send a flatter body"
        )
    except json.JSONDecodeError:
        pass  # LangServe says what is wrong with it
    except ValueError as e:
        return f"Invalid JSON body: {e}"
    return None


def _add_error_handlers(app: FastAPI) -> None:
    """Typed errors become 4xx / 502 responses with their message, never a 500."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from langchain_tts.openai_api import AsciiJSONResponse as _SafeJSON

    async def request_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _SafeJSON({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    app.add_exception_handler(RequestValidationError, request_error)

    def detail(status: int) -> Any:
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handler

    async def thread_busy(request: Request, exc: ThreadBusyError) -> JSONResponse:
        # the client's own thread id, not the stored one with its namespace
        namespace = getattr(request.state, "tts_namespace", None)
        asked = exc.thread_id.removeprefix(f"{namespace}:") if namespace else exc.thread_id
        return JSONResponse({"detail": str(ThreadBusyError(asked))}, status_code=409)

    async def validation_error(_: Request, exc: ValidationError) -> JSONResponse:
        # LangServe's batch endpoint validates inputs outside its 422 translation.
        return _SafeJSON(
            {"detail": jsonable_encoder(exc.errors(include_url=False, include_context=False))},
            status_code=422,
        )

    async def backend_error(_: Request, exc: BackendError) -> JSONResponse:
        # The model backend failed (after its retries), not the request: a bad gateway.
        return JSONResponse({"detail": str(exc), "error": "BackendError"}, status_code=502)

    app.add_exception_handler(InputError, detail(422))
    app.add_exception_handler(ValidationError, validation_error)
    app.add_exception_handler(BackendError, backend_error)
    app.add_exception_handler(ConfigError, detail(400))
    app.add_exception_handler(ThreadBusyError, thread_busy)


def _add_health(
    app: FastAPI,
    graphs: dict[str, CompiledStateGraph],
    policy: StepPolicy,
    prm: ProcessRewardModel | None,
    checkpointer: str | None,
) -> None:
    served = {
        "status": "ok",
        "strategies": sorted(graphs),
        "policy": getattr(policy, "name", None),
        "prm": getattr(prm, "name", None),
        "checkpointer": checkpointer,
    }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness plus what is served (load balancers and `tts serve` smoke checks)."""
        return served


def _knobs_base(name: str, graph: CompiledStateGraph) -> Any:
    """The config the route's graph was built on (its knobs' defaults), named like the graph:
    the base :func:`resolve_config` checks a request's knobs against."""
    from langchain_tts.routing.router import RouterConfig

    cls = RouterConfig if name == ROUTER else STRATEGY_SPECS[name].config
    base = cls.model_validate(graph.context_schema().model_dump())
    base._graph_name, base._knobs = graph.name, graph.context_schema
    return base


def _config_modifier(
    name: str,
    graph: CompiledStateGraph,
    uses_threads: bool,
    limits: ServeLimits | None = None,
    models: tuple[StepPolicy | None, ProcessRewardModel | None] = (None, None),
) -> Any:
    """LangServe's per-request config hook for the route ``name`` serving ``graph``."""
    from fastapi import HTTPException

    base = _knobs_base(name, graph)
    limits = limits or ServeLimits()

    async def per_request(config: dict[str, Any], request: Request) -> dict[str, Any]:
        """Keep ``configurable`` (knobs, ``thread_id``), check knobs before the run."""
        conf = dict(config.get("configurable") or {})
        sent: dict[str, Any] = {}
        body: Any = None
        if request.method == "POST":
            try:
                body = await request.json()
                sent = _configurable_from_body(body)
            except ValueError:
                sent = {}
        if "thread_id" not in conf and sent.get("thread_id") is not None:
            conf["thread_id"] = sent["thread_id"]
        if conf.get("thread_id") is not None:
            try:
                conf["thread_id"] = client_thread_id(conf["thread_id"])
            except InputError as e:
                raise HTTPException(status_code=422, detail=str(e)) from e
        if uses_threads and not conf.get("thread_id"):
            conf["thread_id"] = uuid.uuid4().hex
        await _thread_of_request(conf, request)
        # LangServe's copy of the knobs schema keeps types but not constraints, and drops
        # keys it does not know: check what the client sent with the graph's own rules, so
        # a bad or misspelled knob is a 400 before any stream starts.
        try:
            asked = _apply_limits(base, limits, sent, conf, route=f"/tts/{name}")
            resolved = resolve_config(base, {"configurable": asked})
        except ConfigError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        budget = {k: getattr(resolved, k, None) for k in ("max_flops", "max_tokens")}
        conf.update(budget_defaults(limits, budget, type(base).model_fields))
        try:  # before a stream starts: an over-long question is a 422, not a broken stream
            _check_contexts(body, models, resolved)
        except InputError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        return {**config, "configurable": conf}

    return per_request


async def _thread_of_request(conf: dict[str, Any], request: Request) -> None:
    """Put ``conf["thread_id"]`` in the request's namespace (auth) and refuse a thread that
    is running with 409 now, before a stream starts (the run's own lock is authoritative)."""
    from fastapi import HTTPException

    if not conf.get("thread_id"):
        return
    asked = str(conf["thread_id"])
    conf["thread_id"] = namespaced(getattr(request.state, "tts_namespace", None), asked)
    runs: ThreadRuns | None = getattr(request.app.state, "thread_runs", None)
    if runs is not None:
        try:
            await runs.locks.check(conf["thread_id"])
        except ThreadBusyError as e:
            raise HTTPException(status_code=409, detail=str(ThreadBusyError(asked))) from e


def _apply_limits(
    base: Any, limits: ServeLimits, sent: dict[str, Any], conf: dict[str, Any], *, route: str
) -> dict[str, Any]:
    """The configurable a request asks for, checked against the server's limits (a
    :class:`ConfigError` naming the limit). LangServe fills every knob with its default, so
    the client's own knobs are those that differ from the route's config."""
    merged = {**sent, **conf}
    fields = type(base).model_fields
    # the client's own values: LangServe's copy of the schema made n=True an n of 1
    merged.update((k, v) for k, v in sent.items() if k in fields)
    internal = sorted(k for k in merged if isinstance(k, str) and k.startswith("__"))
    if internal:
        raise ConfigError(
            f"configurable keys starting with '__' are LangGraph's own and cannot be sent: "
            f"{internal}; remove them"
        )
    asked = {k: v for k, v in merged.items() if k in fields and v != getattr(base, k)}
    check_knobs(limits, asked, route=route)
    return merged


def _check_contexts(
    body: Any, models: tuple[StepPolicy | None, ProcessRewardModel | None], cfg: Any
) -> None:
    """:func:`check_context` for the question(s) of a request body (the graph checks again,
    for callers that reach it some other way)."""
    if not isinstance(body, dict):
        return
    inputs = body.get("inputs") if isinstance(body.get("inputs"), list) else [body.get("input")]
    for item in inputs:
        if not isinstance(item, dict):
            continue
        try:
            question = question_of(item)
        except InputError:
            continue  # TTSRequest says what is wrong with it
        try:
            prefix = prefix_of(item)
        except InputError:
            continue
        strategy_cfg = cfg if isinstance(cfg, StrategyConfig) else None
        check_context(question, *models, strategy_cfg, prefix)


_ENDPOINTS = (
    "invoke",
    "batch",
    "stream",
    "stream_log",
    "stream_events",
    "input_schema",
    "output_schema",
    "config_schema",
    "playground",
)


def _add_strategy_routes(
    app: FastAPI,
    graphs: dict[str, CompiledStateGraph],
    *,
    uses_threads: bool,
    limits: ServeLimits | None = None,
    models: tuple[StepPolicy | None, ProcessRewardModel | None] = (None, None),
) -> None:
    """One LangServe route per served graph, at ``/tts/<strategy>`` and ``/tts/router``."""
    from langserve import add_routes

    for name, graph in graphs.items():
        add_routes(
            app,
            _ServedGraph(
                bound=graph,
                custom_input_type=TTSRequest,
                thread_runs=getattr(app.state, "thread_runs", None),
            ),
            path=f"/tts/{name}",
            per_req_config_modifier=_config_modifier(name, graph, uses_threads, limits, models),
            enabled_endpoints=_ENDPOINTS,
        )


def _thread_runs(
    checkpointer: BaseCheckpointSaver | str | Path | None,
    saver_path: str | Path | None,
    keep_checkpoints: int | None,
) -> ThreadRuns | None:
    """How runs on threads are locked and pruned: by the database the workers share, or in
    this process for a saver object (it cannot be shared with another process's app)."""
    if checkpointer is None:
        return None
    locks = thread_locks(saver_path) if saver_path is not None else ThreadLocks()
    return ThreadRuns(locks, keep_checkpoints=keep_checkpoints)


def _add_auth(app: FastAPI, auth: AuthHook | None) -> None:
    """The auth hook: a namespace per request on ``/tts/*`` and ``/v1/*``, else 401. Added
    last, so it runs first (before body checks and admission)."""
    from fastapi.responses import JSONResponse

    if auth is None:
        return

    async def authenticate(request: Request, call_next: Any) -> Any:
        path = request.url.path
        if path.startswith(("/tts/", "/v1/")):
            try:
                ns = await request_namespace(auth, request)
            except ConfigError as e:  # the hook returned an unusable namespace
                return JSONResponse({"detail": str(e)}, status_code=500)
            if ns is None:
                msg = "missing or invalid API key: send 'Authorization: Bearer <key>'"
                if path.startswith("/v1/"):
                    from langchain_tts.openai_api import OpenAIError

                    err = OpenAIError(401, msg, type="authentication_error", code="invalid_api_key")
                    return JSONResponse(err.body(), status_code=401)
                return JSONResponse(
                    {"detail": msg}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
            request.state.tts_namespace = ns
        return await call_next(request)

    app.middleware("http")(authenticate)


# -- requests in flight: cancelled when their client hangs up, and on shutdown -------------
# Starlette lets a handler run to its end after the client left, and LangServe's invoke and
# batch never look: a client that gives up after 10 s would leave its search running for
# minutes. The cancellation reaches the search and, through ``run_in_worker``, the local
# model's decoding loop within one step.

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
        import anyio  # noqa: F811 - runtime import (the server extra)

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
        openai = str(scope.get("path", "")).startswith("/v1/")
        if not started and gone.is_set():  # nobody reads it, but outer middlewares want one
            await _closed(send, 499, "the client closed the request", openai=openai)
        elif not started and self.inflight.closing:
            await _closed(
                send, 503, "the server is shutting down; retry", retry_after=True, openai=openai
            )


def _replay(body: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        return body.pop(0) if body else await receive()

    return replay


async def _closed(
    send: Send, status: int, detail: str, *, retry_after: bool = False, openai: bool = False
) -> None:
    """The answer of a request cancelled before it answered: its client left (499, as
    nginx logs it), or the server is shutting down (503, the client may retry); in OpenAI's
    error format on the ``/v1`` routes."""
    headers = [(b"content-type", b"application/json")]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    body: dict[str, Any] = {"detail": detail}
    if openai:
        err = {"message": detail, "type": "server_error", "param": None, "code": None}
        body = {"error": err}
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


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
