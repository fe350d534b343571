# ruff: noqa  -- an experiment script, kept as run (see README.md here)
import json
import sys
from collections import Counter

import torch

torch.set_num_threads(1)
from langchain_tts.eval.synthetic import _STEP_RE, STEP_DELIMITER, label_steps, make_split
from research.diagnose import _policy_model, _split

torch.manual_seed(0)
tok, model = _policy_model()
N = int(sys.argv[1]) if len(sys.argv) > 1 else 80
out = []
kinds = Counter()
for p in make_split("test", N):
    enc = tok([p.question + STEP_DELIMITER] * 16, return_tensors="pt")
    start = enc["input_ids"].shape[1]
    with torch.no_grad():
        seqs = model.generate(
            **enc,
            do_sample=True,
            temperature=0.7,
            top_p=0.95,
            max_new_tokens=110,
            pad_token_id=tok.pad_token_id,
        )
    texts = tok.batch_decode(seqs[:, start:], skip_special_tokens=True)
    samples = []
    vals = p.values
    for t in texts:
        steps = _split(t)
        lab = label_steps(p, steps)
        kind = "ok" if lab.final_correct else None
        if kind is None:
            for i, s in enumerate(steps):
                if lab.labels[i]:
                    continue
                m = _STEP_RE.match(s)
                if not m:
                    kind = "format/box"
                    break
                a, op, k, c = int(m[1]), m[2], int(m[3]), int(m[4])
                if i >= len(p.ops):
                    kind = "extra"
                    break
                g = p.ops[i]
                if a != vals[i]:
                    kind = "copy"
                elif op != g.op or k != g.operand:
                    kind = "wrong op"
                else:
                    kind = f"arith {op}"
                break
            else:
                kind = "short"
        kinds[kind] += 1
        samples.append({"steps": steps, "correct": lab.final_correct, "kind": kind})
    out.append(
        {"question": p.question, "answer": p.answer, "level": p.difficulty, "samples": samples}
    )
json.dump(out, open(f"samples{N}.json", "w"))
print(kinds)
