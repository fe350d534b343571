"""FLOPs accounting for test-time compute: ``2 x params x tokens`` per model.

A dense transformer's forward costs about two FLOPs per matmul parameter per token, prefill
and decode alike (attention's ``O(context)`` term ignored, as in the references), so budgets,
measured usage and compute-optimal allocations share one unit. Only computed tokens count:
prefix-cache hits cost nothing. torch is imported only when a count needs it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from langchain_tts.core.types import Usage

__all__ = [
    "count_parameters",
    "flops_of_usage",
    "flops_without_cache",
    "inference_flops",
    "model_flops",
]


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}.")


def model_flops(params: float, tokens: float) -> float:
    """FLOPs for one model to process ``tokens`` tokens: ``2 * params * tokens``.

    Why: the single cost formula every budget in this package is expressed in.
    """
    _check_non_negative("params", params)
    _check_non_negative("tokens", tokens)
    return 2.0 * params * tokens


def inference_flops(
    policy_params: float,
    policy_tokens: float,
    prm_params: float = 0,
    prm_tokens: float = 0,
) -> float:
    """FLOPs of one PRM-guided query: policy cost plus verifier (PRM) cost.

    Why: the references compare a small policy *plus its PRM* against a large model alone;
    leaving the PRM out flatters search strategies. ``policy_tokens`` should count prompt
    and generated tokens, ``prm_tokens`` every token the PRM reads (re-scored prefixes
    included).
    """
    return model_flops(policy_params, policy_tokens) + model_flops(prm_params, prm_tokens)


def flops_of_usage(
    usage: Usage,
    *,
    policy_params: float | None = None,
    prm_params: float | None = None,
) -> float:
    """Total FLOPs recorded in a :class:`Usage` (``policy_flops + prm_flops``).

    Why: backends already price their calls, so by default this just sums them. Pass
    ``policy_params`` / ``prm_params`` to re-price the recorded *computed* tokens with
    another parameter count instead (e.g. a usage logged by a fake backend, or a what-if for
    a bigger model); the other model keeps its recorded FLOPs. Cached tokens are not
    priced, as the backends do not price them; to price a run *without* prefix reuse, use
    :func:`flops_without_cache`.
    """
    if not isinstance(usage, Usage):
        raise ValueError(f"usage must be a langchain_tts Usage, got {type(usage).__name__}.")
    if policy_params is None:
        policy = usage.policy_flops
    else:
        prompt = usage.policy_prompt_tokens
        policy = model_flops(policy_params, prompt + usage.policy_generated_tokens)
    prm = usage.prm_flops if prm_params is None else model_flops(prm_params, usage.prm_tokens)
    return policy + prm


def flops_without_cache(
    usage: Usage, *, policy_params: float | None = None, prm_params: float | None = None
) -> float:
    """FLOPs the same run would have cost with every cached token recomputed.

    Why: the saving of prefix reuse is ``flops_without_cache(u) - u.flops``; the cached
    tokens are priced like computed ones (each read token re-prefilled). A model's size
    left out (None) is the one its booked FLOPs imply (``flops / (2 x computed tokens)``),
    so a PRM is not left out by default.
    """
    computed = usage.policy_prompt_tokens + usage.policy_generated_tokens
    policy = computed + usage.policy_cached_tokens
    prm = usage.prm_tokens + usage.prm_cached_tokens
    if policy_params is None:
        policy_params = usage.policy_flops / (2 * computed) if computed else 0.0
    if prm_params is None:
        prm_params = usage.prm_flops / (2 * usage.prm_tokens) if usage.prm_tokens else 0.0
    return model_flops(policy_params, policy) + model_flops(prm_params, prm)


def count_parameters(model: Any, *, exclude_embeddings: bool = False) -> int:
    """Number of parameters of a torch module / Hugging Face model, shared tensors once.

    Why: ``params`` in ``2 * params * tokens`` should be the parameters that do matmuls.
    With ``exclude_embeddings=True`` every ``torch.nn.Embedding`` table (token and learned
    position embeddings) is left out, since a lookup costs no FLOPs, *except* a table tied
    to the output head (``get_output_embeddings``), which is a real matmul there. For
    Llama/Qwen-style models this equals ``langchain_tts.backends.hf.matmul_parameters``.

    Accepts anything with a ``parameters()`` method; torch is imported only when
    ``exclude_embeddings`` is set.
    """
    parameters = getattr(model, "parameters", None)
    if not callable(parameters):
        raise ValueError(
            f"count_parameters needs a torch module or Hugging Face model (an object with "
            f".parameters()), got {type(model).__name__}."
        )
    sizes = {id(p): int(p.numel()) for p in parameters()}
    total = sum(sizes.values())
    if not exclude_embeddings:
        return total

    import torch  # lazy: keep `import langchain_tts.scaling` torch-free

    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    head_weight = getattr(head, "weight", None)
    excluded: set[int] = set()
    modules = getattr(model, "modules", None)
    for module in modules() if callable(modules) else ():
        if isinstance(module, torch.nn.Embedding):
            weight = module.weight
            if weight is head_weight or id(weight) in excluded:
                continue
            excluded.add(id(weight))
            total -= sizes.get(id(weight), 0)
    return total
