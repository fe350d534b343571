"""The model-card sweep (``python -m research.model_card``): its claims on constructed rows,
and short end-to-end runs on the embedded models."""

from __future__ import annotations

import pytest

from langchain_tts.eval.runner import read_records


def test_model_card_claims_read_the_chosen_verifier():
    from research.model_card import claims

    def row(policy, prm, strategy, n, acc):
        by_level = {"1": 0.9, "8": 0.2} if strategy == "cot" and policy == "small" else {}
        return {"policy": policy, "prm": prm, "strategy": strategy, "budget": n,
                "accuracy": acc, "by_level": by_level}  # fmt: skip

    rows = [row("small", "none", "cot", 1, 0.60), row("large", "none", "cot", 1, 0.50)]
    rows += [row("small", "likelihood", "best_of_n", n, a)
             for n, a in ((1, 0.55), (4, 0.70), (16, 0.76), (64, 0.77))]  # fmt: skip
    rows += [row("small", "likelihood", "beam_search", n, a)
             for n, a in ((4, 0.66), (16, 0.70), (64, 0.69))]  # fmt: skip
    rows += [row("small", "strong", "best_of_n", 16, 0.58)]
    rows += [row("small", "weak", s, 16, 0.57) for s in ("best_of_n", "beam_search")]
    got = {name: (ok, text) for name, ok, text in claims(rows, "likelihood")}
    assert got["best_of_n N=16 >= CoT + 15 points"] == (True, "76.0% vs 60.0% (+16.0)")
    assert got["beam_search N=16 >= CoT + 15 points"][0] is False
    assert got["best_of_n accuracy rises with N"][0] is True
    assert got["beam_search accuracy rises with N"][0] is True  # 70 -> 69: within noise
    assert got["small + beam search beats large CoT"][0] is True
    assert got["likelihood verifier beats weak PRM (best_of_n N=16)"][0] is True
    assert got["small CoT below 100% and falling with difficulty"][0] is True
    # the default reads the shipped strong PRM's rows, which say otherwise
    strong = {name: ok for name, ok, _ in claims(rows)}
    assert strong["best_of_n N=16 >= CoT + 15 points"] is False
    # exactly 15 points holds, whichever way the floats round (260/320 vs 212/320)
    for cot, best in ((212 / 320, 260 / 320), (0.6625, 0.8125), (0.1, 0.25)):
        edge = [row("small", "none", "cot", 1, cot), row("small", "strong", "best_of_n", 16, best)]
        ok = {name: ok for name, ok, _ in claims(edge)}
        assert ok["best_of_n N=16 >= CoT + 15 points"] is True
    edge = [
        row("small", "none", "cot", 1, 212 / 320),
        row("small", "strong", "best_of_n", 16, 0.81),
    ]
    assert {n: ok for n, ok, _ in claims(edge)}["best_of_n N=16 >= CoT + 15 points"] is False


@pytest.mark.slow
def test_model_card_with_the_likelihood_verifier_end_to_end(tmp_path):
    from research.model_card import main as model_card

    out = tmp_path / "card.jsonl"
    # runs 0 and 4: small CoT and best-of-4, which --prm likelihood verifies with the large policy
    model_card(["--n", "2", "--runs", "0,4", "--prm", "likelihood", "--out", str(out)])
    recs = read_records(out)
    assert {(r["strategy"], r["prm"]) for r in recs} == {
        ("cot", "none"),
        ("best_of_n", "likelihood"),
    }
    assert len(recs) == 4 and all(r["flops"] > 0 for r in recs)
    md = (tmp_path / "card.md").read_text()
    assert "--prm likelihood" in md and "likelihood verifier beats weak PRM" in md


@pytest.mark.slow
def test_model_card_seed_is_another_recorded_draw(tmp_path):
    from research.model_card import main as model_card

    out = tmp_path / "seed.jsonl"
    # run 4: best-of-4 with the strong PRM; --seed draws other samples and says so
    model_card(["--n", "2", "--runs", "4", "--seed", "1000", "--out", str(out)])
    recs = read_records(out)
    assert len(recs) == 2 and {r["seed"] for r in recs} == {1000}
    assert "--seed 1000" in (tmp_path / "seed.md").read_text()
