"""A step policy on an OpenAI-compatible ``/completions`` endpoint (``vllm serve`` and friends).

One search step is **one** HTTP request: every prefix goes into ``prompt`` (a list of
strings) and ``n`` samples are drawn per prefix, so the server batches the whole step and its
prefix cache sees every shared prefix at once.

Wire contract (OpenAI legacy completions, with vLLM's extensions):

* request: ``model``, ``prompt: [str, ...]``, ``n``, ``max_tokens``, ``temperature``,
  ``top_p``, ``seed`` (when set), ``stop: [delimiter]`` (when stopping at a step) and, with
  ``vllm_extensions=True``, ``include_stop_str_in_output: false``,
  ``skip_special_tokens: true`` and ``add_special_tokens: false`` for chat-templated prompts
  (the template already writes BOS; a second one would shift the distribution);
* response: ``choices[k]`` belongs to prompt ``k // n``, sample ``k % n`` -- vLLM emits
  choices prompt-major and numbers them ``index = prompt_i * n + sample_j`` (also in
  streaming mode); choices are ordered by ``index`` here, never by position;
* ``finish_reason == "length"`` -> ``Step.finish_reason == "length"``;
  ``"stop"`` with vLLM's ``stop_reason`` = the matched stop *string* -> ``"step"``;
  ``stop_reason`` null (EOS) or an integer (a stop *token* such as ``<|eot_id|>``) ->
  ``"eos"``. Servers without ``stop_reason`` (OpenAI itself, some proxies) are read as
  ``"step"`` when a stop string was sent, else ``"eos"``; a solution still ends when its step
  contains a final ``\\boxed{}`` answer;
* ``usage.prompt_tokens`` / ``completion_tokens`` (and ``prompt_tokens_details.cached_tokens``
  when the server reports prefix-cache hits) go to the ledger. Per-step token counts use
  ``choices[].token_ids`` when the server returns them, else ``completion_tokens`` split over
  the choices in proportion to their text length (the total stays exact).

Prompt templating (``/completions`` takes raw text, so the chat template is applied here):

* ``chat_template="server"`` (default): the server's own template, fetched once per distinct
  question through vLLM's ``/tokenize`` (``messages`` + ``add_generation_prompt``) and
  ``/detokenize`` endpoints -- no local tokenizer needed; needs a vLLM server;
* ``"client"``: the HF tokenizer's ``apply_chat_template`` (pass ``tokenizer=`` an HF
  tokenizer or a local path / hub id);
* ``"none"``: ``question + delimiter`` (base models, the embedded tiny models);
* ``prompt_template="...{question}..."`` overrides all three (``{system_prompt}`` is filled
  too; plain ``str.replace``, so LaTeX braces in the template are safe).

Then the steps so far follow, each ending with the delimiter (as in :class:`HFPolicy`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx

from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BackendError, ConfigError
from langchain_tts.core.types import FinishReason, Step, Trajectory, Usage
from langchain_tts.policies.base import DEFAULT_STEP_DELIMITER, PolicyResult, StepPolicy

__all__ = ["HTTPBackend", "OpenAIPolicy", "ServerClient", "map_finish_reason", "server_root"]

ChatTemplateMode = Literal["server", "client", "none"]
_RETRY_STATUS = frozenset({408, 425, 429})
_MISSING: Any = object()


def server_root(base_url: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000``: vLLM serves its extras at the root."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def map_finish_reason(
    finish_reason: str | None, stop_reason: Any = _MISSING, *, stop_sent: bool
) -> FinishReason:
    """OpenAI/vLLM ``finish_reason`` (+ vLLM ``stop_reason``) -> :data:`FinishReason`.

    ``stop_reason`` is the matched stop string (a step ended), an int stop token id or
    ``None`` (the model ended the solution). Without it (non-vLLM servers), a ``"stop"`` is a
    step boundary when a stop string was sent. Without a stop string every ``"stop"`` ends
    the solution.
    """
    if finish_reason == "length":
        return "length"
    if finish_reason == "stop":
        if not stop_sent:
            return "eos"
        return "step" if stop_reason is _MISSING or isinstance(stop_reason, str) else "eos"
    return "eos"  # "content_filter", None, ...: the solution cannot go on


def _distribute(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    if not weights:
        return []
    wsum = sum(weights)
    if wsum <= 0:
        weights, wsum = [1] * len(weights), len(weights)
    raw = [total * w / wsum for w in weights]
    out = [int(r) for r in raw]
    rest = total - sum(out)
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[:rest]:
        out[i] += 1
    return out


async def _close_at_loop_shutdown(client: httpx.AsyncClient) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await client.aclose()


class HTTPBackend:
    """Pooled async HTTP JSON client with timeouts, retries and :class:`BackendError`.

    One ``httpx.AsyncClient`` per event loop, created lazily: :func:`run_sync` may drive the
    same backend from several loops (and threads), and an httpx client must not cross loops.
    Retries (exponential backoff, ``Retry-After`` honoured) on 408/425/429/5xx, timeouts and
    connection errors; any other status fails at once. Every attempt is bounded by
    ``timeout`` seconds, so a call ends after at most ``(max_retries + 1) * timeout`` plus
    the backoff sleeps.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_connections: int = 64,
        name: str = "backend",
    ):
        if timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {max_connections}")
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
        self._guard = threading.Lock()

    async def client(self) -> httpx.AsyncClient:
        """The pooled client of the running event loop (created on first use).

        It is closed when that loop shuts down (``asyncio.run`` finalizes async generators
        before closing the loop), so sync calls through :func:`run_sync` leak no sockets.
        """
        loop = asyncio.get_running_loop()
        with self._guard:
            entry = self._clients.get(loop)
            if entry is not None and not entry[0].is_closed:
                return entry[0]
            client = httpx.AsyncClient(
                headers=self._headers,
                timeout=httpx.Timeout(self.timeout),
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
        status or None) and ``errors`` (one line per failed attempt).
        """
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
                resp = await (await self.client()).post(url, json=payload)
            except httpx.TimeoutException as e:
                errors.append(f"timed out after {self.timeout:g}s ({type(e).__name__})")
                continue
            except httpx.TransportError as e:
                errors.append(f"connection error: {type(e).__name__}: {e}")
                continue
            status = resp.status_code
            if 200 <= status < 300:
                try:
                    data = resp.json()
                except (json.JSONDecodeError, ValueError):
                    errors.append(
                        f"HTTP {status} with a body that is not JSON: {resp.text[:300]!r}"
                    )
                    continue
                if not isinstance(data, dict):
                    raise self._error(
                        url, attempts, status, errors, f"unexpected body {data!r:.300}"
                    )
                return data
            body = resp.text[:500]
            errors.append(f"HTTP {status}: {body}")
            if status in _RETRY_STATUS or status >= 500:
                retry_after = resp.headers.get("retry-after")
                continue
            raise self._error(url, attempts, status, errors, f"HTTP {status}: {body}")
        raise self._error(
            url, attempts, status, errors, f"gave up after {attempts} attempts; last: {errors[-1]}"
        )

    def _error(
        self, url: str, attempts: int, status: int | None, errors: list[str], what: str
    ) -> BackendError:
        partial = {"url": url, "attempts": attempts, "status": status, "errors": list(errors)}
        return BackendError(f"{self.name}: POST {url} failed: {what}", partial=partial)


class ServerClient:
    """Shared set-up of the clients of a vLLM / OpenAI-compatible server.

    Holds the :class:`HTTPBackend`, the lazily loaded client-side tokenizer and the chat
    template rendered by the server itself (``/tokenize`` + ``/detokenize``, counted in
    ``templating_requests``). Used by :class:`OpenAIPolicy` and
    :class:`~langchain_tts.prms.http.HTTPRewardPRM`.
    """

    name: Any
    http: HTTPBackend

    @staticmethod
    def _check_chat_template(chat_template: str) -> None:
        if chat_template not in ("server", "client", "none"):
            raise ConfigError(
                f"chat_template must be 'server', 'client' or 'none', got {chat_template!r}"
            )

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
    ) -> None:
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
            name=name,
        )
        #: requests sent to /tokenize + /detokenize (``chat_template="server"``), not model calls
        self.templating_requests = 0

    @property
    def tokenizer(self) -> Any:
        """The client-side HF tokenizer (loaded lazily from a path or hub id)."""
        if self._tokenizer is None and self._tokenizer_spec is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self._tokenizer_spec))
        return self._tokenizer

    async def _server_chat_template(
        self,
        messages: list[dict[str, str]],
        *,
        add_generation_prompt: bool,
        advice: str,
        note: str = "",
    ) -> str:
        """``messages`` rendered by the server's chat template (no tokenizer needed here).

        On failure a :class:`BackendError` that names the endpoints, then ``note`` and
        ``advice`` (what to configure instead).
        """
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
            return str(detok["prompt"])
        except (BackendError, KeyError, TypeError) as e:
            raise BackendError(
                f"{self.name}: could not apply the server's chat template through {root}/tokenize "
                f"and /detokenize{note}: {e}. {advice}",
                partial=getattr(e, "partial", None),
            ) from e


class OpenAIPolicy(ServerClient, StepPolicy):
    """Continue many partial solutions by one step each through ``POST {base_url}/completions``.

    ``base_url`` is the OpenAI-style root, e.g. ``http://localhost:8000/v1`` for
    ``vllm serve``. See the module docstring for the exact wire and prompt contract.
    ``num_parameters`` (the served model's size) turns tokens into FLOPs; 0 leaves them 0.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        system_prompt: str | None = None,
        chat_template: ChatTemplateMode = "server",
        tokenizer: Any = None,
        prompt_template: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_connections: int = 64,
        num_parameters: int = 0,
        vllm_extensions: bool = True,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        if not step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string")
        self._check_chat_template(chat_template)
        if prompt_template is not None and "{question}" not in prompt_template:
            raise ConfigError("prompt_template must contain the placeholder {question}")
        if chat_template == "client" and tokenizer is None and prompt_template is None:
            raise ConfigError(
                "chat_template='client' needs tokenizer= (an HF tokenizer or a path / hub id); "
                "or use chat_template='server' (vLLM renders its own template) or 'none'"
            )
        self._init_client(
            base_url,
            model,
            name=name or f"OpenAIPolicy({model})",
            chat_template=chat_template,
            tokenizer=tokenizer,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_connections=max_connections,
            num_parameters=num_parameters,
            extra_body=extra_body,
        )
        self.step_delimiter = step_delimiter
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.vllm_extensions = vllm_extensions
        self._heads: dict[tuple[str | None, str], str] = {}

    # -- prompts ----------------------------------------------------------------------------
    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/completions"

    def _messages(self, question: str) -> list[dict[str, str]]:
        messages = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": question})
        return messages

    @property
    def _templated(self) -> bool:
        return self.prompt_template is None and self.chat_template in ("server", "client")

    async def _head(self, question: str) -> str:
        """The prompt up to the solution: template(question), before any step."""
        if self.prompt_template is not None:
            head = self.prompt_template.replace("{system_prompt}", self.system_prompt or "")
            return head.replace("{question}", question)
        if self.chat_template == "none":
            return question + self.step_delimiter
        if self.chat_template == "client":
            return str(
                self.tokenizer.apply_chat_template(
                    self._messages(question), tokenize=False, add_generation_prompt=True
                )
            )
        key = (self.system_prompt, question)
        if key not in self._heads:
            self._heads[key] = await self._server_head(question)
        return self._heads[key]

    async def _server_head(self, question: str) -> str:
        return await self._server_chat_template(
            self._messages(question),
            add_generation_prompt=True,
            note=" (vLLM endpoints)",
            advice="With a server that lacks them use chat_template='client' with "
            "tokenizer=..., or 'none', or prompt_template=...",
        )

    async def render_prompts(self, prefixes: Sequence[Trajectory]) -> list[str]:
        """The full text prompt of every prefix: head + steps, each ending with the delimiter."""
        questions = list(dict.fromkeys(p.question for p in prefixes))
        heads = dict(zip(questions, await asyncio.gather(*(self._head(q) for q in questions))))
        return [heads[p.question] + self.render_prefix(p) for p in prefixes]

    # -- generation -------------------------------------------------------------------------
    def _payload(self, prompts: list[str], copies: int, params: SamplingParams) -> dict:
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": prompts,
            "n": copies,
            "max_tokens": params.max_step_tokens,
            "temperature": params.temperature,
            "top_p": 1.0 if params.temperature == 0 else params.top_p,
            "stream": False,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop_at_step:
            payload["stop"] = [self.step_delimiter]
        if self.vllm_extensions:
            payload["include_stop_str_in_output"] = False
            payload["skip_special_tokens"] = True
            if self._templated:
                payload["add_special_tokens"] = False
        payload.update(self.extra_body)
        return payload

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        t0 = time.perf_counter()
        prompts = await self.render_prompts(prefixes)
        # Greedy samples are identical: ask for one per prefix and copy it n times.
        copies = 1 if params.temperature == 0 else n
        data = await self.http.post_json(
            self.completions_url, self._payload(prompts, copies, params)
        )
        steps = self._parse(data, len(prompts), copies, params)
        if copies != n:
            steps = [row * n for row in steps]
        usage = self._usage(data, prompts, steps, copies)
        usage.seconds = time.perf_counter() - t0
        return PolicyResult(steps=steps, usage=usage)

    def _parse(
        self, data: dict, num_prompts: int, copies: int, params: SamplingParams
    ) -> list[list[Step]]:
        choices = data.get("choices")
        expected = num_prompts * copies
        if not isinstance(choices, list) or len(choices) != expected:
            got = len(choices) if isinstance(choices, list) else type(choices).__name__
            raise BackendError(
                f"{self.name}: {self.completions_url} returned {got} choices for {num_prompts} "
                f"prompts x n={copies} (expected {expected}); the server must support a list "
                "prompt with n (vLLM does).",
                partial={"url": self.completions_url, "response": str(data)[:500]},
            )
        try:
            ordered = sorted(choices, key=lambda c: int(c["index"]))
        except (KeyError, TypeError, ValueError):
            ordered = choices  # no usable index: trust the order
        texts: list[str] = []
        reasons: list[FinishReason] = []
        exact: list[int | None] = []
        for c in ordered:
            text = str(c.get("text") or "")
            reason = map_finish_reason(
                c.get("finish_reason"),
                c.get("stop_reason", _MISSING),
                stop_sent=params.stop_at_step,
            )
            if params.stop_at_step:
                head, found, _ = text.partition(self.step_delimiter)
                if found:  # the server ignored or overshot the stop string
                    text, reason = head, "step"
            texts.append(text)
            reasons.append(reason)
            ids = c.get("token_ids")
            exact.append(len(ids) if isinstance(ids, list) else None)
        completion = int((data.get("usage") or {}).get("completion_tokens") or 0)
        tokens = self._token_counts(texts, reasons, exact, completion)
        flat = [
            Step(text=t, tokens=k, finish_reason=r)
            for t, k, r in zip(texts, tokens, reasons, strict=True)
        ]
        return [flat[i * copies : (i + 1) * copies] for i in range(num_prompts)]

    def _token_counts(
        self,
        texts: list[str],
        reasons: list[FinishReason],
        exact: list[int | None],
        completion_tokens: int,
    ) -> list[int]:
        if all(e is not None for e in exact):
            return [int(e) for e in exact]  # type: ignore[arg-type]
        weights = [
            len(t) + (len(self.step_delimiter) if r == "step" else 1)
            for t, r in zip(texts, reasons)
        ]
        if completion_tokens > 0:
            known = sum(e for e in exact if e is not None)
            rest = _distribute(
                max(0, completion_tokens - known),
                [w for w, e in zip(weights, exact) if e is None],
            )
            it = iter(rest)
            return [e if e is not None else next(it) for e in exact]
        # No usage block at all: about four characters per token.
        return [e if e is not None else max(1, -(-w // 4)) for e, w in zip(exact, weights)]

    def _usage(self, data: dict, prompts: list[str], steps: list[list[Step]], copies: int) -> Usage:
        raw = data.get("usage") or {}
        prompt_tokens = raw.get("prompt_tokens")
        if prompt_tokens is None:
            prompt_tokens = sum(-(-len(p) // 4) for p in prompts)
        generated = raw.get("completion_tokens")
        if generated is None:
            generated = sum(s.tokens for row in steps for s in row[:copies])
        details = raw.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
        usage = Usage(
            policy_calls=1,
            policy_prompt_tokens=int(prompt_tokens),
            policy_cached_tokens=cached,
            policy_generated_tokens=int(generated),
        )
        usage.policy_flops = (
            2.0 * self.num_parameters * (usage.policy_prompt_tokens + usage.policy_generated_tokens)
        )
        return usage

    async def aclose(self) -> None:
        """Close the pooled connections of the running event loop."""
        await self.http.aclose()
