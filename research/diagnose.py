"""Why search does or does not pay on the embedded models: ``python -m research.diagnose``.

Best-of-N can only beat greedy CoT when (a) the policy's samples contain correct solutions
that greedy misses (pass@N well above CoT) and (b) the verifier ranks those samples above
the wrong ones. This command measures both, and the verifier's ability to tell a gold
solution from the same solution with one result nudged, for:

- the policy's own likelihood (min token log-prob of the solution) in the policy's format
  (steps joined by ``"\\n\\n"``) and in the PRM's format (steps joined by ``<extra_0>``);
  the second shows whether a PRM initialised from the policy starts from a working body;
- the shipped PRMs (strong and weak), through :class:`~langchain_tts.prms.qwen.QwenPRM`;
- at selection time also the *large* policy's likelihood: a second model that knows other
  things than the one that sampled.

Then, on held-out test problems with ``N`` samples each (temperature 0.7, top-p 0.95, as the
strategies sample): greedy accuracy, pass@N (an oracle picks), majority vote, selection by
policy likelihood and selection by each PRM (last-step score, the strategies' default).
The model card quotes its output.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from langchain_tts.core.answers import extract_answer  # noqa: E402
from langchain_tts.core.types import Trajectory  # noqa: E402
from langchain_tts.eval.synthetic import (  # noqa: E402
    STEP_DELIMITER,
    corrupt_steps,
    label_steps,
    make_split,
)

__all__ = ["Diagnosis", "diagnose", "main"]


@dataclass
class Diagnosis:
    pairs: int
    # fraction of (gold, corrupted) pairs where the gold solution scores strictly higher
    pairwise: dict[str, float] = field(default_factory=dict)
    problems: int = 0
    samples: int = 0
    # accuracy in % of each way to pick one of the N samples (and greedy, pass@N)
    accuracy: dict[str, float] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [
            f"Verifier: gold beats its corrupted copy ({self.pairs} pairs, levels 3-8)",
            "",
            "| verifier | gold > corrupted |",
            "|---|---|",
        ]
        lines += [f"| {k} | {100 * v:.0f}% |" for k, v in self.pairwise.items()]
        if self.problems:
            lines += [
                "",
                f"Selection among N={self.samples} samples ({self.problems} test problems)",
                "",
                "| pick | accuracy % |",
                "|---|---|",
            ]
            lines += [f"| {k} | {v:.1f} |" for k, v in self.accuracy.items()]
        return "\n".join(lines)


def _policy_model(size: str = "small"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langchain_tts.models import default_model_path

    path = str(default_model_path(f"policy-{size}"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tok, model


@torch.no_grad()
def _min_logprob(tok, model, question: str, steps: list[str], joiner: str) -> float:
    """Min log-prob of the solution tokens, steps joined by ``joiner``."""
    prompt = tok(question + STEP_DELIMITER)["input_ids"]
    sol = tok(joiner.join(steps))["input_ids"]
    ids = torch.tensor([prompt + sol])
    logp = model(ids).logits[0].log_softmax(-1)[len(prompt) - 1 : -1]
    return logp.gather(1, torch.tensor(sol)[:, None]).min().item()


def diagnose(pairs: int = 100, problems: int = 80, samples: int = 16, seed: int = 0) -> Diagnosis:
    from langchain_tts.models import load_default_prm
    from langchain_tts.models.tokenizer import STEP_TAG

    torch.manual_seed(seed)
    tok, model = _policy_model()
    _, large = _policy_model("large")  # a second opinion: same tokenizer, other knowledge
    prms = {kind: load_default_prm(kind) for kind in ("strong", "weak")}
    out = Diagnosis(pairs=pairs, problems=problems, samples=samples)

    hard = [p for p in make_split("validation", 8 * pairs) if p.difficulty >= 3][:pairs]
    duo = [(p, p.gold_steps, corrupt_steps(p, random.Random(i))) for i, p in enumerate(hard)]
    for name, joiner in (
        ("policy likelihood", STEP_DELIMITER),
        ("policy likelihood, PRM format", STEP_TAG),
    ):
        wins = sum(
            _min_logprob(tok, model, p.question, g, joiner)
            > _min_logprob(tok, model, p.question, c, joiner)
            for p, g, c in duo
        )
        out.pairwise[name] = wins / len(duo)
    for kind, prm in prms.items():
        trajs = [Trajectory(question=p.question, steps=s) for p, g, c in duo for s in (g, c)]
        scores = prm.score(trajs).scores
        wins = sum(scores[2 * i][-1] > scores[2 * i + 1][-1] for i in range(len(duo)))
        out.pairwise[f"PRM {kind} (last step)"] = wins / len(duo)

    if problems:
        hits: Counter[str] = Counter()
        for p in make_split("test", problems):
            enc = tok([p.question + STEP_DELIMITER], return_tensors="pt")
            start = enc["input_ids"].shape[1]
            greedy = model.generate(
                **enc, do_sample=False, max_new_tokens=110, pad_token_id=tok.pad_token_id
            )
            text = tok.decode(greedy[0, start:], skip_special_tokens=True)
            hits["greedy CoT"] += label_steps(p, _split(text)).final_correct
            enc = tok([p.question + STEP_DELIMITER] * samples, return_tensors="pt")
            seqs = model.generate(
                **enc, do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=110,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
            texts = tok.batch_decode(seqs[:, start:], skip_special_tokens=True)
            steps = [_split(t) for t in texts]
            ok = [label_steps(p, s).final_correct for s in steps]
            hits[f"pass@{samples} (oracle)"] += any(ok)
            answers = [extract_answer(t) for t in texts]
            counts = Counter(a for a in answers if a is not None)
            if counts:
                hits[f"majority@{samples}"] += ok[answers.index(counts.most_common(1)[0][0])]
            lik = [
                _min_logprob(tok, model, p.question, s, STEP_DELIMITER) if s else -1e9
                for s in steps
            ]
            hits[f"policy likelihood@{samples}"] += ok[max(range(samples), key=lik.__getitem__)]
            lik_l = [
                _min_logprob(tok, large, p.question, s, STEP_DELIMITER) if s else -1e9
                for s in steps
            ]
            hits[f"large policy likelihood@{samples}"] += ok[
                max(range(samples), key=lik_l.__getitem__)
            ]
            trajs = [Trajectory(question=p.question, steps=s or [""]) for s in steps]
            for kind, prm in prms.items():
                last = [s[-1] for s in prm.score(trajs).scores]
                hits[f"PRM {kind}@{samples}"] += ok[max(range(samples), key=last.__getitem__)]
        out.accuracy = {k: 100 * v / problems for k, v in hits.items()}
    return out


def _split(text: str) -> list[str]:
    return [s for s in text.split(STEP_DELIMITER) if s.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100, help="gold/corrupted pairs")
    ap.add_argument("--n", type=int, default=80, help="test problems for the selection table")
    ap.add_argument("--samples", type=int, default=16, help="N samples per problem")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    d = diagnose(args.pairs, args.n, args.samples, args.seed)
    print(json.dumps(asdict(d), indent=2) if args.json else d.markdown())


if __name__ == "__main__":
    main()
