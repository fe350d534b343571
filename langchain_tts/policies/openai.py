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
import time
from collections.abc import Sequence
from typing import Any

from langchain_tts.backends.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ChatTemplateMode,
    ServerClient,
    by_index,
    server_root,
    token_count,
    usage_of,
)
from langchain_tts.backends.text import (
    DEFAULT_STEP_DELIMITER,
    PROMPT_OVERHEAD_TOKENS,
    STOP_REASON_UNKNOWN,
    chat_messages,
    cut_at_delimiter,
    map_finish_reason,
)
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BackendError, ConfigError, check_seed
from langchain_tts.core.types import FinishReason, Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy

__all__ = ["OpenAIPolicy"]

#: finish reasons of other OpenAI-compatible servers (TGI's): OpenAI's, and vLLM's
#: ``stop_reason`` (None: the model ended the text; unknown: a stop string, maybe)
_ALIASES = {"eos_token": ("stop", None), "stop_sequence": ("stop", STOP_REASON_UNKNOWN)}


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


#: BOS and the like a server may add to a rendered prompt
_SPECIAL_TOKENS = 4


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


class OpenAIPolicy(ServerClient, StepPolicy):
    """Continue many partial solutions by one step each through ``POST {base_url}/completions``.

    ``base_url`` is the OpenAI-style root, e.g. ``http://localhost:8000/v1`` for
    ``vllm serve``. See the module docstring for the exact wire and prompt contract.
    ``num_parameters`` (the served model's size) turns tokens into FLOPs; 0 leaves them 0.
    ``context_length`` (the served model's, e.g. vLLM's ``--max-model-len``): questions too
    long for it are refused before any request (None: not checked here).
    ``timeout``: the deadline of one attempt in seconds, the whole response included (a
    server that trickles bytes does not extend it); ``max_retries`` more attempts follow a
    timeout or a 5xx. ``max_response_bytes``: a larger answer is a :class:`BackendError`.
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
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        num_parameters: int = 0,
        vllm_extensions: bool = True,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
        context_length: int | None = None,
    ):
        if not step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string")
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
            max_response_bytes=max_response_bytes,
            num_parameters=num_parameters,
            extra_body=extra_body,
        )
        self.step_delimiter = step_delimiter
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.vllm_extensions = vllm_extensions
        if context_length is not None and (isinstance(context_length, bool) or context_length < 1):
            raise ConfigError(f"context_length must be a positive integer, got {context_length!r}")
        self.context_length = context_length  # the served model's; None: not checked here

    # -- prompts ----------------------------------------------------------------------------
    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/completions"

    @property
    def _templated(self) -> bool:
        return self.prompt_template is None and self.chat_template in ("server", "client")

    def _plain_head(self, question: str) -> str | None:
        """The head of a prompt template or of ``chat_template="none"`` (None: a chat
        template renders it)."""
        if self.prompt_template is not None:
            head = self.prompt_template.replace("{system_prompt}", self.system_prompt or "")
            return head.replace("{question}", question)
        if self.chat_template == "none":
            return question + self.step_delimiter
        return None

    async def _head(self, question: str) -> str:
        """The prompt up to the solution: template(question), before any step."""
        plain = self._plain_head(question)
        if plain is not None:
            return plain
        return await self.render_chat(
            chat_messages(question, self.system_prompt),
            add_generation_prompt=True,
            note=" (vLLM endpoints)",
            advice="With a server that lacks them use chat_template='client' with "
            "tokenizer=..., or 'none', or prompt_template=...",
        )

    def prompt_tokens_bound(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> int | None:
        """On a vLLM server (``vllm_extensions``), which computes and reports each prompt
        once however many samples it draws from it: each prefix's prompt bytes (no tokenizer
        emits more tokens than bytes), with a question's rendered head once it is known,
        else the question, system prompt and a template allowance. None for other servers
        (budgets then count every sample's prompt)."""
        if not self.vllm_extensions:
            return None
        total = 0
        for p in prefixes:
            head = self._known_head(p.question)
            if head is None:
                head_bound = _nbytes(p.question) + _nbytes(self.system_prompt or "")
                head_bound += PROMPT_OVERHEAD_TOKENS
            else:
                head_bound = _nbytes(head) + _SPECIAL_TOKENS
            total += head_bound + _nbytes(self.render_prefix(p))
        return total

    def _known_head(self, question: str) -> str | None:
        """The head :meth:`_head` renders for ``question``, if that needs no server call or
        was rendered before."""
        plain = self._plain_head(question)
        if plain is not None:
            return plain
        messages = chat_messages(question, self.system_prompt)
        return self.rendered_chat(messages, add_generation_prompt=True)

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
        check_seed(params.seed, len(prefixes) * n)
        prompts = await self.render_prompts(prefixes)
        # Greedy samples are identical: ask for one per prefix and copy it n times.
        copies = 1 if params.temperature == 0 else n
        caps = await self._step_caps(prompts, params)
        if caps is None:  # every prompt has room for a whole step: one request
            steps, usage = await self._request(prompts, copies, params)
        else:
            steps, usage = await self._requests_by_cap(prompts, copies, params, caps)
        if copies != n:
            steps = [row * n for row in steps]
        usage.seconds = time.perf_counter() - t0
        return PolicyResult(steps=steps, usage=usage)

    async def _request(
        self, prompts: list[str], copies: int, params: SamplingParams
    ) -> tuple[list[list[Step]], Usage]:
        data = await self.http.post_json(
            self.completions_url, self._payload(prompts, copies, params)
        )
        steps = self._parse(data, len(prompts), copies, params)
        return steps, self._usage(data, prompts, steps, copies)

    async def _requests_by_cap(
        self, prompts: list[str], copies: int, params: SamplingParams, caps: list[int]
    ) -> tuple[list[list[Step]], Usage]:
        """One request per run of neighbouring prompts with the same step cap (a server
        refuses a prompt whose tokens plus ``max_tokens`` pass its context, and one such
        prompt used to fail the whole batch). A run keeps its prompts' seeds
        (``seed + i * n + j``); a prompt that fills the context writes nothing."""
        runs: list[tuple[int, int, int]] = []  # (start, end, cap)
        for i, cap in enumerate(caps):
            if runs and runs[-1][2] == cap and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1, cap)
            else:
                runs.append((i, i + 1, cap))

        def run_params(start: int, cap: int) -> SamplingParams:
            seed = None if params.seed is None else params.seed + start * copies
            return params.model_copy(update={"max_step_tokens": cap, "seed": seed})

        todo = [(a, b, cap) for a, b, cap in runs if cap > 0]
        done = await asyncio.gather(
            *(self._request(prompts[a:b], copies, run_params(a, cap)) for a, b, cap in todo)
        )
        steps: list[list[Step]] = [[Step(text="", finish_reason="length")] * copies] * len(caps)
        usage = Usage()
        for (a, b, _), (rows, u) in zip(todo, done, strict=True):
            steps[a:b] = rows
            usage = usage + u
        return steps, usage

    async def _step_caps(self, prompts: list[str], params: SamplingParams) -> list[int] | None:
        """Per prompt, the step cap its room in the served model's context allows (None:
        each has room for ``max_step_tokens``, or ``context_length`` is not known). Only
        prompts whose bytes could pass the context are counted: by the client tokenizer,
        else vLLM's ``/tokenize``, else their bytes (no tokenizer emits more tokens)."""
        limit, cap = self.context_length, params.max_step_tokens
        if limit is None:
            return None
        near = [i for i, p in enumerate(prompts) if _nbytes(p) + _SPECIAL_TOKENS + cap > limit]
        if not near:
            return None
        counts = await asyncio.gather(*(self._prompt_tokens(prompts[i]) for i in near))
        caps = [cap] * len(prompts)
        for i, used in zip(near, counts, strict=True):
            caps[i] = max(0, min(cap, limit - used))
        return None if min(caps) == cap else caps

    async def _prompt_tokens(self, prompt: str) -> int:
        add_special = not self._templated  # as the request asks the server
        if self.tokenizer is not None:
            return len(self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
        if self.vllm_extensions:
            root = server_root(self.base_url)
            body = {"model": self.model, "prompt": prompt, "add_special_tokens": add_special}
            try:
                data = await self.http.post_json(f"{root}/tokenize", body)
                count = token_count(data, "count", f"{self.name}: {root}/tokenize")
            except BackendError:  # a server without it: the bound below
                count = None
            self.templating_requests += 1
            if count is not None:
                return count
        return _nbytes(prompt) + _SPECIAL_TOKENS

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
        ordered = by_index(choices, expected, f"{self.name}: {self.completions_url}", data)
        texts: list[str] = []
        reasons: list[FinishReason] = []
        exact: list[int | None] = []
        for j, c in enumerate(ordered):
            text = c.get("text")
            if not isinstance(text, str):  # "" is a sample; a missing text is a broken reply
                raise BackendError(
                    f"{self.name}: choice {j} of {self.completions_url} has text {text!r:.50}, "
                    "not a string",
                    partial={"url": self.completions_url, "response": str(data)[:500]},
                )
            try:  # the text becomes a prompt: a lone surrogate would fail the next step
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise BackendError(
                    f"{self.name}: choice {j} of {self.completions_url} holds text that is not "
                    f"valid Unicode ({e.reason} at position {e.start})",
                    partial={"url": self.completions_url, "response": str(data)[:500]},
                ) from None
            finish, stop_reason = _ALIASES.get(
                c.get("finish_reason"),
                (c.get("finish_reason"), c.get("stop_reason", STOP_REASON_UNKNOWN)),
            )
            if finish not in ("stop", "length", "content_filter"):
                # vLLM's "abort" / "error", a null or unknown reason: the sample did not end
                # the way a completion does, and its text is no step or solution
                raise BackendError(
                    f"{self.name}: choice {j} of {self.completions_url} ended with "
                    f"finish_reason={c.get('finish_reason')!r:.50}; expected 'stop' or 'length'",
                    partial={"url": self.completions_url, "response": str(data)[:500]},
                )
            reason = map_finish_reason(finish, stop_reason, stop_sent=params.stop_at_step)
            if params.stop_at_step:
                text, reason, _ = cut_at_delimiter(text, reason, self.step_delimiter)
            texts.append(text)
            reasons.append(reason)
            ids = c.get("token_ids")
            exact.append(len(ids) if isinstance(ids, list) else None)
        raw = usage_of(data, f"{self.name}: {self.completions_url}")
        completion = token_count(raw, "completion_tokens", f"{self.name}: {self.completions_url}")
        cap = params.max_step_tokens
        if max((e or 0 for e in exact), default=0) > cap or (completion or 0) > expected * cap:
            # the budget meter reserved max_tokens per sample: a server that ignores it
            # would let a run spend past its budget
            raise BackendError(
                f"{self.name}: {self.completions_url} wrote more than max_tokens={cap} tokens "
                f"for a sample ({max(e or 0 for e in exact)} token_ids, {completion} completion "
                "tokens in all); the server ignores max_tokens",
                partial={"url": self.completions_url, "response": str(data)[:500]},
            )
        tokens = self._token_counts(texts, reasons, exact, completion or 0)
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
        where = f"{self.name}: {self.completions_url}"
        raw = usage_of(data, where)
        prompt_tokens = token_count(raw, "prompt_tokens", where)
        if prompt_tokens is None:
            prompt_tokens = sum(-(-len(p) // 4) for p in prompts)
        written = sum(s.tokens for row in steps for s in row[:copies])
        generated = token_count(raw, "completion_tokens", where)
        if generated is None or (generated == 0 and written):  # 0 for written text: unknown
            generated = written
        details = raw.get("prompt_tokens_details") or {}
        cached = token_count(details, "cached_tokens", where) if isinstance(details, dict) else 0
        return self._call_usage(prompt_tokens, generated, cached=cached or 0)
