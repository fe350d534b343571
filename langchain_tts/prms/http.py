"""A PRM client for vLLM's pooling endpoint (``vllm serve`` of a reward / PRM model).

All trajectories of a search step go out in **one** ``POST {server}/pooling`` request::

    {"model": ..., "input": [text_1, ..., text_m]}            (+ extra_body)
    -> {"data": [{"index": i, "data": [[p_0, p_1], ...]}, ...], "usage": {"prompt_tokens": N}}

With STEP pooling vLLM returns one row per step-tag token of each input -- the class
probabilities at that tag -- which is exactly one row per step when the input is rendered
with one tag per step. This module renders the input client-side:

* ``format="qwen"`` (Qwen2.5-Math-PRM; vLLM's ``Qwen2ForProcessRewardModel`` uses STEP pooling
  on ``<extra_0>`` with softmax by default): the chat template over ``[system, user question,
  assistant "<extra_0>".join(steps) + "<extra_0>"]``; the score is row[1] (P(correct)). The
  template is the server's own (``chat_template="server"``: rendered once per question through
  vLLM's ``/tokenize`` + ``/detokenize`` with the answer as a placeholder), the local HF
  tokenizer's (``"client"``, ``tokenizer=``), or none (``"none"``: ``question + "\\n\\n" +
  answer``, the embedded tiny PRM's format);
* ``format="math_shepherd"``: ``"{question} {step_1} ки\\n{step_2} ки..."`` (see
  :mod:`langchain_tts.prms.math_shepherd`); serve with STEP pooling on the tag and the two
  label tokens, e.g. ``--pooler-config '{"pooling_type": "STEP", "step_tag_id": 12902,
  "returned_token_ids": [648, 387]}'``; the score is row[0] (P("+"));
* ``format=callable``: ``render(trajectory) -> str``; set ``positive_index``.

With ``activation="auto"`` a response's rows are read as probabilities when every row of it
already is one (a one-entry row in [0, 1]; entries in [0, 1] summing to 1), else all are
logits: a one-entry row goes through a sigmoid, a wider one through a softmax. Once a
response held logits, the PRM reads every later one as logits too (one reading for all rows:
a logit of 1.0 read as a probability would outrank a logit of 3.0). Force the choice with
``activation="none" | "softmax" | "sigmoid"``.
A row count that differs from the step count (e.g. ALL-token pooling) is a
:class:`PRMOutputError` that says to configure STEP pooling. Retries, timeouts and errors
behave as in :class:`~langchain_tts.policies.openai.OpenAIPolicy`
(:class:`~langchain_tts.backends.http.HTTPBackend`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from langchain_tts.backends.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ChatTemplateMode,
    ServerClient,
    by_index,
    server_root,
    token_count,
    usage_of,
)
from langchain_tts.backends.text import chat_messages
from langchain_tts.core.errors import BackendError, ConfigError, PRMOutputError
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.prms.base import DEFAULT_PRM_SYSTEM_PROMPT, PRMResult, ProcessRewardModel

__all__ = ["HTTPRewardPRM"]
_SLOT = "@@LANGCHAIN_TTS_PRM_ANSWER@@"
_MAX_LABELS = 16  # wider rows are not label scores
_SLACK = 1e-6  # a probability this far outside [0, 1] is float rounding, not a logit
Activation = Literal["auto", "none", "softmax", "sigmoid"]


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    exps = [math.exp(x - m) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def _probability_like(row: Any) -> bool:
    """Whether a score row reads as a probability: one entry in [0, 1], or entries in
    [0, 1] summing to 1. A row that is no finite number says nothing (True): the scoring
    names it."""
    items = row if isinstance(row, list) else [row]
    if not items or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in items
    ):
        return True
    if not all(-_SLACK <= x <= 1 + _SLACK for x in items):
        return False
    return len(items) == 1 or abs(sum(items) - 1) < 1e-3


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class HTTPRewardPRM(ServerClient, ProcessRewardModel):
    """Score every step of many trajectories with one request to a vLLM pooling server."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        format: Literal["qwen", "math_shepherd"] | Callable[[Trajectory], str] = "qwen",
        chat_template: ChatTemplateMode = "server",
        tokenizer: Any = None,
        system_prompt: str | None = DEFAULT_PRM_SYSTEM_PROMPT,
        step_tag: str | None = None,
        positive_index: int | None = None,
        activation: Activation = "auto",
        endpoint: str = "/pooling",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_connections: int = 64,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        num_parameters: int = 0,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        if not callable(format) and format not in ("qwen", "math_shepherd"):
            raise ConfigError(
                f"format must be 'qwen', 'math_shepherd' or a callable, got {format!r}"
            )
        if format == "qwen" and chat_template == "client" and tokenizer is None:
            raise ConfigError("chat_template='client' needs tokenizer= (an HF tokenizer or a path)")
        if activation not in ("auto", "none", "softmax", "sigmoid"):
            raise ConfigError(f"unknown activation {activation!r}")
        self._init_client(
            base_url,
            model,
            name=name or f"HTTPRewardPRM({model})",
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
        self.format = format
        self.system_prompt = system_prompt
        default_tag = {"qwen": "<extra_0>", "math_shepherd": "ки"}
        self.step_tag = step_tag or (default_tag.get(format) if isinstance(format, str) else None)
        if positive_index is None:
            positive_index = 0 if format == "math_shepherd" else 1
        self.positive_index = positive_index
        self.activation = activation
        #: ``activation="auto"`` saw a response of logits: every later one is read as logits
        self.logits_seen = False
        self.url = server_root(self.base_url) + "/" + endpoint.lstrip("/")

    # -- rendering --------------------------------------------------------------------------
    @property
    def _templated(self) -> bool:
        return self.format == "qwen" and self.chat_template in ("server", "client")

    def _answer(self, trajectory: Trajectory) -> str:
        tag = self.step_tag or ""
        steps = [s.replace(tag, "") for s in trajectory.steps] if tag else trajectory.steps
        return tag.join(steps) + tag

    async def _template(self, question: str) -> str:
        """The rendered conversation with the answer as a placeholder (cached per question)."""
        text = await self.render_chat(
            chat_messages(question, self.system_prompt, _SLOT),
            add_generation_prompt=False,
            advice="Use chat_template='client' with tokenizer=..., or 'none'.",
        )
        if text.count(_SLOT) != 1:
            raise ConfigError(f"{self.name}: the chat template did not keep the assistant answer")
        return text

    async def render_inputs(self, trajectories: Sequence[Trajectory]) -> list[str]:
        """The exact text sent for every trajectory (see the module docstring)."""
        if callable(self.format):
            return [self.format(t) for t in trajectories]
        if self.format == "math_shepherd":
            tag = self.step_tag
            return [
                f"{t.question} " + "\n".join(f"{s.replace(tag, '').strip()} {tag}" for s in t.steps)
                for t in trajectories
            ]
        if self.chat_template == "none":
            return [f"{t.question}\n\n{self._answer(t)}" for t in trajectories]
        questions = list(dict.fromkeys(t.question for t in trajectories))
        templates = dict(
            zip(questions, await asyncio.gather(*(self._template(q) for q in questions)))
        )
        return [templates[t.question].replace(_SLOT, self._answer(t)) for t in trajectories]

    # -- scoring ----------------------------------------------------------------------------
    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        t0 = time.perf_counter()
        scores: list[list[float]] = [[] for _ in trajectories]
        todo = [i for i, t in enumerate(trajectories) if t.steps]
        if not todo:
            return PRMResult(scores=scores, usage=Usage(seconds=time.perf_counter() - t0))
        texts = await self.render_inputs([trajectories[i] for i in todo])
        payload: dict[str, Any] = {"model": self.model, "input": texts}
        if self._templated:
            payload["add_special_tokens"] = False  # the template writes BOS where it needs one
        payload.update(self.extra_body)
        data = await self.http.post_json(self.url, payload)
        items = data.get("data")
        if not isinstance(items, list) or len(items) != len(texts):
            got = len(items) if isinstance(items, list) else type(items).__name__
            raise BackendError(
                f"{self.name}: {self.url} returned {got} results for {len(texts)} inputs",
                partial={"url": self.url, "response": str(data)[:500]},
            )
        items = by_index(items, len(texts), f"{self.name}: {self.url}", data)
        rows_of = [item.get("data") if isinstance(item, dict) else None for item in items]
        if self.activation == "auto" and not self.logits_seen:
            every_row = [r for rows in rows_of if isinstance(rows, list) for r in rows]
            self.logits_seen = not all(_probability_like(r) for r in every_row)
        for i, rows in zip(todo, rows_of, strict=True):
            scores[i] = self._step_scores(rows, len(trajectories[i].steps), i)
        raw = usage_of(data, f"{self.name}: {self.url}")
        tokens = token_count(raw, "prompt_tokens", f"{self.name}: {self.url}")
        if tokens is None:
            tokens = sum(-(-len(t) // 4) for t in texts)
        return PRMResult(
            scores=scores, usage=self._call_usage(int(tokens), time.perf_counter() - t0)
        )

    def _step_scores(self, rows: Any, num_steps: int, i: int) -> list[float]:
        if not isinstance(rows, list) or len(rows) != num_steps:
            got = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise PRMOutputError(
                f"{self.name}: got {got} score rows for trajectory {i}, which has {num_steps} "
                "steps. Serve the PRM with STEP pooling on its step tag (vLLM "
                '--pooler-config \'{"pooling_type": "STEP", "step_tag_id": <tag id>, ...}\'), so '
                "that the server returns one row per step."
            )
        return [self._probability(row) for row in rows]

    def _probability(self, row: Any) -> float:
        items = row if isinstance(row, list) else [row]
        if not items or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in items
        ):
            if any(isinstance(x, float) and math.isnan(x) for x in items):
                return math.nan  # check_scores names it, with the trajectory
            raise PRMOutputError(
                f"{self.name}: a score row is {row!r:.100}; expected finite numbers (one "
                "probability or logit, or one per label): an infinite logit is no score"
            )
        values = [float(x) for x in items]
        logits = self.activation == "auto" and self.logits_seen
        if len(values) == 1:
            x = values[0]
            if -_SLACK <= x <= 1 + _SLACK and self.activation != "sigmoid" and not logits:
                return min(max(x, 0.0), 1.0)  # a probability, off by float rounding at most
            if self.activation == "sigmoid" or self.activation == "auto":
                return _sigmoid(x)
            return x
        if len(values) > _MAX_LABELS or self.positive_index >= len(values):
            raise PRMOutputError(
                f"{self.name}: a score row has {len(values)} values; expected one per label "
                f"(positive_index={self.positive_index}). Rows this wide are hidden states or "
                "vocabulary logits: configure the server's STEP pooler with returned_token_ids "
                "(or use the in-process PRM class)."
            )
        is_dist = all(-_SLACK <= x <= 1 + _SLACK for x in values) and abs(sum(values) - 1) < 1e-3
        if self.activation == "softmax" or (self.activation == "auto" and (logits or not is_dist)):
            values = _softmax(values)
        elif self.activation == "sigmoid":
            return _sigmoid(values[self.positive_index])
        elif not is_dist:  # activation="none" on rows that are no distribution: check_scores
            return values[self.positive_index]
        return min(max(values[self.positive_index], 0.0), 1.0)  # rounding off [0, 1] at most
