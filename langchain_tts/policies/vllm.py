"""A step policy on an in-process vLLM engine: one ``LLM.generate`` per search step.

Every prefix becomes one prompt of a single ``generate`` call with
``SamplingParams(n=n, stop=[delimiter], max_tokens=max_step_tokens, ...)``, so vLLM schedules
the whole search step at once and automatic prefix caching (on by default here) reuses the KV
cache of the question and of every shared step across beams and across search steps.

Prompt contract (the same as :class:`HFPolicy`): the tokenizer's chat template over
``[system?, user question]`` with the generation prompt opened (``question + delimiter`` when
the tokenizer has no template), then the steps so far, each followed by the delimiter. The
prompt is tokenized here and passed as ``{"prompt_token_ids": ...}``, so a template that
already writes BOS does not get a second one.

Output contract (``vllm.outputs.RequestOutput`` / ``CompletionOutput``): outputs come back
in prompt order; the ``n`` samples are ordered by ``CompletionOutput.index``;
``finish_reason`` ``"length"`` -> ``"length"``; ``"stop"`` with ``stop_reason`` = the matched
stop string -> ``"step"``; with ``stop_reason`` ``None`` (EOS) or an int (a stop token such as
``<|eot_id|>``) -> ``"eos"``. Token counts are ``len(prompt_token_ids)`` and
``len(token_ids)``; ``num_cached_tokens`` (prefix-cache hits) goes to
``Usage.policy_cached_tokens``.

``vllm`` is imported lazily (``pip install 'langchain-tts[vllm]'``, CUDA wheel); the
conversion from vLLM outputs to steps (:func:`request_outputs_to_steps`) is pure Python.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BackendError, ConfigError
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.policies.base import DEFAULT_STEP_DELIMITER, PolicyResult, StepPolicy
from langchain_tts.policies.openai import map_finish_reason

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
    :func:`langchain_tts.policies.hf.matmul_parameters` does); norms and biases are ignored.
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


def request_outputs_to_steps(
    outputs: Sequence[Any], n: int, *, delimiter: str, stop_at_step: bool
) -> tuple[list[list[Step]], Usage]:
    """``RequestOutput``s (one per prompt, in prompt order) -> ``n`` steps per prompt + usage.

    The text is cut at the first delimiter (vLLM already stops there; this guards a server or
    engine that overshoots). ``Step.tokens`` is the number of generated token ids, the stop
    string's tokens included.
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
                head, found, _ = text.partition(delimiter)
                if found:
                    text, reason = head, "step"
            tokens = len(c.token_ids)
            generated += tokens
            row.append(Step(text=text, tokens=tokens, finish_reason=reason))
        steps.append(row)
        prompt_tokens += len(out.prompt_token_ids or [])
        cached += int(getattr(out, "num_cached_tokens", None) or 0)
    usage = Usage(
        policy_calls=1,
        policy_prompt_tokens=prompt_tokens,
        policy_cached_tokens=cached,
        policy_generated_tokens=generated,
    )
    return steps, usage


class VLLMPolicy(StepPolicy):
    """Continue many partial solutions by one step each on an in-process ``vllm.LLM``.

    ``VLLMPolicy("Qwen/Qwen2.5-Math-1.5B-Instruct", gpu_memory_utilization=0.45)`` builds the
    engine (``engine_kwargs`` go to ``vllm.LLM``; prefix caching is on unless you pass
    ``enable_prefix_caching=False``); ``VLLMPolicy(llm=existing_llm)`` wraps one you built.
    Calls are serialized by a lock and run in a worker thread (``vllm.LLM`` is not
    thread-safe); each call is one batched ``generate``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        llm: Any = None,
        tokenizer: Any = None,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        system_prompt: str | None = None,
        num_parameters: int | None = None,
        name: str | None = None,
        **engine_kwargs: Any,
    ):
        if not step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string")
        if llm is None:
            if model is None:
                raise ConfigError("VLLMPolicy needs model= (a path or hub id) or llm=")
            vllm = import_vllm()
            engine_kwargs.setdefault("enable_prefix_caching", True)
            llm = vllm.LLM(model=model, **engine_kwargs)
        elif engine_kwargs:
            raise ConfigError(
                f"engine kwargs {sorted(engine_kwargs)} only apply when VLLMPolicy builds the "
                "engine; pass them to vllm.LLM yourself"
            )
        self.llm = llm
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        self.step_delimiter = step_delimiter
        self.system_prompt = system_prompt
        if num_parameters is None:
            num_parameters = estimate_matmul_parameters(self._hf_config())
        self.num_parameters = int(num_parameters)
        self.name = name or f"VLLMPolicy({model or type(llm).__name__})"
        self._lock = threading.Lock()

    def _hf_config(self) -> Any:
        try:
            return self.llm.llm_engine.model_config.hf_config
        except AttributeError:
            return None

    # -- prompts ----------------------------------------------------------------------------
    @property
    def _templated(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_prompt(self, prefix: Trajectory) -> str:
        """Chat-templated question + the steps so far (each ending with the delimiter)."""
        if self._templated:
            messages = []
            if self.system_prompt is not None:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": prefix.question})
            head = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            head = prefix.question + self.step_delimiter
        return str(head) + self.render_prefix(prefix)

    def encode(self, prefix: Trajectory) -> list[int]:
        text = self.render_prompt(prefix)
        return list(self.tokenizer(text, add_special_tokens=not self._templated)["input_ids"])

    def sampling_params(self, n: int, params: SamplingParams) -> Any:
        """The ``vllm.SamplingParams`` of one search step."""
        vllm = import_vllm()
        greedy = params.temperature == 0
        return vllm.SamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_step_tokens,
            stop=[self.step_delimiter] if params.stop_at_step else None,
            include_stop_str_in_output=False,
            skip_special_tokens=True,
            seed=params.seed,
        )

    # -- generation -------------------------------------------------------------------------
    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        return await asyncio.to_thread(self._generate_locked, list(prefixes), n, params)

    def _generate_locked(
        self, prefixes: list[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        t0 = time.perf_counter()
        copies = 1 if params.temperature == 0 else n  # greedy samples are identical
        prompts = [{"prompt_token_ids": self.encode(p)} for p in prefixes]
        sp = self.sampling_params(copies, params)
        with self._lock:
            try:
                outputs = self.llm.generate(prompts, sp, use_tqdm=False)
            except Exception as e:
                raise BackendError(
                    f"{self.name}: vllm generate failed: {type(e).__name__}: {e}",
                    partial={"steps": None},
                ) from e
        steps, usage = request_outputs_to_steps(
            outputs, copies, delimiter=self.step_delimiter, stop_at_step=params.stop_at_step
        )
        if copies != n:
            steps = [row * n for row in steps]
        usage.policy_flops = (
            2.0 * self.num_parameters * (usage.policy_prompt_tokens + usage.policy_generated_tokens)
        )
        usage.seconds = time.perf_counter() - t0
        return PolicyResult(steps=steps, usage=usage)
