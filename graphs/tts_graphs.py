"""Ready graphs for `langgraph dev` / LangGraph Platform (see langgraph.json).

Each graph runs on the embedded default models (CPU, offline; ``revision`` and ``hybrid`` on
the embedded policy trained to revise), with a budget of about 16 samples per question;
``router`` picks the strategy per question (the verifier estimator and the table calibrated
for the embedded models, docs/router.md). Knobs show in LangGraph Studio (each graph's context schema is its
strategy config) and are overridable per run through ``context`` or
``config["configurable"]`` (e.g. ``{"n": 64, "beam_width": 4}``), up to the limits
``tts serve`` applies by default (``ServeLimits``: ``n <= 256``, ..., a default token budget
per run): strangers call these graphs directly, with no server in front to check them.

The models are loaded once, at import; the server imports this module once.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_tts.graph import embedded_policies  # noqa: E402
from langchain_tts.limits import ServeLimits  # noqa: E402
from langchain_tts.models import load_default  # noqa: E402
from langchain_tts.routing import embedded_router_kwargs  # noqa: E402
from langchain_tts.serve import servable_graph, servable_router  # noqa: E402
from langchain_tts.strategies import STRATEGY_SPECS, get_strategy  # noqa: E402

BUDGET = 16
_policy, _prm = load_default()
_policies = embedded_policies(STRATEGY_SPECS, loaded={"small": _policy})
# the knobs' maxima and default budgets of `tts serve`, the context length included
LIMITS = ServeLimits().for_context(_policy.context_length)


def _graph(strategy: str):
    """The strategy at BUDGET samples, on its embedded policy; with the PRM only when its
    default config uses one."""
    spec = get_strategy(strategy)
    prm = _prm if spec.needs_prm else None
    config = spec.budget_config(BUDGET)
    return servable_graph(_policies[strategy], prm, strategy, config, limits=LIMITS)


cot = _graph("cot")
majority_vote = _graph("majority_vote")
best_of_n = _graph("best_of_n")
weighted_vote = _graph("weighted_vote")
beam_search = _graph("beam_search")
dvts = _graph("dvts")
mcts = _graph("mcts")
particle_filtering = _graph("particle_filtering")
step_repair = _graph("step_repair")
revision = _graph("revision")
hybrid = _graph("hybrid")
# The router as calibrated for the embedded models: the verifier's greedy attempt estimates
# the difficulty, then the calibrated table's strategy continues from its verified steps.
router = servable_router(
    _policy, _prm, limits=LIMITS, **embedded_router_kwargs("small", "calculator")
)


def _agent_example():
    """``integrations/agent_example.py`` (a file, not a package), loaded by path."""
    path = Path(__file__).resolve().parent.parent / "integrations" / "agent_example.py"
    spec = importlib.util.spec_from_file_location("tts_agent_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its state schema's annotations resolve through it
    spec.loader.exec_module(module)
    return module


# The composition example: planner -> direct CoT | beam search subgraph, on the same models.
agent = _agent_example().build_agent(_policy, _prm, limits=LIMITS)
