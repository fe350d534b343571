"""``python -m research.router_budget``: its table, and a tiny run on the embedded models."""

from __future__ import annotations

import pytest

from research import router_budget as B


def _rec(cap: str, correct: bool, flops: float, reason: str, cut: bool = False) -> dict:
    return {"cap": cap, "id": f"q{flops}", "correct": correct, "flops": flops, "reason": reason,
            "budget_stopped": cut, "probe_fallback": cut}  # fmt: skip


def test_rows_count_what_the_router_did_under_each_cap():
    recs = [_rec("1e+09", True, 3e8, "reuse_probe"), _rec("1e+09", False, 9e8, "table", True),
            _rec("1e+09", False, 4e8, "budget_probe_only"), _rec("1e+09", True, 5e8, "table"),
            _rec("none", True, 3e8, "reuse_probe"), _rec("none", True, 2e9, "table")]  # fmt: skip
    rows = B.table(recs, [1e9, 2e9, None])  # no records for 2e9: no row
    assert [r["cap"] for r in rows] == ["1e+09", "none"]
    first = rows[0]
    assert first["accuracy"] == 0.5 and first["flops"] == pytest.approx(5.25e8)
    assert first["max_flops"] == 9e8 and (first["table"], first["budget_probe_only"]) == (2, 1)
    assert (first["cut"], first["fallback"], first["budget_downgrade"]) == (1, 1, 0)
    md = B.markdown(rows, "python -m research.router_budget", "test")
    assert "| 1e+09 | 50.0 | 5.25e+08 | 9e+08 | 1 | 2 | 0 | 1 | 1 | 1 |" in md
    assert "| none | 100.0 | 1.15e+09 | 2e+09 | 1 | 1 | 0 | 0 | 0 | 0 |" in md


def test_bad_caps_are_refused():
    with pytest.raises(SystemExit):
        B.main(["--caps", "0,1e9"])
    with pytest.raises(SystemExit):
        B.main(["--caps", "lots"])


@pytest.mark.slow
def test_tiny_run(tmp_path):
    out = tmp_path / "rb"
    args = ["--n", "8", "--caps", "1.2e9", "--out", str(out), "--quiet", "--concurrency", "4"]
    rows = B.main(args)
    assert [r["cap"] for r in rows] == ["1.2e+09", "none"]
    assert all(r["n"] == 8 for r in rows)
    assert rows[0]["max_flops"] <= 1.2e9  # the cap holds, estimate included
    assert (tmp_path / "rb.md").read_text().startswith("# The embedded router under")
    assert B.main([*args, "--resume"]) == rows  # every record kept: nothing runs again
