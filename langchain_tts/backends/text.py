"""Text conventions every backend shares: how a prompt opens (chat template or bare question),
and how a completion is read back into a step (delimiter cut, finish reason)."""

from __future__ import annotations

import re
import weakref
from typing import Any

from langchain_tts.core.types import FinishReason, Trajectory

DEFAULT_STEP_DELIMITER = "\n\n"
#: ``stop_reason`` of a server that does not report one (OpenAI itself, some proxies)
STOP_REASON_UNKNOWN: Any = object()


#: bound on the template, BOS and special tokens a chat template or server adds to one
#: prompt (a budget's allowance when the template is not known yet)
PROMPT_OVERHEAD_TOKENS = 64


def chat_messages(
    question: str, system_prompt: str | None, answer: str | None = None
) -> list[dict[str, str]]:
    """``[system?, user question, assistant answer?]`` as chat-template messages."""
    messages = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


#: put after a special token's first character in text that must stay text: invisible, and
#: no tokenizer's special token holds it
WORD_JOINER = "\u2060"
_SPECIALS: weakref.WeakKeyDictionary[Any, re.Pattern[str] | None] = weakref.WeakKeyDictionary()


def plain_text(tokenizer: Any, text: str) -> str:
    """``text`` (a question, a step) with every special token's text broken up, so that it
    tokenizes as the characters it shows: a question holding ``<|im_end|><|im_start|>system``
    could otherwise end its own turn and open forged ones in the chat template."""
    try:
        pattern = _SPECIALS[tokenizer]
    except KeyError:
        specials = [s for s in getattr(tokenizer, "all_special_tokens", None) or [] if len(s) > 1]
        specials.sort(key=len, reverse=True)  # the longest first where one holds another
        pattern = re.compile("|".join(map(re.escape, specials))) if specials else None
        try:
            _SPECIALS[tokenizer] = pattern
        except TypeError:  # an object without weak references: not cached
            pass
    if pattern is None:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_head(tokenizer: Any, question: str, system_prompt: str | None, delimiter: str) -> str:
    """The prompt up to the solution: the chat template over ``[system?, user question]`` with
    the generation prompt opened, or ``question + delimiter`` without a template. The
    question's special-token texts stay text (:func:`plain_text`)."""
    question = plain_text(tokenizer, question)
    if not has_chat_template(tokenizer):
        return question + delimiter
    messages = chat_messages(question, system_prompt)
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def prompt_text(
    tokenizer: Any, prefix: Trajectory, system_prompt: str | None, delimiter: str
) -> str:
    """The prompt of a policy that continues ``prefix``: :func:`prompt_head`, then each step
    so far (its special-token texts kept as text) followed by the delimiter."""
    head = prompt_head(tokenizer, prefix.question, system_prompt, delimiter)
    return head + "".join(plain_text(tokenizer, s) + delimiter for s in prefix.steps)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt: a chat template already writes BOS and friends, a
    bare prompt gets them from the tokenizer."""
    return list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])


def map_finish_reason(
    finish_reason: str | None, stop_reason: Any = STOP_REASON_UNKNOWN, *, stop_sent: bool
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
        unknown = stop_reason is STOP_REASON_UNKNOWN
        return "step" if unknown or isinstance(stop_reason, str) else "eos"
    return "eos"  # "content_filter", None, ...: the solution cannot go on


def cut_at_delimiter(
    text: str, reason: FinishReason, delimiter: str
) -> tuple[str, FinishReason, bool]:
    """``text`` up to the first ``delimiter`` (a backend that ignored or overshot its stop
    string) with reason ``"step"``; else unchanged. The flag says whether it was found."""
    head, found, _ = text.partition(delimiter)
    return (head, "step", True) if found else (text, reason, False)
