"""The Skywork-o1-Open-PRM interface on ``transformers``: a value head read at every step end.

A Qwen2 decoder body plus ``v_head.summary`` (``Linear(hidden, 1)``); a step's score is the
sigmoid of the value head at the step token appended after the step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from langchain_tts.backends.hf import load_pretrained, matmul_parameters
from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.prms.math_shepherd import CausalLMPRM, Encoded

__all__ = ["SkyworkPRM", "load_value_head"]

_HEAD_KEYS = ("v_head.summary.weight", "v_head.summary.bias")


def _checkpoint_files(path: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).exists():
            shards = json.loads((path / index).read_text())["weight_map"]
            wanted = {f for k, f in shards.items() if k.endswith(_HEAD_KEYS)}
            return [path / f for f in sorted(wanted)]
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))


def load_value_head(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Linear:
    """The ``v_head.summary`` linear layer stored in a Skywork-style checkpoint folder."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for f in _checkpoint_files(path):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():  # noqa: SIM118 - safe_open has no __iter__
                    if key.endswith(_HEAD_KEYS):
                        tensors[key.split("v_head.summary.")[-1]] = sf.get_tensor(key)
        else:
            state = torch.load(str(f), map_location="cpu", weights_only=True)
            for key, value in state.items():
                if key.endswith(_HEAD_KEYS):
                    tensors[key.split("v_head.summary.")[-1]] = value
    if "weight" not in tensors:
        raise ConfigError(
            f"no value head ({_HEAD_KEYS[0]}) in the checkpoint at {path}; is this a "
            "Skywork-o1-Open-PRM checkpoint?"
        )
    weight = tensors["weight"].reshape(1, -1)
    head = torch.nn.Linear(weight.shape[1], 1, bias="bias" in tensors)
    with torch.no_grad():
        head.weight.copy_(weight)
        if "bias" in tensors:
            head.bias.copy_(tensors["bias"].reshape(1))
    return head.to(dtype)


class SkyworkPRM(CausalLMPRM):
    r"""Skywork-o1-Open-PRM: ``sigmoid(v_head(h))`` at the step token after each step.

    Exact contract of ``Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B`` / ``-7B`` (their
    ``skywork-o1-prm-inference`` code, ``prepare_input`` + ``derive_step_rewards``):

    * input ids: ``encode(bos_token + question + "\n")``, then for every step ``encode(step) +
      [step_token_id]`` with ``step_token = "\n"`` and ``step_token_id`` the last id of
      ``encode("\n")``; nothing else (no chat template); all encodes without extra special
      tokens (the BOS is written as text; with no ``bos_token`` nothing is prepended);
    * model: the Qwen2 decoder body (``model.*`` weights) plus ``v_head.summary`` =
      ``Linear(hidden, 1)`` (``v_head.summary.weight`` / ``.bias`` in the checkpoint);
    * score of step ``k``: ``sigmoid(v_head(h[p_k]))`` where ``p_k`` is the position of the
      step token appended after step ``k``.

    The reference splits a response on every ``"\n"``; here the unit is the search's step, so
    a step is encoded whole (inner newlines kept as text) and gets one score, at its own
    appended step token. Steps produced with the ``"\n\n"`` delimiter never end with a
    newline, so for single-line steps this is exactly the reference input.

    ``from_pretrained`` loads the body with ``AutoModel`` (the checkpoint's ``model.`` prefix
    is stripped by transformers; the unknown ``v_head`` keys are ignored there) and the value
    head straight from the checkpoint files (``*.safetensors`` or ``pytorch_model*.bin``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        value_head: torch.nn.Linear,
        *,
        step_token: str = "\n",
        **kw: Any,
    ):
        super().__init__(model, tokenizer, **kw)
        if value_head.out_features != 1:
            raise ConfigError(f"the value head must map to 1 output, got {value_head.out_features}")
        self.value_head = value_head.to(self.device).eval()
        self.num_parameters = matmul_parameters(self.model) + sum(
            p.numel() for p in self.value_head.parameters()
        )
        ids = tokenizer.encode(step_token, add_special_tokens=False)
        if not ids:
            raise ConfigError(f"the tokenizer cannot encode the step token {step_token!r}")
        self.step_token = step_token
        self.step_token_id = int(ids[-1])

    @classmethod
    def _load_pretrained(
        cls, path: str | Path, dtype: torch.dtype, **options: Any
    ) -> tuple[Any, ...]:
        """The body with ``AutoModel`` and ``v_head`` from the checkpoint files (``path``: a
        local folder or a hub id, downloaded with ``huggingface_hub``)."""
        local = Path(str(path))
        if not local.is_dir():
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(str(path)))
        model, tokenizer = load_pretrained(local, dtype, model_class=AutoModel, **options)
        return model, tokenizer, load_value_head(local, dtype=torch.float32)

    def encode(self, trajectory: Trajectory) -> Encoded:
        bos = self.tokenizer.bos_token if isinstance(self.tokenizer.bos_token, str) else ""
        ids = list(
            self.tokenizer.encode(bos + trajectory.question + "\n", add_special_tokens=False)
        )
        positions = []
        for step in trajectory.steps:
            ids.extend(self.tokenizer.encode(step, add_special_tokens=False) if step else [])
            positions.append(len(ids))
            ids.append(self.step_token_id)
        return ids, positions

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.value_head
        return torch.sigmoid(head(hidden.to(head.weight.dtype)).squeeze(-1).float())
