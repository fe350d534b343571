"""``python -m research.vote_temperature``: its table, and a tiny run on the embedded policy."""

from __future__ import annotations

import pytest

from research import vote_temperature as V


def test_rows_are_against_cot_and_the_verdict_names_the_winners():
    recs = [{"strategy": "cot", "correct": c, "flops": 1.0} for c in (1, 1, 0, 0)]
    recs += [{"strategy": "majority_vote t=0.5", "correct": c, "flops": 4.0} for c in (1, 1, 1, 0)]
    recs += [{"strategy": "majority_vote t=1", "correct": c, "flops": 4.0} for c in (1, 0, 0, 0)]
    rows = V.table(recs, [0.5, 1.0])
    assert [r["run"] for r in rows] == ["cot", "majority_vote t=0.5", "majority_vote t=1"]
    assert rows[1]["vs_cot"] == pytest.approx(25.0) and rows[2]["vs_cot"] == pytest.approx(-25.0)
    md = V.markdown(rows, "python -m research.vote_temperature", 16)
    assert "| majority_vote t=0.5 | 75.0 | +25.0 | 4 |" in md
    assert md.rstrip().endswith("CoT: majority_vote t=0.5.")


def test_bad_temperatures_are_refused():
    with pytest.raises(SystemExit):
        V.main(["--temperatures", "0,0.5"])


@pytest.mark.slow
def test_tiny_run(tmp_path):
    out = tmp_path / "vt"
    rows = V.main(["--n", "8", "--votes", "2", "--temperatures", "0.7", "--out", str(out),
                   "--quiet", "--concurrency", "4"])  # fmt: skip
    assert [r["run"] for r in rows] == ["cot", "majority_vote t=0.7"]
    assert all(r["n"] == 8 and r["flops"] > 0 for r in rows)
    assert (tmp_path / "vt.md").read_text().startswith("# Majority vote")
    again = V.main(["--n", "8", "--votes", "2", "--temperatures", "0.7", "--out", str(out),
                    "--quiet", "--resume"])  # fmt: skip
    assert again == rows
