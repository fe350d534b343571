"""The checker PRM (``LlamaForProcessRewardModel``): its read-out, its training twin and its
Hugging Face class through ``QwenPRM`` (its training stage: research/tests/test_train.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from langchain_tts.core.types import Trajectory
from langchain_tts.eval.synthetic import make_split
from langchain_tts.models.io import save_hf
from langchain_tts.models.tiny_llama import (
    TinyLlamaConfig,
    TinyLlamaForProcessRewardModel,
    checker_logits,
)
from langchain_tts.models.tokenizer import STEP_TAG

CFG = TinyLlamaConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=1, intermediate_size=128)  # fmt: skip


def _head(weight: float = 0.0, bias: float = 0.0) -> nn.Linear:
    gate = nn.Linear(2, 1)
    with torch.no_grad():
        gate.weight.fill_(weight)
        gate.bias.fill_(bias)
    return gate


def test_checker_logits_is_the_running_max_of_gated_surprisal():
    # Two "hidden" directions, vocab of 2: position t predicts token (t % 2) with
    # log-prob log(0.9); the written tokens follow the prediction except at t=3.
    hidden = torch.tensor([[[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]])
    lm_head = torch.eye(2) * (math.log(9.0) / 4.0)  # softmax([log 9, 0]) = [0.9, 0.1]
    ids = torch.tensor([[0, 0, 1, 1, 1]])  # token t+1 predicted = t % 2: 0,1,0,1 -> t=3 wrong
    gate = _head(bias=50.0)  # every prediction is a check
    scale, bias = torch.tensor(50.0), torch.tensor(3.0)  # softplus(50) = 50
    logits = checker_logits(hidden, ids, lm_head, gate, scale, bias)
    good = logits[0, :, 1] - logits[0, :, 0]
    ok, wrong = -math.log(0.9), -math.log(0.1)
    expected = [3.0, 3 - 50 * ok, 3 - 50 * ok, 3 - 50 * wrong, 3 - 50 * wrong]
    assert good.tolist() == pytest.approx(expected, rel=1e-4)
    # A closed gate ignores every surprise; padding (mask 0) adds no evidence.
    closed = checker_logits(hidden, ids, lm_head, _head(bias=-50.0), scale, bias)
    assert (closed[0, :, 1] - closed[0, :, 0]).tolist() == pytest.approx([3.0] * 5, abs=1e-6)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    masked = checker_logits(hidden, ids, lm_head, gate, scale, bias, mask)
    assert (masked[0, :3, 1]).tolist() == pytest.approx(expected[:3], rel=1e-4)
    assert masked[0, 3, 1].item() == pytest.approx(expected[2], rel=1e-4)


def test_checker_logits_are_causal():
    torch.manual_seed(0)
    model = TinyLlamaForProcessRewardModel(CFG).eval()
    torch.nn.init.normal_(model.gate.weight, std=1.0)
    ids = torch.randint(5, 100, (1, 30))
    with torch.no_grad():
        full = model(ids)
        prefix = model(ids[:, :17])
    torch.testing.assert_close(full[:, :17], prefix, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def checker_dir(tmp_path_factory):
    torch.manual_seed(2)
    model = TinyLlamaForProcessRewardModel(CFG)
    torch.nn.init.normal_(model.gate.weight, std=1.0)
    out = tmp_path_factory.mktemp("checker")
    save_hf(model, CFG, out, "LlamaForProcessRewardModel", model_type="llama_checker_prm",
            id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1},
            step_tag=STEP_TAG)  # fmt: skip
    return model.eval(), out


def test_hf_class_matches_training_twin_and_batches_exactly(checker_dir):
    from langchain_tts.prms.qwen import QwenPRM

    twin, path = checker_dir
    prm = QwenPRM.from_pretrained(path)
    assert type(prm.model).__name__ == "LlamaForProcessRewardModel"
    probs = make_split("test", 6)
    trajs = [Trajectory(question=p.question, steps=p.gold_steps[: 1 + i % 3])
             for i, p in enumerate(probs)]  # fmt: skip
    ids = prm.encode(trajs[0])
    with torch.no_grad():
        ours = prm.model(input_ids=torch.tensor([ids])).logits
        theirs = twin.half().float()(torch.tensor([ids]))  # saved in fp16
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    batched = prm.score(trajs).scores
    alone = [prm.score([t]).scores[0] for t in trajs]
    for b, a, t in zip(batched, alone, trajs, strict=True):
        assert len(b) == len(t.steps)
        assert b == pytest.approx(a, abs=1e-5)
    # FLOPs count the LM head (a real matmul) but not the input table.
    body = sum(p.numel() for p in prm.model.parameters())
    assert prm.num_parameters == body


def test_left_padding_is_refused(checker_dir):
    from transformers import AutoModel

    _, path = checker_dir
    model = AutoModel.from_pretrained(path)  # registered on import of the PRM module
    with pytest.raises(ValueError, match="right-padded"):
        model(input_ids=torch.tensor([[0, 5, 6]]), attention_mask=torch.tensor([[0, 1, 1]]))
