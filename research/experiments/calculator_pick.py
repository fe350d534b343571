# ruff: noqa  -- an experiment script, kept as run (see README.md here)
"""Pick among 16 samples by a calculator LM: each equation step's result digits, min log-prob."""

import json
import re
import sys

import torch

torch.set_num_threads(1)
from langchain_tts.eval.synthetic import STEP_DELIMITER
from research.diagnose import _policy_model
from langchain_tts.models.tiny_llama import TinyLlamaConfig, TinyLlamaForCausalLM
from langchain_tts.models.tokenizer import build_tokenizer

tok = build_tokenizer()
vocab = tok.get_vocab()
cfg = TinyLlamaConfig(
    vocab_size=101,
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=512,
)
calc = TinyLlamaForCausalLM(cfg)
calc.load_state_dict(torch.load(sys.argv[1]))
calc.eval()
EQ = re.compile(r"^\s*(-?\d+\s*[+\-*/]\s*-?\d+\s*=)\s*(-?\d+)\s*$")
samples = json.load(open(sys.argv[2]))


@torch.no_grad()
def calc_score(steps):
    eqs = [EQ.match(s) for s in steps]
    eqs = [m for m in eqs if m]
    if not eqs:
        return -1e9
    worst = 0.0
    ids, spans = [], []
    for m in eqs:
        q, c = m.group(1).replace(" ", ""), m.group(2)
        qi, ci = [vocab[ch] for ch in q], [vocab[ch] for ch in c + "\n\n"]
        spans.append((len(ids) + len(qi), len(ids) + len(qi) + len(ci)))
        ids += qi + ci
    lp = calc(torch.tensor([ids]))[0].log_softmax(-1)
    for a, b in spans:
        for i in range(a, b):
            worst = min(worst, lp[i - 1, ids[i]].item())
    return worst


tokL, large = _policy_model("large")


@torch.no_grad()
def large_score(q, steps):
    prompt = tokL(q + STEP_DELIMITER)["input_ids"]
    sol = tokL(STEP_DELIMITER.join(steps))["input_ids"]
    return (
        large(torch.tensor([prompt + sol]))
        .logits[0]
        .log_softmax(-1)[len(prompt) - 1 : -1]
        .gather(1, torch.tensor(sol)[:, None])
        .min()
        .item()
    )


hits = {"calc": 0, "large": 0, "calc+large": 0, "oracle": 0, "calc_vote": 0}
for prob in samples:
    ss = [s for s in prob["samples"]]
    ok = [s["correct"] for s in ss]
    c = [calc_score(s["steps"]) if s["steps"] else -1e9 for s in ss]
    l = [large_score(prob["question"], s["steps"]) if s["steps"] else -1e9 for s in ss]
    pick = lambda sc: ok[max(range(len(ss)), key=sc.__getitem__)]
    hits["calc"] += pick(c)
    hits["large"] += pick(l)
    hits["calc+large"] += pick([x + y for x, y in zip(c, l)])
    hits["oracle"] += any(ok)
print({k: round(100 * v / len(samples), 1) for k, v in hits.items()})
