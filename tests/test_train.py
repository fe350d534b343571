"""The training recipe's calculator stages (models/train.py), run for a few steps."""

from __future__ import annotations

import random

import torch

from langchain_tts.eval.synthetic import make_split
from langchain_tts.models import train as T
from langchain_tts.models.tokenizer import STEP_TAG, build_tokenizer


def test_context_sequence_targets_only_the_results_of_right_steps():
    tok = build_tokenizer()
    p = next(p for p in make_split("test", 16) if p.difficulty == 3)
    steps, bad = T._corrupt_at(p, random.Random(1))
    ids, lab = T._context_sequence(tok, p, steps, bad)
    assert len(ids) == len(lab)
    text = tok.decode(ids)
    assert text.startswith(p.question) and text.count(STEP_TAG) == len(steps)
    targets = tok.decode([t for t in lab if t != -100])
    tag = tok.convert_tokens_to_ids(STEP_TAG)
    # every equation's result and closing tag but the nudged one's; nothing else
    want = "".join(s.split("=")[1] + STEP_TAG for i, s in enumerate(steps[:-1]) if i != bad)
    assert targets == want and lab.count(tag) == len(steps) - 2


def test_calculator_stages_train_and_report():
    recipe = T.TrainRecipe(calculator_steps=2, prm_body_steps=2, calculator_batch=4)
    torch.manual_seed(0)
    model, stats = T.train_calculator(T.SIZES["small"], recipe, desc="test")
    assert stats["steps"] == 2 and stats["final_loss"] > 0
    before = [p.detach().clone() for p in model.parameters()]
    more = T.calculator_in_context(model, recipe, desc="test")
    assert more["steps"] == 2 and more["final_loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
