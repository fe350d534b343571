"""``python -m research.headline``: its table and claims from records."""

from __future__ import annotations

import json

from research import headline as H


def _records(strategy, policy, budget, correct_by_level, flops):
    """Records of 8 levels x 2 problems; ``correct_by_level[lv]`` of the two are right."""
    out = []
    for lv in range(1, 9):
        for i in range(2):
            out.append({"strategy": strategy, "policy": policy, "budget": budget, "level": lv,
                        "id": f"{lv}-{i}", "correct": i < correct_by_level[lv - 1],
                        "flops": flops})  # fmt: skip
    return out


def test_rows_bins_and_claims(tmp_path):
    recs = [
        *_records("cot", "small", 1, [2, 2, 1, 1, 1, 1, 0, 0], 1e8),
        *_records("beam_search", "small", 16, [2, 2, 2, 2, 2, 1, 1, 1], 2e9),
        *_records("best_of_n", "small", 16, [2, 2, 2, 2, 1, 1, 1, 1], 2.2e9),
        *_records("mcts", "small", 16, [2, 2, 2, 2, 2, 1, 1, 1], 2.1e9),
        *_records("best_of_n", "small-revise", 16, [2, 2, 2, 1, 1, 1, 1, 0], 2e9),
        *_records("revision", "small-revise", 16, [2, 2, 2, 2, 1, 1, 1, 0], 1e9),
        *_records("hybrid", "small-revise", 16, [2, 2, 2, 2, 2, 2, 0, 0], 1.5e9),
    ]
    f = tmp_path / "seed0.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in recs))
    rows = H.rows_of([f])
    beam = next(r for r in rows if r["strategy"] == "beam_search")
    assert beam["all"] == 13 / 16 and beam["easy"] == 1.0 and beam["medium"] == 7 / 8
    assert beam["hard"] == 0.5 and beam["n"] == 16 and rows[0]["strategy"] == "cot"
    got = {c: ok for c, ok, _ in H.claims(rows)}
    assert got[
        "MCTS 16 simulations within 1 point of beam search N=16, at no more than 1.1x its FLOPs"
    ]
    assert got["MCTS 16 simulations ahead of best-of-16 at no more FLOPs"]
    assert got["revision N=16 beats best-of-N (same policy) at no more FLOPs"]
    assert got["hybrid N=16 beats both best-of-N and revision on medium questions"]
    assert all(ok for c, ok in got.items() if c.endswith("beats its policy's greedy CoT"))
    assert "best_of_n N=16 (small-revise) beats its policy's greedy CoT" not in got  # no CoT
    text = H.markdown(rows, "python -m research.headline --n 16")
    assert "| mcts | small | 16 | 1 | 81.2 | 100.0 | 87.5 | 50.0 | 2.1e+09 |" in text


def test_the_doc_table_is_written_between_its_markers(tmp_path):
    recs = [
        *_records("cot", "small", 1, [2, 2, 1, 1, 1, 1, 0, 0], 1e8),
        *_records("beam_search", "small", 4, [2, 2, 2, 1, 1, 1, 1, 0], 5e8),
        *_records("beam_search", "small", 16, [2, 2, 2, 2, 2, 1, 1, 1], 2e9),
        *_records("mcts", "small", 24, [2, 2, 2, 2, 2, 2, 1, 1], 2.1e9),
    ]
    f = tmp_path / "seed0.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in recs))
    rows = H.rows_of([f])
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{H.DOC_BEGIN}\nold table\n{H.DOC_END}\nafter\n")
    H.write_doc_table(page, rows)
    text = page.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "| `cot` (N=1) | small | 50.0 | | 1.00e+08 |" in text
    assert "| `beam_search` | small | 62.5 | 81.2 | 2.00e+09 |" in text
    assert "| `mcts`, 24 simulations (the default) | small | | 87.5 | 2.10e+09 |" in text
    H.write_doc_table(page, rows)  # idempotent
    assert page.read_text() == text
