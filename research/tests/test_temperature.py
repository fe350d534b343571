"""``python -m research.temperature``: its table, and tiny runs on the embedded models."""

from __future__ import annotations

import pytest

from research import temperature as V


def test_rows_are_against_cot_and_the_verdict_names_the_winners():
    recs = [{"strategy": "cot", "correct": c, "flops": 1.0} for c in (1, 1, 0, 0)]
    recs += [{"strategy": "majority_vote t=0.5", "correct": c, "flops": 4.0} for c in (1, 1, 1, 0)]
    recs += [{"strategy": "majority_vote t=1", "correct": c, "flops": 4.0} for c in (1, 0, 0, 0)]
    rows = V.table(recs, "majority_vote", [0.5, 1.0])
    assert [r["run"] for r in rows] == ["cot", "majority_vote t=0.5", "majority_vote t=1"]
    assert rows[1]["vs_cot"] == pytest.approx(25.0) and rows[2]["vs_cot"] == pytest.approx(-25.0)
    md = V.markdown(rows, "python -m research.temperature", "majority_vote", 16)
    assert "| majority_vote t=0.5 | 75.0 | +25.0 | 4 |" in md
    assert "beats CoT: majority_vote t=0.5." in md
    assert md.rstrip().endswith("The most accurate: majority_vote t=0.5.")


def test_bad_temperatures_are_refused():
    with pytest.raises(SystemExit):
        V.main(["--temperatures", "0,0.5"])
    with pytest.raises(SystemExit):
        V.main(["--strategy", "mcts"])


@pytest.mark.slow
def test_tiny_run(tmp_path):
    out = tmp_path / "vt"
    rows = V.main(["--n", "8", "--samples", "2", "--temperatures", "0.7", "--out", str(out),
                   "--quiet", "--concurrency", "4"])  # fmt: skip
    assert [r["run"] for r in rows] == ["cot", "majority_vote t=0.7"]
    assert all(r["n"] == 8 and r["flops"] > 0 for r in rows)
    assert (tmp_path / "vt.md").read_text().startswith("# Majority vote")
    again = V.main(["--n", "8", "--samples", "2", "--temperatures", "0.7", "--out", str(out),
                    "--quiet", "--resume"])  # fmt: skip
    assert again == rows


@pytest.mark.slow
def test_tiny_step_repair_run(tmp_path):
    out = tmp_path / "rt"
    rows = V.main(["--strategy", "step_repair", "--n", "8", "--samples", "2",
                   "--temperatures", "1.3", "--out", str(out), "--quiet"])  # fmt: skip
    assert [r["run"] for r in rows] == ["cot", "step_repair t=1.3"]
    assert rows[1]["flops"] > rows[0]["flops"] > 0  # a draft, and the verifier on top
    md = (tmp_path / "rt.md").read_text()
    assert md.startswith("# Step repair") and "the calculator verifier, N=2" in md
