"""``python -m research.router_eval``: structure, not the claim.

The end-to-end test runs the ``--tiny`` mode on the embedded models (a few seconds): the
calibration sweep on validation problems, the probe's bins, ``calibrate``, then every fixed
run and the calibrated router on test problems; it checks the files and their shape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from langchain_tts.core.errors import ConfigError
from langchain_tts.eval.runner import read_records
from langchain_tts.routing import BudgetTable
from research.router_eval import (
    Option,
    cheapest_choice,
    check_claim,
    main,
    parse_runs,
    probe_answers,
    simulate,
)


def _row(name: str, acc: float, flops: float) -> dict:
    return {"name": name, "accuracy": acc, "flops": flops}


def test_claim_check():
    fixed = [_row("cot", 0.5, 1.0), _row("beam N=16", 0.70, 100.0), _row("bon N=4", 0.65, 10.0)]
    # within 1 point at <= 70% of the best fixed run's FLOPs
    c = check_claim(fixed, _row("router", 0.695, 50.0))
    assert c["holds"] and c["savings"] and not c["equal_compute"]
    assert c["best_fixed"]["name"] == "beam N=16" and c["flops_ratio"] == pytest.approx(0.5)
    assert c["compute_matched"]["name"] == "bon N=4" and c["beats_compute_matched"]
    # as accurate but not cheap enough; then more accurate at equal FLOPs
    assert not check_claim(fixed, _row("router", 0.70, 51.0))["holds"]
    c = check_claim(fixed, _row("router", 0.71, 100.0))
    assert c["holds"] and c["equal_compute"] and not c["savings"]
    # cheap but 2 points worse; cheaper than every fixed run: nothing compute-matched
    c = check_claim(fixed, _row("router", 0.68, 0.5))
    assert not c["holds"] and c["compute_matched"] is None
    assert c["beats_compute_matched"] is None and "does NOT hold" in c["text"]


def test_runs_are_validated():
    runs = parse_runs(["cot", "best_of_n", "beam_search"], [4, 16])
    assert runs == [("cot", 1), ("best_of_n", 4), ("best_of_n", 16), ("beam_search", 4),
                    ("beam_search", 16)]  # fmt: skip
    # name@N: that strategy at N only, beside the grid
    runs = parse_runs(["cot", "beam_search", "particle_filtering@8", "beam_search@8"], [4, 16])
    assert runs == [("cot", 1), ("beam_search", 4), ("beam_search", 16),
                    ("particle_filtering", 8), ("beam_search", 8)]  # fmt: skip
    with pytest.raises(ConfigError, match="after '@' must be an integer"):
        parse_runs(["mcts@many"], [4])
    with pytest.raises(ConfigError, match="unknown strategy 'beam'"):
        parse_runs(["beam"], [4])
    with pytest.raises(ConfigError, match="beam_search at budget 6"):
        parse_runs(["beam_search"], [6])  # 6 children cannot split into beams of 4
    with pytest.raises(SystemExit):
        main(["--budgets", "four"])
    with pytest.raises(SystemExit):
        main(["--strategies", "nope", "--tiny"])


def test_cheapest_choice_is_joint_over_the_bins():
    cheap, dear = ("cot", 1), ("beam_search", 16)
    options = {
        "easy": [Option(cheap, 48, 10.0), Option(dear, 50, 100.0)],
        "medium": [Option(cheap, 20, 10.0), Option(dear, 40, 100.0)],
    }
    # 88 correct of 90 possible: the easy bin gives up 2, the medium bin none
    choice = cheapest_choice(options, need=88)
    assert (choice["easy"].run, choice["medium"].run) == (cheap, dear)
    # everything needed: the dear run in both bins; unreachable: the most correct, cheapest
    assert {o.run for o in cheapest_choice(options, need=90).values()} == {dear}
    assert {o.run for o in cheapest_choice(options, need=95).values()} == {dear}
    # nothing needed: the cheapest everywhere; an option beaten on both counts never wins
    options["easy"].append(Option(("best_of_n", 4), 47, 20.0))
    assert {o.run for o in cheapest_choice(options, need=0).values()} == {cheap}
    with pytest.raises(ValueError, match="no option"):
        cheapest_choice({"hard": []}, need=0)


def test_probe_answers_as_the_router_does():
    sure = {"answer": "7", "p_solve": 0.9, "agreement": 1.0}
    assert probe_answers(sure, "easy")
    assert not probe_answers(sure, "medium")  # only easy questions
    assert not probe_answers({**sure, "agreement": 0.5}, "easy")  # the samples disagree
    assert not probe_answers({**sure, "p_solve": 0.7}, "easy")
    assert not probe_answers({**sure, "answer": None}, "easy")
    assert probe_answers({**sure, "agreement": None}, "easy")  # a verifier: no agreement
    assert probe_answers({**sure, "p_solve": 0.6}, "easy", threshold=0.5)


def test_simulate_counts_the_estimate_and_its_answers():
    def rec(pid: str, strategy: str, budget: int, correct: bool, policy: float) -> dict:
        return {"id": pid, "strategy": strategy, "budget": budget, "correct": correct,
                "flops": policy, "policy_flops": policy, "prm_flops": 0.0}  # fmt: skip

    runs = {
        ("cot", 1): [rec("a", "cot", 1, True, 1.0), rec("b", "cot", 1, False, 1.0)],
        ("beam_search", 4): [
            rec("a", "beam_search", 4, True, 8.0),
            rec("b", "beam_search", 4, True, 8.0),
        ],  # fmt: skip
    }
    probes = {"a": {"answer": "1", "p_solve": 0.9, "agreement": 1.0, "correct": True,
                    "flops": 2.0},
              "b": {"answer": "2", "p_solve": 0.2, "agreement": 0.5, "correct": False,
                    "flops": 2.0}}  # fmt: skip
    bins = {"a": "easy", "b": "hard"}
    table = BudgetTable(
        easy={"strategy": "cot"}, medium={"strategy": "cot"},
        hard={"strategy": "beam_search", "config": {"n": 4, "seed": 0}},
    )  # fmt: skip
    sim = simulate(table, runs, bins, probes, estimator=None)
    # a: the probe's own answer (2 FLOPs); b: the probe, then beam search N=4 (2 + 8)
    assert sim == {"n": 2, "accuracy": 1.0, "flops": 6.0, "probe_answered": 1}


def test_joint_table_serves_only_what_the_estimate_does_not_answer():
    from research.router_eval import _joint_table

    def rec(pid: str, strategy: str, budget: int, correct: bool, flops: float) -> dict:
        return {"id": pid, "strategy": strategy, "budget": budget, "correct": correct,
                "flops": flops, "dataset": "d", "policy": "p", "prm": "v"}  # fmt: skip

    # e1 is answered by the estimate (right); e2 is easy but unsure; m1, m2 are medium
    outcomes = {"e1": (True, True), "e2": (True, True), "m1": (False, True), "m2": (False, True)}
    records = [r for pid, (cot, beam) in outcomes.items()
               for r in (rec(pid, "cot", 1, cot, 1.0), rec(pid, "beam_search", 16, beam, 50.0))]  # fmt: skip
    bins = {"e1": "easy", "e2": "easy", "m1": "medium", "m2": "medium"}
    sure = {"answer": "1", "p_solve": 0.9, "agreement": None, "correct": True, "flops": 1.0}
    unsure = {**sure, "p_solve": 0.3}
    probes = {"e1": sure, "e2": unsure, "m1": unsure, "m2": unsure}
    table = _joint_table(records, bins, probes, tolerance=0.0, seed=7)
    # the best fixed run solves all 4: the router must too, so medium needs beam search;
    # the served easy problem is solved by CoT at a fiftieth of the FLOPs
    assert (table.easy.strategy, table.medium.strategy) == ("cot", "beam_search")
    assert table.medium.config == {"n": 16, "beam_width": 4, "seed": 7}
    assert "on 1 problems" in (table.easy.note or "")  # e1 is not the table's
    assert table.hard.strategy == "beam_search" and "bin medium" in (table.hard.note or "")
    # giving up half the accuracy: CoT everywhere
    cheap = _joint_table(records, bins, probes, tolerance=0.5, seed=None)
    assert {a.strategy for _, a in cheap.items()} == {"cot"}


@pytest.mark.slow
def test_tiny_router_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "router_eval"
    stale = tmp_path / "router_eval.test.jsonl"
    stale.write_text(json.dumps({"id": "stale"}) + "\n")  # a fresh run clears old records
    argv = ["--tiny", "--out", str(out), "--quiet", "--concurrency", "4"]
    result = main(argv)
    printed = capsys.readouterr().out

    # files: markdown + JSON (the same result), and the records
    md, js = tmp_path / "router_eval.md", tmp_path / "router_eval.json"
    assert md.read_text() in printed
    assert json.loads(js.read_text())["claim"]["holds"] == result["claim"]["holds"]
    text = md.read_text()
    for needle in ("| run | acc % | FLOPs/q", "| **router**", "**Claim**", "| bin |"):
        assert needle in text

    # calibration on validation problems only, the comparison on test problems only
    calib = read_records(tmp_path / "router_eval.calib.jsonl")
    test = read_records(stale)
    assert calib and all(r["dataset"] == "synthetic-validation" for r in calib)
    assert all(r["id"].startswith("validation-") for r in calib)
    assert test and all(r["id"].startswith("test-") for r in test)
    probes = read_records(tmp_path / "router_eval.probe.jsonl")
    assert len(probes) == result["config"]["n_calib"] == result["calibration"]["n"]
    assert sum(result["calibration"]["bins"].values()) == result["config"]["n_calib"]

    # the table's runs as the router runs them: from the steps the estimate verified
    assert result["config"]["reuse_prefix"] is True
    warm = read_records(tmp_path / "router_eval.prefix.jsonl")
    with_steps = {r["id"] for r in probes if r["prefix_steps"]}
    assert warm and {r["id"] for r in warm} <= with_steps
    assert all(r["start"] == "prefix" and r["strategy"] != "cot" for r in warm)

    # every fixed run of the sweep, and the router, with accuracy and FLOPs per question
    names = [r["name"] for r in result["test"]["fixed"]]
    assert names == ["cot", "majority_vote N=2", "best_of_n N=2", "beam_search N=2", "mcts N=2",
                     "particle_filtering N=2", "step_repair N=2"]  # fmt: skip
    n_test = result["config"]["n_test"]
    router = result["test"]["router"]
    for row in [*result["test"]["fixed"], router]:
        assert row["n"] == n_test and 0.0 <= row["accuracy"] <= 1.0
        assert row["flops"] > 0 and row["tokens"] > 0
    assert 0 < router["probe_flops"] <= router["flops"]  # the probe is counted
    assert sum(b["n"] for b in router["by_bin"].values()) == n_test
    assert sum(router["reasons"].values()) == n_test

    # the calibrated table is a valid router table made of the sweep's runs
    table = BudgetTable.from_dict(result["calibration"]["table"])
    swept = {s for s, _ in result["config"]["runs"]}
    assert {a.strategy for _, a in table.items()} <= swept
    for b, row in result["calibration"]["table_rows"].items():
        assert row["strategy"] == table[b].strategy and row["budget"] is not None
        if row["n"]:  # priced after the probe: never dearer than the run alone
            assert 0 <= row["router_flops"] <= row["flops"]

    # the joint rule: the router as simulated on validation, against the best fixed run
    sim, vbest = result["calibration"]["router"], result["calibration"]["best_fixed"]
    assert sim["n"] == result["config"]["n_calib"] and 0 <= sim["accuracy"] <= 1
    assert 0 < sim["flops"] and vbest["name"] in names
    assert result["config"]["rule"] == "joint" and "Joint rule" in text
    served = [r["problems"] - r["answered"] for r in result["calibration"]["table_rows"].values()]
    assert sum(served) == sim["n"] - sim["probe_answered"]

    # the bins' cut points are fitted on the validation CoT outcomes and travel in the table
    th = result["calibration"]["thresholds"]
    assert table.thresholds is not None and (th["easy"], th["hard"]) == (
        table.thresholds.easy,
        table.thresholds.hard,
    )
    assert f"fitted on {result['config']['n_calib']} questions" in th["note"]
    assert "P(greedy CoT solves)" in text

    # the claim check: both conditions and the numbers behind them
    claim = result["claim"]
    assert isinstance(claim["holds"], bool) and claim["holds"] == (
        claim["savings"] or claim["equal_compute"]
    )
    assert claim["best_fixed"]["name"] in names
    assert math.isclose(claim["flops_ratio"], router["flops"] / claim["best_fixed"]["flops"])

    # --resume solves nothing again and reports the same
    sizes = {p.name: len(read_records(p)) for p in tmp_path.glob("*.jsonl")}
    again = main([*argv, "--resume"])
    assert {p.name: len(read_records(p)) for p in tmp_path.glob("*.jsonl")} == sizes
    assert again["claim"]["text"] == result["claim"]["text"]
    assert again["test"]["fixed"] == result["test"]["fixed"]
    assert again["calibration"]["table"] == result["calibration"]["table"]

    # --noise widens the tolerance: per bin, a run no dearer than the plain rule's choice
    per_bin = main([*argv, "--resume", "--rule", "per-bin"])
    noisy = main([*argv, "--resume", "--rule", "per-bin", "--noise", "3"])
    assert noisy["config"]["noise"] == 3.0
    assert "paired standard errors" in md.read_text()
    plain_rows = per_bin["calibration"]["table_rows"]
    noisy_rows = noisy["calibration"]["table_rows"]
    for b, row in noisy_rows.items():
        if row["n"]:
            assert row["router_flops"] <= plain_rows[b]["router_flops"] + 1e-6

    # --no-reuse-prefix: the router's strategies start from the bare question
    cold = main([*argv, "--resume", "--no-reuse-prefix"])
    assert cold["config"]["reuse_prefix"] is False
    assert cold["test"]["router"]["label"] != result["test"]["router"]["label"]

    # --thresholds absolute reads the score as a probability (Liu et al.'s 0.5 / 0.1)
    absolute = main([*argv, "--resume", "--thresholds", "absolute"])
    assert absolute["calibration"]["table"]["thresholds"] is None
    assert (
        absolute["calibration"]["thresholds"]["easy"],
        absolute["calibration"]["thresholds"]["hard"],
    ) == (0.5, 0.1)
    with pytest.raises(SystemExit):
        main([*argv, "--strategies", "best_of_n"])  # fitted cut points need cot outcomes
    with pytest.raises(SystemExit):
        main([*argv, "--noise", "1"])  # the joint rule has no per-bin tolerance to widen
    with pytest.raises(ConfigError, match="holds records of seed"):
        main([*argv, "--resume", "--seed", "1"])  # seed 0's records would pass for seed 1
