"""What every strategy graph shares: state, input handling, expand / score, finalisation.

No strategy re-implements batching, scoring or answer selection: they call :func:`expand`
(one policy call for all prefixes), :func:`score` (one PRM call for all trajectories) and
:func:`finalize_update`; budgets are metered by :func:`metered`.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langgraph.channels import EphemeralValue
from langgraph.graph.message import add_messages
from langgraph.managed import RemainingSteps
from pydantic import BaseModel, ValidationError
from typing_extensions import TypedDict

from langchain_tts.backends.sync import run_in_worker, run_sync
from langchain_tts.core.channels import PlainAggregate, PlainValue
from langchain_tts.core.config import Selection, StrategyConfig, did_you_mean
from langchain_tts.core.domain import domain_warnings
from langchain_tts.core.errors import (
    BackendError,
    BudgetExceededError,
    ConfigError,
    InputError,
    PRMOutputError,
    TTSError,
    warn_caller,
)
from langchain_tts.core.types import (
    RESET_USAGE,
    Trajectory,
    Usage,
    add_usage,
    add_usage_summaries,
)
from langchain_tts.ledger import Ledger, meter
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.selection import select_answer
from langchain_tts.tracing import HANDLER_ERROR, traced_call

C = TypeVar("C", bound=StrategyConfig)
R = TypeVar("R")
MAX_QUESTION_CHARS = 100_000


# TypedDict from typing_extensions (not typing): pydantic/LangServe build schemas from it on
# Python 3.11, and total=False lets callers send partial input.
class TTSInput(TypedDict, total=False):
    """Graph input: a question, or chat messages whose last human message is the question.

    ``prefix_steps``: reasoning steps already written (and trusted) that the search
    continues from instead of from the bare question, e.g. the steps of an earlier attempt
    that a verifier accepted (the router passes them, docs/router.md). They are part of
    every candidate's solution; none by default.
    """

    question: str
    messages: list[AnyMessage]
    prefix_steps: list[str]


#: state keys holding package objects: channels that checkpoint them as plain data, so a
#: saver with LangGraph's default serializer needs no registered types (checkpoint.py)
Trajectories = Annotated[list[Trajectory], PlainValue(list[Trajectory])]


class TTSOutput(TypedDict, total=False):
    question: str
    answer: str | None
    solution: str
    candidates: Trajectories
    usage: Annotated[Usage, PlainValue(Usage)]
    stop_reason: str
    messages: list[AnyMessage]
    #: sentences about trusting the answer, e.g. an embedded model asked outside its task
    warnings: list[str]


def add_chat_messages(left: Any, right: Any) -> list[AnyMessage]:
    """LangGraph's ``add_messages``; input that is not chat messages is an :class:`InputError`.

    (``add_messages`` itself fails deep inside LangChain with ``NotImplementedError`` or a
    ``ValueError`` about its own arguments.)
    """
    if right is None or isinstance(right, (int, float, bool, bytes)):
        raise InputError(
            f"messages must be a list of chat messages, got {type(right).__name__}; pass e.g. "
            "{'messages': [('human', 'What is 3 + 4?')]}"
        )
    try:
        return add_messages(left, right)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise InputError(
            "messages must be chat messages (HumanMessage, ('human', text) tuples, "
            f"{{'role': ..., 'content': ...}} dicts or strings): {e}"
        ) from e


class TTSState(TypedDict, total=False):
    """A strategy graph's state. Every run answers its own question from a fresh search.

    ``question`` is the run's input only: an ephemeral channel, cleared on every step that
    does not write it, so the next run on a checkpointer thread does not see it and asks the
    newest human message instead. ``prepare`` keeps the run's question in ``run_question``
    (checkpointed, so a resumed run goes on with it; :func:`node` hands it to the other
    nodes as ``question``) and resets the search state; ``finalize`` writes ``question``
    again for the output. ``usage`` is this run's; ``thread_usage`` sums the thread's
    finished runs.
    """

    question: Annotated[str, EphemeralValue(str)]
    run_question: str
    #: the run's input only, like ``question``; ``prepare`` keeps it in ``run_prefix``
    prefix_steps: Annotated[list[str], EphemeralValue(list)]
    run_prefix: list[str]
    messages: Annotated[list[AnyMessage], add_chat_messages]
    active: Trajectories
    finished: Trajectories
    step: int
    usage: Annotated[Usage, PlainAggregate(Usage, add_usage)]
    thread_usage: Annotated[Usage, PlainAggregate(Usage, add_usage)]
    answer: str | None
    solution: str
    candidates: Trajectories
    stop_reason: str
    warnings: list[str]
    remaining_steps: RemainingSteps


class TTSUsageState(TypedDict, total=False):
    """Mix into a parent graph's state to sum the usage of all its TTS nodes.

    Every graph built with ``output_key`` writes its run's ``Usage.summary()`` to
    ``tts_usage``; this reducer adds them up (plain JSON data, like the result key).
    """

    tts_usage: Annotated[dict[str, float], add_usage_summaries]


#: ``configurable`` keys of LangGraph and LangChain themselves (``__pregel_*`` and other
#: ``__`` keys are skipped too): never a misspelled knob
_RUNTIME_KEYS = frozenset(
    {"thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map", "run_id", "run_name"}
)
_RUNTIME = "__pregel_runtime"  # langgraph's CONFIG_KEY_RUNTIME: what get_runtime() reads


def resolve_config(base: C, config: RunnableConfig | None) -> C:
    """The strategy config with this run's knobs applied, last wins:

    1. knobs at the top of ``config["configurable"]``, then of the run context
       (``invoke(..., context={...})``): they apply to every TTS graph of the run;
    2. the dict under this graph's name (``create_tts_graph(..., name=...)``) in
       ``configurable``, then in the context: this graph's own knobs.

    Unknown keys: in this graph's own context (``context`` of a direct invoke) and under its
    name they are a :class:`ConfigError` naming the valid knobs; at the top of
    ``configurable`` (or of a parent's context dict) they may be LangGraph's or the user's
    own, so only a close misspelling of a knob is an error.
    """
    cls = type(base)
    fields = _fields_of(cls)
    conf = (config or {}).get("configurable") or {}
    name = base._graph_name
    overrides: dict[str, Any] = {}
    # inside a parent graph, configurable and the context are the whole app's: its own keys
    # there (a retriever's ``top_k``) may look like a knob's misspelling
    shared_with_app = inside_parent(config)
    for k, v in conf.items():
        if k in fields:
            overrides[k] = v
        elif k != name:
            _check_loose_key(k, cls, fields, "config['configurable']", shared_with_app)
    runtime = conf.get(_RUNTIME)
    ctx = getattr(runtime, "context", None)
    ctx_own: Any = None
    if ctx is not None:
        if base._knobs is not None and type(ctx) is base._knobs:  # this graph's own context
            overrides.update({k: getattr(ctx, k) for k in ctx.model_fields_set & fields})
            extra = dict(ctx.model_extra or {})
            ctx_own = extra.pop(name, None) if name else None
            for k in extra:
                raise ConfigError(
                    f"unknown knob {k!r} in the run context of {cls.__name__}"
                    f"{did_you_mean(k, [*fields, *([name] if name else [])])}; valid knobs: "
                    f"{sorted(fields)}, or a dict of them under the graph's name {name!r}"
                )
        elif isinstance(ctx, Mapping):  # a parent's context dict: shared with the parent
            for k, v in ctx.items():
                if k in fields:
                    overrides[k] = v
                elif k != name:
                    _check_loose_key(k, cls, fields, "the run context", shared_with_app)
            ctx_own = ctx.get(name) if name else None
        else:
            if isinstance(ctx, StrategyConfig):  # another knobs model (a served graph's)
                overrides.update({k: getattr(ctx, k) for k in ctx.model_fields_set & fields})
            # a parent's context object: only the attribute named like this graph is ours
            ctx_own = getattr(ctx, name, None) if name else None
    if name:
        for where, own in (
            (f"config['configurable'][{name!r}]", conf.get(name)),
            (f"the run context's {name!r}", ctx_own),
        ):
            if own is not None:
                overrides.update(_own_knobs(own, fields, cls, where))
    if not overrides:
        return base
    check = getattr(base, "_knob_check", None)
    if check is not None:  # what the run changes (LangServe and Studio send every knob)
        check({k: v for k, v in overrides.items() if v != getattr(base, k, None)})
    _step_cap_follows(base, overrides)
    # Every node of every step resolves the same overrides: validate them once.
    try:
        # with each value's type: True == 1, but n=True is an error and n=1 is not
        key: Any = (id(base), tuple(sorted((k, type(v), v) for k, v in overrides.items())))
        hash(key)
    except TypeError:  # an unhashable value: no memo
        key = None
    hit = _RESOLVED.get(key) if key is not None else None
    if hit is not None and hit[0] is base:
        return hit[1]  # type: ignore[return-value]
    try:
        resolved = cls.model_validate({**base.model_dump(), **overrides})
    except ValidationError as e:
        raise ConfigError(
            f"invalid call-time configurable or run context for {cls.__name__}: {e}"
        ) from e
    # the graph's identity (its name: chat replies, knob namespace) survives the overrides
    resolved._graph_name, resolved._knobs = base._graph_name, base._knobs
    if key is not None:
        if len(_RESOLVED) >= 256:  # bounded; clear() is atomic across threads
            _RESOLVED.clear()
        _RESOLVED[key] = (base, resolved)
    return resolved


def _step_cap_follows(base: Any, overrides: dict[str, Any]) -> None:
    """A run that lowers ``max_total_tokens`` below the built ``max_step_tokens`` (OpenAI's
    ``max_tokens=256`` against the default 2048 per step) and sets no step cap of its own
    gets the total as its step cap too, instead of an error about a knob it never sent."""
    if "max_step_tokens" not in type(base).model_fields:
        return
    # (LangServe sends every knob, at the route's value when the client left it alone)
    if overrides.get("max_step_tokens", base.max_step_tokens) != base.max_step_tokens:
        return
    total = overrides.get("max_total_tokens")
    if isinstance(total, str):  # a query string's knob
        total = int(total) if total.strip().isdigit() else None
    if type(total) is int and 1 <= total < base.max_step_tokens:
        overrides["max_step_tokens"] = total


def _fields_of(cls: type[StrategyConfig]) -> frozenset[str]:
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = frozenset(cls.model_fields)
    return fields


def _own_knobs(
    own: Any, fields: frozenset[str], cls: type[StrategyConfig], where: str
) -> dict[str, Any]:
    """The knobs under a graph's name: all of them ours, so any unknown key is an error."""
    if isinstance(own, BaseModel):
        own = {k: getattr(own, k) for k in own.model_fields_set}
    if not isinstance(own, Mapping):
        raise ConfigError(
            f"{where} must be a dict of {cls.__name__} knobs, got {type(own).__name__}"
        )
    for k in own:
        if k not in fields:
            raise ConfigError(
                f"unknown knob {k!r} in {where}{did_you_mean(str(k), fields)}; valid knobs: "
                f"{sorted(fields)}"
            )
    return dict(own)


def _check_loose_key(
    k: Any, cls: type[StrategyConfig], fields: frozenset[str], where: str, in_app: bool
) -> None:
    """A shared key that is no knob of ``cls``: an error only when it is a close misspelling
    of one (``beamwidth``), not a knob of another strategy and not LangGraph's own. Inside a
    parent graph (``in_app``) the key may be the app's own (``top_k`` of its retriever), so
    it is a warning, once per key."""
    # a key far longer than any knob name misspells none (and must not fill the memo)
    if not isinstance(k, str) or k in _RUNTIME_KEYS or k.startswith("__") or len(k) > 64:
        return
    memo = (cls, k)
    hint = _LOOSE.get(memo)
    if hint is None:
        close = difflib.get_close_matches(k, sorted(fields), n=1, cutoff=0.8)
        hint = "" if not close or k in _all_knobs() else close[0]
        if len(_LOOSE) >= 1024:
            _LOOSE.clear()
        _LOOSE[memo] = hint
    if not hint:
        return
    message = (
        f"unknown knob {k!r} in {where} (did you mean {hint!r}?); valid knobs of "
        f"{cls.__name__}: {sorted(fields)}"
    )
    if not in_app:
        raise ConfigError(message)
    if (cls, k) not in _WARNED:
        if len(_WARNED) >= 1024:
            _WARNED.clear()
        _WARNED.add((cls, k))
        warn_caller(
            f"{message}. Inside a parent graph it is ignored, as a key of the app's own; set "
            "the knob under the graph's name to silence this"
        )


def _all_knobs() -> frozenset[str]:
    """The knobs of every strategy config class (a knob of another strategy is no typo)."""
    out: set[str] = set()
    todo = [StrategyConfig]
    while todo:
        c = todo.pop()
        out.update(c.model_fields)
        todo.extend(c.__subclasses__())
    return frozenset(out)


_FIELDS: dict[type, frozenset[str]] = {}
#: (id(base), overrides) -> (base, resolved config); ``base`` is kept so the id stays its own
_RESOLVED: dict[Any, tuple[StrategyConfig, StrategyConfig]] = {}
#: (config class, key) -> the knob it misspells, or ""
_LOOSE: dict[tuple[type, str], str] = {}
#: (config class, key) already warned of inside a parent graph
_WARNED: set[tuple[type, str]] = set()


def question_of(state: TTSState) -> str:
    """The question, validated; from ``question`` or the last human message (also when
    ``question`` is ``""``, a parent state's default before anything wrote it)."""
    q: Any = state.get("question")
    if q is None or q == "":
        for m in reversed(state.get("messages") or []):
            if isinstance(m, HumanMessage):
                q = m.content if isinstance(m.content, str) else _text_of(m.content)
                break
    if q is None:
        raise InputError(
            "no question: pass {'question': '...'} or {'messages': [...]} ending with a "
            "human message"
        )
    if not isinstance(q, str):
        raise InputError(f"question must be a string, got {type(q).__name__}")
    if not q.strip():
        raise InputError("question is empty: pass the problem text in {'question': '...'}")
    if len(q) > MAX_QUESTION_CHARS:
        raise InputError(
            f"question is {len(q)} characters; the limit is {MAX_QUESTION_CHARS}. "
            "Shorten it or raise langchain_tts.strategies.core.MAX_QUESTION_CHARS."
        )
    try:
        q.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no tokenizer or server can take it
        raise InputError(
            f"question holds a lone surrogate ({q[e.start]!r} at position {e.start}), which "
            "is not valid Unicode text; send the text as UTF-8 (pair or drop the surrogate)"
        ) from None
    return q.strip()


def inside_parent(config: RunnableConfig | None) -> bool:
    """Whether the running node belongs to a graph that is a node of another graph (a node
    of a graph run on its own has the namespace "node:task", of a subgraph's
    "parent_node:task|node:task")."""
    conf = (config or {}).get("configurable") or {}
    return "|" in str(conf.get("checkpoint_ns") or "")


def check_chat_turn(state: TTSState, config: RunnableConfig | None) -> None:
    """The chat must ask something new. Run on its own with only ``messages``, a chat whose
    newest message is not a human one (``{"messages": []}`` on a thread, an AI note) has
    no new question: it used to answer the thread's last question again and append another
    reply. Inside a parent, a ``question`` the parent left from an earlier turn (the one
    the reply before the newest human message answered) is answered with a warning: the
    parent must write it each turn, or use ``output_key``."""
    messages = state.get("messages") or []
    if not messages:
        return
    nested = inside_parent(config)
    question = state.get("question")
    earlier = any(isinstance(m, HumanMessage) for m in messages)  # else: "no question"
    if question is None and not nested and earlier and not isinstance(messages[-1], HumanMessage):
        kind = {"ai": "an AI", "system": "a system", "tool": "a tool"}.get(
            messages[-1].type, f"a {messages[-1].type}"
        )
        raise InputError(
            f"the chat's newest message is {kind} message, not a human one: "
            "there is no new question to answer. Send the question as a human message, or "
            "as {'question': '...'}"
        )
    if nested and isinstance(question, str) and question.strip() == _answered_before(messages):
        warnings.warn(
            f"answering the parent's question {question[:80]!r} again: the chat's reply "
            "before its newest human message answered it. A parent that keeps 'question' "
            "must write it each turn (or build the graph with output_key=..., which reads the "
            "chat only)",
            stacklevel=2,
        )


def _answered_before(messages: Sequence[AnyMessage]) -> str | None:
    """The question that the TTS reply before the chat's newest human message answered."""
    seen_human = False
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            seen_human = True
        elif seen_human and isinstance(m, AIMessage) and QUESTION_KEY in m.response_metadata:
            q = m.response_metadata[QUESTION_KEY]
            return q.strip() if isinstance(q, str) else None
    return None


def _text_of(content: list) -> str:
    """The text of a message's content blocks (strings and ``{"type": "text"}`` blocks)."""
    parts = []
    for i, p in enumerate(content):
        text = p.get("text", "") if isinstance(p, dict) else p
        if not isinstance(text, str):
            raise InputError(
                f"message content block {i} has a {type(text).__name__} where text belongs; "
                "send {'type': 'text', 'text': '...'} blocks or strings"
            )
        parts.append(text)
    return "".join(parts)


#: the fewest tokens a prompt must leave free in the model's context for one step
MIN_STEP_TOKENS = 16
#: a stand-in step for counting the PRM's input (question + one step)
_PROBE_STEP = "0"


def prompt_tokens(model: Any, question: str) -> int:
    """Tokens of ``model``'s prompt for ``question`` before any step (a PRM's: with one short
    step): its own tokenizer when it has one, else a low estimate (4 bytes a token)."""
    t = Trajectory(question=question)
    try:
        if isinstance(model, ProcessRewardModel) and hasattr(model, "_encoded"):
            return len(model._encoded(t.model_copy(update={"steps": [_PROBE_STEP]}))[0])
        if hasattr(model, "encode") and hasattr(model, "tokenizer"):
            return len(model.encode(t))
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - a tokenizer that cannot say: fall back to the estimate
        pass
    return -(-len(question.encode("utf-8")) // 4)


def check_context(
    question: str,
    policy: StepPolicy | None,
    prm: ProcessRewardModel | None = None,
    cfg: StrategyConfig | None = None,
    prefix_steps: Sequence[str] = (),
) -> None:
    """An :class:`InputError` when the question's prompt (with ``prefix_steps``) leaves no
    room for a step in the policy's (or the PRM's) context; models whose ``context_length``
    is unknown are not checked. Runs before any model call, so an over-long question never
    allocates."""
    room = MIN_STEP_TOKENS if cfg is None else min(MIN_STEP_TOKENS, cfg.max_step_tokens)
    # the prefix's steps are read as part of the prompt: counted with the question
    text = "\n\n".join([question, *prefix_steps])
    for role, model in (("policy", policy), ("PRM", prm)):
        limit = getattr(model, "context_length", None)
        if not limit:
            continue
        used = prompt_tokens(model, text)
        if used + room > limit:
            name = getattr(model, "name", None) or type(model).__name__
            raise InputError(
                f"question is too long for the {role} {name!r}: its prompt is {used} tokens "
                f"and the model's context is {limit} tokens, which leaves "
                f"{max(0, limit - used)} for the solution (at least {room} needed). Shorten the "
                f"question{' and its prefix_steps' if prefix_steps else ''} to under about "
                f"{len(text) * (limit - room) // used} characters, or serve a model with a "
                "longer context"
            )


def prepare_update(
    state: TTSState,
    cfg: StrategyConfig | None = None,
    *,
    policy: StepPolicy | None = None,
    prm: ProcessRewardModel | None = None,
    config: RunnableConfig | None = None,
) -> dict:
    """The ``prepare`` update: this run's question and a fresh search (a reused checkpointer
    thread holds the previous run's beams, stop reason and usage); ``warnings`` when
    ``policy`` was not trained on questions like this one (:mod:`langchain_tts.core.domain`).
    A question too long for the models' context is an :class:`InputError`
    (:func:`check_context`), as is a chat with no new question (:func:`check_chat_turn`)."""
    check_chat_turn(state, config)
    question = question_of(state)
    prefix = prefix_of(state)
    check_context(question, policy, prm, cfg, prefix)
    update: dict[str, Any] = {}
    if _asked_outside_the_chat(state, question, config):
        # a {"question": ...} turn on a chat thread: the chat shows what was asked, not a
        # reply to nothing (inside a parent, the parent's chat is the parent's to write)
        update["messages"] = [HumanMessage(content=question)]
    left = state.get("usage")
    if left is not None and state.get("run_question") and not state.get("stop_reason"):
        # the thread's previous run failed before its end (finalize books a run): what it
        # spent is the thread's too
        update["thread_usage"] = left
    return {
        **update,
        "run_question": question,
        "run_prefix": prefix,
        "warnings": [] if policy is None else domain_warnings(question, policy),
        "step": 0,
        "active": [],
        "finished": [],
        "stop_reason": "",
        "usage": RESET_USAGE,
        "answer": None,
        "solution": "",
        "candidates": [],
    }


def _asked_outside_the_chat(state: TTSState, question: str, config: RunnableConfig | None) -> bool:
    """Whether a standalone run on a chat (a thread with messages) was asked ``question``
    through ``question``, not as the chat's newest human message."""
    messages = state.get("messages") or []
    if not messages or not state.get("question") or inside_parent(config):
        return False
    human = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
    if human is None:
        return True
    asked = human.content if isinstance(human.content, str) else _text_of(human.content)
    return asked.strip() != question


#: the most steps a caller may hand a search to continue from (``prefix_steps``)
MAX_PREFIX_STEPS = 256


def prefix_of(state: TTSState) -> list[str]:
    """The run's ``prefix_steps``, validated: a list of non-empty strings (none: ``[]``)."""
    steps: Any = state.get("prefix_steps")
    if steps is None:
        return []
    if isinstance(steps, str) or not isinstance(steps, (list, tuple)):
        raise InputError(
            f"prefix_steps must be a list of step strings, got {type(steps).__name__}; "
            "e.g. {'question': '...', 'prefix_steps': ['Start with 3.', 'Add 4: 7.']}"
        )
    if len(steps) > MAX_PREFIX_STEPS:
        raise InputError(
            f"prefix_steps has {len(steps)} steps; the limit is {MAX_PREFIX_STEPS}. Pass "
            "only the steps the search should continue from"
        )
    for i, step in enumerate(steps):
        if not isinstance(step, str) or not step.strip():
            raise InputError(f"prefix_steps[{i}] must be a non-empty string, got {step!r:.60}")
        try:
            step.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: no tokenizer can take it
            raise InputError(
                f"prefix_steps[{i}] holds a lone surrogate at position {e.start}, which is not "
                "valid Unicode text; send UTF-8 text"
            ) from None
    if sum(len(s) for s in steps) > MAX_QUESTION_CHARS:
        raise InputError(
            f"prefix_steps hold {sum(len(s) for s in steps)} characters; the limit is "
            f"{MAX_QUESTION_CHARS}. Pass fewer steps"
        )
    return list(steps)


def root_of(state: TTSState) -> Trajectory:
    """Where this run's search starts: the question, and its ``prefix_steps`` if any."""
    return Trajectory(question=state["question"], steps=list(state.get("run_prefix") or []))


# -- budgets ---------------------------------------------------------------------------------
BUDGET = "budget"  #: the ``stop_reason`` of a search its compute budget ended


def run_usage(state: TTSState) -> Usage:
    """What this run has spent so far (``prepare`` starts ``usage`` at zero: budgets are per
    run)."""
    return state.get("usage") or Usage()


def metered(
    policy: StepPolicy, prm: ProcessRewardModel | None, cfg: StrategyConfig, state: TTSState
) -> tuple[StepPolicy, ProcessRewardModel | None, Ledger | None]:
    """The models a node calls: as they are without a budget (ledger None), else wrapped on
    a fresh strict ledger holding what is left of this run's budget.

    A call the budget cannot pay raises :class:`BudgetExceededError` (caught by the node:
    :func:`budget_refused`); a step the meter had to cut short leaves its trajectory
    unfinished (``finish_reason="budget"``). Either way the node stops the search with
    ``stop_reason="budget"`` and ``finalize`` answers with :func:`budget_final_update`.
    """
    if cfg.max_flops is None and cfg.max_tokens is None:
        return policy, prm, None
    spent = run_usage(state)
    ledger = Ledger(
        None if cfg.max_flops is None else cfg.max_flops - spent.flops,
        None if cfg.max_tokens is None else cfg.max_tokens - spent.tokens,
        strict=True,
    )
    return meter(policy, ledger), meter(prm, ledger), ledger


def budget_refused(
    e: BudgetExceededError, state: TTSState, ledger: Ledger | None, cfg: StrategyConfig
) -> Usage:
    """A node's answer to a refused call: the usage it spent (all of it booked on ``ledger``).

    When the refused call was the run's very first, no search can run under this budget:
    that is a :class:`ConfigError` naming the least budget this question needs.
    """
    if ledger is None:  # a strict ledger of the caller's own, not ours
        raise e
    before = run_usage(state)
    if before.policy_calls + before.prm_calls + ledger.spent.policy_calls + ledger.spent.prm_calls:
        return ledger.spent
    short = []
    if cfg.max_tokens is not None and e.need_tokens > e.left_tokens:
        short.append(("max_tokens", cfg.max_tokens, e.need_tokens))
    if cfg.max_flops is not None and e.need_flops > e.left_flops:
        short.append(("max_flops", cfg.max_flops, e.need_flops))
    what = " and ".join(f"{k}={v:.6g}" for k, v, _ in short) or "the budget"
    least = ", ".join(f"{k}={_round_up(need)}" for k, _, need in short)
    raise ConfigError(
        f"{what} cannot pay for even the first model call of this run ({e}). The least this "
        f"question runs on is {least} (one token per sample: a search needs many times "
        "more); raise the budget, or sample fewer candidates (n, expand_k, chains)"
    ) from e


def _round_up(v: float, digits: int = 4) -> str:
    """``v`` to ``digits`` significant digits, rounded up (a minimum that really suffices)."""
    if v <= 0 or not math.isfinite(v):
        return f"{v:g}"
    if v < 10**digits and v == int(v):
        return str(int(v))
    scale = 10.0 ** (math.floor(math.log10(v)) - digits + 1)
    up = math.ceil(v / scale) * scale
    while float(f"{up:.{digits}g}") < v:  # float rounding at the edge
        up += scale
    return f"{up:.{digits}g}"


def budget_stopped(state: TTSState, cfg: StrategyConfig) -> bool:
    """Whether the budget ended this run's search (the looping node set ``stop_reason``)."""
    return cfg.budgeted and state.get("stop_reason") == BUDGET


def first_rejected(t: Trajectory, threshold: float, start: int = 0) -> int | None:
    """The index of ``t``'s first step at or after ``start`` that the PRM scores below
    ``threshold`` (None: every one of them is accepted, or unscored)."""
    scores = t.step_scores
    end = min(len(t.steps), len(scores))
    return next((j for j in range(start, end) if scores[j] < threshold), None)


def is_scored(t: Trajectory) -> bool:
    return len(t.step_scores) == len(t.steps)


def budget_final_update(state: TTSState, cands: Sequence[Trajectory], cfg: StrategyConfig) -> dict:
    """``finalize`` of a search the budget stopped: the best candidates it got to.

    Finished solutions the PRM scored, selected with ``selection``; else finished ones a
    refused PRM call left unscored, by majority vote (no scores to go by); else the partial
    ones (the PRM-scored ones when there are any), by ``selection``.
    """
    done = [t for t in cands if t.finished]
    selection: Selection | None = None
    pick = [t for t in done if is_scored(t)]
    if not pick and done:
        pick, selection = done, "majority"
    if not pick:
        partial = [t for t in cands if not t.finished]
        pick = [t for t in partial if is_scored(t)] or partial
    return finalize_update(state, pick, cfg, BUDGET, selection=selection)


#: more trajectories than this are built (or chosen among) in the worker pool: thousands of
#: pydantic copies would hold the event loop, and every other request, for 100+ ms
OFFLOAD_ITEMS = 512


async def expand(
    policy: StepPolicy,
    parents: Sequence[Trajectory],
    n_each: int,
    cfg: StrategyConfig,
    *,
    stop_at_step: bool = True,
    temperature: float | None = None,
    seed_offset: int = 0,
) -> tuple[list[Trajectory], Usage]:
    """One policy call: ``n_each`` children for every parent, finished ones marked.

    ``seed_offset`` shifts a seeded config's seed, so that calls which may repeat a prompt
    (a revision round that restarts from the question) do not repeat its samples.
    """
    overrides: dict[str, Any] = {"stop_at_step": stop_at_step}
    if temperature is not None:
        overrides["temperature"] = temperature
    if seed_offset and cfg.seed is not None:
        overrides["seed"] = cfg.seed + seed_offset
    result = await _backend_call(
        policy,
        f"sampling {n_each} next steps for each of {len(parents)} prefixes",
        policy.agenerate,
        parents,
        n_each,
        cfg.sampling(**overrides),
    )

    def build() -> list[Trajectory]:
        children: list[Trajectory] = []
        for parent, samples in zip(parents, result.steps):
            for step in samples:
                if stop_at_step:
                    child = parent.extend(step, max_total_tokens=cfg.max_total_tokens)
                else:
                    child = _whole_solution(parent, step.text, step.tokens, step.finish_reason)
                if not child.finished and len(child.steps) >= cfg.max_steps:
                    child = child.copy_with(finished=True, finish_reason="max_steps")
                children.append(child)
        return children

    many = sum(len(row) for row in result.steps) > OFFLOAD_ITEMS
    children = await run_in_worker(build) if many else build()
    if result.max_step_tokens is not None and cfg.budgeted:
        # Our budget's meter lowered the step cap: a step it cut is no solution, a partial.
        samples = [s for row in result.steps for s in row]
        for k, step in enumerate(samples):
            if step.finish_reason == "length":
                children[k] = children[k].copy_with(finished=False, finish_reason=BUDGET)
    return children, result.usage


def _whole_solution(parent: Trajectory, text: str, tokens: int, reason: str) -> Trajectory:
    steps = [s.strip() for s in text.split("\n\n") if s.strip()]
    return Trajectory(
        question=parent.question,
        steps=[*parent.steps, *steps],
        tokens=parent.tokens + tokens,
        finished=True,
        finish_reason=reason,
    )


async def score(
    prm: ProcessRewardModel, trajs: Sequence[Trajectory], *, in_place: bool = False
) -> tuple[list[Trajectory], Usage]:
    """One PRM call scoring every step of every trajectory.

    Identical trajectories (same question and steps: samples often repeat) are scored
    once and their scores shared; trajectories without steps have nothing to score, and a
    call with nothing to score is not made. Returns copies with ``step_scores`` set;
    ``in_place=True`` sets them on the given trajectories instead (for children just made
    by :func:`expand`, which nothing else holds yet: it saves a copy per child on every
    search step).
    """
    first: dict[tuple[str, tuple[str, ...]], int] = {}
    unique: list[Trajectory] = []
    where: list[int] = []  # index into unique; -1: no steps
    for t in trajs:
        k = first.setdefault((t.question, tuple(t.steps)), len(unique)) if t.steps else -1
        if k == len(unique):
            unique.append(t)
        where.append(k)
    usage = Usage()
    found: list[list[float]] = []
    if unique:
        try:
            what = f"scoring {len(unique)} trajectories"
            result = await _backend_call(prm, what, prm.ascore, unique)
        except BudgetExceededError as e:
            e.unscored = list(trajs)  # what the search had, left unscored
            raise
        usage, found = result.usage, result.scores
    rows = [list(found[k]) if k >= 0 else [] for k in where]  # never one list for two
    if in_place:
        for t, s in zip(trajs, rows):
            t.step_scores = s
        return list(trajs), usage

    def copies() -> list[Trajectory]:
        return [t.copy_with(step_scores=s) for t, s in zip(trajs, rows)]

    return (await run_in_worker(copies) if len(trajs) > OFFLOAD_ITEMS else copies()), usage


async def _backend_call(
    backend: object, what: str, fn: Callable[..., Awaitable[R]], *args: Any
) -> R:
    """``await fn(*args)``; an untyped failure of a policy / PRM becomes a :class:`BackendError`.

    Typed errors (``BackendError``, ``PRMOutputError``, ``InputError``, ...) pass as they are;
    cancellation (``asyncio.CancelledError``, a ``BaseException``) is never caught. With a
    callback handler listening, the call is a child run of the node (:mod:`langchain_tts.tracing`).
    """
    try:
        return await traced_call(backend, fn, *args)
    except TTSError:
        raise
    except asyncio.CancelledError as e:
        if not _cancelled_itself(e):  # the task was cancelled: never caught
            raise
        raise _failed(backend, what, e) from e
    except Exception as e:
        if getattr(e, HANDLER_ERROR, False):  # a callback handler's own error, not the model's
            raise
        raise _failed(backend, what, e) from e


def _cancelled_itself(e: asyncio.CancelledError) -> bool:
    """Whether a backend raised ``CancelledError`` of its own (an HTTP client giving up
    inside), while nobody cancelled this task (Python 3.11+ can tell; before, never)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is not None and cancelling() == 0


def _failed(backend: object, what: str, e: BaseException) -> BackendError:
    name = getattr(backend, "name", None) or type(backend).__name__
    return BackendError(
        f"{name} failed while {what}: {type(e).__name__}: {e}",
        partial={"error": f"{type(e).__name__}: {e}"},
    )


def finalize_update(
    state: TTSState,
    candidates: Sequence[Trajectory],
    cfg: StrategyConfig,
    stop_reason: str,
    *,
    selection: Selection | None = None,
) -> dict:
    chosen, answer, scored = select_answer(candidates, selection or cfg.selection, cfg.aggregation)
    solution = chosen.text if chosen else ""
    update: dict[str, Any] = {
        "question": state.get("run_question") or state.get("question") or "",
        "answer": answer,
        "solution": solution,
        "candidates": sorted(scored, key=lambda t: -(t.score or 0.0)),
        "stop_reason": stop_reason,
        "thread_usage": state.get("usage") or Usage(),
    }
    if state.get("messages"):
        usage = state.get("usage") or Usage()
        update["messages"] = [
            answer_message(solution, cfg._graph_name, usage, update["question"] or None)
        ]
    return update


#: the reply's ``response_metadata`` key holding the question it answers
QUESTION_KEY = "tts_question"


def answer_message(
    solution: str, name: str | None, usage: Usage, question: str | None = None
) -> AIMessage:
    """The chat reply of a run: the solution, named after the graph, with its token usage
    and the question it answers (``response_metadata["tts_question"]``).

    ``usage_metadata`` counts the policy's tokens only, over every call of the run: prompt
    tokens as input (those read from a prefix cache included, and also given as
    ``input_token_details.cache_read``, LangChain's convention), generated tokens as
    output (what a chat app bills as "the model"). The PRM's tokens and FLOPs are in the
    run's ``usage``.
    """
    cached = usage.policy_cached_tokens
    tokens_in, tokens_out = usage.policy_prompt_tokens + cached, usage.policy_generated_tokens
    return AIMessage(
        content=solution or "(no solution found)",
        name=name,
        usage_metadata={
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
            "input_token_details": {"cache_read": cached},
        },
        response_metadata={QUESTION_KEY: question} if question else {},
    )


class _Fn(Runnable[Any, Any]):
    """A graph node: a sync and an async function, called directly.

    What LangGraph builds from a plain function node (its node run already traces the
    call), with a sync path too. ``RunnableLambda`` would add a second traced run per node
    and inspect the function's signature on every call: about a third of the per-step
    orchestration cost (docs/performance.md).
    """

    def __init__(
        self,
        func: Callable[[Any, RunnableConfig], Any],
        afunc: Callable[[Any, RunnableConfig], Awaitable[Any]],
        name: str,
    ):
        self.func, self.afunc, self.name = func, afunc, name

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self.func(input, ensure_config() if config is None else config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self.afunc(input, ensure_config() if config is None else config)


def node(fn: Callable[[Any, RunnableConfig], Awaitable[Any]], name: str) -> Runnable:
    """A graph node from one async function, runnable from both invoke and ainvoke.

    Every node but ``prepare`` reads this run's question as ``state["question"]`` (from
    ``run_question``: the ``question`` channel holds only the run's input). A
    :class:`BackendError` or :class:`PRMOutputError` leaving the node carries the search
    state it started from (``progress``): the last completed search step.
    """

    async def afunc(state: TTSState, config: RunnableConfig) -> Any:
        if name != "prepare" and "run_question" in state:
            # ``question`` is the run's input only (cleared after a step); every node after
            # ``prepare`` reads the question this run answers under that name
            state["question"] = state["run_question"]
        try:
            return await fn(state, config)
        except (BackendError, PRMOutputError) as e:
            if e.progress is None:
                e.progress = {k: v for k, v in state.items() if k not in _NOT_PROGRESS}
            raise

    def sync(state: TTSState, config: RunnableConfig) -> Any:
        return run_sync(afunc(state, config))

    return _Fn(sync, afunc, name)


_NOT_PROGRESS = frozenset({"messages", "remaining_steps", "run_question", "thread_usage"})


def next_node(done: object, again: str) -> str:
    """Where a looping node goes: ``again`` (its own name) until the search is done."""
    return "finalize" if done else again
