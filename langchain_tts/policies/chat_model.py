"""A step policy wrapping any LangChain chat model or LLM (OpenAI, Anthropic, Ollama, ...).

Use it to put search around a hosted model that has no completions endpoint. One search step
is one ``abatch`` over ``prefixes x n`` inputs (the model's client runs them concurrently,
``max_concurrency`` at a time).
"""

from __future__ import annotations

import asyncio
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel, BaseLanguageModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from langchain_tts.backends.http import token_count
from langchain_tts.backends.text import DEFAULT_STEP_DELIMITER
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import BackendError, ConfigError
from langchain_tts.core.types import FinishReason, Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy

__all__ = ["DEFAULT_INSTRUCTION", "DEFAULT_SOLUTION_INSTRUCTION", "ChatModelPolicy"]

DEFAULT_INSTRUCTION = (
    "Solve the following math problem step by step. Separate steps with a blank line and "
    "put the final answer in \\boxed{}.\n\n"
    "Problem:\n{question}\n\n"
    "Solution so far:\n{steps}\n\n"
    "Write ONLY the next single step of the solution, nothing before or after it. If this "
    "step completes the solution, end it with the final answer in \\boxed{}."
)
#: used when a whole solution is asked for (``SamplingParams.stop_at_step=False``)
DEFAULT_SOLUTION_INSTRUCTION = (
    "Solve the following math problem step by step. Separate steps with a blank line and "
    "put the final answer in \\boxed{}.\n\n"
    "Problem:\n{question}\n\n"
    "Solution so far:\n{steps}\n\n"
    "Continue the solution from there to the end. Write only the remaining steps."
)
_LENGTH_REASONS = {"length", "max_tokens", "MAX_TOKENS", "max_output_tokens"}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        return "".join(
            b.get("text", "") if isinstance(b, dict) else str(b)
            for b in content
            if not isinstance(b, dict) or b.get("type", "text") == "text"
        )
    return str(content)


def _estimate_tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))


class ChatModelPolicy(StepPolicy):
    r"""Continue partial solutions by one step each with any LangChain model.

    Prompt contract:

    * chat models get ``[SystemMessage(system_prompt)?, HumanMessage(instruction)]`` where the
      instruction (``instruction=``; placeholders ``{question}`` and ``{steps}``, filled with
      ``str.replace`` so LaTeX braces are safe) holds the question, the steps so far joined by
      the delimiter, and asks for exactly the next step;
    * plain LLMs (``BaseLLM``) continue the text ``question + delimiter + steps`` (each step
      followed by the delimiter), like :class:`HFPolicy` without a chat template.

    ``stop=[delimiter]`` is passed to every call; a model that rejects ``stop`` is called
    without it from then on. The reply is cut at the first delimiter client-side in any case.

    Finish reasons: a reply cut at the delimiter, or a non-empty reply, is a ``"step"`` (a
    chat model asked for one step rarely writes the delimiter);
    ``response_metadata["finish_reason"]`` of ``length``/``max_tokens`` is ``"length"``; an
    empty reply is ``"eos"``. A trajectory also ends when a step holds a final ``\boxed{}``
    answer (see :meth:`Trajectory.extend`), which is how chat-model solutions normally end.

    Token counts come from ``AIMessage.usage_metadata`` when the provider reports it;
    otherwise (plain LLM strings, fake models, some providers) they are **estimated as
    characters / 4**, so budgets are approximate for such models. Sampling (temperature,
    top-p, max tokens) is the model's own configuration unless ``pass_sampling=True`` forwards
    ``temperature``, ``top_p``, ``max_tokens`` and ``seed`` as call kwargs (supported by e.g.
    ``ChatOpenAI``); configure a temperature > 0 for diverse samples.

    ``timeout`` (600 s; None: none) bounds each call's batch of model calls, so a provider
    that never answers ends in a :class:`BackendError` instead of a hung search.
    """

    def __init__(
        self,
        model: BaseLanguageModel | None = None,
        *,
        llm: BaseLanguageModel | None = None,
        step_delimiter: str = DEFAULT_STEP_DELIMITER,
        max_concurrency: int = 8,
        system_prompt: str | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        solution_instruction: str = DEFAULT_SOLUTION_INSTRUCTION,
        pass_sampling: bool = False,
        timeout: float | None = 600.0,
        num_parameters: int = 0,
        name: str | None = None,
    ):
        if llm is not None:
            # LangChain calls the wrapped model ``model`` (create_react_agent, init_chat_model)
            warnings.warn(
                "ChatModelPolicy(llm=...) is deprecated; pass the model as "
                "ChatModelPolicy(model=...) or positionally",
                DeprecationWarning,
                stacklevel=2,
            )
            if model is not None:
                raise ConfigError("pass the LangChain model once, as model=, not also as llm=")
            model = llm
        if not isinstance(model, BaseLanguageModel):
            raise ConfigError(
                f"model must be a LangChain chat model or LLM, got {type(model).__name__}"
            )
        if not step_delimiter:
            raise ConfigError("step_delimiter must be a non-empty string")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        for text in (instruction, solution_instruction):
            if "{question}" not in text:
                raise ConfigError("instructions must contain the placeholder {question}")
        self.model = model
        self.is_chat = isinstance(model, BaseChatModel)
        self.step_delimiter = step_delimiter
        self.max_concurrency = max_concurrency
        self.system_prompt = system_prompt
        self.instruction = instruction
        self.solution_instruction = solution_instruction
        self.pass_sampling = pass_sampling
        self.timeout = timeout
        self.num_parameters = int(num_parameters)
        self.name = name or f"ChatModelPolicy({type(model).__name__})"
        #: None until a call tells whether the model accepts ``stop``
        self.supports_stop: bool | None = None

    @property
    def llm(self) -> BaseLanguageModel:
        """Deprecated alias of :attr:`model`."""
        warnings.warn(
            "ChatModelPolicy.llm is deprecated; use ChatModelPolicy.model",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.model

    # -- prompts ----------------------------------------------------------------------------
    def render_input(self, prefix: Trajectory, *, one_step: bool = True) -> list[BaseMessage] | str:
        """Messages for a chat model, or the continuation text for a plain LLM.

        ``one_step=False`` asks a chat model for the rest of the solution instead.
        """
        if not self.is_chat:
            return prefix.question + self.step_delimiter + self.render_prefix(prefix)
        steps = self.step_delimiter.join(prefix.steps) if prefix.steps else "(no steps yet)"
        template = self.instruction if one_step else self.solution_instruction
        # one pass: a question holding the text "{steps}" keeps it
        text = re.sub(
            r"\{(question|steps)\}",
            lambda m: prefix.question if m.group(1) == "question" else steps,
            template,
        )
        messages: list[BaseMessage] = []
        if self.system_prompt is not None:
            messages.append(SystemMessage(content=self.system_prompt))
        messages.append(HumanMessage(content=text))
        return messages

    # -- generation -------------------------------------------------------------------------
    def _call_kwargs(self, params: SamplingParams, use_stop: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if use_stop and params.stop_at_step:
            kwargs["stop"] = [self.step_delimiter]
        if self.pass_sampling:
            kwargs.update(
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_step_tokens,
            )
            if params.seed is not None:
                kwargs["seed"] = params.seed
        return kwargs

    async def _batch(self, inputs: list[Any], kwargs: dict[str, Any]) -> list[Any]:
        call = self.model.abatch(
            inputs,
            # nostream: the samples are not the chat's reply (LangGraph's "messages" mode
            # skips them); the policy run's own tag is not inherited by these calls
            config={
                "max_concurrency": self.max_concurrency,
                "run_name": self.name,
                "tags": ["nostream"],
            },
            return_exceptions=True,
            **kwargs,
        )
        if self.timeout is None:
            return await call
        try:
            return await asyncio.wait_for(call, self.timeout)
        except asyncio.TimeoutError as e:
            raise BackendError(
                f"{self.name}: {len(inputs)} calls did not finish within {self.timeout:g}s",
                partial={"steps": None, "errors": [f"timeout after {self.timeout:g}s"]},
            ) from e

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        t0 = time.perf_counter()
        rendered = [self.render_input(p, one_step=params.stop_at_step) for p in prefixes]
        inputs = [r for r in rendered for _ in range(n)]  # index = prefix_i * n + sample_j
        use_stop = self.supports_stop is not False
        outputs = await self._batch(inputs, self._call_kwargs(params, use_stop))
        if use_stop and params.stop_at_step and self.supports_stop is None:
            rejected = [o for o in outputs if isinstance(o, Exception) and "stop" in str(o).lower()]
            if rejected and len(rejected) == len(outputs):
                self.supports_stop = False  # e.g. "stop not supported by this model"
                outputs = await self._batch(inputs, self._call_kwargs(params, False))
            elif not rejected:
                self.supports_stop = True

        steps: list[Step | None] = []
        errors: list[str] = []
        prompt_tokens = generated = 0
        for inp, out in zip(inputs, outputs, strict=True):
            if isinstance(out, Exception):
                steps.append(None)
                errors.append(f"{type(out).__name__}: {out}")
                continue
            step, p_tok = self._to_step(inp, out, params)
            steps.append(step)
            prompt_tokens += p_tok
            generated += step.tokens
        grid = [steps[i * n : (i + 1) * n] for i in range(len(prefixes))]
        if errors:
            first = next(o for o in outputs if isinstance(o, Exception))
            raise BackendError(
                f"{self.name}: {len(errors)} of {len(inputs)} model calls failed; first error: "
                f"{errors[0]}",
                partial={"steps": grid, "errors": errors},
            ) from first
        usage = Usage(
            policy_calls=1, policy_prompt_tokens=prompt_tokens, policy_generated_tokens=generated
        )
        usage.policy_flops = 2.0 * self.num_parameters * (prompt_tokens + generated)
        usage.seconds = time.perf_counter() - t0
        return PolicyResult(steps=grid, usage=usage)  # type: ignore[arg-type]

    def _to_step(self, inp: Any, out: Any, params: SamplingParams) -> tuple[Step, int]:
        """Cut a reply at the delimiter, label why it ended and count its tokens."""
        if isinstance(out, BaseMessage):
            raw = _content_text(out.content)
            meta = getattr(out, "response_metadata", None) or {}
            stop = meta.get("finish_reason") or meta.get("stop_reason")
            usage = getattr(out, "usage_metadata", None) or {}
            usage = usage if isinstance(usage, Mapping) else {}
        else:
            raw, stop, usage = str(out), None, {}
        text = raw.strip() if self.is_chat else raw.lstrip("\n").rstrip()
        reason: FinishReason
        head, found, _ = text.partition(self.step_delimiter)
        if params.stop_at_step and found:
            text, reason = head.rstrip(), "step"
        elif stop in _LENGTH_REASONS:
            reason = "length"
        elif not text:
            reason = "eos"
        else:
            reason = "step" if params.stop_at_step else "eos"
        out_tokens = token_count(usage, "output_tokens", f"{self.name}: usage_metadata")
        in_tokens = token_count(usage, "input_tokens", f"{self.name}: usage_metadata")
        if out_tokens is None:
            out_tokens = _estimate_tokens(raw)
        if in_tokens is None:
            prompt = inp if isinstance(inp, str) else "".join(_content_text(m.content) for m in inp)
            in_tokens = _estimate_tokens(prompt)
        return Step(text=text, tokens=int(out_tokens), finish_reason=reason), int(in_tokens)
