"""What a served app lets one client ask for: the operator's limits, checked before any compute.

One small request must not take the server from everyone, so ``create_app`` (LangServe
routes, the router, ``/v1/chat/completions``) applies a :class:`ServeLimits`; a refusal is a
:class:`LimitError` (a ``ConfigError``: 400 over HTTP) that names the limit.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from langchain_tts.core.config import StrategyConfig, did_you_mean, numeric_field
from langchain_tts.core.errors import ConfigError

__all__ = [
    "DEFAULT_MAXIMA",
    "MAX_TEXT_KNOB_CHARS",
    "Admission",
    "LimitError",
    "RunGate",
    "ServeLimits",
    "budget_defaults",
    "check_knobs",
    "limited_config",
    "limited_knobs",
]

#: the largest value of each knob a client may send, unless the operator says otherwise;
#: ``max_total_tokens`` / ``max_step_tokens`` are capped at the model's context when known
DEFAULT_MAXIMA: dict[str, float | None] = {
    "n": 256,
    "beam_width": 64,
    "samples_per_beam": 64,
    "simulations": 1000,
    "expand_k": 16,
    "max_depth": 64,
    "revisions": 64,
    "repairs": 64,
    "first_round": 256,
    "chains": 64,
    "budget": 1024,
    "max_steps": 64,
    "max_tokens": 20_000_000,
    "max_flops": 1e18,
    "parallel": 64,
    "width": 64,
    "tries": 256,
    "round_size": 256,
    "c": 100,
    "weight_temperature": 100,
}
#: the longest text a client may send as a knob (``revision_template``)
MAX_TEXT_KNOB_CHARS = 4096
#: the POST routes that start runs (LangServe's, with or without a config hash, and OpenAI's)
RUN_PATH = re.compile(
    r"^(/tts/[^/]+(/c/[^/]+)?/(invoke|batch|stream|stream_log|stream_events)|"
    r"/v1/chat/completions)/?$"
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LimitError(ConfigError):
    """A request over one of the server's limits; ``limit`` names it (e.g. ``"maxima.n"``)."""

    def __init__(self, message: str, *, limit: str, knob: str | None = None):
        super().__init__(message)
        self.limit, self.knob = limit, knob


class ServeLimits(BaseModel):
    """The operator's limits on what one client may ask of a served app.

    * ``maxima``: the largest value a client may send for a knob (``n <= 256``, ...);
    * ``allow``: the knobs a client may set at all (None: every knob of the route);
    * ``default_max_tokens`` / ``default_max_flops``: the compute budget of a run whose client
      and config set none (the strategies stop with ``stop_reason="budget"`` when it is
      spent);
    * ``max_batch``: inputs of one ``/batch`` request;
    * ``max_messages``: messages of one ``/v1/chat/completions`` request;
    * ``max_in_flight``: runs at once (a batch counts its inputs); past it a run is refused
      with 429 and ``Retry-After``.

    ``tts serve`` reads them from flags and/or a JSON or TOML file (:meth:`from_file`).
    """

    model_config = ConfigDict(extra="forbid")

    maxima: dict[str, float | None] = Field(
        default_factory=lambda: dict(DEFAULT_MAXIMA),
        description="largest value a client may send per knob; merged over the defaults, "
        "null lifts one",
    )
    allow: list[str] | None = Field(
        None, description="knobs a client may set; None: every knob of the route"
    )
    default_max_tokens: float | None = Field(
        2_000_000, gt=0, description="token budget of a run whose client and config set none"
    )
    default_max_flops: float | None = Field(
        None, gt=0, description="FLOPs budget of a run whose client and config set none"
    )
    max_batch: int = Field(32, ge=1, description="inputs of one /batch request")
    max_messages: int = Field(
        1000, ge=1, description="messages of one OpenAI chat completion request"
    )
    max_in_flight: int = Field(
        64, ge=1, description="runs at once (a batch counts its inputs); then 429"
    )
    retry_after: int = Field(1, ge=0, description="seconds a refused client is told to wait")

    @field_validator("maxima", mode="before")
    @classmethod
    def _merge_defaults(cls, v: Any) -> Any:
        return {**DEFAULT_MAXIMA, **v} if isinstance(v, Mapping) else v

    @field_validator("maxima")
    @classmethod
    def _positive(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        for k, m in v.items():
            if m is not None and not m > 0:
                raise ValueError(f"maxima[{k!r}] must be a positive number or null, got {m}")
        return v

    def model_post_init(self, _: Any) -> None:
        known = _known_knobs()
        for where, names in (("maxima", self.maxima), ("allow", self.allow or ())):
            for k in names:
                if k not in known:
                    raise ConfigError(
                        f"{where} names {k!r}, which is no knob of any strategy"
                        f"{did_you_mean(k, known)}; knobs: {sorted(known)}"
                    )
        if self.max_batch > self.max_in_flight:
            raise ConfigError(
                f"max_batch ({self.max_batch}) exceeds max_in_flight ({self.max_in_flight}): "
                "such a batch could never run; lower max_batch or raise max_in_flight"
            )

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> ServeLimits:
        """Limits from a JSON or TOML file (by suffix), ``overrides`` (not None) winning."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            if p.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the limits file {p}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"the limits file {p} must hold an object of limits")
        return cls.build(data, **overrides)

    @classmethod
    def build(cls, data: Mapping[str, Any] | None = None, **overrides: Any) -> ServeLimits:
        """Limits from ``data`` with ``overrides`` (those not None) on top; bad values are a
        :class:`ConfigError` naming the field."""
        merged = dict(data or {})
        for k, v in overrides.items():
            if v is None:
                continue
            if k == "maxima":
                v = {**(merged.get("maxima") or {}), **v}
            merged[k] = v
        try:
            return cls.model_validate(merged)
        except ValidationError as e:
            raise ConfigError(f"invalid server limits: {e}") from None

    def for_context(self, context_length: int | None) -> ServeLimits:
        """These limits with ``max_total_tokens`` / ``max_step_tokens`` at most the model's
        context (when known and not set lower by the operator)."""
        if not context_length:
            return self
        maxima = dict(self.maxima)
        for k in ("max_total_tokens", "max_step_tokens"):
            if k not in maxima:  # an explicit null (no cap) is the operator's choice
                maxima[k] = context_length
        return self.model_copy(update={"maxima": maxima})

    # What the graph builders call (they take any object with these methods, so the
    # library's lower layers need not import the serving ones).
    def limited(self, cfg: StrategyConfig, route: str) -> StrategyConfig:
        """``cfg`` that refuses run knobs over these limits: :func:`limited_config`."""
        return limited_config(cfg, self, route)

    def knob_check(self, route: str) -> Callable[[Mapping[str, Any]], None]:
        """The check of one run's knobs against these limits (a :class:`LimitError`)."""
        return partial(check_knobs, self, route=route)

    def default_budgets(self, budget: Mapping[str, float | None]) -> dict[str, float]:
        """The default ``max_tokens`` / ``max_flops`` that ``budget`` leaves unset."""
        return budget_defaults(self, budget, budget)


def _known_knobs() -> frozenset[str]:
    """Every knob of every registered strategy and of the router."""
    from langchain_tts.routing.router import RouterConfig
    from langchain_tts.strategies import STRATEGY_SPECS

    names = set(RouterConfig.model_fields)
    for spec in STRATEGY_SPECS.values():
        names.update(spec.config.model_fields)
    return frozenset(names)


def _number(v: Any) -> float | None:
    """A knob value as a number when it is one (JSON numbers, numeric query strings)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if not isinstance(v, int) or abs(v) < 2**1023 else math.inf
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def check_knobs(limits: ServeLimits, knobs: Mapping[str, Any], *, route: str) -> None:
    """Refuse (:class:`LimitError`) a knob the client may not set or a value over its maximum.

    ``knobs``: what the client sent for the run on ``route`` (only its knobs; other keys of
    ``configurable`` such as ``thread_id`` are not passed here)."""
    for k, v in knobs.items():
        if limits.allow is not None and k not in limits.allow:
            raise LimitError(
                f"knob {k!r} of {route} is fixed by this server; clients may set "
                f"{sorted(limits.allow)} (the server's limit 'allow')",
                limit="allow",
                knob=k,
            )
        if isinstance(v, str) and len(v) > MAX_TEXT_KNOB_CHARS:
            raise LimitError(
                f"{k} is {len(v)} characters, over this server's limit for {route}: at most "
                f"{MAX_TEXT_KNOB_CHARS}; send a shorter {k}",
                limit="text",
                knob=k,
            )
        cap = limits.maxima.get(k)
        x = _number(v)
        if x is not None and math.isnan(x):
            raise ConfigError(f"{k} must be a number, got {v!r}; send a finite {k}")
        if cap is not None and x is not None and not x <= cap:
            raise LimitError(
                f"{k}={v!r} is over this server's limit for {route}: {k} <= {_fmt(cap)} "
                f"(limit 'maxima.{k}'); send a smaller {k}",
                limit=f"maxima.{k}",
                knob=k,
            )


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def budget_defaults(
    limits: ServeLimits, budget: Mapping[str, float | None], fields: Any
) -> dict[str, float]:
    """The knobs that give a run the server's default budgets: each of ``max_tokens`` /
    ``max_flops`` that the run (``budget``: the client's or the route's) leaves unset and
    the server sets. Per kind: a client's ``max_flops`` does not lift the token default."""
    out: dict[str, float] = {}
    for k, default in (
        ("max_tokens", limits.default_max_tokens),
        ("max_flops", limits.default_max_flops),
    ):
        if default is not None and k in fields and budget.get(k) is None:
            out[k] = default
    return out


def limited_config(cfg: StrategyConfig, limits: ServeLimits, route: str) -> StrategyConfig:
    """``cfg`` with the default budgets it lacks, refusing each run's knobs over ``limits``
    (before any compute; ``route`` names the graph in the refusal)."""
    budget = {k: getattr(cfg, k) for k in ("max_flops", "max_tokens")}
    defaults = budget_defaults(limits, budget, type(cfg).model_fields)
    # Token caps past their maxima (the model's context) are lowered to them: a run cannot
    # use more, and a client lowering a cap below its default must not be refused while
    # sending the default back passes.
    for k in ("max_total_tokens", "max_step_tokens"):
        cap = limits.maxima.get(k)
        if cap is not None and getattr(cfg, k) > cap:
            defaults[k] = int(cap)
    out = cfg.model_copy(update=defaults) if defaults else cfg.model_copy()
    out._knob_check = limits.knob_check(route)
    return out


def limited_knobs(knobs: type[BaseModel], limits: ServeLimits) -> type[BaseModel]:
    """``knobs`` (a graph's ``context_schema``) with the server's maxima as ``maximum`` and
    the knobs clients may not set marked ``readOnly``: what ``/config_schema`` shows.

    Schema annotations only, not constraints: LangServe validates requests against this
    model, and :func:`check_knobs` (whose messages name the limit) is the one to refuse."""
    fields: dict[str, Any] = {}
    for name, info in knobs.model_fields.items():
        cap = limits.maxima.get(name)
        fixed = limits.allow is not None and name not in limits.allow
        if cap is None and not fixed:
            continue
        f = copy.copy(info)
        extra = dict(info.json_schema_extra) if isinstance(info.json_schema_extra, dict) else {}
        if cap is not None and numeric_field(info.annotation):
            extra["maximum"] = int(cap) if float(cap).is_integer() else cap
        if fixed:
            extra["readOnly"] = True
        f.json_schema_extra = extra or None
        fields[name] = (info.annotation, f)
    if not fields:
        return knobs
    out = create_model(knobs.__name__, __base__=knobs, __module__=knobs.__module__, **fields)
    out.__doc__ = knobs.__doc__
    return out


class RunGate:
    """The runs in flight of one app (this process's: each worker of a multi-process
    deployment admits its own share) and how many were refused."""

    def __init__(self, limits: ServeLimits):
        self.limits = limits
        self.in_flight = 0
        self.rejected = 0


class Admission:
    """ASGI middleware: at most ``max_in_flight`` runs at once (a ``/batch`` counts its
    inputs, at most ``max_batch``); past that, 429 with ``Retry-After`` before any compute.
    A run holds its slots until its response is sent (streams included)."""

    def __init__(self, app: Any, gate: RunGate, max_body_bytes: int = 4 * 1024 * 1024):
        self.app, self.gate, self.max_body_bytes = app, gate, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not RUN_PATH.match(path):
            await self.app(scope, receive, send)
            return
        gate, limits = self.gate, self.gate.limits
        weight = 1
        if path.rstrip("/").endswith("/batch"):
            body, receive = await _buffered(receive, self.max_body_bytes)
            size = _batch_size(body)
            if size is not None and size > limits.max_batch:
                await _json(
                    send,
                    path,
                    413,
                    f"a batch of {size} inputs is over this server's limit max_batch="
                    f"{limits.max_batch}; split it into smaller batches",
                    "max_batch",
                )
                return
            weight = max(1, size or 1)
        if gate.in_flight + weight > limits.max_in_flight:
            gate.rejected += 1
            await _json(
                send,
                path,
                429,
                f"the server is busy: {gate.in_flight} runs in flight, the limit is "
                f"max_in_flight={limits.max_in_flight}; retry after {limits.retry_after} s",
                "max_in_flight",
                headers=[(b"retry-after", str(limits.retry_after).encode())],
            )
            return
        gate.in_flight += weight  # one event loop: no lock needed between check and add
        try:
            await self.app(scope, receive, send)
        finally:
            gate.in_flight -= weight


async def _buffered(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """The request body (None past ``limit``: the app refuses it) and a ``receive`` that
    replays what was read, then goes on with the client's own."""
    messages: list[MutableMapping[str, Any]] = []
    size, more = 0, True
    while more and size <= limit:
        msg = await receive()
        messages.append(msg)
        if msg["type"] != "http.request":
            break
        size += len(msg.get("body", b""))
        more = msg.get("more_body", False)
    body = None if more or size > limit else b"".join(m.get("body", b"") for m in messages)

    async def replay() -> MutableMapping[str, Any]:
        return messages.pop(0) if messages else await receive()

    return body, replay


def _batch_size(body: bytes | None) -> int | None:
    """``len(inputs)`` of a LangServe batch body, None when it is not one (the app says why)."""
    if body is None:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    inputs = data.get("inputs") if isinstance(data, dict) else None
    return len(inputs) if isinstance(inputs, list) else None


async def _json(
    send: Send,
    path: str,
    status: int,
    detail: str,
    limit: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A refusal: LangServe's ``{"detail"}`` form, or OpenAI's ``{"error"}`` on ``/v1/``."""
    if path.startswith("/v1/"):
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        data: dict[str, Any] = {
            "error": {"message": detail, "type": kind, "param": None, "code": limit}
        }
    else:
        data = {"detail": detail, "limit": limit}
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
