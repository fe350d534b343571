"""The native runtime (models/native.py) against transformers, token for token.

``load_default()`` runs the embedded checkpoints without transformers; every number in the
docs was measured with transformers. These tests hold the two to the same tokens (greedy,
seeded, EOS, step stops, padding) and the same scores, on a random-weight checkpoint whose
logits are biased so that every finish reason occurs, and on the shipped models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, TopPLogitsWarper

from langchain_tts.backends.sampling import top_p_filter
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import ConfigError
from langchain_tts.core.types import Trajectory
from langchain_tts.eval.synthetic import make_split
from langchain_tts.models import load_default, load_default_policy, load_default_prm
from langchain_tts.models.native import NativeTokenizer, load_native
from langchain_tts.models.tokenizer import EOS
from langchain_tts.policies.hf import HFPolicy
from langchain_tts.prms.qwen import QwenPRM

PREFIXES = [
    Trajectory(question="Start with 3. Add 4."),
    Trajectory(question="Start with 12. Multiply by 2. Subtract 5.", steps=["12*2=24"]),
    Trajectory(question="Start with 7.", steps=["7+1=8", "8-2=6"]),
]


def _push_to_stops(pol: HFPolicy) -> HFPolicy:
    """Bias a random model's LM head towards "\n" and EOS (a forward hook, on either
    runtime), so that step, EOS and length stops all occur."""
    bias = torch.zeros(pol.model.config.vocab_size)
    bias[pol.tokenizer.convert_tokens_to_ids("\n")] = 4.0
    bias[pol.tokenizer.convert_tokens_to_ids(EOS)] = 1.5
    pol.model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: out + bias)
    return pol


def _flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


@pytest.fixture
def pair(tiny_policy_dir: Path) -> tuple[HFPolicy, HFPolicy]:
    native = HFPolicy(*load_native(tiny_policy_dir))
    return _push_to_stops(native), _push_to_stops(HFPolicy.from_pretrained(tiny_policy_dir))


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0, "max_step_tokens": 24},
        {"temperature": 0.8, "seed": 7, "max_step_tokens": 24},
        {"temperature": 1.0, "top_p": 0.9, "seed": 1, "max_step_tokens": 12},
        {"temperature": 1.0, "seed": 4, "max_step_tokens": 12},  # step, EOS and length stops
        {"temperature": 0.7, "seed": 3, "max_step_tokens": 40, "stop_at_step": False},
    ],
)
def test_same_steps_as_transformers(pair: tuple[HFPolicy, HFPolicy], params: dict) -> None:
    native, hf = pair
    sp = SamplingParams(**params)
    a = native.generate(PREFIXES, n=8, params=sp)
    b = hf.generate(PREFIXES, n=8, params=sp)
    assert a.steps == b.steps
    assert a.usage.policy_generated_tokens == b.usage.policy_generated_tokens
    if params.get("seed") == 4:
        assert {s.finish_reason for row in a.steps for s in row} == {"step", "eos", "length"}


def test_unseeded_sampling_draws_like_transformers(pair: tuple[HFPolicy, HFPolicy]) -> None:
    # Same processors, same multinomial call: the same global RNG state gives the same draw.
    native, hf = pair
    sp = SamplingParams(temperature=0.9, top_p=0.9, max_step_tokens=16)
    torch.manual_seed(11)
    a = native.generate(PREFIXES, n=3, params=sp)
    torch.manual_seed(11)
    b = hf.generate(PREFIXES, n=3, params=sp)
    assert a.steps == b.steps


def test_same_flops_parameter_count(pair: tuple[HFPolicy, HFPolicy]) -> None:
    native, hf = pair
    assert native.num_parameters == hf.num_parameters


def test_tokenizer_matches_transformers(tiny_policy_dir: Path) -> None:
    ours, theirs = NativeTokenizer(tiny_policy_dir), AutoTokenizer.from_pretrained(tiny_policy_dir)
    texts = ["Start with 3. Add 4.", "12*2=24\n\n<extra_0>x", "\\boxed{7}</s>", "é?"]
    for text in texts:
        for special in (True, False):
            assert ours(text, add_special_tokens=special)["input_ids"] == list(
                theirs(text, add_special_tokens=special)["input_ids"]
            )
        ids = theirs(text)["input_ids"]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip
            )
    msgs = [{"role": "user", "content": "  Q?  "}, {"role": "assistant", "content": "a<extra_0>"}]
    for gen in (True, False):
        for m in (msgs[:1], msgs):
            assert ours.apply_chat_template(
                m, tokenize=False, add_generation_prompt=gen
            ) == theirs.apply_chat_template(m, tokenize=False, add_generation_prompt=gen)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.convert_tokens_to_ids("<extra_0>") == theirs.convert_tokens_to_ids("<extra_0>")
    assert len(ours) == len(theirs)


def test_top_p_filter_is_transformers_top_p() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 101) * 3
    for p in (0.5, 0.9, 0.95, 0.999):
        expected = TopPLogitsWarper(p)(torch.zeros(5, 1, dtype=torch.long), logits.clone())
        assert torch.equal(top_p_filter(logits, p), expected)


def test_tiny_prm_scores_match_transformers(tiny_prm_dir: Path) -> None:
    trajs = [
        Trajectory(question="Start with 3. Add 4.", steps=["3+4=7", "\\boxed{7}"]),
        Trajectory(question="Start with 7.", steps=["7+1=9"]),
    ]
    native = QwenPRM(*load_native(tiny_prm_dir)).score(trajs).scores
    hf = QwenPRM.from_pretrained(tiny_prm_dir).score(trajs).scores
    assert [len(s) for s in native] == [2, 1]
    assert _flat(native) == pytest.approx(_flat(hf), abs=1e-6)


def test_unsupported_checkpoints_and_options_are_refused(
    tmp_path: Path, tiny_policy_dir: Path
) -> None:
    model, _ = load_native(tiny_policy_dir)
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ConfigError, match="backend='transformers'"):
        model.generate(ids, max_new_tokens=2, num_beams=2)
    with pytest.raises(ConfigError, match="top_k=0"):
        model.generate(ids, max_new_tokens=2, do_sample=True, top_k=50)
    for change in (
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"architectures": ["MistralForCausalLM"]},
    ):
        folder = tmp_path / next(iter(change))
        folder.mkdir()
        for f in tiny_policy_dir.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ConfigError, match="backend='transformers'"):
            load_native(folder)
    with pytest.raises(ConfigError, match="unknown backend"):
        load_default_policy(backend="onnx")  # type: ignore[arg-type]


# -- the shipped models ----------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_models_same_tokens_and_scores_both_backends() -> None:
    problems = make_split("test", 16)
    prefixes = [Trajectory(question=p.question) for p in problems]
    whole = SamplingParams(temperature=0.7, seed=5, max_step_tokens=256, stop_at_step=False)
    greedy = SamplingParams(temperature=0.0, max_step_tokens=256, stop_at_step=False)
    step = SamplingParams(temperature=0.7, seed=9)
    gold = [Trajectory(question=p.question, steps=p.gold_steps) for p in problems[:8]]
    part = [Trajectory(question=p.question, steps=p.gold_steps[:2]) for p in problems[8:]]
    out: dict[str, Any] = {}
    for backend in ("native", "transformers"):
        pol = load_default_policy(backend=backend)  # type: ignore[arg-type]
        rec: dict[str, Any] = {
            "greedy": pol.generate(prefixes, n=1, params=greedy).steps,
            "whole": pol.generate(prefixes[:8], n=4, params=whole).steps,
            "step": pol.generate(prefixes[:8], n=4, params=step).steps,
        }
        for kind in ("calculator", "strong", "weak"):
            rec[kind] = load_default_prm(kind, backend=backend).score(gold + part).scores  # type: ignore[arg-type]
        out[backend] = rec
    a, b = out["native"], out["transformers"]
    for key in ("greedy", "whole", "step"):
        assert a[key] == b[key], key
    for kind in ("calculator", "strong", "weak"):
        assert [len(r) for r in a[kind]] == [len(r) for r in b[kind]]
        assert _flat(a[kind]) == pytest.approx(_flat(b[kind]), abs=1e-5), kind


@pytest.mark.slow
def test_load_default_never_imports_transformers() -> None:
    # What makes a cold start ~1 s instead of ~3 s: transformers' model classes never load.
    code = (
        "import sys\n"
        "from langchain_tts.models import load_default\n"
        "from langchain_tts.core.types import Trajectory\n"
        "policy, prm = load_default(prm='strong')\n"
        "t = Trajectory(question='Start with 3. Add 4.')\n"
        "step = policy.generate([t], n=2).steps[0][0].text\n"
        "prm.score([Trajectory(question=t.question, steps=[step])])\n"
        "load_default(prm='calculator')[1].score([Trajectory(question=t.question, steps=['3+4=7'])])\n"
        # a child of a scored trajectory: its prefix comes from the scoring cache
        "prm.score([Trajectory(question=t.question, steps=[step, '\\\\boxed{7}'])])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_transformers_backend_still_loads_the_folders() -> None:
    policy, prm = load_default(prm="strong", backend="transformers")
    assert type(policy.model).__name__ == "LlamaForCausalLM"
    assert type(prm.model).__name__ == "LlamaForProcessRewardModel"


def test_weights_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A rebuild (`tts train-default --out DIR`) is used with LANGCHAIN_TTS_WEIGHTS_DIR=DIR.
    import shutil

    from langchain_tts.models import default_model_path

    shutil.copytree(default_model_path("policy-small"), tmp_path / "policy-small")
    monkeypatch.setenv("LANGCHAIN_TTS_WEIGHTS_DIR", str(tmp_path))
    assert default_model_path("policy-small") == tmp_path / "policy-small"
    policy = load_default_policy()
    assert policy.model.config._name_or_path == str(tmp_path / "policy-small")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_default_prm("strong")
