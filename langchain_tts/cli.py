"""The ``tts`` command: solve a question, run evaluation sweeps, rebuild the embedded models."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded default never needs the hub

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# A source checkout: the package's parent folder, where research/ (the trainer) lives.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_QUESTION = "Start with 14. Add 9. Multiply by 3. Subtract 17. Divide by 2. Add 18."


#: the most samples per question a command runs (``tts serve``'s limit on ``n`` is 256)
MAX_BUDGET = 1024


def _user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """A command whose user mistakes end in one ``Error: ...`` line and exit code 2, not a
    traceback: the package's typed errors (a bad knob, an over-long question, a server that
    failed) and files it cannot read or write."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from langchain_tts.core.errors import TTSError

        try:
            command(*args, **kwargs)
        except (TTSError, OSError, UnicodeDecodeError) as e:
            typer.echo(f"Error: {_first_lines(e)}", err=True)
            raise typer.Exit(2) from None

    return run


def _first_lines(e: BaseException) -> str:
    """An error's message without pydantic's "further information" links."""
    lines = [x for x in str(e).splitlines() if "errors.pydantic.dev" not in x]
    return "\n".join(lines) or type(e).__name__


def _budgets(text: str) -> list[int]:
    """``--budgets``: comma-separated sample counts, each 1..MAX_BUDGET."""
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or not all(1 <= b <= MAX_BUDGET for b in out):
        raise typer.BadParameter(
            f"{text!r}: comma-separated sample counts from 1 to {MAX_BUDGET}, e.g. 4,16",
            param_hint="--budgets",
        )
    return out


def _load_prm(prm: str):
    from langchain_tts.models import load_default_prm

    return load_default_prm(prm) if prm != "none" else None  # type: ignore[arg-type]


def _load(policy: str, prm: str):
    from langchain_tts.models import load_default_policy

    return load_default_policy(policy), _load_prm(prm)  # type: ignore[arg-type]


#: ``--policy`` / ``--prm`` of the commands that run the embedded models
EmbeddedPolicy = Annotated[
    str | None,
    typer.Option(
        help="embedded policy: small | large | small-revise (default: each strategy's, "
        "small-revise for revision and hybrid, else small)"
    ),
]
EmbeddedVerifier = Annotated[
    str, typer.Option(help="embedded verifier: calculator | strong | weak | likelihood | none")
]


@app.command()
@_user_errors
def solve(
    question: Annotated[str, typer.Argument(help="the problem text")] = DEMO_QUESTION,
    strategy: Annotated[
        str, typer.Option(help="cot, best_of_n, beam_search, ..., or router")
    ] = "beam_search",
    budget: Annotated[int, typer.Option(help="samples N per question (not the router's)")] = 16,
    policy: EmbeddedPolicy = None,
    prm: EmbeddedVerifier = "calculator",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    compare_cot: Annotated[bool, typer.Option(help="also run greedy CoT for comparison")] = False,
    max_flops: Annotated[
        float | None,
        typer.Option(help="compute budget of the run in FLOPs (the router's: estimate included)"),
    ] = None,
) -> None:
    """Solve one question with a test-time-compute strategy on the embedded default models."""
    from langchain_tts import create_tts_graph
    from langchain_tts.core.errors import ConfigError
    from langchain_tts.eval.runner import budget_config
    from langchain_tts.strategies import get_strategy

    if strategy == "router":
        _solve_with_router(question, policy or "small", prm, as_json, max_flops)
        return
    try:
        policy = policy or get_strategy(strategy).embedded_policy
    except ConfigError as e:
        raise typer.BadParameter(f"{e} (or 'router')", param_hint="--strategy") from None
    if not 1 <= budget <= MAX_BUDGET:
        raise typer.BadParameter(f"{budget}: from 1 to {MAX_BUDGET} samples", param_hint="--budget")
    t0 = time.perf_counter()
    pol, verifier = _load(policy, prm)
    load_s = time.perf_counter() - t0
    config = budget_config(strategy, budget) | (
        {} if max_flops is None else {"max_flops": max_flops}
    )
    try:
        graph = create_tts_graph(pol, verifier, strategy, config)
    except ConfigError as e:
        hint = "--max-flops" if "max_flops" in str(e) else "--budget"
        raise typer.BadParameter(_first_lines(e), param_hint=hint) from None
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
    if out["stop_reason"] == "budget":
        typer.echo(f"The budget (--max-flops {max_flops:g}) stopped the search: its best so far.")
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


def _solve_with_router(
    question: str, policy: str, prm: str, as_json: bool, max_flops: float | None = None
) -> None:
    """``tts solve --strategy router``: the router as ``tts serve`` serves it on these models."""
    from langchain_tts.core.errors import ConfigError
    from langchain_tts.routing import create_router_graph, embedded_router_kwargs

    pol, verifier = _load(policy, prm)
    try:
        router = create_router_graph(
            pol, verifier, max_flops=max_flops, **embedded_router_kwargs(policy, prm)
        )
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--max-flops") from None
    t0 = time.perf_counter()
    out = router.invoke({"question": question})
    wall = time.perf_counter() - t0
    route, est, usage = out["route"], out["difficulty"], out["usage"].summary()
    if as_json:
        payload = {"question": question, "answer": out["answer"], "solution": out["solution"],
                   "strategy": "router", "route": route.model_dump(mode="json"),
                   "difficulty": {"bin": est.bin, "p_solve": est.p_solve, "method": est.method}
                   if est is not None else None,
                   "usage": usage, "wall_seconds": wall}  # fmt: skip
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(f"Question: {question}\nStrategy: router, policy={policy}, prm={prm}\n")
    if est is not None:
        typer.echo(f"Estimate ({est.method}): p_solve {est.p_solve:.3f}, bin {est.bin}")
    typer.echo(f"Route: {route.node} ({route.strategy}, {route.reason})"
               + (f", continuing {len(route.prefix_steps)} verified steps"
                  if route.prefix_steps else ""))  # fmt: skip
    typer.echo(f"\nChosen solution:\n{_indent(out['solution'])}\n\nAnswer: {out['answer']}")
    if route.budget_stopped:
        typer.echo(f"The budget (--max-flops {max_flops:g}) cut the search short"
                   + (": the estimate's answer" if route.probe_fallback else "") + ".")  # fmt: skip
    typer.echo(f"Compute: {usage['policy_calls']} policy calls, {usage['prm_calls']} PRM calls, "
               f"{usage['flops']:.3g} FLOPs (the estimate's included), {wall:.2f} s")  # fmt: skip


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


@app.command("eval")
@_user_errors
def eval_cmd(
    dataset: Annotated[str, typer.Option(help="synthetic | math500 | aime24")] = "synthetic",
    strategy: Annotated[list[str], typer.Option(help="repeatable")] = ["beam_search"],  # noqa: B006
    budgets: Annotated[str, typer.Option(help="comma-separated N values")] = "4,16",
    policy: Annotated[
        str | None,
        typer.Option(
            help="embedded: small | large | small-revise (default: each strategy's, "
            "small-revise for revision and hybrid, else small); openai: the label in the "
            "records [--model]"
        ),
    ] = None,
    prm: Annotated[
        str | None,
        typer.Option(
            help="embedded: calculator (default) | strong | weak | likelihood | none; openai: the label [--prm-model]"
        ),
    ] = None,
    n_problems: Annotated[int, typer.Option("--n", help="problems (0: all)")] = 0,
    out: Annotated[Path, typer.Option(help="JSONL records, appended; reruns resume")] = Path(
        "eval_results.jsonl"
    ),
    concurrency: Annotated[int, typer.Option()] = 1,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    data: Annotated[
        Path | None, typer.Option(help="a JSONL of problems (problem, answer[, level, id])")
    ] = None,
    config: Annotated[
        str,
        typer.Option(help="JSON merged into every strategy config, e.g. '{\"temperature\": 0.8}'"),
    ] = "",
    backend: Annotated[
        str, typer.Option(help="embedded (the bundled tiny models) | openai (HTTP servers)")
    ] = "embedded",
    base_url: Annotated[
        str | None, typer.Option(help="openai: the policy server, e.g. http://localhost:8000/v1")
    ] = None,
    model: Annotated[str | None, typer.Option(help="openai: the served policy model")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="OPENAI_API_KEY", help="openai: bearer token")
    ] = None,
    policy_params: Annotated[
        float, typer.Option(help="openai: policy parameters, for FLOPs (0: FLOPs stay 0)")
    ] = 0,
    prm_url: Annotated[
        str | None,
        typer.Option(help="openai: the PRM pooling server, e.g. http://localhost:8001/v1"),
    ] = None,
    prm_model: Annotated[str | None, typer.Option(help="openai: the served PRM model")] = None,
    prm_format: Annotated[
        str, typer.Option(help="openai PRM input: qwen | math_shepherd")
    ] = "qwen",
    prm_params: Annotated[float, typer.Option(help="openai: PRM parameters, for FLOPs")] = 0,
    chat_template: Annotated[
        str, typer.Option(help="openai prompts: server (vLLM /tokenize) | client | none")
    ] = "server",
    tokenizer: Annotated[
        str | None, typer.Option(help="openai, --chat-template client: HF tokenizer path / id")
    ] = None,
    system_prompt: Annotated[str, typer.Option(help="openai: the policy's system prompt")] = (
        "Please reason step by step, and put your final answer within \\boxed{}."
    ),
    timeout: Annotated[float, typer.Option(help="openai: seconds per HTTP request")] = 600.0,
    context_length: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="openai: the policy server's --max-model-len (steps near its end get the room "
            "left; questions too long for it are refused)",
        ),
    ] = None,
) -> None:
    """Run strategies x budgets over a dataset and print the accuracy/compute table.

    Records are appended to --out; rerunning the same command skips the problems already
    there, so an interrupted sweep resumes. `tts report --out DIR` turns them into a report.
    """
    from langchain_tts import create_tts_graph
    from langchain_tts.eval.datasets import load_dataset
    from langchain_tts.eval.runner import budget_config, markdown_table, read_records, summarize
    from langchain_tts.eval.runner import run_eval as _run

    try:
        extra = json.loads(config) if config else {}
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not JSON: {e}", param_hint="--config") from None
    if not isinstance(extra, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--config")
    from langchain_tts.strategies import STRATEGY_SPECS

    for s in strategy:
        if s not in STRATEGY_SPECS:
            hint = (
                " (the router is evaluated against them as docs/router.md shows)"
                if s == "router"
                else ""
            )
            raise typer.BadParameter(
                f"unknown strategy {s!r}; available: {sorted(STRATEGY_SPECS)}{hint}",
                param_hint="--strategy",
            )
    sizes = _budgets(budgets)
    if not 1 <= concurrency <= 256:
        raise typer.BadParameter(f"{concurrency}: from 1 to 256", param_hint="--concurrency")
    problems = load_dataset(dataset, path=data, n=n_problems or None)
    if backend == "embedded":
        from langchain_tts.graph import embedded_policies
        from langchain_tts.models import load_default_policy

        prm = prm or "calculator"
        verifier = _load_prm(prm)
        # one policy for all, or each strategy's own embedded default
        pols = (
            dict.fromkeys(strategy, load_default_policy(policy))  # type: ignore[arg-type]
            if policy
            else embedded_policies(strategy)
        )
    elif backend == "openai":
        if not base_url or not model:
            raise typer.BadParameter("--backend openai needs --base-url and --model")
        pol, verifier = _remote(
            base_url, model, api_key=api_key, policy_params=policy_params, prm_url=prm_url,
            prm_model=prm_model, prm_format=prm_format, prm_params=prm_params,
            chat_template=chat_template, tokenizer=tokenizer, system_prompt=system_prompt,
            timeout=timeout, context_length=context_length,
        )  # fmt: skip
        policy = policy or model
        prm = prm or (prm_model if verifier is not None else "none")
        pols = dict.fromkeys(strategy, pol)
    else:
        raise typer.BadParameter(f"unknown backend {backend!r}: embedded | openai")
    from langchain_tts.strategies import strategy_config

    runs = [(strat, b) for strat in strategy for b in ([1] if strat == "cot" else sizes)]
    for strat, b in runs:  # every run's knobs checked before the first one runs
        strategy_config(strat, {**budget_config(strat, b), "seed": seed, **extra})
    for strat in strategy:
        pol = pols[strat]
        for b in [1] if strat == "cot" else sizes:
            cfg = {**budget_config(strat, b), "seed": seed, **extra}
            graph = create_tts_graph(pol, verifier, strat, cfg)
            # each run pays for its own prefixes: its FLOPs do not depend on the runs before it
            pol.clear_cache()
            if verifier is not None:
                verifier.clear_cache()
            label = policy or pol.name.removeprefix("embedded-policy-")
            meta = {"dataset": dataset, "policy": label, "prm": prm, "strategy": strat,
                    "budget": b}  # fmt: skip
            asyncio.run(_run(graph, problems, meta=meta, out=out, concurrency=concurrency))
    rows = [r for r in summarize(read_records(out)) if r["dataset"] == dataset]
    typer.echo(markdown_table(rows))


def _remote(
    base_url: str,
    model: str,
    *,
    api_key: str | None,
    policy_params: float,
    prm_url: str | None,
    prm_model: str | None,
    prm_format: str,
    prm_params: float,
    chat_template: str,
    tokenizer: str | None,
    system_prompt: str,
    timeout: float,
    context_length: int | None = None,
):
    """An OpenAIPolicy (and an HTTPRewardPRM when --prm-url is given) for `tts eval`."""
    from langchain_tts.policies.openai import OpenAIPolicy
    from langchain_tts.prms.http import HTTPRewardPRM

    pol = OpenAIPolicy(
        base_url,
        model,
        api_key=api_key,
        chat_template=chat_template,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        system_prompt=system_prompt or None,
        timeout=timeout,
        num_parameters=int(policy_params),
        context_length=context_length,
    )
    if not prm_url:
        return pol, None
    if not prm_model:
        raise typer.BadParameter("--prm-url needs --prm-model")
    verifier = HTTPRewardPRM(
        prm_url,
        prm_model,
        format=prm_format,  # type: ignore[arg-type]
        chat_template=chat_template,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        api_key=api_key,
        timeout=timeout,
        num_parameters=int(prm_params),
    )
    return pol, verifier


@app.command()
@_user_errors
def report(
    records: Annotated[
        list[Path], typer.Argument(help="JSONL files (or folders of them) from `tts eval`")
    ],
    levels: Annotated[bool, typer.Option(help="per-level columns")] = True,
    out: Annotated[
        Path | None,
        typer.Option(help="write report.md, report.json and the plots to this folder"),
    ] = None,
    plots: Annotated[bool, typer.Option(help="with --out: PNG + SVG plots (matplotlib)")] = True,
    title: Annotated[str, typer.Option(help="the report's title")] = "Evaluation report",
    law_x: Annotated[
        str,
        typer.Option(
            help="T of the law: generated_tokens | tokens | policy_tokens | flops | budget"
        ),
    ] = "generated_tokens",
    difficulty: Annotated[
        str, typer.Option(help="bins: auto | level (dataset levels) | pass1 (solve rate)")
    ] = "auto",
    reference: Annotated[
        str | None,
        typer.Option(help="the larger model's policy label for crossovers (default: auto)"),
    ] = None,
) -> None:
    """Print the accuracy/compute table of eval records; with --out, write the full report
    (per-bin accuracy, scaling-law fits, crossovers, plots)."""
    from langchain_tts.eval.runner import load_records, markdown_table, summarize

    try:
        recs = load_records(*records)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="RECORDS") from None
    if not recs:
        names = ", ".join(str(r) for r in records)
        raise typer.BadParameter(f"no eval records in {names}", param_hint="RECORDS")
    if out is None:
        typer.echo(markdown_table(summarize(recs), levels=levels))
        return
    from langchain_tts.eval.report import write_report

    try:
        path = write_report(
            records, out, title, plots=plots, law_x=law_x, difficulty=difficulty,  # type: ignore[arg-type]
            reference_policy=reference,
        )  # fmt: skip
    except ImportError as e:
        raise typer.BadParameter(str(e), param_hint="--plots") from None
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(path.read_text(encoding="utf-8"))
    typer.echo(f"Report written to {path}", err=True)


@app.command()
@_user_errors
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 8000,
    strategy: Annotated[
        list[str],
        typer.Option(
            help="repeatable, a strategy or 'router'; default: every strategy the models "
            "allow and the router"
        ),
    ] = [],  # noqa: B006
    policy: EmbeddedPolicy = None,
    prm: EmbeddedVerifier = "calculator",
    budget: Annotated[int, typer.Option(help="default samples N per question", min=1)] = 16,
    checkpoint_db: Annotated[
        str | None,
        typer.Option(
            help="checkpoint database (threads resume): a SQLite file, sqlite:///FILE or "
            "postgresql://user@host:port/db (workers sharing it share threads)"
        ),
    ] = None,
    keep_checkpoints: Annotated[
        int | None,
        typer.Option(help="after each run, keep only a thread's last K checkpoints", min=1),
    ] = None,
    api_keys: Annotated[
        Path | None,
        typer.Option(
            help="file of 'KEY NAMESPACE' lines: requests need a key (401 otherwise) and each "
            "namespace has its own threads"
        ),
    ] = None,
    app_factory: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="module:factory returning the app, called with create_app's keyword "
            "arguments (your own models); --policy/--prm are then unused",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="uvicorn's: critical | error | warning | info | debug | trace")
    ] = "info",
    limits: Annotated[
        Path | None,
        typer.Option(help="limits file (JSON or TOML); the flags below override it"),
    ] = None,
    max_knob: Annotated[
        list[str],
        typer.Option(help="repeatable KNOB=MAX, e.g. n=64 (KNOB=none lifts a default maximum)"),
    ] = [],  # noqa: B006
    allow_knob: Annotated[
        list[str],
        typer.Option(help="repeatable: a knob clients may set (default: every knob)"),
    ] = [],  # noqa: B006
    default_max_tokens: Annotated[
        float | None, typer.Option(help="token budget of a run that sets none (default 2e6)")
    ] = None,
    default_max_flops: Annotated[
        float | None, typer.Option(help="FLOPs budget of a run that sets none (default: none)")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="inputs of one /batch request (default 32)")
    ] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="runs at once, then 429 + Retry-After (default 64)")
    ] = None,
) -> None:
    """Serve the strategies and the router over HTTP (LangServe): POST /tts/<strategy>/invoke,
    /tts/router/invoke, /stream, ...; the limits a client meets: docs/deployment.md."""
    from langchain_tts.core.errors import ConfigError
    from langchain_tts.serve import create_app, run_server
    from langchain_tts.threads import api_key_auth, load_api_keys

    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level.lower() not in levels:
        raise typer.BadParameter(f"{log_level!r} is not one of {levels}", param_hint="--log-level")
    log_level = log_level.lower()

    try:
        auth = api_key_auth(load_api_keys(api_keys)) if api_keys is not None else None
    except (OSError, ConfigError, UnicodeDecodeError) as e:
        raise typer.BadParameter(str(e), param_hint="--api-keys") from None
    try:
        served_limits = _serve_limits(
            limits,
            max_knob,
            allow_knob,
            default_max_tokens=default_max_tokens,
            default_max_flops=default_max_flops,
            max_batch=max_batch,
            max_in_flight=max_in_flight,
        )
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    if checkpoint_db is not None:
        from langchain_tts.checkpoint import check_database

        try:  # now, in one line, rather than a pool timeout's traceback at startup
            check_database(checkpoint_db)
        except ConfigError as e:
            raise typer.BadParameter(str(e), param_hint="--checkpoint-db") from None
    kwargs = {
        "strategies": strategy or None,
        "budget": budget,
        "checkpointer": checkpoint_db,
        "keep_checkpoints": keep_checkpoints,
        "auth": auth,
        "limits": served_limits,
    }
    if app_factory is not None:
        api = _factory(app_factory)(**kwargs, title=f"langchain-tts ({app_factory})")
    else:
        from langchain_tts.graph import embedded_policies
        from langchain_tts.strategies import STRATEGY_SPECS

        pol, verifier = _load(policy or "small", prm)
        # without --policy, each strategy on its own embedded default (revision: small-revise)
        served = [s for s in strategy or STRATEGY_SPECS if s in STRATEGY_SPECS]
        own = {} if policy else embedded_policies(served, loaded={"small": pol})
        from langchain_tts.routing import embedded_router_kwargs

        # the router as calibrated for these embedded models, where one was measured
        router_kwargs = embedded_router_kwargs(policy or "small", prm)
        api = create_app(
            pol, verifier, **kwargs, policies=own,
            configs={"router": router_kwargs} if router_kwargs else None,
            title=f"langchain-tts (policy={policy or 'per strategy'}, prm={prm})",
        )  # fmt: skip
    routes = ", ".join(f"/tts/{s}" for s in sorted(api.state.graphs))
    typer.echo(f"Serving {routes} on http://{host}:{port} (health: /health)", err=True)
    run_server(api, host=host, port=port, log_level=log_level)  # SIGTERM cancels requests


def _factory(spec: str):
    """The callable ``module:name`` names (``--app``)."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise typer.BadParameter(f"{spec!r}: write module:factory", param_hint="--app")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise typer.BadParameter(f"{spec!r}: {e}", param_hint="--app") from None


def _serve_limits(
    path: Path | None, max_knob: list[str], allow_knob: list[str], **overrides: Any
) -> Any:
    """``tts serve``'s limits: the file's (or the defaults), then the flags."""
    from langchain_tts.core.errors import ConfigError
    from langchain_tts.limits import ServeLimits

    maxima: dict[str, float | None] = {}
    for item in max_knob:
        knob, sep, value = item.partition("=")
        try:
            if not sep or not knob.strip():
                raise ValueError
            maxima[knob.strip()] = None if value.strip().lower() == "none" else float(value)
        except ValueError:
            raise ConfigError(f"--max-knob takes KNOB=MAX (e.g. n=64), got {item!r}") from None
    flags = {**overrides, "maxima": maxima or None, "allow": list(allow_knob) or None}
    if path is not None:
        return ServeLimits.from_file(path, **flags)
    return ServeLimits.build(None, **flags)


@app.command(
    "train-default",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def train_default(ctx: typer.Context) -> None:
    """Rebuild the embedded models from scratch (flags: `python -m research.train --help`).

    The trainer lives in the source checkout's research/ folder, not in the package: this
    runs it there, in its own process, and exits with its status.
    """
    import subprocess

    repo = REPO_ROOT
    if not (repo / "research" / "train.py").is_file():
        typer.echo(
            f"tts train-default needs the source checkout: no research/train.py next to the "
            f"installed package ({repo}). Clone the repository, install it with "
            "`pip install -e .` and run `tts train-default` (or `make train-default`) there.",
            err=True,
        )
        raise typer.Exit(2)
    cmd = [sys.executable, "-m", "research.train", *_absolute_out(list(ctx.args))]
    raise typer.Exit(subprocess.run(cmd, cwd=repo).returncode)


def _absolute_out(args: list[str]) -> list[str]:
    """``--out DIR`` made absolute: the trainer runs in the repo root, not in this folder."""
    out = list(args)
    for i, a in enumerate(out):
        if a == "--out" and i + 1 < len(out):
            out[i + 1] = str(Path(out[i + 1]).resolve())
        elif a.startswith("--out="):
            out[i] = "--out=" + str(Path(a.removeprefix("--out=")).resolve())
    return out


def main() -> None:
    app(prog_name="tts")


if __name__ == "__main__":
    sys.exit(main())
