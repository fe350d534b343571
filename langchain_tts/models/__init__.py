"""The embedded default models, trained by this project on the synthetic arithmetic task.

A tiny Llama policy (two sizes), a calculator verifier (the default verifier) and a
Qwen2.5-Math-PRM-style PRM, shipped in Hugging Face format. ``load_default()`` loads them
offline on CPU, by default on the project's own runtime (:mod:`.native`: no transformers
import, a cold start of about a second). Rebuild them with ``tts train-default``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_tts.core.domain import EMBEDDED_POLICIES
from langchain_tts.core.errors import ConfigError
from langchain_tts.models.task import EMBEDDED_ARITHMETIC, mark_domain

if TYPE_CHECKING:
    from langchain_tts.policies.hf import HFPolicy
    from langchain_tts.prms.base import ProcessRewardModel

WEIGHTS_DIR = Path(__file__).parent / "weights"
# "small-revise": the small policy also trained to revise its own attempts (Snell et al.'s
# revision model; research/train.py --only revise), the default of `revision` and `hybrid`.
POLICY_SIZES = EMBEDDED_POLICIES
PolicySize = Literal["small", "large", "small-revise"]
# "likelihood": the large policy read as a verifier (prms/likelihood.py), not a trained PRM;
# "calculator": a small LM trained on bare equations, checking each step (prms/equation.py).
PRM_KINDS = ("strong", "weak", "likelihood", "calculator")
BACKENDS = ("native", "transformers")
Backend = Literal["native", "transformers"]


def weights_dir() -> Path:
    """The folder the embedded models load from: the shipped ``weights/``, or
    ``$LANGCHAIN_TTS_WEIGHTS_DIR`` (e.g. a rebuild: ``tts train-default --out DIR``)."""
    override = os.environ.get("LANGCHAIN_TTS_WEIGHTS_DIR")
    return Path(override) if override else WEIGHTS_DIR


def default_model_path(name: str) -> Path:
    """Folder of one embedded model: ``policy-small``, ``policy-large``,
    ``policy-small-revise``, ``prm``, ``prm-weak``, ``verifier-calc`` (under
    :func:`weights_dir`)."""
    path = weights_dir() / name
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"embedded model {name!r} not found at {path}. Reinstall langchain-tts, or rebuild "
            "the weights from a source checkout with `tts train-default --out DIR` and set "
            "LANGCHAIN_TTS_WEIGHTS_DIR=DIR."
        )
    return path


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-tensor "Loading weights" bar for checkpoints of a few MB (restored after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")


def _load(cls: Any, name: str, backend: Backend) -> Any:
    """``cls`` (a backend class with ``(model, tokenizer)`` constructor and ``from_pretrained``)
    over one shipped folder, marked with the task it was trained on (graphs warn on questions
    outside it: :mod:`.task`)."""
    path = default_model_path(name)
    if backend == "native":
        from langchain_tts.models.native import load_native

        model, tokenizer = load_native(path)
        obj = cls(model, tokenizer)
    else:
        with _quiet_loading():
            obj = cls.from_pretrained(str(path))
    mark_domain(obj, EMBEDDED_ARITHMETIC)
    return obj


def load_default_policy(size: PolicySize = "small", backend: Backend = "native") -> HFPolicy:
    """The embedded policy (``small`` searches; ``large`` is the no-search baseline;
    ``small-revise`` is ``small`` trained further to revise its own attempts, which the
    ``revision`` and ``hybrid`` strategies' prompts need)."""
    from langchain_tts.policies.hf import HFPolicy

    if size not in POLICY_SIZES:
        raise ConfigError(f"unknown policy size {size!r}; use one of {list(POLICY_SIZES)}")
    _check_backend(backend)
    policy = _load(HFPolicy, f"policy-{size}", backend)
    policy.name = f"embedded-policy-{size}"
    # what `revision`/`hybrid` with revise="prompt" check: the others never saw such prompts
    policy.trained_to_revise = size == "small-revise"
    return policy


def load_default_prm(
    kind: Literal["strong", "weak", "likelihood", "calculator"] = "calculator",
    backend: Backend = "native",
) -> ProcessRewardModel:
    """``calculator`` (the default): a calculator LM's likelihood of each equation step's
    result, read step by step (``EquationPRM``); ``strong``: the trained PRM with the
    Qwen2.5-Math-PRM interface (``<extra_0>`` after each step, 2-class logits; a checker
    head on the calculator's body, ``models/checker_prm.py``), loaded by ``QwenPRM``;
    ``weak``: a deliberately undertrained Qwen-interface PRM; or ``likelihood``: the large
    policy's token likelihoods as step scores. See docs/model_card.md for what each buys.
    ``backend`` as for :func:`load_default_policy`."""
    if kind not in PRM_KINDS:
        raise ConfigError(f"unknown PRM kind {kind!r}; use one of {list(PRM_KINDS)}")
    _check_backend(backend)
    prm: ProcessRewardModel
    if kind == "calculator":
        from langchain_tts.prms.equation import EquationPRM

        prm = _load(EquationPRM, "verifier-calc", backend)
        prm.name = "embedded-calculator"
        return prm
    if kind == "likelihood":
        from langchain_tts.prms.likelihood import LikelihoodPRM

        prm = _load(LikelihoodPRM, "policy-large", backend)
        prm.name = "embedded-likelihood-large"
        return prm
    from langchain_tts.prms.qwen import QwenPRM

    prm = _load(QwenPRM, "prm" if kind == "strong" else "prm-weak", backend)
    prm.name = f"embedded-prm-{kind}"
    return prm


def load_default(
    size: PolicySize = "small",
    prm: Literal["strong", "weak", "likelihood", "calculator"] = "calculator",
    backend: Backend = "native",
) -> tuple[HFPolicy, ProcessRewardModel]:
    """The embedded policy and verifier (default: the calculator, see
    :func:`load_default_prm`), on CPU, with no network access. ``backend="native"`` (the
    default) runs them on :mod:`langchain_tts.models.native` without importing
    transformers; ``"transformers"`` loads them with transformers' Auto classes."""
    return load_default_policy(size, backend), load_default_prm(prm, backend)
