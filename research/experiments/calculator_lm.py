# ruff: noqa  -- an experiment script, kept as run (see README.md here)
"""Calculator LM: can a tiny Llama learn the task's +/- much better than the policy, fast?"""

import json
import random
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
from langchain_tts.eval.synthetic import _STEP_RE
from langchain_tts.models.tiny_llama import TinyLlamaConfig, TinyLlamaForCausalLM
from langchain_tts.models.tokenizer import build_tokenizer
from research.train import _lr_at

EVERY = int(sys.argv[6]) if len(sys.argv) > 6 else 250
STEPS = int(sys.argv[1])
H = int(sys.argv[2])
L = int(sys.argv[3])
LR = float(sys.argv[4])
TAG = sys.argv[5]
tok = build_tokenizer()
vocab = tok.get_vocab()
enc = lambda s: [vocab[c] for c in s]
cfg = TinyLlamaConfig(
    vocab_size=101,
    hidden_size=H,
    num_hidden_layers=L,
    num_attention_heads=H // 64,
    intermediate_size=4 * H,
)
torch.manual_seed(0)
model = TinyLlamaForCausalLM(cfg)
print("params", sum(p.numel() for p in model.parameters()))
rng = random.Random(0)


# The same generator train.py's calculator stage uses (this script became that stage).
from research.train import calculator_equation as equation


def batch(rng, bs=64, per=8):
    xs, ys = [], []
    for _ in range(bs):
        ids, lab = [], []
        for _ in range(per):
            q, c = equation(rng)
            qi, ci = enc(q), enc(c + "\n\n")
            ids += qi + ci
            lab += [-100] * len(qi) + ci
        xs.append(ids[:-1])
        ys.append(lab[1:])
    w = max(map(len, xs))
    x = torch.tensor([s + [0] * (w - len(s)) for s in xs])
    y = torch.tensor([s + [-100] * (w - len(s)) for s in ys])
    return x, y


# policy's own first wrong steps (pairs: correct vs policy's wrong result)
samples = json.load(open("samples80.json"))
pairs = []
for prob in samples:
    from langchain_tts.eval.synthetic import parse_question

    p = parse_question(prob["question"])
    vals = p.values
    for s in prob["samples"]:
        if s["kind"].startswith("arith"):
            for i, st in enumerate(s["steps"]):
                m = _STEP_RE.match(st)
                if m and i < len(p.ops) and int(m[1]) == vals[i] and int(m[4]) != vals[i + 1]:
                    pairs.append((f"{m[1]}{m[2]}{m[3]}=", m[4], str(vals[i + 1])))
                    break
pairs = sorted(set(pairs))
print("distinct policy error equations", len(pairs))


@torch.no_grad()
def logp(q, c):
    ids = enc(q + c + "\n\n")
    lp = model(torch.tensor([ids]))[0].log_softmax(-1)
    return min(lp[i - 1, ids[i]].item() for i in range(len(q), len(ids)))


@torch.no_grad()
def evaluate(n=400):
    er = random.Random(123)
    ok = 0
    for _ in range(n):
        q, c = equation(er)
        ids = enc(q)
        for _ in range(5):
            nxt = model(torch.tensor([ids]))[0, -1].argmax().item()
            ids.append(nxt)
            if nxt == vocab["\n"]:
                break
        out = "".join(tok.convert_ids_to_tokens(ids[len(enc(q)) :])).split("\n")[0]
        ok += out == c
    win = sum(logp(q, good) > logp(q, bad) for q, bad, good in pairs)
    return ok / n, win / len(pairs)


opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, betas=(0.9, 0.98))
t0 = time.time()
losses = []
for step in range(STEPS):
    x, y = batch(rng)
    for g in opt.param_groups:
        g["lr"] = _lr_at(step, STEPS, LR)
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
    if step < 3 or (step + 1) % EVERY == 0:
        print(step, time.time() - t0, flush=True)
    if (step + 1) % EVERY == 0:
        acc, win = evaluate()
        print(
            f"step {step + 1} {time.time() - t0:.0f}s loss {sum(losses[-250:]) / 250:.4f} exact {acc:.3f} policy-error-pairs {win:.3f}",
            flush=True,
        )
torch.save(model.state_dict(), f"calc_{TAG}.pt")
