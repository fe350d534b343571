"""The ``tts`` command: solve a question, run evaluation sweeps, rebuild the embedded models."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded default never needs the hub

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

DEMO_QUESTION = "Start with 14. Add 9. Multiply by 3. Subtract 17. Divide by 2. Add 18."


def _load(policy: str, prm: str):
    from langchain_tts.models import load_default_policy, load_default_prm

    return load_default_policy(policy), (load_default_prm(prm) if prm != "none" else None)


@app.command()
def solve(
    question: Annotated[str, typer.Argument(help="the problem text")] = DEMO_QUESTION,
    strategy: Annotated[str, typer.Option(help="cot, best_of_n, beam_search, ...")] = "beam_search",
    budget: Annotated[int, typer.Option(help="samples N per question")] = 16,
    policy: Annotated[str, typer.Option(help="embedded policy size: small | large")] = "small",
    prm: Annotated[str, typer.Option(help="embedded PRM: strong | weak | none")] = "strong",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    compare_cot: Annotated[bool, typer.Option(help="also run greedy CoT for comparison")] = False,
) -> None:
    """Solve one question with a test-time-compute strategy on the embedded default models."""
    from langchain_tts import create_tts_graph
    from langchain_tts.eval.runner import budget_config

    t0 = time.perf_counter()
    pol, verifier = _load(policy, prm)
    load_s = time.perf_counter() - t0
    graph = create_tts_graph(pol, verifier, strategy, budget_config(strategy, budget))
    t1 = time.perf_counter()
    if not as_json:
        typer.echo(f"Question: {question}\nStrategy: {strategy} (N={budget}), policy={policy}, "
                   f"prm={prm}\n")  # fmt: skip
    out: dict = {}
    # One run: "updates" to show progress per search step, "values" for the final output.
    for mode, chunk in graph.stream({"question": question}, stream_mode=["updates", "values"]):
        if mode == "values":
            out = chunk
        elif "step" in chunk and not as_json:
            u = chunk["step"]
            best = max((t.step_scores[-1] for t in u["active"] or u["finished"]), default=0.0)
            typer.echo(f"  step {u['step']:>2}: {len(u['active'])} beams active, "
                       f"{len(u['finished'])} finished, best step score {best:.3f}")  # fmt: skip
    wall = time.perf_counter() - t1
    usage = out["usage"].summary()
    if as_json:
        cands = [c.model_dump() for c in out["candidates"][:5]]
        payload = {"question": question, "answer": out["answer"], "solution": out["solution"],
                   "strategy": strategy, "budget": budget, "usage": usage,
                   "stop_reason": out["stop_reason"], "top_candidates": cands,
                   "wall_seconds": wall, "load_seconds": load_s}  # fmt: skip
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(f"\nChosen solution:\n{_indent(out['solution'])}\n\nAnswer: {out['answer']}")
    typer.echo(
        f"Compute: {usage['policy_calls']} policy calls, {usage['prm_calls']} PRM calls, "
        f"{usage['tokens']:,} tokens ({usage['policy_generated_tokens']:,} generated), "
        f"{usage['flops']:.3g} FLOPs, {wall:.2f} s (models loaded in {load_s:.2f} s)"
    )
    if compare_cot:
        cot = create_tts_graph(pol, None, "cot").invoke({"question": question})
        typer.echo(f"Greedy CoT answer for comparison: {cot['answer']} "
                   f"({cot['usage'].flops:.3g} FLOPs)")  # fmt: skip
    from langchain_tts.eval.synthetic import parse_question

    p = parse_question(question)
    if p is not None and p.ops:
        typer.echo(f"Gold answer (the synthetic task is exact): {p.answer}")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


@app.command("eval")
def eval_cmd(
    dataset: Annotated[str, typer.Option(help="synthetic | math500 | aime24")] = "synthetic",
    strategy: Annotated[list[str], typer.Option(help="repeatable")] = ["beam_search"],  # noqa: B006
    budgets: Annotated[str, typer.Option(help="comma-separated N values")] = "4,16",
    policy: Annotated[str, typer.Option()] = "small",
    prm: Annotated[str, typer.Option()] = "strong",
    n_problems: Annotated[int, typer.Option("--n", help="problems (0: all)")] = 0,
    out: Annotated[Path, typer.Option(help="JSONL records, appended; reruns resume")] = Path(
        "eval_results.jsonl"
    ),
    concurrency: Annotated[int, typer.Option()] = 1,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
) -> None:
    """Run strategies x budgets over a dataset and print the accuracy/compute table."""
    from langchain_tts import create_tts_graph
    from langchain_tts.eval.datasets import load_dataset
    from langchain_tts.eval.runner import budget_config, markdown_table, read_records, summarize
    from langchain_tts.eval.runner import run_eval as _run

    problems = load_dataset(dataset, n=n_problems or None)
    pol, verifier = _load(policy, prm)
    for strat in strategy:
        for b in [1] if strat == "cot" else [int(x) for x in budgets.split(",")]:
            cfg = {**budget_config(strat, b), "seed": seed}
            graph = create_tts_graph(pol, verifier, strat, cfg)
            meta = {"dataset": dataset, "policy": policy, "prm": prm, "strategy": strat,
                    "budget": b}  # fmt: skip
            asyncio.run(_run(graph, problems, meta=meta, out=out, concurrency=concurrency))
    rows = [r for r in summarize(read_records(out)) if r["dataset"] == dataset]
    typer.echo(markdown_table(rows))


@app.command()
def report(
    records: Annotated[list[Path], typer.Argument(help="JSONL files from `tts eval`")],
    levels: Annotated[bool, typer.Option(help="per-level columns")] = True,
) -> None:
    """Print the accuracy/compute table of existing eval records."""
    from langchain_tts.eval.runner import markdown_table, read_records, summarize

    recs = [r for p in records for r in read_records(p)]
    typer.echo(markdown_table(summarize(recs), levels=levels))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    strategy: Annotated[
        list[str], typer.Option(help="repeatable; default: every strategy the models allow")
    ] = [],  # noqa: B006
    policy: Annotated[str, typer.Option(help="embedded policy size: small | large")] = "small",
    prm: Annotated[str, typer.Option(help="embedded PRM: strong | weak | none")] = "strong",
    budget: Annotated[int, typer.Option(help="default samples N per question")] = 16,
    checkpoint_db: Annotated[
        Path | None, typer.Option(help="SQLite file for checkpoints (threads resume)")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the strategies over HTTP (LangServe): POST /tts/<strategy>/invoke, /stream, ..."""
    import uvicorn

    from langchain_tts.serve import create_app

    pol, verifier = _load(policy, prm)
    api = create_app(
        pol,
        verifier,
        strategy or None,
        budget=budget,
        checkpointer=checkpoint_db,
        title=f"langchain-tts (policy={policy}, prm={prm})",
    )
    routes = ", ".join(f"/tts/{s}" for s in sorted(api.state.graphs))
    typer.echo(f"Serving {routes} on http://{host}:{port} (health: /health)", err=True)
    uvicorn.run(api, host=host, port=port, log_level=log_level)


@app.command("train-default", context_settings={"allow_extra_args": True})
def train_default(ctx: typer.Context) -> None:
    """Rebuild the embedded models from scratch (flags: see --help of the trainer)."""
    from langchain_tts.models.train import main as train_main

    train_main(list(ctx.args))


def main() -> None:
    app(prog_name="tts")


if __name__ == "__main__":
    sys.exit(main())
