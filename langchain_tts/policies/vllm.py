"""A step policy on an in-process async vLLM engine: one request per prefix, all at once.

Every prefix of a search step is its own request, submitted concurrently, so the engine
schedules the whole step in one continuous batch and automatic prefix caching reuses the KV
cache of the question and of every shared step. ``vllm`` is imported lazily (``pip install
'langchain-tts[vllm]'``); :func:`request_outputs_to_steps` is pure Python.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import itertools
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from langchain_tts.backends.text import (
    DEFAULT_STEP_DELIMITER,
    cut_at_delimiter,
    encode_prompt,
    map_finish_reason,
    prompt_text,
)
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BackendError, ConfigError
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy

__all__ = ["VLLMPolicy", "estimate_matmul_parameters", "import_vllm", "request_outputs_to_steps"]

VLLM_INSTALL_HINT = "pip install 'langchain-tts[vllm]'"


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            f"VLLMPolicy needs vLLM, which is not installed: {VLLM_INSTALL_HINT} (a CUDA "
            "GPU is required; on a CPU-only machine use HFPolicy, or OpenAIPolicy against a "
            "remote `vllm serve`)."
        ) from e
    return vllm


def estimate_matmul_parameters(config: Any) -> int:
    """Matmul parameters of a Llama/Qwen/Mistral-style decoder from its HF config.

    Counts the attention and gated-MLP projections of every layer plus the LM head (as
    :func:`langchain_tts.backends.hf.matmul_parameters` does); norms and biases are ignored.
    Returns 0 when the config lacks the fields.
    """
    try:
        h = int(config.hidden_size)
        layers = int(config.num_hidden_layers)
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or h // heads)
        inter = int(config.intermediate_size)
        vocab = int(config.vocab_size)
    except (AttributeError, TypeError, ValueError):
        return 0
    attn = 2 * h * heads * head_dim + 2 * h * kv * head_dim
    mlp = 3 * h * inter
    return layers * (attn + mlp) + vocab * h


def _context_length(engine: Any, hf_config: Any) -> int | None:
    """The engine's ``max_model_len`` (what it admits), else the model config's positions."""
    for obj in (
        getattr(engine, "model_config", None),
        getattr(getattr(engine, "engine", None), "model_config", None),
    ):
        v = getattr(obj, "max_model_len", None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(hf_config, "max_position_embeddings", None)
    return v if isinstance(v, int) and v > 0 else None


def request_outputs_to_steps(
    outputs: Sequence[Any], n: int, *, delimiter: str, stop_at_step: bool
) -> tuple[list[list[Step]], Usage]:
    """``RequestOutput``s (one per prompt, in prompt order) -> ``n`` steps per prompt + usage.

    The text is cut at the first delimiter (vLLM already stops there; this guards a server or
    engine that overshoots). ``Step.tokens`` is the number of generated token ids, the stop
    string's tokens included.

    Output contract (``vllm.outputs.RequestOutput`` / ``CompletionOutput``): with
    ``FINAL_ONLY`` the one ``RequestOutput`` of a request carries all ``n`` samples (with the
    default ``CUMULATIVE`` kind the V1 engine streams the ``n > 1`` samples one child at a
    time, so the last output would hold only some of them); samples are placed by
    ``CompletionOutput.index``. ``finish_reason`` ``"length"`` -> ``"length"``; ``"stop"``
    with ``stop_reason`` = the matched stop string -> ``"step"``; with ``stop_reason``
    ``None`` (EOS) or an int (a stop token such as ``<|eot_id|>``) -> ``"eos"``; anything else
    (``"abort"``, ``"error"``) is a :class:`BackendError`. Token counts are
    ``len(prompt_token_ids)`` and ``len(token_ids)``; ``num_cached_tokens`` (prefix-cache
    hits) goes to ``Usage.policy_cached_tokens`` and the rest of the prompt to
    ``policy_prompt_tokens`` (the computed ones, which FLOPs count).
    """
    steps: list[list[Step]] = []
    prompt_tokens = generated = cached = 0
    for r, out in enumerate(outputs):
        samples = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
        if len(samples) != n:
            raise BackendError(
                f"vLLM returned {len(samples)} samples for prompt {r}, expected n={n}",
                partial={"steps": steps},
            )
        row = []
        for c in samples:
            if c.finish_reason not in ("stop", "length"):
                raise BackendError(
                    f"vLLM request for prompt {r} ended with finish_reason={c.finish_reason!r} "
                    f"({getattr(c, 'stop_reason', None)!r})",
                    partial={"steps": steps},
                )
            reason = map_finish_reason(
                c.finish_reason, getattr(c, "stop_reason", None), stop_sent=stop_at_step
            )
            text = c.text
            if stop_at_step:
                text, reason, _ = cut_at_delimiter(text, reason, delimiter)
            tokens = len(c.token_ids)
            generated += tokens
            row.append(Step(text=text, tokens=tokens, finish_reason=reason))
        steps.append(row)
        prompt_tokens += len(out.prompt_token_ids or [])
        cached += int(getattr(out, "num_cached_tokens", None) or 0)
    cached = min(cached, prompt_tokens)
    usage = Usage(  # prompt tokens: the computed ones (see Usage)
        policy_calls=1,
        policy_prompt_tokens=prompt_tokens - cached,
        policy_cached_tokens=cached,
        policy_generated_tokens=generated,
    )
    return steps, usage


def _start_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """A new event loop running forever on a daemon thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="langchain-tts-vllm", daemon=True)
    thread.start()
    ready.wait()
    return loop, thread


async def _cancel_all_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _shutdown(engine: Any, loop: asyncio.AbstractEventLoop | None, thread: Any) -> None:
    """Shut an owned engine down, then stop its loop thread (idempotent, never raises)."""
    if engine is not None:
        try:
            stop = getattr(engine, "shutdown", None) or getattr(
                engine, "shutdown_background_loop", None
            )
            if callable(stop):
                stop()
        except Exception:  # pragma: no cover - best effort at teardown
            pass
    if loop is None or loop.is_closed():
        return
    if thread is threading.current_thread():  # pragma: no cover - close() from the loop
        loop.call_soon(loop.stop)
        return
    try:  # let the engine's own tasks (its output handler) finish their cancellation
        asyncio.run_coroutine_threadsafe(_cancel_all_tasks(), loop).result(timeout=5)
    except Exception:  # pragma: no cover - a stuck task: stop anyway
        pass
    loop.call_soon_threadsafe(loop.stop)
    if thread is not None:
        thread.join(timeout=5)
    if not loop.is_running():
        loop.close()


class VLLMPolicy(StepPolicy):
    """Continue many partial solutions by one step each on an in-process async vLLM engine.

    ``VLLMPolicy("Qwen/Qwen2.5-Math-1.5B-Instruct", gpu_memory_utilization=0.45)`` builds the
    engine (``engine_kwargs`` go to ``vllm.AsyncEngineArgs``; prefix caching is on unless you
    pass ``enable_prefix_caching=False``, per-request logging off). ``VLLMPolicy(engine=e)``
    wraps an ``AsyncLLMEngine`` / ``AsyncLLM`` you built: outside any event loop and not yet
    used (the policy runs it on its own loop), or give ``loop=`` the running loop it serves
    on. :meth:`close` shuts an engine the policy built down.

    ``VLLMPolicy(model, **engine_kwargs)`` builds ``vllm.AsyncLLMEngine.from_engine_args(
    vllm.AsyncEngineArgs(model=model, enable_prefix_caching=True, **engine_kwargs))`` (the V1
    ``AsyncLLM`` on vLLM >= 0.8 with V1 on; ``AsyncLLMEngine`` is its alias in recent vLLM). A
    search step submits every prefix as its own ``engine.generate(prompt, sampling_params,
    request_id)`` request with ``SamplingParams(n=n, stop=[delimiter],
    max_tokens=max_step_tokens, output_kind=FINAL_ONLY, ...)``, concurrently, so the engine
    schedules the whole step in one continuous batch; automatic prefix caching reuses the KV
    cache of the question and of every shared step across beams, search steps and concurrent
    searches (the engine is not locked: concurrent graphs share its batches).

    The engine lives on one event loop, on a private daemon thread: vLLM's async engine binds
    its output handler to the loop it first runs on, while LangGraph's sync ``invoke`` runs
    every node on a fresh loop (:func:`~langchain_tts.backends.sync.run_sync`). Calls from any
    loop or thread are handed to that loop with ``asyncio.run_coroutine_threadsafe``.
    Cancelling a call aborts its requests (vLLM aborts a request whose ``generate`` is
    cancelled).

    Prompt contract (the same as :class:`HFPolicy`): the tokenizer's chat template over
    ``[system?, user question]`` with the generation prompt opened (``question + delimiter``
    when the tokenizer has no template), then the steps so far, each followed by the
    delimiter. The prompt is tokenized here and passed as ``{"prompt_token_ids": ...}`` (a
    ``TokensPrompt``), so a template that already writes BOS does not get a second one.

    Seeds: vLLM seeds sample ``j`` of a request with ``seed + j``; prompt ``i`` of a call is
    sent ``seed + i * n``, so two prompts of one step (two identical beams, say) never replay
    the same random draws.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        engine: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
        tokenizer: Any = None,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        system_prompt: str | None = None,
        num_parameters: int | None = None,
        name: str | None = None,
        **engine_kwargs: Any,
    ):
        if not step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string")
        if engine is None and model is None:
            raise ConfigError("VLLMPolicy needs model= (a path or hub id) or engine=")
        if engine is not None and engine_kwargs:
            raise ConfigError(
                f"engine kwargs {sorted(engine_kwargs)} only apply when VLLMPolicy builds the "
                "engine; pass them to vllm.AsyncEngineArgs yourself"
            )
        if engine is None and loop is not None:
            raise ConfigError("loop= only applies with engine= (the loop that engine serves on)")
        vllm = args = None
        if engine is None:
            vllm = import_vllm()
            args = self._engine_args(vllm, model, engine_kwargs)
        self.step_delimiter = step_delimiter
        self.system_prompt = system_prompt
        self._owned_loop = loop is None
        if loop is None:
            self._loop, self._thread = _start_loop()
        else:
            self._loop, self._thread = loop, None
        self._owns_engine = engine is None
        try:
            if engine is None:
                engine = self._on_engine_loop(self._build(vllm, args))
            self.engine = engine
            self.tokenizer = tokenizer if tokenizer is not None else self._engine_tokenizer()
        except BaseException as e:
            _shutdown(engine if self._owns_engine else None, *self._owned())
            if isinstance(e, ConfigError) or not isinstance(e, Exception):
                raise
            raise BackendError(
                f"VLLMPolicy could not set up the vLLM engine ({model or type(engine).__name__}): "
                f"{type(e).__name__}: {e}",
                partial={"model": model, "engine_kwargs": engine_kwargs},
            ) from e
        if num_parameters is None:
            num_parameters = estimate_matmul_parameters(self._hf_config())
        self.num_parameters = int(num_parameters)
        self.context_length = _context_length(self.engine, self._hf_config())
        self.name = name or f"VLLMPolicy({model or type(engine).__name__})"
        self._run_id = uuid.uuid4().hex[:8]
        self._counter = itertools.count()
        self._encode_lock = threading.Lock()  # fast tokenizers are not thread-safe
        self._closed = False
        self._finalizer = weakref.finalize(
            self, _shutdown, engine if self._owns_engine else None, *self._owned()
        )

    # -- engine and loop --------------------------------------------------------------------
    @staticmethod
    def _engine_args(vllm: Any, model: str | None, kwargs: dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        kwargs.setdefault("enable_prefix_caching", True)
        cls = vllm.AsyncEngineArgs
        fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else ()
        # One log line per request (per prefix per step) is noise: vLLM < 0.10.2 logs them
        # unless disable_log_requests; later versions only with enable_log_requests.
        if "disable_log_requests" in fields and "enable_log_requests" not in fields:
            kwargs.setdefault("disable_log_requests", True)
        try:
            return cls(model=model, **kwargs)
        except TypeError as e:
            raise ConfigError(f"bad vllm.AsyncEngineArgs for VLLMPolicy: {e}") from e

    @staticmethod
    async def _build(vllm: Any, args: Any) -> Any:
        # Built on the engine loop: the V1 engine starts its output handler on the running loop.
        return vllm.AsyncLLMEngine.from_engine_args(args)

    def _engine_tokenizer(self) -> Any:
        tok = self.engine.get_tokenizer()  # a coroutine in older vLLM, a plain call in recent
        return self._on_engine_loop(tok) if inspect.isawaitable(tok) else tok

    def _owned(self) -> tuple[asyncio.AbstractEventLoop | None, threading.Thread | None]:
        return (self._loop, self._thread) if self._owned_loop else (None, None)

    def _on_engine_loop(self, coro: Any) -> Any:
        """Run ``coro`` on the engine loop from sync code on another thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise ConfigError(
                "VLLMPolicy(engine=..., loop=<the running loop>) cannot wait for the engine's "
                "async get_tokenizer() from inside that loop: pass tokenizer= as well"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _hf_config(self) -> Any:
        for path in (("model_config",), ("engine", "model_config")):  # V1 AsyncLLM, V0
            obj = self.engine
            try:
                for attr in path:
                    obj = getattr(obj, attr)
                return obj.hf_config
            except AttributeError:
                continue
        return None

    def close(self) -> None:
        """Shut down the engine this policy built and its loop thread (idempotent)."""
        self._closed = True
        self._finalizer()

    # -- prompts ----------------------------------------------------------------------------
    def render_prompt(self, prefix: Trajectory) -> str:
        """Chat-templated question + the steps so far (each ending with the delimiter)."""
        return prompt_text(self.tokenizer, prefix, self.system_prompt, self.step_delimiter)

    def encode(self, prefix: Trajectory) -> list[int]:
        text = self.render_prompt(prefix)
        with self._encode_lock:
            return encode_prompt(self.tokenizer, text)

    def prompt_tokens_bound(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> int | None:
        """Each prefix's prompt tokens, once: one request per prefix, whose prompt the
        engine computes once for all its ``n`` samples (cache hits are not credited)."""
        return sum(len(self.encode(p)) for p in prefixes)

    def sampling_params(self, n: int, params: SamplingParams, seed: int | None = None) -> Any:
        """The ``vllm.SamplingParams`` of one request (``seed`` overrides ``params.seed``)."""
        vllm = import_vllm()
        kind = importlib.import_module("vllm.sampling_params").RequestOutputKind
        greedy = params.temperature == 0
        return vllm.SamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_step_tokens,
            stop=[self.step_delimiter] if params.stop_at_step else None,
            include_stop_str_in_output=False,
            skip_special_tokens=True,
            seed=params.seed if seed is None else seed,
            output_kind=kind.FINAL_ONLY,
        )

    # -- generation -------------------------------------------------------------------------
    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        if self._closed:
            raise BackendError(f"{self.name} is closed", partial={"steps": None})
        t0 = time.perf_counter()
        copies = 1 if params.temperature == 0 else n  # greedy samples are identical
        prompts = [{"prompt_token_ids": self.encode(p)} for p in prefixes]
        requests = []
        for i, prompt in enumerate(prompts):
            seed = None if params.seed is None else params.seed + i * copies
            requests.append((prompt, self.sampling_params(copies, params, seed)))
        step_id = f"tts-{self._run_id}-{next(self._counter)}"
        coro = self._run_step(requests, step_id)
        try:
            if asyncio.get_running_loop() is self._loop:
                outputs = await coro
            else:
                try:
                    fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
                except RuntimeError:  # the engine loop is closed
                    coro.close()
                    raise
                outputs = await asyncio.wrap_future(fut)
        except BackendError:
            raise
        except Exception as e:  # the engine's own errors (EngineDeadError, ValueError, ...)
            raise BackendError(
                f"{self.name}: vLLM generate failed: {type(e).__name__}: {e}",
                partial={"steps": None, "request_id": step_id, "prompts": len(prompts)},
            ) from e
        steps, usage = request_outputs_to_steps(
            outputs, copies, delimiter=self.step_delimiter, stop_at_step=params.stop_at_step
        )
        if copies != n:
            steps = [row * n for row in steps]
        usage = self._call_usage(
            usage.policy_prompt_tokens + usage.policy_cached_tokens,
            usage.policy_generated_tokens,
            cached=usage.policy_cached_tokens,
            seconds=time.perf_counter() - t0,
        )
        return PolicyResult(steps=steps, usage=usage)

    async def _run_step(self, requests: list[tuple[dict, Any]], step_id: str) -> list[Any]:
        """All requests of one search step at once, on the engine loop; in prompt order."""
        tasks = [
            asyncio.ensure_future(self._request(prompt, sp, f"{step_id}-{i}"))
            for i, (prompt, sp) in enumerate(requests)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:  # one failed or the call was cancelled: abort the rest
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _request(self, prompt: dict, sp: Any, request_id: str) -> Any:
        """The final ``RequestOutput`` of one request, its samples merged by index."""
        final, samples = None, {}
        async for out in self.engine.generate(prompt, sp, request_id):
            final = out
            for c in out.outputs:  # FINAL_ONLY: one output; streamed kinds: merge by index
                samples[getattr(c, "index", 0)] = c
        if final is None:
            raise BackendError(
                f"{self.name}: vLLM request {request_id} returned no output",
                partial={"request_id": request_id},
            )
        final.outputs = [samples[k] for k in sorted(samples)]
        return final
