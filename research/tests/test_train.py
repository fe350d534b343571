"""The training recipe (``python -m research.train``): each stage run for a few steps."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from langchain_tts.core.types import Trajectory
from langchain_tts.eval.synthetic import corrupt_steps, corrupt_steps_at, make_split
from langchain_tts.models.tiny_llama import TinyLlamaConfig, TinyLlamaForCausalLM
from langchain_tts.models.tokenizer import STEP_TAG, build_tokenizer
from research import train as T


def test_context_sequence_targets_only_the_results_of_right_steps():
    tok = build_tokenizer()
    p = next(p for p in make_split("test", 16) if p.difficulty == 3)
    steps, bad = corrupt_steps_at(p, random.Random(1))
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


@pytest.mark.slow
def test_train_command_rebuilds_the_calculator_then_the_prm_on_it(tmp_path):
    """`train --only calculator prm` in a fresh folder (only the small policy present, for
    the rollouts): the calculator is trained first, the PRM starts from it and loads
    through QwenPRM as the shipped one does."""
    import shutil

    from typer.testing import CliRunner

    from langchain_tts.cli import app
    from langchain_tts.models import default_model_path
    from langchain_tts.prms.qwen import QwenPRM

    shutil.copytree(default_model_path("policy-small"), tmp_path / "policy-small")
    # Through the documented command: `tts train-default` hands every flag to the trainer.
    res = CliRunner().invoke(
        app,
        ["train-default", "--out", str(tmp_path), "--only", "calculator", "prm", "--jobs", "1",
         "--threads", "1", "--calculator-steps", "2", "--calculator-batch", "4",
         "--prm-body-steps", "2", "--checker-steps", "2", "--batch-size", "4",
         "--rollout-problems", "3", "--rollout-samples", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "training_stats.json").read_text())
    assert {"verifier-calc", "prm-body", "prm", "rollouts"} <= set(stats)
    assert stats["prm"]["steps"] == 2 and stats["rollouts"]["n"] == 3
    prm = QwenPRM.from_pretrained(tmp_path / "prm")
    assert type(prm.model).__name__ == "LlamaForProcessRewardModel"
    p = make_split("test", 1)[0]
    scores = prm.score([Trajectory(question=p.question, steps=p.gold_steps)]).scores[0]
    assert len(scores) == len(p.gold_steps) and all(0.0 <= s <= 1.0 for s in scores)


def test_train_default_outside_a_source_checkout_says_what_to_do(tmp_path, monkeypatch):
    """An installed wheel has no research/ folder: the command explains, trains nothing."""
    from typer.testing import CliRunner

    from langchain_tts import cli

    monkeypatch.setattr(cli, "REPO_ROOT", tmp_path)
    res = CliRunner().invoke(cli.app, ["train-default", "--out", str(tmp_path / "w")])
    assert res.exit_code == 2
    assert "source checkout" in res.output and "research/train.py" in res.output
    assert not (tmp_path / "w").exists()


def test_train_command_rejects_an_unknown_prm_head_or_body_before_training(tmp_path, capsys):
    for flag, value in (("--prm-head", "checkr"), ("--prm-init", "huge"), ("--precision", "fp8")):
        with pytest.raises(SystemExit):
            T.main(["--out", str(tmp_path), "--only", "prm", flag, value])
        assert value in capsys.readouterr().err
    assert not (tmp_path / "training_stats.json").exists()  # nothing ran


def test_precision_is_resolved_and_both_train():
    assert T.resolve_precision("fp32") == "fp32" and T.resolve_precision("bf16") == "bf16"
    assert T.resolve_precision("auto") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="precision"):
        T.resolve_precision("fp8")
    for precision in ("bf16", "fp32"):
        recipe = T.TrainRecipe(calculator_steps=3, calculator_batch=4, precision=precision)
        torch.manual_seed(0)
        model, stats = T.train_calculator(T.SIZES["small"], recipe, desc=precision)
        assert stats["final_loss"] > 0
        assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


@pytest.mark.slow
def test_parallel_rebuild_equals_the_one_process_rebuild(tmp_path):
    """`--jobs 2` runs the stages as one-thread workers, the rollouts and the PRM body passed
    to the PRM stages through a scratch folder; the PRMs it saves are byte for byte the
    one-process ones. (Four workers: the policy and calculator stages run the same way and
    are left out, since each worker costs a process start.)"""
    import shutil

    from langchain_tts.models import default_model_path

    flags = ["--only", "prm", "weak_prm", "--prm-body-steps", "2", "--checker-steps", "2",
             "--weak-prm-steps", "2", "--batch-size", "4", "--rollout-problems", "3",
             "--rollout-samples", "2"]  # fmt: skip
    for run in ("par", "seq"):  # the rollouts' policy and the PRM body's calculator, shipped
        for name in ("policy-small", "verifier-calc"):
            shutil.copytree(default_model_path(name), tmp_path / run / name)
    T.main(["--out", str(tmp_path / "par"), "--jobs", "2", *flags])
    T.main(["--out", str(tmp_path / "seq"), "--jobs", "1", "--threads", "1", *flags])
    for name in ("prm", "prm-weak"):
        a = (tmp_path / "par" / name / "model.safetensors").read_bytes()
        assert a == (tmp_path / "seq" / name / "model.safetensors").read_bytes(), name
    par = json.loads((tmp_path / "par" / "training_stats.json").read_text())
    assert par["jobs_last_run"] == 2 and par["rollouts"]["n"] == 6
    assert {"rollouts", "prm-body", "prm", "prm-weak"} <= set(par)


def test_worker_stages_need_the_parallel_runner(tmp_path, capsys):
    with pytest.raises(SystemExit):
        T.main(["--out", str(tmp_path), "--only", "rollouts"])
    assert "worker stages" in capsys.readouterr().err


CFG = TinyLlamaConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=1, intermediate_size=128)  # fmt: skip


def test_checker_stage_trains_the_read_out_only():
    """The recipe's checker stage runs on step labels and moves only the read-out while
    the body is frozen (the shipped PRM's quality is tested in test_embedded.py)."""
    torch.manual_seed(0)
    body = TinyLlamaForCausalLM(CFG)
    rng = random.Random(0)
    problems = make_split("validation", 40)
    rollouts = [(p, p.gold_steps) for p in problems] + [
        (p, corrupt_steps(p, rng)) for p in problems
    ]
    recipe = T.TrainRecipe(batch_size=8, checker_head_lr=3e-2)
    model, stats = T.train_checker_prm(CFG, body, rollouts, 30, recipe, desc="test")
    assert stats["steps"] == 30 and math.isfinite(stats["final_loss"])
    # The frozen body is untouched; only the read-out moved.
    for name, p in model.model.state_dict().items():
        torch.testing.assert_close(p, body.model.state_dict()[name])
    assert model.gate.weight.abs().sum() > 0


@pytest.mark.slow
def test_revise_stage_trains_the_policy_on_its_own_attempts_in_the_revision_prompt(
    tmp_path, monkeypatch
):
    """`train --only revise`: the small policy's attempts, scored by the calculator, become
    feedback revision prompts (exactly as the revision strategy renders them) whose target
    is the gold solution; the continued policy loads as `small-revise`."""
    import shutil

    from typer.testing import CliRunner

    from langchain_tts.cli import app
    from langchain_tts.models import default_model_path, load_default_policy

    for name in ("policy-small", "verifier-calc"):
        shutil.copytree(default_model_path(name), tmp_path / name)
    recipe = T.TrainRecipe(revise_problems=3, revise_samples=2)
    examples, data = T.revision_examples(
        tmp_path / "policy-small", tmp_path / "verifier-calc", recipe
    )
    assert data["examples"] == len(examples) == 6 and 0 <= data["wrong_attempts"] <= 6
    prompt, target = examples[0]
    assert "\n\nPrevious attempt:\n" in prompt and prompt.endswith("Revise the solution.")
    assert "The verifier doubts step " in prompt and target.endswith("}")
    res = CliRunner().invoke(
        app,
        ["train-default", "--out", str(tmp_path), "--only", "revise", "--jobs", "1",
         "--threads", "1", "--revise-problems", "2", "--revise-samples", "1",
         "--revise-steps", "2", "--batch-size", "4"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "training_stats.json").read_text())
    assert stats["policy-small-revise"]["steps"] == 2
    assert stats["policy-small-revise"]["data"]["examples"] == 2
    monkeypatch.setenv("LANGCHAIN_TTS_WEIGHTS_DIR", str(tmp_path))
    policy = load_default_policy("small-revise")
    assert policy.name == "embedded-policy-small-revise"
