"""A fake ``vllm`` package: the slice of vLLM's async API that ``VLLMPolicy`` uses, scripted.

``install(monkeypatch, script)`` puts ``vllm``, ``vllm.sampling_params``, ``vllm.outputs``,
``vllm.engine.arg_utils`` and ``vllm.v1.engine.exceptions`` into ``sys.modules``. The engine
behaves like vLLM's V1 ``AsyncLLM`` (``vllm/v1/engine/async_llm.py``, ``parallel_sampling.py``,
``output_processor.py``, ``outputs.py``, ``sampling_params.py``):

* ``AsyncLLMEngine.from_engine_args(AsyncEngineArgs(...))`` builds it; it binds to the event
  loop running at construction, else to the loop of its first ``generate`` (its output
  handler task lives there) and fails on any other loop.
* ``generate(prompt, sampling_params, request_id)`` is an async generator of
  ``RequestOutput``: one prompt per call (``{"prompt_token_ids": [...]}`` or a string),
  ``n`` samples; request ids must be unique among running requests. With
  ``output_kind=FINAL_ONLY`` it yields once, all ``n`` samples; with the default
  ``CUMULATIVE`` and ``n > 1`` each child's output comes on its own (one ``CompletionOutput``
  per ``RequestOutput``), as in V1. Cancelling it aborts the request.
* Decoding: ``script(prompt_text, sample_index)`` says what the model writes, followed by
  EOS. Tokens are emitted one by one: a stop string in the generated text ends the sample
  with ``finish_reason="stop"``, ``stop_reason=<the string>``, the text cut before it (kept
  with ``include_stop_str_in_output``) and ``token_ids`` up to the token that completed it;
  EOS gives ``"stop"`` / ``None`` (EOS id in ``token_ids``, not in the text); ``max_tokens``
  gives ``"length"``. A stop string beats the length cap on the same token (V1's detokenizer
  overrides the scheduler's reason).
* Sample ``j`` of a seeded request runs with ``seed + j``; prefix caching (blocks of
  ``block_size`` tokens, never the last prompt token) fills ``num_cached_tokens``.

Every request is recorded in ``engine.calls`` (``Call``: id, prompt ids, the sampling params,
how many requests were running when it was scheduled, its outputs), aborts in
``engine.aborted``; ``engine.fail(call)`` may return an exception to raise mid-request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import sys
from collections.abc import AsyncIterator, Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

Script = Callable[[str, int], str]


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    """Keyword arguments and defaults of ``vllm.SamplingParams`` (the ones used here)."""

    def __init__(
        self,
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
        max_tokens: int | None = 16,
        min_tokens: int = 0,
        detokenize: bool = True,
        skip_special_tokens: bool = True,
        include_stop_str_in_output: bool = False,
        output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE,
    ):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        if temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        if not isinstance(output_kind, RequestOutputKind):
            raise TypeError(f"output_kind must be a RequestOutputKind, got {output_kind!r}")
        self.n, self.temperature, self.top_p, self.top_k = n, temperature, top_p, top_k
        self.seed = seed
        self.stop = [stop] if isinstance(stop, str) else list(stop or [])
        self.stop_token_ids = list(stop_token_ids or [])
        self.ignore_eos, self.max_tokens, self.min_tokens = ignore_eos, max_tokens, min_tokens
        self.detokenize, self.skip_special_tokens = detokenize, skip_special_tokens
        self.include_stop_str_in_output = include_stop_str_in_output
        self.output_kind = output_kind

    def __repr__(self) -> str:
        return f"SamplingParams({vars(self)})"


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int | None = None


@dataclasses.dataclass
class EngineArgs:
    """The engine-args fields used here (a dataclass: unknown names are a TypeError)."""

    model: str = "facebook/opt-125m"
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    trust_remote_code: bool = False
    disable_log_stats: bool = False


@dataclasses.dataclass
class AsyncEngineArgs(EngineArgs):
    """vLLM >= 0.10.2: requests are logged only with ``enable_log_requests``."""

    enable_log_requests: bool = False


@dataclasses.dataclass
class LegacyAsyncEngineArgs(EngineArgs):
    """vLLM < 0.10.2: requests are logged unless ``disable_log_requests``."""

    disable_log_requests: bool = False


class EngineDeadError(Exception):
    def __init__(self, *args: Any):
        super().__init__(*(args or ("EngineCore encountered an issue. See stack trace above.",)))


class EngineGenerateError(Exception):
    pass


@dataclasses.dataclass
class Call:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    running_with: int = 0  # requests in flight (itself included) when it was scheduled
    child_seeds: list[int | None] = dataclasses.field(default_factory=list)
    outputs: list[CompletionOutput] = dataclasses.field(default_factory=list)
    num_cached_tokens: int = 0


def default_script(prompt: str, index: int) -> str:
    return f"sample {index}\n\n"


class AsyncLLM:
    """A scripted stand-in for ``vllm.v1.engine.async_llm.AsyncLLM``."""

    block_size = 4
    iterations = 3  # engine iterations a request waits before its output (lets others in)

    def __init__(
        self,
        engine_args: EngineArgs,
        *,
        script: Script = default_script,
        tokenizer: Any = None,
        hf_config: Any = None,
        async_get_tokenizer: bool = True,
        delay: float = 0.0,
    ):
        if tokenizer is None:
            from langchain_tts.models.tokenizer import build_tokenizer

            tokenizer = build_tokenizer()
        self.engine_args = engine_args
        self.script = script
        self._tokenizer = tokenizer
        self.async_get_tokenizer = async_get_tokenizer
        self.delay = delay
        self.model_config = SimpleNamespace(
            model=engine_args.model,
            hf_config=hf_config,
            max_model_len=engine_args.max_model_len or 4096,
        )
        self.prefix_caching = engine_args.enable_prefix_caching is not False  # V1: on by default
        self.calls: list[Call] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self.fail: Callable[[Call], BaseException | None] | None = None
        self.shutdowns = 0
        self.errored = False
        self._blocks: set[tuple[int, ...]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        try:  # like AsyncLLM: start the output handler now when a loop is running
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass

    @classmethod
    def from_engine_args(
        cls,
        engine_args: EngineArgs,
        start_engine_loop: bool = True,
        usage_context: Any = None,
        stat_loggers: Any = None,
    ) -> AsyncLLM:
        if not isinstance(engine_args, EngineArgs):
            raise TypeError(f"engine_args must be AsyncEngineArgs, got {type(engine_args)}")
        return cls(engine_args)

    # -- API --------------------------------------------------------------------------------
    def get_tokenizer(self) -> Any:
        if not self.async_get_tokenizer:
            return self._tokenizer

        async def get() -> Any:
            return self._tokenizer

        return get()

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.errored = True

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def generate(
        self, prompt: Any, sampling_params: SamplingParams, request_id: str, **kwargs: Any
    ) -> AsyncIterator[RequestOutput]:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop  # the output handler starts on the first request's loop
        elif loop is not self._loop:
            raise RuntimeError(
                "AsyncLLM output handler runs on another event loop: "
                "got Future attached to a different loop"
            )
        if self.errored:
            raise EngineDeadError()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {sampling_params!r}")
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a str, got {request_id!r}")
        if request_id in self.running:
            raise ValueError(f"Request id {request_id} already running.")
        if sampling_params.output_kind is RequestOutputKind.DELTA:
            raise NotImplementedError("the fake engine does not stream deltas")
        ids = self._prompt_ids(prompt)
        if len(ids) >= self.model_config.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model "
                f"length of {self.model_config.max_model_len}."
            )
        call = Call(request_id, ids, sampling_params, loop)
        self.calls.append(call)
        self.running.add(request_id)
        try:
            await asyncio.sleep(0)  # scheduled with whatever else was submitted
            call.running_with = len(self.running)
            for _ in range(self.iterations):
                await asyncio.sleep(self.delay)
                err = self.fail(call) if self.fail is not None else None
                if err is not None:
                    raise err
            call.num_cached_tokens = self._cache(ids)
            sp = sampling_params
            for j in range(sp.n):
                seed = None if sp.seed is None else sp.seed + j  # parallel_sampling.py
                call.child_seeds.append(seed)
                call.outputs.append(self._sample(ids, sp, j))
            if sp.output_kind is RequestOutputKind.FINAL_ONLY or sp.n == 1:
                yield self._output(call, call.outputs, finished=True)
            else:  # V1 CUMULATIVE with n > 1: each child's output on its own
                for j, c in enumerate(call.outputs):
                    yield self._output(call, [c], finished=j == sp.n - 1)
                    await asyncio.sleep(0)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.running.discard(request_id)

    # -- internals --------------------------------------------------------------------------
    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            return list(self._tokenizer(prompt)["input_ids"])
        if not isinstance(prompt, dict) or not (set(prompt) <= {"prompt_token_ids", "prompt"}):
            raise TypeError(f"unsupported prompt {prompt!r}")
        if "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not ids or not all(isinstance(t, int) for t in ids):
                raise ValueError("prompt_token_ids must be a non-empty list of ints")
            return list(ids)
        return list(self._tokenizer(prompt["prompt"])["input_ids"])

    def _cache(self, ids: list[int]) -> int:
        if not self.prefix_caching:
            return 0
        b = self.block_size
        hit = 0
        for k in range(1, (len(ids) - 1) // b + 1):  # the last prompt token is never cached
            if tuple(ids[: k * b]) not in self._blocks:
                break
            hit = k * b
        for k in range(1, len(ids) // b + 1):
            self._blocks.add(tuple(ids[: k * b]))
        return hit

    def _sample(self, ids: list[int], sp: SamplingParams, index: int) -> CompletionOutput:
        tok = self._tokenizer
        prompt_text = tok.decode(ids, skip_special_tokens=False)
        written = self.script(prompt_text, index)
        stream = list(tok(written, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
        out: list[int] = []
        text, finish, stop_reason = "", None, None
        cap = min(sp.max_tokens or 10**9, self.model_config.max_model_len - len(ids))
        for t in stream:
            out.append(t)
            if t == tok.eos_token_id and not sp.ignore_eos:
                finish = "stop"
                break
            text = tok.decode(out, skip_special_tokens=sp.skip_special_tokens)
            hits = [(text.find(s), s) for s in sp.stop if s in text]
            if hits:
                at, s = min(hits)
                text = text[: at + (len(s) if sp.include_stop_str_in_output else 0)]
                finish, stop_reason = "stop", s
                break
            if len(out) >= cap:
                finish = "length"
                break
        return CompletionOutput(index, text, out, finish_reason=finish, stop_reason=stop_reason)

    def _output(
        self, call: Call, outputs: list[CompletionOutput], *, finished: bool
    ) -> RequestOutput:
        return RequestOutput(
            request_id=call.request_id,
            prompt=None,
            prompt_token_ids=call.prompt_token_ids,
            prompt_logprobs=None,
            outputs=[dataclasses.replace(c) for c in outputs],
            finished=finished,
            num_cached_tokens=call.num_cached_tokens,
        )


def make_modules(engine_cls: type[AsyncLLM], args_cls: type = AsyncEngineArgs) -> dict:
    """The fake ``vllm`` package and the submodules it is imported through."""

    def module(name: str, **attrs: Any) -> ModuleType:
        m = ModuleType(name)
        m.__dict__.update(attrs)
        return m

    sampling = module(
        "vllm.sampling_params", SamplingParams=SamplingParams, RequestOutputKind=RequestOutputKind
    )
    outputs = module("vllm.outputs", RequestOutput=RequestOutput, CompletionOutput=CompletionOutput)
    arg_utils = module("vllm.engine.arg_utils", AsyncEngineArgs=args_cls)
    exceptions = module(
        "vllm.v1.engine.exceptions",
        EngineDeadError=EngineDeadError,
        EngineGenerateError=EngineGenerateError,
    )
    vllm = module(
        "vllm",
        __version__="0.0.0+fake",
        __path__=[],
        SamplingParams=SamplingParams,
        AsyncEngineArgs=args_cls,
        AsyncLLMEngine=engine_cls,
        RequestOutput=RequestOutput,
        CompletionOutput=CompletionOutput,
        sampling_params=sampling,
        outputs=outputs,
    )
    return {
        "vllm": vllm,
        "vllm.sampling_params": sampling,
        "vllm.outputs": outputs,
        "vllm.engine": module("vllm.engine", __path__=[], arg_utils=arg_utils),
        "vllm.engine.arg_utils": arg_utils,
        "vllm.v1": module("vllm.v1", __path__=[]),
        "vllm.v1.engine": module("vllm.v1.engine", __path__=[], exceptions=exceptions),
        "vllm.v1.engine.exceptions": exceptions,
    }


def install(
    monkeypatch: pytest.MonkeyPatch,
    script: Script = default_script,
    *,
    legacy_args: bool = False,
    **engine_kw: Any,
) -> ModuleType:
    """Put the fake ``vllm`` into ``sys.modules``; engines it builds land in ``vllm.engines``.

    ``engine_kw`` (``tokenizer``, ``hf_config``, ``async_get_tokenizer``, ``delay``) configure
    the engines that ``AsyncLLMEngine.from_engine_args`` builds.
    """
    engines: list[AsyncLLM] = []

    class ScriptedAsyncLLM(AsyncLLM):
        @classmethod
        def from_engine_args(cls, engine_args: EngineArgs, *a: Any, **k: Any) -> AsyncLLM:
            if not isinstance(engine_args, EngineArgs):
                raise TypeError(f"engine_args must be AsyncEngineArgs, got {type(engine_args)}")
            engine = AsyncLLM(engine_args, script=script, **engine_kw)
            engines.append(engine)
            return engine

    modules = make_modules(
        ScriptedAsyncLLM, LegacyAsyncEngineArgs if legacy_args else AsyncEngineArgs
    )
    modules["vllm"].engines = engines
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return modules["vllm"]
