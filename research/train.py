"""Rebuild the embedded default models from scratch: ``python -m research.train``.

Pipeline (all on CPU, seeded):

1. train a small and a larger Llama policy on gold solutions of the synthetic task;
2. train the calculator verifier on bare equations of the task;
3. sample the small policy's own rollouts on training problems and label every step
   automatically (:func:`langchain_tts.eval.synthetic.label_steps`);
4. train the PRM (Qwen2.5-Math-PRM interface: ``<extra_0>`` after each step, 2-class
   logits): the calculator continued on results inside solutions, then the checker
   read-out (``LlamaForProcessRewardModel``) on those rollouts plus gold and nudged
   solutions;
5. train a deliberately weaker PRM (token classifier, small random body, few steps) to
   show PRM quality matters.

Each model is saved in Hugging Face format (``config.json``, ``model.safetensors`` in
fp16, tokenizer files) and loads with transformers from a local path. Models go to
``research/out/weights`` unless ``--out`` names a folder; ``--out langchain_tts/models/weights``
replaces the shipped ones, and ``LANGCHAIN_TTS_WEIGHTS_DIR=DIR`` loads a rebuild in ``DIR``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from langchain_tts.eval.synthetic import (
    MAX_OPS,
    MIN_OPS,
    STEP_DELIMITER,
    ArithmeticProblem,
    corrupt_steps,
    corrupt_steps_at,
    label_steps,
    make_problem,
    make_split,
)
from langchain_tts.models.io import save_hf
from langchain_tts.models.tiny_llama import (
    TinyLlamaConfig,
    TinyLlamaForCausalLM,
    TinyLlamaForProcessRewardModel,
    TinyLlamaForTokenClassification,
)
from langchain_tts.models.tokenizer import EOS, STEP_TAG, build_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]  # where `python -m research.train` runs
# Rebuilding the shipped weights names them: --out langchain_tts/models/weights.
DEFAULT_DIR = REPO_ROOT / "research" / "out" / "weights"

SIZES: dict[str, TinyLlamaConfig] = {
    # ~1.1M parameters; head size 64 so vLLM's CPU and GPU kernels accept it.
    "small": TinyLlamaConfig(
        vocab_size=101, hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=512,
    ),
    # ~2.4M parameters.
    "large": TinyLlamaConfig(
        vocab_size=101, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
        intermediate_size=768,
    ),
}  # fmt: skip


PRM_HEADS = ("checker", "token-classifier")


@dataclass
class TrainRecipe:
    small_steps: int = 3000
    large_steps: int = 3000
    prm_steps: int = 1200
    weak_prm_steps: int = 150
    prm_dense: bool = True  # per-token targets as well as step targets (see _prm_example)
    # which trained model's body the PRM starts from: "calculator" (verifier-calc continued
    # on results inside solutions, see calculator_in_context) or a policy size
    prm_init: str = "calculator"
    prm_extra_layers: int = 4  # fresh layers stacked on the body's (see main)
    continue_steps: int = 0  # extra steps for --only continue-large / continue-small
    # the calculator verifier (prms/equation.py): bare equations, loss on the results.
    # lr 1e-3, not 3e-3: at 3e-3 it was still on its loss plateau after 750 steps.
    calculator_steps: int = 3000
    calculator_lr: float = 1e-3
    calculator_batch: int = 64  # sequences of 8 equations each
    # prm_init="calculator": the calculator first learns results inside solutions.
    # lr 1e-3, not 5e-4 (same 600 steps): 99.7% of gold results right in context
    # instead of 99.4%; best-of-16 on validation 83.3% vs 82.5% (docs/model_card.md item 11).
    prm_body_steps: int = 600
    prm_body_lr: float = 1e-3
    prm_body_lr_scale: float = 1.0  # the PRM's copied body layers train at this x its LR
    # the PRM's read-out: "checker" (LlamaForProcessRewardModel: the body's own LM head
    # judges each token, a learned gate picks the checks; models/checker_prm.py) or
    # "token-classifier" (LlamaForTokenClassification with fresh layers; did not discriminate)
    prm_head: str = "checker"
    checker_steps: int = 400
    checker_head_lr: float = 3e-2
    checker_body_lr: float = 0.0  # 0: the calculator body stays frozen
    batch_size: int = 32
    lr: float = 3e-3
    rollout_problems: int = 2400
    rollout_samples: int = 4
    rollout_temperature: float = 1.0
    seed: int = 0
    # revision (policy-small-revise): the small policy continued on its own attempts in the
    # feedback revision prompt, followed by the gold solution (revision_examples)
    revise_problems: int = 2400
    revise_samples: int = 4
    revise_temperature: float = 0.7  # the strategies' sampling temperature
    revise_steps: int = 1500
    revise_lr: float = 1e-3
    # "bf16": forward and loss under bfloat16 autocast (weights, optimizer and saved
    # checkpoints stay fp32/fp16); ~2.5x faster steps on CPUs with native bf16 (AVX512-BF16,
    # AMX). "auto": bf16 where the CPU has it, else "fp32". See docs/model_card.md.
    precision: str = "auto"


@functools.cache
def _held_out_questions() -> frozenset[str]:
    """Every test and validation question (built once: each stage's stream excludes them)."""
    return frozenset(p.question for p in make_split("test", 1000) + make_split("validation", 1000))


class _TrainStream:
    """Endless training problems, never a validation/test question."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.exclude = _held_out_questions()
        self._pool: list[list[ArithmeticProblem]] = []

    def batch(self, size: int) -> list[ArithmeticProblem]:
        """Batches of similar length (padding would otherwise double the compute)."""
        if not self._pool:
            pool = sorted((self.sample() for _ in range(size * 8)), key=lambda p: p.difficulty)
            self._pool = [pool[i : i + size] for i in range(0, len(pool), size)]
            self.rng.shuffle(self._pool)
        return self._pool.pop()

    def sample(self) -> ArithmeticProblem:
        while True:
            p = make_problem(self.rng, self.rng.randint(MIN_OPS, MAX_OPS))
            if p.question not in self.exclude:
                return p


def _lr_at(step: int, total: int, peak: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    prog = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str) -> str:
    """``"auto"`` -> ``"bf16"`` on CPUs with native bfloat16 kernels, else ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return precision


def _autocast(recipe: TrainRecipe) -> torch.autocast:
    """The training forward's precision context (a no-op for fp32)."""
    bf16 = resolve_precision(recipe.precision) == "bf16"
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def _lm_step(
    model, opt, inputs, labels, lr: float, losses: list, bar, step: int, recipe: TrainRecipe
) -> None:
    """One language-model optimiser step on padded ``inputs``/``labels`` (-100: no loss)."""
    x, y = _pad(inputs, 0), _pad(labels, -100)
    for g in opt.param_groups:
        g["lr"] = lr
    with _autocast(recipe):
        logits = model(x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
    if step % 50 == 0:
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")


def _solution_batch(
    tok, pairs: list[tuple[str, str]], eos: int
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt, solution) pairs as shifted LM inputs and labels, the prompt as the chat
    template renders it (text, then the step delimiter). Loss on the solution only: the
    policy never needs to write questions."""
    inputs, labels = [], []
    for prompt_text, solution in pairs:
        prompt = tok(prompt_text + STEP_DELIMITER)["input_ids"]
        target = tok(solution)["input_ids"] + [eos]
        inputs.append((prompt + target)[:-1])
        labels.append(([-100] * len(prompt) + target)[1:])
    return inputs, labels


def train_policy(
    cfg: TinyLlamaConfig,
    steps: int,
    recipe: TrainRecipe,
    desc: str,
    init_from: Path | None = None,
    lr: float | None = None,
) -> tuple[TinyLlamaForCausalLM, dict]:
    """Train (or, with ``init_from``, continue training) a policy on gold solutions."""
    tok = build_tokenizer()
    torch.manual_seed(recipe.seed)
    # zlib, not hash(): str hashes are salted per process and would break reproducibility.
    stream = _TrainStream(recipe.seed + zlib.crc32(desc.encode()) % 1000 + (7 if init_from else 0))
    model = TinyLlamaForCausalLM(cfg)
    if init_from is not None:
        _load_fp16(model, init_from)
    lr = lr or recipe.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    eos = tok.convert_tokens_to_ids(EOS)
    t0, losses = time.time(), []
    bar = tqdm(range(steps), desc=desc, mininterval=5)
    for step in bar:
        pairs = [(p.question, p.solution) for p in stream.batch(recipe.batch_size)]
        inputs, labels = _solution_batch(tok, pairs, eos)
        _lm_step(model, opt, inputs, labels, _lr_at(step, steps, lr), losses, bar, step, recipe)
    stats = {"steps": steps, "seconds": round(time.time() - t0, 1), "final_loss": losses[-1]}
    return model, stats


def calculator_equation(rng: random.Random) -> tuple[str, str]:
    """A random equation of the task's four operations, values 0..999: (``"a-k="``, result)."""
    r = rng.random()
    if r < 0.8:
        a, k = rng.randint(0, 999), rng.randint(2, 50)
        if r < 0.4 and a + k <= 999:
            return f"{a}+{k}=", str(a + k)
        if a - k >= 0:
            return f"{a}-{k}=", str(a - k)
        return f"{a}+{k}=", str(a + k)
    k = rng.randint(2, 5)
    if r < 0.9:
        a = rng.randint(1, 999 // k)
        return f"{a}*{k}=", str(a * k)
    c = rng.randint(1, 999 // k)
    return f"{c * k}/{k}=", str(c)


def _packed_equations(
    rng: random.Random, vocab: dict[str, int], k: int = 8
) -> tuple[list[int], list[int]]:
    """``k`` random equations ``"a-k=c" + "\n\n"`` in one sequence, with LM targets on the
    results (and the delimiter closing each) only."""
    ids: list[int] = []
    lab: list[int] = []
    for _ in range(k):
        q, c = calculator_equation(rng)
        qi = [vocab[ch] for ch in q]
        ci = [vocab[ch] for ch in c + STEP_DELIMITER]
        ids += qi + ci
        lab += [-100] * len(qi) + ci
    return ids, lab


def train_calculator(
    cfg: TinyLlamaConfig, recipe: TrainRecipe, desc: str = "calculator"
) -> tuple[TinyLlamaForCausalLM, dict]:
    """The calculator verifier: a causal LM trained from scratch on packed equations
    (``"a-k=c" + "\n\n"``, 8 per sequence), loss on the results only, so that it learns
    arithmetic, not the task's chains. It checks steps; it never writes solutions."""
    tok = build_tokenizer()
    vocab = tok.get_vocab()
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    model = TinyLlamaForCausalLM(cfg)

    def batch() -> tuple[list[list[int]], list[list[int]]]:
        seqs = [_packed_equations(rng, vocab) for _ in range(recipe.calculator_batch)]
        return [ids[:-1] for ids, _ in seqs], [lab[1:] for _, lab in seqs]

    stats = _train_lm(model, recipe.calculator_steps, recipe.calculator_lr, batch, desc, recipe)
    return model, stats


def _train_lm(model, steps: int, lr: float, batch, desc: str, recipe: TrainRecipe) -> dict:
    """AdamW (betas 0.9/0.98) on ``batch() -> (inputs, labels)`` for ``steps`` steps, with
    the warm-up + cosine schedule; returns the stage's stats."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    t0, losses = time.time(), []
    bar = tqdm(range(steps), desc=desc, mininterval=5)
    for step in bar:
        inputs, labels = batch()
        _lm_step(model, opt, inputs, labels, _lr_at(step, steps, lr), losses, bar, step, recipe)
    return {"steps": steps, "seconds": round(time.time() - t0, 1),
            "final_loss": sum(losses[-50:]) / len(losses[-50:])}  # fmt: skip


def _context_sequence(tok, p: ArithmeticProblem, steps: list[str], bad: int | None):
    """``steps`` in the PRM's input format (question, ``"\n\n"``, each step + step tag) with
    LM targets on the result digits (and the tag closing them) of every equation step except
    ``bad``, whose written result is wrong."""
    tag = tok.convert_tokens_to_ids(STEP_TAG)
    ids = tok(p.question + STEP_DELIMITER)["input_ids"]
    lab = [-100] * len(ids)
    for i, step in enumerate(steps):
        if "=" not in step:  # the boxed answer
            step_ids = tok(step)["input_ids"]
            ids += step_ids + [tag]
            lab += [-100] * (len(step_ids) + 1)
            continue
        lhs, rhs = step.split("=")
        lhs_ids, rhs_ids = tok(lhs + "=")["input_ids"], tok(rhs)["input_ids"] + [tag]
        ids += lhs_ids + rhs_ids
        lab += [-100] * len(lhs_ids) + (rhs_ids if i != bad else [-100] * len(rhs_ids))
    return ids, lab


def calculator_in_context(
    model: TinyLlamaForCausalLM, recipe: TrainRecipe, desc: str = "calculator+context"
) -> dict:
    """Continue the calculator on results *inside* solutions in the PRM's input format.

    The calculator computes a bare ``"537-48="`` well (99.9%) but sees only 11% of result
    digits right after a question and step tags, which it never saw. Half of each batch is
    solutions (gold, or a chain with one nudged result, which gets no target), half the bare
    equations it was trained on, so it keeps its arithmetic. The result is the PRM's body.
    """
    tok = build_tokenizer()
    vocab = tok.get_vocab()
    torch.manual_seed(recipe.seed + 3)
    rng = random.Random(recipe.seed + 3)
    stream = _TrainStream(recipe.seed + 77)

    def batch() -> tuple[list[list[int]], list[list[int]]]:
        inputs, labels = [], []
        for b in range(recipe.calculator_batch):
            if b % 2 == 0:
                p = stream.sample()
                if rng.random() < 0.5:
                    ids, lab = _context_sequence(tok, p, p.gold_steps, None)
                else:
                    st, bad = corrupt_steps_at(p, rng)
                    ids, lab = _context_sequence(tok, p, st, bad)
            else:
                ids, lab = _packed_equations(rng, vocab)
            inputs.append(ids[:-1])
            labels.append(lab[1:])
        return inputs, labels

    return _train_lm(model, recipe.prm_body_steps, recipe.prm_body_lr, batch, desc, recipe)


@torch.no_grad()
def sample_rollouts(
    policy_dir: Path, problems: list[ArithmeticProblem], n: int, temperature: float, seed: int
) -> list[tuple[ArithmeticProblem, list[str]]]:
    """Full-solution samples of a saved policy, split into steps (batched, KV-cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(policy_dir))
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir), dtype=torch.float32).eval()
    out: list[tuple[ArithmeticProblem, list[str]]] = []
    batch = 128
    expanded = [p for p in problems for _ in range(n)]
    for i in tqdm(range(0, len(expanded), batch), desc="rollouts", mininterval=5):
        chunk = expanded[i : i + batch]
        enc = tok([p.question + STEP_DELIMITER for p in chunk], return_tensors="pt", padding=True)
        gen = model.generate(
            **enc, do_sample=True, temperature=temperature, top_p=1.0, max_new_tokens=110,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for p, text in zip(chunk, texts):
            steps = [s for s in text.split(STEP_DELIMITER) if s.strip()]
            out.append((p, steps))
    return out


def revision_examples(
    policy_dir: Path, calculator_dir: Path, recipe: TrainRecipe
) -> tuple[list[tuple[str, str]], dict]:
    """(revision prompt, gold solution) pairs from the policy's own attempts.

    As in Snell et al., the revision data are the model's own attempts followed by a correct
    solution: the policy samples attempts at the strategies' temperature (0.7) on training
    problems, the calculator verifier scores them, and each attempt goes into
    ``FEEDBACK_REVISION_TEMPLATE`` with the verifier's feedback (its weakest step and score)
    exactly as the revision strategy builds it at inference. Right attempts are kept too
    (their target is the same solution), so the policy learns to keep what the verifier
    trusts and to change the step it doubts.
    """
    from langchain_tts.core.types import Trajectory
    from langchain_tts.models.native import load_native
    from langchain_tts.prms.equation import EquationPRM
    from langchain_tts.strategies.revision import (
        FEEDBACK_REVISION_TEMPLATE,
        render_revision_prompt,
        verifier_feedback,
    )

    t0 = time.time()
    stream = _TrainStream(recipe.seed + 4321)
    problems = [stream.sample() for _ in range(recipe.revise_problems)]
    rollouts = sample_rollouts(
        policy_dir, problems, recipe.revise_samples, recipe.revise_temperature, recipe.seed + 5
    )
    rollouts = [(p, steps) for p, steps in rollouts if steps]
    prm = EquationPRM(*load_native(calculator_dir))
    examples, wrong = [], 0
    for i in tqdm(range(0, len(rollouts), 256), desc="revision data", mininterval=5):
        chunk = rollouts[i : i + 256]
        trajs = [Trajectory(question=p.question, steps=steps) for p, steps in chunk]
        for (p, steps), t, s in zip(chunk, trajs, prm.score(trajs).scores, strict=True):
            attempt = t.copy_with(step_scores=s)
            prompt = render_revision_prompt(
                FEEDBACK_REVISION_TEMPLATE, p.question, attempt.text, verifier_feedback(attempt)
            )
            examples.append((prompt, p.solution))
            wrong += not label_steps(p, steps).final_correct
    stats = {"examples": len(examples), "wrong_attempts": wrong,
             "seconds": round(time.time() - t0, 1)}  # fmt: skip
    return examples, stats


def train_reviser(
    cfg: TinyLlamaConfig, init_from: Path, examples: list[tuple[str, str]], recipe: TrainRecipe
) -> tuple[TinyLlamaForCausalLM, dict]:
    """Continue a policy on revision examples, half of each batch, and on gold solutions
    (the other half, so it keeps writing first attempts as before). Loss on solutions only."""
    tok = build_tokenizer()
    eos = tok.convert_tokens_to_ids(EOS)
    torch.manual_seed(recipe.seed + 11)
    rng = random.Random(recipe.seed + 11)
    stream = _TrainStream(recipe.seed + 99)
    model = TinyLlamaForCausalLM(cfg)
    _load_fp16(model, init_from)

    def batch() -> tuple[list[list[int]], list[list[int]]]:
        half = recipe.batch_size // 2
        pairs = [(p.question, p.solution) for p in stream.batch(half)]
        pairs += rng.sample(examples, recipe.batch_size - half)
        return _solution_batch(tok, pairs, eos)

    stats = _train_lm(model, recipe.revise_steps, recipe.revise_lr, batch, "revise", recipe)
    return model, stats


DENSE = 2  # label offset marking a dense (per-token) target, see _prm_example


def _prm_example(
    tok, p: ArithmeticProblem, steps: list[str], dense: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids in the PRM format and targets: the step label at each ``<extra_0>``.

    With ``dense``, every token of a step also gets a target (stored as ``DENSE + label``):
    whether the solution text is still a prefix of the gold solution at that character.
    The tokenizer is char-level, so that pinpoints the first wrong digit, which teaches
    the PRM to *check* arithmetic far faster than step labels alone; only the step-tag
    read-out is used at inference.
    """
    labels = label_steps(p, steps).labels
    ids = tok(p.question + STEP_DELIMITER)["input_ids"]
    tag = tok.convert_tokens_to_ids(STEP_TAG)
    y = [-100] * len(ids)
    gold = p.gold_steps
    on_track = True
    for k, (step, ok) in enumerate(zip(steps, labels)):
        step_ids = tok(step)["input_ids"]
        ids += step_ids + [tag]
        if dense and len(step_ids) == len(step):
            g = gold[k] if k < len(gold) else ""
            for j in range(len(step)):
                good = on_track and step[: j + 1] == g[: j + 1]
                y.append(DENSE + int(good))
        else:
            y += [-100] * len(step_ids)
        y.append(int(ok))
        on_track = on_track and ok
    return ids, y


def _prm_batches(
    rollouts: list[tuple[ArithmeticProblem, list[str]]],
    recipe: TrainRecipe,
    rng: random.Random,
    stream: _TrainStream,
    dense: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless length-bucketed PRM batches ``(ids, targets)``: 70% the policy's own
    rollouts, 15% gold solutions, 15% gold with one result nudged (see _prm_example)."""
    tok = build_tokenizer()
    pool: list[list[tuple[list[int], list[int]]]] = []
    while True:
        if not pool:
            examples = []
            for _ in range(recipe.batch_size * 8):
                r = rng.random()
                if r < 0.7:
                    p, st = rng.choice(rollouts)
                elif r < 0.85:
                    p = stream.sample()
                    st = p.gold_steps
                else:
                    p = stream.sample()
                    st = corrupt_steps(p, rng)
                ids, y = _prm_example(tok, p, st, dense=dense)
                examples.append((ids[:512], y[:512]))
            examples.sort(key=lambda e: len(e[0]))
            pool = [
                examples[i : i + recipe.batch_size]
                for i in range(0, len(examples), recipe.batch_size)
            ]
            rng.shuffle(pool)
        batch = pool.pop()
        yield _pad([b[0] for b in batch], 0), _pad([b[1] for b in batch], -100)


def train_checker_prm(
    cfg: TinyLlamaConfig,
    body: TinyLlamaForCausalLM,
    rollouts: list[tuple[ArithmeticProblem, list[str]]],
    steps: int,
    recipe: TrainRecipe,
    desc: str = "checker prm",
) -> tuple[TinyLlamaForProcessRewardModel, dict]:
    """The checker PRM (``checker_logits``) on a causal LM body, trained on step labels.

    The read-out (gate, scale, bias) learns at ``checker_head_lr``; the body at
    ``checker_body_lr`` (0, the default, keeps it frozen: it is the calculator, already
    good at results in context; a trained body gets only the step-label loss).
    """
    torch.manual_seed(recipe.seed + 11)
    rng = random.Random(recipe.seed + 11)
    stream = _TrainStream(recipe.seed + 111)
    model = TinyLlamaForProcessRewardModel(cfg)
    model.model.load_state_dict(body.model.state_dict())
    head = [model.gate.weight, model.gate.bias, model.scale, model.bias]
    head_ids = {id(p) for p in head}
    trunk = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": head, "peak": recipe.checker_head_lr, "weight_decay": 0.0}]
    if recipe.checker_body_lr > 0:
        groups.append({"params": trunk, "peak": recipe.checker_body_lr, "weight_decay": 0.01})
    else:
        for p in trunk:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=recipe.checker_head_lr)
    t0, losses, accs = time.time(), [], []
    bar = tqdm(range(steps), desc=desc, mininterval=5)
    batches = _prm_batches(rollouts, recipe, rng, stream, dense=False)
    for step in bar:
        x, y = next(batches)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, g["peak"])
        with _autocast(recipe):
            logits = model(x).float()
        tags = y >= 0
        loss = F.cross_entropy(logits[tags], y[tags])
        _prm_update(model, opt, loss, logits[tags], y[tags], losses, accs, bar, step)
    stats = {**_prm_stats(steps, t0, losses, accs),
             "scale": F.softplus(model.scale).item(), "bias": model.bias.item()}  # fmt: skip
    return model, stats


def _prm_update(model, opt, loss, tag_logits, tag_labels, losses, accs, bar, step) -> None:
    """One clipped optimizer step on ``loss``; records the loss and step-label accuracy."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    accs.append((tag_logits.argmax(-1) == tag_labels).float().mean().item())
    losses.append(loss.item())
    if step % 20 == 0:
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")


def _prm_stats(steps: int, t0: float, losses: list[float], accs: list[float]) -> dict:
    return {
        "steps": steps,
        "seconds": round(time.time() - t0, 1),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "train_step_accuracy": sum(accs[-50:]) / len(accs[-50:]),
    }


def train_prm(
    cfg: TinyLlamaConfig,
    init_from: torch.nn.Module | None,
    rollouts: list[tuple[ArithmeticProblem, list[str]]],
    steps: int,
    recipe: TrainRecipe,
    desc: str,
) -> tuple[TinyLlamaForTokenClassification, dict]:
    torch.manual_seed(recipe.seed + 7)
    rng = random.Random(recipe.seed + 7)
    stream = _TrainStream(recipe.seed + 99)
    model = TinyLlamaForTokenClassification(cfg)
    if init_from is not None:  # the policy's embedding, first layers and final norm
        src = init_from.model
        model.model.embed_tokens.load_state_dict(src.embed_tokens.state_dict())
        model.model.norm.load_state_dict(src.norm.state_dict())
        for dst, layer in zip(model.model.layers, src.layers):
            dst.load_state_dict(layer.state_dict())
    # The copied body learns slower than the fresh layers and head: at full rate the first
    # updates, driven by a random head, would wash out what it knows before the head learns.
    copied: set[int] = set()
    if init_from is not None:
        kept = [model.model.embed_tokens, *model.model.layers[: len(init_from.model.layers)]]
        copied = {id(p) for module in kept for p in module.parameters()}
    body = [p for p in model.parameters() if id(p) in copied]
    fresh = [p for p in model.parameters() if id(p) not in copied]
    groups = [{"params": fresh, "scale": 1.0}]
    if body:
        groups.append({"params": body, "scale": recipe.prm_body_lr_scale})
    opt = torch.optim.AdamW(groups, lr=recipe.lr / 2, weight_decay=0.01)
    t0, losses, accs = time.time(), [], []
    bar = tqdm(range(steps), desc=desc, mininterval=5)
    batches = _prm_batches(rollouts, recipe, rng, stream, dense=recipe.prm_dense)
    for step in bar:
        x, y = next(batches)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, recipe.lr / 2) * g["scale"]
        with _autocast(recipe):
            logits = model(x).float()
        tags = (y >= 0) & (y < DENSE)
        loss = F.cross_entropy(logits[tags], y[tags])
        dense = y >= DENSE
        if dense.any():
            loss = loss + 0.5 * F.cross_entropy(logits[dense], y[dense] - DENSE)
        _prm_update(model, opt, loss, logits[tags], y[tags], losses, accs, bar, step)
    return model, _prm_stats(steps, t0, losses, accs)


# Stages of the parallel rebuild (``--jobs``): what each needs first, and its measured
# minutes on one thread beside another job (bf16; docs/model_card.md), which orders the queue.
STAGE_DEPS: dict[str, tuple[str, ...]] = {
    "large": (),
    "calculator": (),
    "small": (),
    "rollouts": ("small",),
    "prm-body": ("calculator",),
    "prm": ("prm-body", "rollouts"),
    "weak_prm": ("rollouts",),
    "revise": ("small", "calculator"),
}
STAGE_MINUTES = {"large": 39.4, "calculator": 23.9, "small": 24.5, "rollouts": 5.0,
                 "prm-body": 11.6, "prm": 0.8, "weak_prm": 1.0, "revise": 30.0}  # fmt: skip
USER_STAGES = [
    "small",
    "large",
    "prm",
    "weak_prm",
    "calculator",
    "continue-small",
    "continue-large",
    "revise",
]
WORKER_STAGES = ["rollouts", "prm-body"]  # intermediate stages, run by --jobs workers only


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR, help="where the models go")
    ap.add_argument("--only", choices=USER_STAGES + WORKER_STAGES, nargs="*")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="stages run at once, each a one-thread process (0: one per core; 1: one "
        "process, in order, with --threads). Small models train faster as two one-thread "
        "jobs than as one two-thread job.",
    )
    ap.add_argument("--work-dir", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stats-out", type=Path, default=None, help=argparse.SUPPRESS)
    for f, v in asdict(TrainRecipe()).items():
        kind = (lambda x: x.lower() in ("1", "true", "yes")) if isinstance(v, bool) else type(v)
        ap.add_argument(f"--{f.replace('_', '-')}", type=kind, default=v)
    args = ap.parse_args(argv)
    recipe = TrainRecipe(**{f: getattr(args, f) for f in asdict(TrainRecipe())})
    if recipe.prm_head not in PRM_HEADS:  # before hours of training, not after
        ap.error(f"--prm-head must be one of {list(PRM_HEADS)}, got {recipe.prm_head!r}")
    if recipe.precision not in PRECISIONS:
        ap.error(f"--precision must be one of {list(PRECISIONS)}, got {recipe.precision!r}")
    if recipe.prm_init not in ("calculator", *SIZES):
        ap.error(
            f"--prm-init must be 'calculator' or one of {list(SIZES)}, got {recipe.prm_init!r}"
        )
    only = set(args.only or ["small", "large", "prm", "weak_prm", "calculator", "revise"])
    if only & set(WORKER_STAGES) and args.work_dir is None:
        ap.error(f"--only {sorted(only & set(WORKER_STAGES))} are --jobs worker stages")
    jobs = args.jobs if args.jobs > 0 else (os.cpu_count() or 1)
    parallel = [
        s for s in STAGE_DEPS if s in only or (s in WORKER_STAGES and _needs(s, only, recipe))
    ]
    if jobs > 1 and args.work_dir is None and len(parallel) > 1 and not only - set(STAGE_DEPS):
        _run_stages(parallel, jobs, args.out, recipe)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    _train_in_process(only, args.out, recipe, args.work_dir, args.stats_out)


def _needs(stage: str, only: set[str], recipe: TrainRecipe) -> bool:
    """Whether a worker stage feeds one of the stages asked for."""
    if stage == "rollouts":
        return bool(only & {"prm", "weak_prm"})
    return "prm" in only and recipe.prm_init == "calculator"  # prm-body


def _recipe_flags(recipe: TrainRecipe) -> list[str]:
    flags: list[str] = []
    for f, v in asdict(recipe).items():
        flags += [f"--{f.replace('_', '-')}", str(v)]
    return flags


def _recipe_record(recipe: TrainRecipe) -> dict:
    return {**asdict(recipe), "precision_used": resolve_precision(recipe.precision)}


def _run_stages(stages: list[str], jobs: int, out: Path, recipe: TrainRecipe) -> None:
    """Run ``stages`` as one-thread worker processes, ``jobs`` at a time, each as soon as
    the stages it needs are done, longest remaining chain first. Intermediate results
    (rollouts, the PRM body) pass through a scratch folder; each worker's log is kept
    there and its tail printed if it fails."""
    import shutil
    import subprocess
    import sys
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tts-train-"))
    todo = set(stages)

    def deps(stage: str) -> tuple[str, ...]:
        if stage == "prm" and recipe.prm_init != "calculator":  # a policy's body
            return (*STAGE_DEPS[stage], recipe.prm_init)
        return STAGE_DEPS[stage]

    def chain(stage: str) -> float:  # minutes from this stage's start to the last stage's end
        after = [chain(s) for s in todo if stage in deps(s)]
        return STAGE_MINUTES[stage] + max(after, default=0.0)

    stats_path = out / "training_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    stats["recipe"] = _recipe_record(recipe)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    done: set[str] = set()
    t_all = time.time()
    bar = tqdm(total=len(stages), desc=f"train ({jobs} jobs)", unit="stage")
    bar.write(f"training {', '.join(stages)}; each worker's progress: tail -f {work}/*.log")
    shown = ""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        while todo - done:
            ready = [s for s in todo - done - set(running)
                     if all(d in done or d not in todo for d in deps(s))]  # fmt: skip
            for stage in sorted(ready, key=chain, reverse=True)[: jobs - len(running)]:
                cmd = [sys.executable, "-m", "research.train", "--out", str(out.resolve()),
                       "--only", stage, "--threads", "1", "--jobs", "1", "--work-dir",
                       str(work), "--stats-out", str(work / f"{stage}.stats.json"),
                       *_recipe_flags(recipe)]  # fmt: skip
                with (work / f"{stage}.log").open("w") as log:  # the child keeps its copy
                    proc = subprocess.Popen(
                        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
                    )
                running[stage] = (proc, time.time())
            label = "running: " + ", ".join(sorted(running))
            if label != shown:  # refresh on change only: workers run for many minutes
                bar.set_postfix_str(shown := label)
            time.sleep(1.0)
            for stage, (proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[stage]
                if proc.returncode != 0:
                    tail = (work / f"{stage}.log").read_text()[-3000:]
                    raise SystemExit(
                        f"training stage {stage!r} failed (exit {proc.returncode}); its log "
                        f"is {work / f'{stage}.log'}:\n{tail}"
                    )
                stats.update(json.loads((work / f"{stage}.stats.json").read_text()))
                stats_path.write_text(json.dumps(stats, indent=2))
                done.add(stage)
                bar.update(1)
                bar.write(f"{stage}: done in {(time.time() - t0) / 60:.1f} min")
    finally:
        for proc, _ in running.values():
            proc.kill()
        bar.close()
    stats["total_seconds_last_run"] = round(time.time() - t_all, 1)
    stats["jobs_last_run"] = jobs
    stats_path.write_text(json.dumps(stats, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(stats, indent=2))


def _rollout_problems(recipe: TrainRecipe) -> list[ArithmeticProblem]:
    train_stream = _TrainStream(recipe.seed + 1234)
    return [train_stream.sample() for _ in range(recipe.rollout_problems)]


def _train_in_process(
    only: set[str], out: Path, recipe: TrainRecipe, work: Path | None, stats_out: Path | None
) -> None:
    """The stages in ``only``, in order, in this process. With ``work`` (a ``--jobs``
    worker), rollouts and the PRM body are read from / written to that folder; with
    ``stats_out``, this run's records go there for the parent to merge."""
    stats_path = out / "training_stats.json"
    if stats_out is not None:
        stats: dict = {}
    else:
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        stats["recipe"] = _recipe_record(recipe)
    t_all = time.time()

    def record(name: str, s: dict) -> None:
        stats[name] = s
        out.mkdir(parents=True, exist_ok=True)
        (stats_out or stats_path).write_text(json.dumps(stats, indent=2))

    for size in ("small", "large"):
        if size in only:
            m, s = train_policy(SIZES[size], getattr(recipe, f"{size}_steps"), recipe, size)
            save_hf(m, SIZES[size], out / f"policy-{size}", "LlamaForCausalLM")
            record(f"policy-{size}", s)
    for size in ("small", "large"):
        if f"continue-{size}" in only:  # more steps on an existing checkpoint, lower LR
            path = out / f"policy-{size}"
            m, s = train_policy(
                SIZES[size], recipe.continue_steps, recipe, f"{size}+", init_from=path,
                lr=recipe.lr / 3,
            )  # fmt: skip
            save_hf(m, SIZES[size], path, "LlamaForCausalLM")
            prev = stats.get(f"policy-{size}", {})
            record(f"policy-{size}", {**prev, "continued": s})
    # The calculator first: the PRM's body starts from it (prm_init="calculator").
    if "calculator" in only:
        m, s = train_calculator(SIZES["small"], recipe)
        save_hf(m, SIZES["small"], out / "verifier-calc", "LlamaForCausalLM")
        record("verifier-calc", s)
    if "revise" in only:  # needs policy-small and verifier-calc in `out`
        examples, data = revision_examples(out / "policy-small", out / "verifier-calc", recipe)
        m, s = train_reviser(SIZES["small"], out / "policy-small", examples, recipe)
        save_hf(m, SIZES["small"], out / "policy-small-revise", "LlamaForCausalLM")
        record("policy-small-revise", {**s, "data": data})
    prm_extra = {"id2label": {0: "bad", 1: "good"}, "label2id": {"bad": 0, "good": 1},
                 "step_tag": STEP_TAG}  # fmt: skip
    rollouts: list[tuple[ArithmeticProblem, list[str]]] = []
    saved_rollouts = work / "rollouts.json" if work is not None else None
    if only & {"prm", "weak_prm"} and saved_rollouts is not None and saved_rollouts.exists():
        # a --jobs worker: the rollouts stage sampled them (same problems, same order)
        expanded = [p for p in _rollout_problems(recipe) for _ in range(recipe.rollout_samples)]
        rollouts = list(zip(expanded, json.loads(saved_rollouts.read_text()), strict=True))
    elif only & {"prm", "weak_prm", "rollouts"}:
        t0 = time.time()
        rollouts = sample_rollouts(
            out / "policy-small", _rollout_problems(recipe), recipe.rollout_samples,
            recipe.rollout_temperature, recipe.seed,
        )  # fmt: skip
        correct = sum(label_steps(p, s).final_correct for p, s in rollouts) / len(rollouts)
        record("rollouts", {"n": len(rollouts), "seconds": round(time.time() - t0, 1),
                            "final_correct": round(correct, 4)})  # fmt: skip
        if saved_rollouts is not None:
            saved_rollouts.write_text(json.dumps([steps for _, steps in rollouts]))
    saved_body = work / "prm-body.pt" if work is not None else None
    if "prm-body" in only and saved_body is not None:
        body = TinyLlamaForCausalLM(SIZES["small"])
        _load_fp16(body, out / "verifier-calc")
        record("prm-body", calculator_in_context(body, recipe))
        torch.save(body.state_dict(), saved_body)  # fp32: the same body as in one process
    if "prm" in only:
        if recipe.prm_init == "calculator":
            policy_cfg = SIZES["small"]
            body = TinyLlamaForCausalLM(policy_cfg)
            if saved_body is not None and saved_body.exists():
                body.load_state_dict(torch.load(saved_body))
            else:
                _load_fp16(body, out / "verifier-calc")
                record("prm-body", calculator_in_context(body, recipe))
        else:
            policy_cfg = SIZES[recipe.prm_init]
            body = TinyLlamaForCausalLM(policy_cfg)
            _load_fp16(body, out / f"policy-{recipe.prm_init}")
        if recipe.prm_head == "checker":
            m, s = train_checker_prm(policy_cfg, body, rollouts, recipe.checker_steps, recipe)
            save_hf(m, policy_cfg, out / "prm", "LlamaForProcessRewardModel",
                    model_type="llama_checker_prm", **prm_extra)  # fmt: skip
        else:
            # Fresh layers on the body's: at position i they could read the body's
            # next-token prediction made at i-1 and compare it with token i. They did
            # not learn to in our budget (model card items 4 and 9); the checker head
            # makes that comparison with the LM head instead.
            prm_cfg = replace(
                policy_cfg,
                num_hidden_layers=policy_cfg.num_hidden_layers + recipe.prm_extra_layers,
            )
            m, s = train_prm(prm_cfg, body, rollouts, recipe.prm_steps, recipe, "prm")
            save_hf(m, prm_cfg, out / "prm", "LlamaForTokenClassification", **prm_extra)
        record("prm", s)
    if "weak_prm" in only:
        m, s = train_prm(SIZES["small"], None, rollouts, recipe.weak_prm_steps, recipe, "weak_prm")
        save_hf(m, SIZES["small"], out / "prm-weak", "LlamaForTokenClassification", **prm_extra)
        record("prm-weak", s)
    if stats_out is None:
        stats["total_seconds_last_run"] = round(time.time() - t_all, 1)
        stats["jobs_last_run"] = 1
        stats_path.write_text(json.dumps(stats, indent=2))
        print(json.dumps(stats, indent=2))


def _load_fp16(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state)


if __name__ == "__main__":
    main()
