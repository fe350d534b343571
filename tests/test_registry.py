"""The strategy registry: a strategy of one's own -- one module, one ``register_strategy``
call -- works everywhere a built-in does: graphs, budgets, sweeps, router, checkpoints, serve.

The toy strategy here is written the way the built-ins are: its step logic, a
:class:`SearchLoop` and a :class:`StrategySpec`. Greedy step search: sample ``width`` next
steps of the one chain, keep the PRM's best, until it finishes.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel, Field

from langchain_tts import STRATEGIES, ConfigError, create_tts_graph
from langchain_tts.checkpoint import allowed_msgpack_modules, sqlite_saver, state_types
from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.types import Trajectory, Usage
from langchain_tts.eval import runner
from langchain_tts.routing import BudgetTable, ProbeEstimator, create_router_graph
from langchain_tts.routing.router import allocation_cost
from langchain_tts.strategies import STRATEGY_SPECS, StrategyName, StrategySpec, get_strategy
from langchain_tts.strategies import registry as registry_module
from langchain_tts.strategies.beam_search import BeamSearchConfig, build_beam_search_graph
from langchain_tts.strategies.core import TTSState, expand, finalize_update, score
from langchain_tts.strategies.loop import Search, SearchLoop, require_prm, search_graph
from langchain_tts.strategies.registry import budget_config, register_strategy
from langchain_tts.strategies.selection import top_k
from langchain_tts.testing import FakePolicy, FakePRM


# -- the toy strategy: one module's worth -------------------------------------------------
class GreedyConfig(StrategyConfig):
    width: int = Field(2, ge=1, description="next steps sampled per step")


class StepNote(BaseModel):
    """A state type of the toy's own: what each step kept (checkpoints must restore it)."""

    step: int
    score: float


class GreedyState(TTSState, total=False):
    notes: list[StepNote]


async def greedy_step(
    policy, prm, cfg: GreedyConfig, root: Trajectory, s: Search, i: int
) -> tuple[Search, Usage]:
    parent = s["active"][0] if s["active"] else root
    children, usage = await expand(policy, [parent], cfg.width, cfg)
    children, prm_usage = await score(prm, children, in_place=True)
    best = top_k(children, 1, cfg.aggregation)[0]
    notes = [*s["notes"], StepNote(step=i, score=best.score or 0.0)]
    kept = {"active": [best], "finished": []} if not best.finished else {
        "active": [], "finished": [best]}  # fmt: skip
    return {**kept, "notes": notes}, usage + prm_usage


def greedy_done(s: Search, steps: int, cfg: GreedyConfig) -> str:
    if s["finished"]:
        return "finished"
    return "max_steps" if steps >= cfg.max_steps else ""


GREEDY = SearchLoop(
    node="extend",
    step=greedy_step,
    done=greedy_done,
    answer=lambda state, cfg: finalize_update(
        state, state["finished"] or state["active"], cfg, "finished"
    ),
    start=lambda state: {
        "active": state.get("active") or [],
        "finished": state.get("finished") or [],
        "notes": state.get("notes") or [],
    },
    fresh=lambda: {"notes": []},
    state_schema=GreedyState,
)

TOY = StrategySpec(
    name="greedy_steps",
    config=GreedyConfig,
    build=lambda policy, prm, cfg: search_graph(
        GREEDY, policy, require_prm(prm, "greedy_steps"), cfg
    ),
    budget_config=lambda n: {"width": n},
    cost_units=lambda cfg, steps, reused: (cfg.width * steps, cfg.width * steps),
    state_types=(StepNote,),
    summary="Greedy step search: keep the PRM's best of width next steps",
)


# -- fakes ---------------------------------------------------------------------------------
STEPS = 4


def write_step(prefix: Trajectory, i: int) -> str:
    k = len(prefix.steps)
    return f"so the answer is \\boxed{{{7 + i}}}" if k >= STEPS - 1 else f"step {k}.{i}"


def prm_fn(t: Trajectory) -> list[float]:
    return [0.9 if s.endswith(".1") or "{8}" in s else 0.4 for s in t.steps]


@pytest.fixture
def toy() -> Iterator[StrategySpec]:
    register_strategy(TOY)
    try:
        yield TOY
    finally:
        registry_module._SPECS.pop(TOY.name, None)


# -- one registration, everywhere ----------------------------------------------------------
def test_a_registered_strategy_runs_through_create_tts_graph(toy: StrategySpec):
    assert "greedy_steps" in STRATEGIES and STRATEGY_SPECS["greedy_steps"] is toy
    assert STRATEGIES["greedy_steps"] == (GreedyConfig, toy.build)
    policy, prm = FakePolicy(write_step), FakePRM(prm_fn)
    graph = create_tts_graph(policy, prm, "greedy_steps", {"width": 2})
    updates = list(graph.stream({"question": "q"}, stream_mode="updates"))
    assert [next(iter(u)) for u in updates] == ["prepare", *["extend"] * STEPS, "finalize"]
    out = updates[-1]["finalize"]
    assert out["answer"] == "8" and out["stop_reason"] == "finished"  # the PRM's pick
    assert [(p, n) for p, n, _ in policy.calls] == [(1, 2)] * STEPS
    state = graph.invoke({"question": "q"})
    assert state["usage"].policy_calls == STEPS and state["usage"].prm_calls == STEPS
    # its knobs are validated like a built-in's, at build time and per call
    with pytest.raises(ConfigError, match="greedy_steps"):
        create_tts_graph(policy, prm, "greedy_steps", {"width": 0})
    with pytest.raises(ConfigError, match="greedy_steps needs a PRM"):
        create_tts_graph(policy, None, "greedy_steps")


def test_a_registered_strategy_gets_budgets_and_the_recursion_guard(toy: StrategySpec):
    policy, prm = FakePolicy(write_step), FakePRM(prm_fn)
    free = create_tts_graph(policy, prm, "greedy_steps").invoke({"question": "q"})
    graph = create_tts_graph(policy, prm, "greedy_steps", {"max_tokens": 200})
    out = graph.invoke({"question": "q"})
    assert free["stop_reason"] == "finished" and free["usage"].policy_calls == STEPS
    assert out["stop_reason"] == "budget" and out["usage"].tokens <= 200
    assert 0 < out["usage"].policy_calls < STEPS  # stopped mid-search, not refused outright
    # a recursion limit below the search's length: the loop finishes inside its node
    out = create_tts_graph(policy, prm, "greedy_steps", {"max_steps": 40}).invoke(
        {"question": "q"}, {"recursion_limit": 4}
    )
    assert out["answer"] is not None


def test_a_registered_strategy_is_swept_and_routed(toy: StrategySpec):
    assert budget_config("greedy_steps", 5) == {"width": 5}
    assert runner.budget_config("greedy_steps", 5) == {"width": 5}  # the sweeps' name
    policy, prm = FakePolicy(write_step), FakePRM(prm_fn)
    est = ProbeEstimator(policy, k=2, max_tokens=16).estimate("q")
    flops, tokens = allocation_cost("greedy_steps", {"width": 3}, est, policy, prm)
    per_sample = (est.usage.policy_prompt_tokens + est.usage.policy_generated_tokens) / 2
    units = 3 * max(1.0, est.mean_steps)  # TOY.cost_units: width x steps, both kinds
    assert tokens == pytest.approx(units * per_sample * 2)  # the probe ran no PRM
    assert flops == pytest.approx(2 * 1000 * units * per_sample * 2)
    # continuing from steps the estimate verified, only the steps left are written and scored
    steps = est.mean_steps
    assert steps == 4  # write_step's solutions
    f2, t2 = allocation_cost("greedy_steps", {"width": 3}, est, policy, prm, prefix_steps=1)
    assert t2 == pytest.approx(3 * 3 * per_sample * (3 / 4) * 2) and f2 < flops

    # models that keep prefix caches: priced by what it writes and has scored, if it says
    class Cached(FakePolicy):
        reuses_prefixes = True

    class CachedPRM(FakePRM):
        reuses_prefixes = True

    cached, cached_prm = Cached(write_step), CachedPRM(prm_fn)
    # a strategy that gives no computed_units: priced as without caches
    assert allocation_cost("greedy_steps", {"width": 3}, est, cached, cached_prm) == (
        flops,
        tokens,
    )
    writes = dataclasses.replace(
        toy, computed_units=lambda cfg, steps, reused: (float(cfg.width), float(cfg.width))
    )
    registry_module._SPECS["greedy_steps"] = writes
    try:
        _, t3 = allocation_cost("greedy_steps", {"width": 3}, est, cached, cached_prm)
        prompt = est.usage.policy_prompt_tokens / 2
        generated = est.usage.policy_generated_tokens / 2
        assert t3 == pytest.approx(3 * generated + prompt + 3 * per_sample)  # no PRM ran
        _, t4 = allocation_cost("greedy_steps", {"width": 3}, est, policy, prm)
        assert t4 == tokens  # a policy without a cache: every re-read priced
    finally:
        registry_module._SPECS["greedy_steps"] = toy
    table = BudgetTable.from_dict(
        {b: {"strategy": "greedy_steps"} for b in ("easy", "medium", "hard")}
    )
    out = create_router_graph(policy, prm, table=table, reuse_probe=False).invoke({"question": "q"})
    assert out["route"].strategy == "greedy_steps" and out["route"].node.endswith("_greedy_steps")
    assert out["answer"] == "8"


def test_a_registered_strategys_state_types_are_checkpointed(
    toy: StrategySpec, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    pytest.importorskip("langgraph.checkpoint.sqlite")
    assert StepNote in state_types()
    assert (StepNote.__module__, "StepNote") in allowed_msgpack_modules()
    config = {"configurable": {"thread_id": "t"}}
    with caplog.at_level(logging.WARNING, logger="langgraph"):
        with sqlite_saver(tmp_path / "s.db") as saver:
            graph = create_tts_graph(
                FakePolicy(write_step), FakePRM(prm_fn), "greedy_steps", checkpointer=saver
            )
            graph.invoke({"question": "q"}, config)
            notes = graph.get_state(config).values["notes"]
    assert len(notes) == STEPS and all(isinstance(n, StepNote) for n in notes)
    assert not [r for r in caplog.records if "unregistered" in r.getMessage()]


@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
def test_a_registered_strategy_is_served(toy: StrategySpec):
    pytest.importorskip("langserve")
    from fastapi.testclient import TestClient

    from langchain_tts.serve import create_app, default_configs, knobs_schema

    assert default_configs(3)["greedy_steps"] == {"width": 3}
    assert knobs_schema("greedy_steps").__doc__.startswith(toy.summary)  # Studio's description
    app = create_app(FakePolicy(write_step), FakePRM(prm_fn), budget=2)
    assert "greedy_steps" in app.state.graphs
    with TestClient(app) as client:
        assert "greedy_steps" in client.get("/health").json()["strategies"]
        r = client.post("/tts/greedy_steps/invoke", json={"input": {"question": "q"}})
        assert r.status_code == 200 and r.json()["output"]["answer"] == "8"
        bad = {"input": {"question": "q"}, "config": {"configurable": {"width": 0}}}
        assert client.post("/tts/greedy_steps/invoke", json=bad).status_code == 400


# -- the registry itself -------------------------------------------------------------------
def test_strategy_name_lists_exactly_the_built_ins():
    built_ins = [
        n for n, s in STRATEGY_SPECS.items() if s.build.__module__.startswith("langchain_tts.")
    ]
    assert list(get_args(StrategyName)) == built_ins and "beam_search" in built_ins
    assert STRATEGIES["beam_search"] == (BeamSearchConfig, build_beam_search_graph)
    for name in built_ins:
        spec = get_strategy(name)
        assert spec.name == name and spec.summary and spec.cost_units is not None
        spec.config.model_validate(spec.budget_config(16))  # every budget is a valid config


def test_register_refuses_clashes_and_malformed_specs(toy: StrategySpec):
    register_strategy(toy)  # the same record again: a no-op
    twin = StrategySpec(**{**toy.__dict__, "summary": "another"})
    with pytest.raises(ConfigError, match="already registered.*replace=True"):
        register_strategy(twin)
    assert register_strategy(twin, replace=True) is STRATEGY_SPECS["greedy_steps"]
    with pytest.raises(ConfigError, match="lower_snake_case"):
        StrategySpec(**{**toy.__dict__, "name": "Greedy Steps"})
    with pytest.raises(ConfigError, match="StrategyConfig subclass"):
        StrategySpec(**{**toy.__dict__, "config": dict})
    with pytest.raises(ConfigError, match="must be callable"):
        StrategySpec(**{**toy.__dict__, "budget_config": {"width": 2}})
    with pytest.raises(ConfigError, match="after_rejection of 'greedy_steps'"):  # not its knob
        StrategySpec(**{**toy.__dict__, "after_rejection": {"start": "repair"}})
    assert dict(STRATEGY_SPECS["step_repair"].after_rejection) == {"start": "repair"}
    # each of these registered and broke later, in the router or in create_app
    bad = {
        "reuses_samples": (True, "needs an 'n' knob"),  # the toy's config has none
        "after_rejection": (None, "must be a mapping"),
        "embedded_policy": ("tiny", "must be one of"),
        "needs_prm": ("yes", "must be True or False"),
        "summary": (None, "must be a sentence"),
    }
    for field, (value, match) in bad.items():
        with pytest.raises(ConfigError, match=f"{field} of 'greedy_steps' {match}"):
            StrategySpec(**{**toy.__dict__, field: value})
    with pytest.raises(TypeError):
        STRATEGY_SPECS["x"] = toy  # type: ignore[index]  # read-only
    with pytest.raises(ConfigError, match="unknown strategy 'nope'.*beam_search"):
        get_strategy("nope")
    with pytest.raises(ConfigError, match="unknown strategy"):
        create_tts_graph(FakePolicy(write_step), None, "nope")


def test_routing_does_not_import_the_eval_package():
    code = (
        "import sys, langchain_tts.routing.router, langchain_tts.routing.table;"
        "bad = [m for m in sys.modules if m.startswith('langchain_tts.eval')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


@pytest.mark.slow
def test_a_registered_strategy_runs_on_the_embedded_models(toy: StrategySpec):
    from langchain_tts import load_default

    policy, prm = load_default()
    g = create_tts_graph(policy, prm, "greedy_steps", {"width": 4, "seed": 0})
    out = g.invoke({"question": "Start with 14. Add 9. Multiply by 3."})
    assert out["answer"] == "69" and out["stop_reason"] == "finished"
    assert out["usage"].policy_calls == out["usage"].prm_calls >= 3  # one each per step


def test_langgraph_json_serves_every_built_in_strategy():
    """`langgraph dev` and LangGraph Platform deploy what langgraph.json names: every
    built-in strategy, the router and the agent example, each from graphs/tts_graphs.py."""
    import json
    import typing
    from pathlib import Path

    from langchain_tts.strategies.registry import StrategyName

    root = Path(__file__).resolve().parent.parent
    graphs = json.loads((root / "langgraph.json").read_text())["graphs"]
    assert set(graphs) == {*typing.get_args(StrategyName), "router", "agent"}
    source = (root / "graphs" / "tts_graphs.py").read_text()
    for name, target in graphs.items():
        assert target == f"./graphs/tts_graphs.py:{name}"
        assert f"\n{name} = " in source, name
