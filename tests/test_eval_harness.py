"""The evaluation harness: `tts eval --backend openai` on MATH-500 against a fake
OpenAI-compatible server, resumability, reports (scaling laws, crossovers, plots) and the
hand-off of eval records to ``routing.calibrate``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from test_openai_policy import FakeServer  # the stdlib OpenAI-compatible fake (tests/)
from typer.testing import CliRunner

from langchain_tts import ConfigError, create_tts_graph
from langchain_tts.cli import app
from langchain_tts.eval.datasets import Problem, load_dataset
from langchain_tts.eval.report import analyze, write_report
from langchain_tts.eval.runner import (
    calibration_records,
    load_records,
    read_records,
    run_eval,
)
from langchain_tts.routing import BudgetTable, calibrate
from langchain_tts.testing import FakePolicy

WRONG = "-999"
MATH = load_dataset("math500", n=4)


def math_handler(path: str, body: dict) -> tuple:
    """Answer /v1/completions like a math model and /pooling like a Qwen-style PRM.

    Completions: a solution is "Let me work through problem i." then a boxed answer, the
    gold one for choice k of problem i when (i + k) is even, else a wrong one; whole
    solutions when no stop string is sent (best-of-N, CoT), one step per request otherwise
    (beam search). Greedy CoT (k = 0) thus solves problems 0 and 2. The PRM scores a step
    holding the wrong answer 0.1, every other step 0.9 (one row per <extra_0> tag).
    """
    if path == "/v1/completions":
        n, choices, generated = body["n"], [], 0
        for i, prompt in enumerate(body["prompt"]):
            idx, p = next((k, p) for k, p in enumerate(MATH) if prompt.startswith(p.problem))
            depth = prompt[len(p.problem) + 2 :].count("\n\n")
            for j in range(n):
                k = i * n + j
                first = f"Let me work through problem {idx}."
                answer = p.answer if (idx + k) % 2 == 0 else WRONG
                last = f"So the final answer is $\\boxed{{{answer}}}$."
                if "stop" not in body:
                    text, stop = f"{first}\n\n{last}", None
                elif depth == 0:
                    text, stop = first, "\n\n"
                else:
                    text, stop = last, None
                generated += len(text) // 4 + 1
                choices.append(
                    {"index": k, "text": text, "finish_reason": "stop", "stop_reason": stop}
                )
        prompt_tokens = sum(len(p) // 4 + 1 for p in body["prompt"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": generated}
        return 200, {"object": "text_completion", "choices": choices, "usage": usage}
    if path == "/pooling":
        data = []
        for i, text in enumerate(body["input"]):
            steps = text.split("<extra_0>")[:-1]
            rows = [[0.9, 0.1] if WRONG in s else [0.1, 0.9] for s in steps]
            data.append({"index": i, "object": "pooling", "data": rows})
        tokens = sum(len(t) // 4 + 1 for t in body["input"])
        return 200, {"data": data, "usage": {"prompt_tokens": tokens}}
    return 404, {"detail": f"no route {path}"}


@pytest.fixture
def math_server():
    server = FakeServer(math_handler)
    yield server
    server.close()


def eval_args(server: FakeServer, out) -> list[str]:
    return [
        "eval", "--dataset", "math500", "--n", "4", "--backend", "openai",
        "--base-url", server.url, "--model", "fake-math", "--policy-params", "1.5e9",
        "--prm-url", server.url, "--prm-model", "fake-prm", "--prm-params", "1.5e9",
        "--chat-template", "none", "--timeout", "10",
        "--strategy", "cot", "--strategy", "best_of_n", "--strategy", "beam_search",
        "--budgets", "2,4", "--out", str(out),
    ]  # fmt: skip


def test_tts_eval_openai_backend_on_math500_resumes_reports_and_calibrates(math_server, tmp_path):
    out = tmp_path / "math500.jsonl"
    runner = CliRunner()
    res = runner.invoke(app, eval_args(math_server, out))
    assert res.exit_code == 0, res.output + repr(res.exception)

    recs = read_records(out)
    assert len(recs) == 4 * 5  # 4 problems x (cot + 2 strategies x 2 budgets)
    assert {(r["policy"], r["prm"], r["dataset"]) for r in recs} == {
        ("fake-math", "fake-prm", "math500")
    }
    acc = {
        (s, b): sum(r["correct"] for r in recs if (r["strategy"], r["budget"]) == (s, b)) / 4
        for s, b in {(r["strategy"], r["budget"]) for r in recs}
    }
    assert acc == {("cot", 1): 0.5, ("best_of_n", 2): 1.0, ("best_of_n", 4): 1.0,
                   ("beam_search", 2): 1.0, ("beam_search", 4): 1.0}  # fmt: skip
    by_id = {r["id"]: r for r in recs if r["strategy"] == "cot"}
    assert by_id["0"]["pred"] == MATH[0].answer and by_id["0"]["correct"]  # LaTeX graded
    assert by_id["1"]["pred"] == WRONG and not by_id["1"]["correct"]
    assert all(r["level"] == p.level for p in MATH for r in recs if r["id"] == p.id)
    assert all(r["flops"] > 0 and r["generated_tokens"] > 0 for r in recs)
    assert all(r["prm_flops"] > 0 for r in recs if r["strategy"] != "cot")
    assert "| fake-math | fake-prm | best_of_n | 2 | 100.0 |" in res.output

    # Rerunning the same command resumes: nothing left to solve, no request sent.
    sent = len(math_server.requests)
    res2 = runner.invoke(app, eval_args(math_server, out))
    assert res2.exit_code == 0, res2.output
    assert len(math_server.requests) == sent and len(read_records(out)) == 20

    # `tts report --out` writes the markdown report, its JSON and the plots.
    rep_dir = tmp_path / "report"
    res3 = runner.invoke(app, ["report", str(out), "--out", str(rep_dir), "--title", "MATH-500"])
    assert res3.exit_code == 0, res3.output + repr(res3.exception)
    md = (rep_dir / "report.md").read_text()
    assert md.startswith("# MATH-500") and "## math500" in md
    assert "| L2 | L3 | L5 |" in md  # MATH levels of the 4 problems are the bins
    assert "### Scaling law" in md and "| fake-math | fake-prm | best_of_n | 2,4 |" in md
    for stem in ("math500_accuracy_vs_flops", "math500_accuracy_by_difficulty"):
        assert (rep_dir / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (rep_dir / f"{stem}.svg").read_text()
        assert f"({stem}.png)" in md
    assert json.loads((rep_dir / "report.json").read_text())["datasets"][0]["dataset"] == "math500"

    # The runner's file feeds routing.calibrate as is (one policy/PRM pair) ...
    table = calibrate(read_records(out))
    assert isinstance(table, BudgetTable) and "fake-math" in table.source
    # every problem is solved by >= 50% of the runs -> easy; the cheapest 100% run is N=2
    assert table.easy.strategy in ("best_of_n", "beam_search")
    assert table.easy.config["n"] == 2
    assert table.medium == BudgetTable().medium and table.hard == BudgetTable().hard
    # ... and through the adapter, which is the identity here.
    assert calibrate(calibration_records(load_records(out))) == table


def test_tts_report_keeps_printing_the_table_without_out(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in law_records()))
    res = CliRunner().invoke(app, ["report", str(path)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("| policy | prm | strategy | N | acc % | L1 | L2 |")
    res = CliRunner().invoke(app, ["report", str(path), "--no-levels"])
    assert "L1" not in res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing.jsonl")])
    assert res.exit_code != 0 and "no such results file" in res.output


# -- reports on constructed data ------------------------------------------------------------
P_SMALL, P_LARGE = 1e9, 1e10
N = 20  # problems


def rec(policy: str, prm: str, strategy: str, budget: int, i: int, correct: bool,
        tokens: float, params: float) -> dict:  # fmt: skip
    flops = 2.0 * params * tokens
    return {"dataset": "synthetic", "policy": policy, "prm": prm, "strategy": strategy,
            "budget": budget, "id": f"p{i}", "level": 1 + i % 2, "gold": "1",
            "pred": "1" if correct else "2", "correct": correct, "tokens": tokens,
            "policy_tokens": tokens, "generated_tokens": tokens, "prm_tokens": 0,
            "flops": flops, "policy_flops": flops, "prm_flops": 0.0, "seconds": 0.01,
            "stop_reason": "sampled"}  # fmt: skip


def law_records() -> list[dict]:
    """small + best_of_n at T = e^2, e^4, e^6, e^8 thinking tokens with accuracy exactly
    Q = 10 + 5 ln T (20, 30, 40, 50 %); large CoT 35 % at 100 tokens; small CoT 15 %."""
    out = []
    for k, budget in enumerate((4, 16, 64, 256), start=1):
        t = math.exp(2 * k)
        solved = round(N * (10 + 5 * math.log(t)) / 100)
        out += [rec("small", "strong", "best_of_n", budget, i, i < solved, t, P_SMALL)
                for i in range(N)]  # fmt: skip
    out += [rec("large", "none", "cot", 1, i, i < 7, 100.0, P_LARGE) for i in range(N)]
    out += [rec("small", "none", "cot", 1, i, i < 3, 50.0, P_SMALL) for i in range(N)]
    return out


def test_scaling_law_fit_and_crossover_on_constructed_data():
    (rep,) = analyze(law_records())
    assert rep.difficulty == "level" and rep.bins == ["L1", "L2"]
    assert rep.bin_counts == {"L1": 10, "L2": 10}
    (law,) = rep.laws  # only best_of_n has several budgets
    assert (law.policy, law.prm, law.strategy, law.budgets) == ("small", "strong", "best_of_n",
                                                                 [4, 16, 64, 256])  # fmt: skip
    assert law.fit.gamma == pytest.approx(5.0, abs=1e-9)
    assert law.fit.q0 == pytest.approx(10.0, abs=1e-9)
    assert law.fit.r2 == pytest.approx(1.0, abs=1e-12)
    # against FLOPs = 2 P T: same gamma, intercept shifted by -gamma ln(2P)
    assert law.flops_fit.gamma == pytest.approx(5.0, abs=1e-9)
    assert law.flops_fit.q0 == pytest.approx(10 - 5 * math.log(2 * P_SMALL), abs=1e-6)

    # the larger model's CoT (35 %) is reached at T* = exp((35 - 10) / 5) = e^5 tokens
    (c,) = rep.crossovers  # small's own CoT is not a reference
    assert (c.reference_policy, c.reference_strategy, c.target) == ("large", "cot", 35.0)
    assert c.tokens == pytest.approx(math.exp(5), rel=1e-9)
    assert c.flops == pytest.approx(2 * P_SMALL * math.exp(5), rel=1e-9)
    assert c.flops_ratio == pytest.approx(math.exp(5) / (10 * 100), rel=1e-9)
    assert not c.extrapolated
    assert (c.measured_budget, c.measured_flops) == (64, pytest.approx(2 * P_SMALL * math.exp(6)))

    # per-bin accuracy: problems i < solved are correct, levels alternate 1, 2
    rows = {(r["policy"], r["strategy"], r["budget"]): r for r in rep.rows}
    bon4 = rows[("small", "best_of_n", 4)]  # 4 solved: p0..p3 -> 2 per level
    assert bon4["accuracy"] == 0.2 and bon4["by_bin"]["L1"]["accuracy"] == 0.2
    assert bon4["mean_generated_tokens"] == pytest.approx(math.exp(2))
    assert rows[("large", "cot", 1)]["mean_flops"] == 2 * P_LARGE * 100

    # the budget N as T: the same points, gamma per ln N
    (law_n,) = analyze(law_records(), law_x="budget")[0].laws
    assert law_n.x == [4.0, 16.0, 64.0, 256.0]
    assert law_n.fit.gamma == pytest.approx(10 / math.log(4), abs=1e-9)


def test_write_report_files_and_numbers(tmp_path):
    src = tmp_path / "results.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in law_records()))
    md_path = write_report([src], tmp_path / "out", "Constructed")
    assert md_path == tmp_path / "out" / "report.md"
    md = md_path.read_text()
    assert "| small | strong | best_of_n | 4,16,64,256 | 5.000 | 10.00 | 1.000 |" in md
    assert "| small | strong | best_of_n | large cot | 35.0 |" in md
    assert f"| {math.exp(5):.4g} |" in md  # T* = e^5
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(
        ["report.md", "report.json"]
        + [
            f"synthetic_{s}.{f}"
            for s in ("accuracy_vs_flops", "accuracy_by_difficulty")
            for f in ("png", "svg")
        ]
    )
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    (law,) = data["datasets"][0]["laws"]
    assert law["fit"]["gamma"] == pytest.approx(5.0)

    # no plots: only the markdown and the JSON
    write_report(src, tmp_path / "bare", plots=False)
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["report.json", "report.md"]


def test_pass1_bins_when_the_dataset_has_no_levels():
    recs = [{**r, "level": ""} for r in law_records()]
    (rep,) = analyze(recs)
    assert rep.difficulty == "pass1" and set(rep.bins) <= {"easy", "medium", "hard"}
    assert sum(rep.bin_counts.values()) == N


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    src = tmp_path / "results.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in law_records()))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match=r"langchain-tts\[eval\]"):
        write_report(src, tmp_path / "out")


# -- the calibrate hand-off ------------------------------------------------------------------
def test_calibration_records_adapts_mixed_sweeps():
    recs = law_records()  # two policies, and PRM-free CoT runs labelled prm="none"
    with pytest.raises(ConfigError, match="mix"):
        calibrate(recs)
    with pytest.raises(ValueError, match="policy"):
        calibration_records(recs)
    small = calibration_records(recs, policy="small")
    assert {(r["policy"], r["prm"]) for r in small} == {("small", "strong")}
    assert {r["strategy"] for r in small} == {"best_of_n", "cot"}  # CoT kept, relabelled
    table = calibrate(small, tolerance=0.0)
    assert "policy=small, prm=strong" in table.source


# -- resumability ------------------------------------------------------------------------------
async def test_a_sweep_killed_mid_write_resumes(tmp_path):
    probs = [Problem(id=str(i), problem=f"Q{i}", answer="7") for i in range(3)]
    graph = create_tts_graph(FakePolicy(lambda p, i: "so \\boxed{7}"), None, "cot")
    meta = {"dataset": "d", "policy": "p", "prm": "none", "strategy": "cot", "budget": 1}
    out = tmp_path / "r.jsonl"
    await run_eval(graph, probs[:2], meta=meta, out=out, progress=False)
    text = out.read_text()
    out.write_text(text[: len(text) - 20])  # the last record was cut off mid-write
    assert [r["id"] for r in read_records(out)] == ["0"]
    new = await run_eval(graph, probs, meta=meta, out=out, progress=False)
    assert sorted(r["id"] for r in new) == ["1", "2"]
    assert sorted(r["id"] for r in read_records(out)) == ["0", "1", "2"]
    assert all(json.loads(line) for line in out.read_text().splitlines())
    assert await run_eval(graph, probs, meta=meta, out=out, progress=False) == []


# -- docs/evaluation.md ------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluation_doc_python_blocks_run(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "evaluation.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"evaluation.md[block {i}]", "exec"), namespace)
    assert (tmp_path / "report" / "report.md").exists()
    assert (tmp_path / "report" / "synthetic_accuracy_vs_flops.png").exists()
    assert (tmp_path / "table.json").exists()
    out = capsys.readouterr().out
    assert "small+strong best_of_n gamma=" in out and "calibrated from" in out


@pytest.mark.slow
def test_each_strategy_runs_on_its_embedded_policy(tmp_path):
    """Without --policy, `tts eval` runs revision on the policy trained to revise and the
    searches on the small one (StrategySpec.embedded_policy), each model loaded once;
    --policy names one policy for all."""
    from langchain_tts.graph import embedded_policies
    from langchain_tts.models import load_default_policy

    small = load_default_policy("small")
    pols = embedded_policies(["beam_search", "revision", "hybrid"], loaded={"small": small})
    assert pols["beam_search"] is small and pols["revision"] is pols["hybrid"]
    assert pols["revision"].name == "embedded-policy-small-revise"
    out = tmp_path / "r.jsonl"
    args = ["eval", "--n", "8", "--budgets", "2", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--strategy", "revision", "--strategy", "best_of_n"])
    assert res.exit_code == 0, res.output
    policies = {(r["strategy"], r["policy"]) for r in read_records(out)}
    assert policies == {("revision", "small-revise"), ("best_of_n", "small")}
    with pytest.warns(UserWarning, match="not trained to revise"):  # asked for: it warns
        res = CliRunner().invoke(app, [*args, "--strategy", "hybrid", "--policy", "small"])
    assert res.exit_code == 0, res.output
    assert ("hybrid", "small") in {(r["strategy"], r["policy"]) for r in read_records(out)}


@pytest.mark.slow
def test_tts_solve_with_the_router_a_budget_and_clear_errors():
    from langchain_tts.cli import app

    q = "Start with 20. Add 35. Divide by 5. Multiply by 3. Subtract 24. Add 42. Subtract 29."
    res = CliRunner().invoke(app, ["solve", q, "--strategy", "router", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["strategy"] == "router" and out["difficulty"]["method"] == "verifier"
    assert out["route"]["node"] and isinstance(out["route"]["prefix_steps"], list)
    assert out["answer"] and out["usage"]["flops"] > 0
    res = CliRunner().invoke(app, ["solve", q, "--strategy", "router", "--max-flops", "1.2e9",
                                   "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert 0 < json.loads(res.output)["usage"]["flops"] <= 1.2e9
    flat = lambda out: " ".join(out.replace("│", " ").split())  # noqa: E731 (the error box)
    res = CliRunner().invoke(app, ["solve", q, "--strategy", "router", "--max-flops", "1e8"])
    assert res.exit_code == 2 and "below the difficulty probe's worst-case" in flat(res.output)
    res = CliRunner().invoke(app, ["solve", q, "--strategy", "beam_search", "--max-flops", "4e8"])
    assert res.exit_code == 0 and "The budget (--max-flops 4e+08) stopped the search" in res.output
    res = CliRunner().invoke(app, ["solve", q, "--max-flops", "-1"])
    assert res.exit_code == 2 and "max_flops must be a positive number" in flat(res.output)
    res = CliRunner().invoke(app, ["solve", q, "--strategy", "nope"])
    assert res.exit_code == 2 and "unknown strategy 'nope'" in res.output
    res = CliRunner().invoke(app, ["eval", "--strategy", "router", "--n", "8"])
    assert res.exit_code == 2 and "unknown strategy 'router'" in res.output


def test_cli_mistakes_are_one_line_errors_with_exit_code_2(tmp_path):
    """Each of these used to be a traceback, a machine-wide out-of-memory kill (a budget of
    10**9 samples, 10**9 synthetic problems), or a silently wrong result (an --out file of
    someone else's text cut to a record, two problems sharing an id)."""
    flat = lambda out: " ".join(out.replace("│", " ").split())  # noqa: E731 (the error box)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"problem": "Start with 1.", "answer": "1", "id": "a"}\n'
                   '{"problem": "Start with 2.", "answer": "2", "id": "a"}\n')  # fmt: skip
    level = tmp_path / "level.jsonl"
    level.write_text('{"problem": "Start with 1.", "answer": "1", "level": [1, 2]}\n')
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, no newline")
    not_records = tmp_path / "r.jsonl"
    not_records.write_text('{"a": 1}\n')
    bad_mid = tmp_path / "bad_mid.jsonl"  # a broken line that is not the last one
    bad_mid.write_text('{"id": "a"}\n{"id": \n{"id": "b"}\n')
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "caf\xe9"}\n')
    problems = tmp_path / "problems.jsonl"  # passed as --out by mistake: never appended to
    problems.write_text('{"problem": "Start with 1.", "answer": "1", "id": "a"}\n')
    out = str(tmp_path / "o.jsonl")
    cases = {
        ("solve", "Start with 7.", "--budget", "1000000000"): "--budget",
        ("solve", "Start with 7.", "--budget", "0"): "--budget: 0",
        ("solve", "   "): "question is empty",
        ("solve", "Start with 7.", "--policy", "huge"): "unknown policy size 'huge'",
        ("eval", "--strategy", "cot", "--n", "1000000000"): "n must be between 0 and 100000",
        ("eval", "--strategy", "cot", "--budgets", "abc"): "--budgets",
        (
            "eval",
            "--budgets",
            "2",
            "--strategy",
            "best_of_n",
            "--config",
            '{"n": 0}',
            "--out",
            out,
        ): "greater than or equal to 1",  # fmt: skip
        ("eval", "--strategy", "cot", "--data", str(dup), "--out", out): "id 'a' again",
        ("eval", "--strategy", "cot", "--data", str(level), "--out", out): "'level' must be",
        ("eval", "--strategy", "cot", "--data", str(tmp_path / "none.jsonl"), "--out", out): (
            "cannot read the problems file"
        ),
        ("eval", "--strategy", "cot", "--n", "1", "--out", str(notes)): "not a file of eval",
        ("eval", "--strategy", "cot", "--concurrency", "0"): "--concurrency",
        ("eval", "--strategy", "cot", "--n", "1", "--out", str(bad_mid)): "not a JSON record",
        ("eval", "--strategy", "cot", "--n", "1", "--out", str(latin)): "not UTF-8",
        ("eval", "--strategy", "cot", "--data", str(problems), "--out", str(problems)): (
            "is not a file of eval records"
        ),
        ("report", str(not_records)): "record 1 is no eval record",
        ("report", str(tmp_path / "o.jsonl")): "no eval records",
    }
    for args, text in cases.items():
        if args[0] == "report":
            Path(args[1]).touch()
        res = CliRunner().invoke(app, list(args))
        assert res.exit_code == 2, (args, res.output)
        assert text in flat(res.output), (args, res.output)
        assert "Traceback" not in res.output, args
    assert notes.read_text() == "my notes, no newline"  # untouched
    assert problems.read_text().count("\n") == 1


def test_serve_mistakes_are_one_line_errors_before_it_serves(tmp_path):
    """Each of these was a traceback (an unknown strategy or log level, an API keys file
    that is not UTF-8, a SQLite file that cannot be created: at startup, after "Serving"),
    or was taken (``--budget 0`` served three routes; ``--port 99999`` listened on 34463)."""
    flat = lambda out: " ".join(out.replace("│", " ").split())  # noqa: E731 (the error box)
    keys = tmp_path / "keys.txt"
    keys.write_bytes(b"k\xe9y ns\n")
    cases = {
        ("--strategy", "bogus"): "unknown strategy 'bogus'",
        ("--log-level", "bogus"): "'bogus' is not one of",
        ("--api-keys", str(keys)): "--api-keys",
        ("--checkpoint-db", str(tmp_path / "no" / "x.db")): "its folder does not exist",
        ("--checkpoint-db", str(tmp_path)): "is a directory",
        ("--budget", "0"): "--budget",
        ("--port", "99999"): "--port",
    }
    for args, text in cases.items():
        res = CliRunner().invoke(app, ["serve", *args])
        assert res.exit_code == 2, (args, res.output)
        assert text in flat(res.output), (args, res.output)
        assert "Traceback" not in res.output, args


def test_a_problem_too_long_for_the_models_is_recorded_and_the_sweep_goes_on(tmp_path):
    """A problem past the models' context used to end ``tts eval``, and its resume failed
    on it again: the problems after it were never run. It is a wrong answer at no cost,
    with the reason, and a rerun has nothing left to do."""
    data = tmp_path / "long.jsonl"
    rows = [("a", "Start with 3. Add 4.", "7"), ("b", "Start with 3. " + "Add 1. " * 200, "203"),
            ("c", "Start with 5. Add 6.", "11")]  # fmt: skip
    data.write_text("".join(json.dumps({"id": i, "problem": q, "answer": a}) + "\n"
                            for i, q, a in rows))  # fmt: skip
    out = tmp_path / "out.jsonl"
    args = ["eval", "--data", str(data), "--strategy", "cot", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = {r["id"]: r for r in read_records(out)}
    assert sorted(recs) == ["a", "b", "c"]
    assert recs["b"]["pred"] is None and not recs["b"]["correct"] and recs["b"]["flops"] == 0
    assert "too long" in recs["b"]["error"] and "error" not in recs["a"]
    assert CliRunner().invoke(app, args).exit_code == 0 and len(read_records(out)) == 3


def test_the_table_and_the_report_count_a_record_read_twice_once():
    """Overlapping shards, or a file passed with its folder: the table counted the problem
    twice (50% where the report said 67%)."""
    from langchain_tts.eval.report import run_rows
    from langchain_tts.eval.runner import summarize

    base = {"dataset": "d", "policy": "p", "prm": "v", "strategy": "s", "budget": 4,
            "level": 1, "gold": "1", "tokens": 10, "flops": 1.0, "seconds": 0.1}  # fmt: skip
    recs = [{**base, "id": i, "pred": "1" if ok else "2", "correct": ok}
            for i, ok in (("a", True), ("b", True), ("c", False))]  # fmt: skip
    twice = recs + recs[2:]
    assert summarize(twice)[0]["accuracy"] == run_rows(twice)[0]["accuracy"] == 2 / 3
    assert summarize(twice)[0]["n"] == 3
