"""Sampling helpers of the local backends: nucleus filtering and seeded per-row sampling.

Seeded sampling draws the noise of row ``r`` at its ``t``-th new token from a counter-based
stream of that row's seed alone, so a seeded call samples the same tokens whatever other
calls share its batch (concurrent calls that the request coalescer merges).
"""

from __future__ import annotations

import torch

__all__ = ["SeededSampler", "seeded_uniforms", "top_p_filter"]


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering exactly as transformers' ``TopPLogitsWarper`` (keep >= 1 token):
    the smallest-probability tokens whose cumulative mass is <= 1 - top_p get -inf."""
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, -float("inf"))


_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 torch stores."""
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))  # fmt: skip
_STEP = _signed(0xD1B54A32D192ED03)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 (wrapping multiplication)."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def seeded_uniforms(seeds: torch.Tensor, step: int, width: int) -> torch.Tensor:
    """``(len(seeds), width)`` uniforms in (0, 1): draw ``step`` of each row's stream.

    A counter-based generator (SplitMix64 over seed, step, then column), so each row's
    numbers depend on its seed alone, on any device, in one vectorised pass.
    """
    dev = seeds.device
    const = {k: torch.tensor(v, dtype=torch.int64, device=dev) for k, v in
             (("golden", _GOLDEN), ("step", _STEP))}  # fmt: skip
    key = _mix(seeds.to(torch.int64) * const["golden"] + step * const["step"])
    cols = torch.arange(1, width + 1, device=dev, dtype=torch.int64)
    z = _mix(key[:, None] + cols[None, :] * const["golden"])
    return (_shr(z, 11).to(torch.float64) + 0.5) / float(1 << 53)


class SeededSampler:
    """Temperature + top-p sampling by Gumbel-max with per-row random streams.

    ``argmax(logits / T + Gumbel)`` over the top-p nucleus is a draw from the same
    distribution as ``generate``'s multinomial sampling; run with ``do_sample=False``, the
    argmax is ``generate``'s greedy pick, and the noise of row ``r`` at its ``t``-th new
    token comes from :func:`seeded_uniforms` of ``seeds[r]`` -- never from another row.
    A plain callable (not a ``transformers.LogitsProcessor`` subclass), so the native
    backend runs it without importing transformers; ``generate`` accepts any callable.
    """

    def __init__(self, seeds: list[int], width: int, temperature: float, top_p: float):
        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.width, self.temperature = width, temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.seeds.device != scores.device:  # once, not at every token
            self.seeds = self.seeds.to(scores.device)
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            logits = top_p_filter(logits, self.top_p)
        u = seeded_uniforms(self.seeds, input_ids.shape[1] - self.width, scores.shape[-1])
        return logits - torch.log(-torch.log(u)).to(logits.dtype)
