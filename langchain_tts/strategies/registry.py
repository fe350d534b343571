"""One record per strategy: its config, graph builder, budget knob, cost model, state types.

Everything that knows a strategy by name reads it here -- ``create_tts_graph``, eval sweeps
(``budget_config``), the router's cost model, checkpoint serialization and ``tts serve``'s
routes -- so a new strategy is one module (its algorithm and a :class:`StrategySpec`) plus
one :func:`register_strategy` call. The built-ins register in ``strategies/__init__.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer
from pydantic import ValidationError

from langchain_tts.core.config import StrategyConfig
from langchain_tts.core.domain import EMBEDDED_POLICIES
from langchain_tts.core.errors import ConfigError
from langchain_tts.policies.base import StepPolicy
from langchain_tts.prms.base import ProcessRewardModel
from langchain_tts.strategies.contract import compile_strategy_graph

#: The built-in strategies (``create_tts_graph`` also takes any registered name).
StrategyName = Literal[
    "cot",
    "best_of_n",
    "majority_vote",
    "weighted_vote",
    "beam_search",
    "dvts",
    "mcts",
    "particle_filtering",
    "revision",
    "hybrid",
    "step_repair",
]

#: ``(policy, prm or None, validated config) -> StateGraph`` (not compiled)
Builder = Callable[[StepPolicy, ProcessRewardModel | None, Any], StateGraph]
#: ``(config, mean steps per solution >= 1, reused probe samples) -> (generations, PRM-scored
#: solutions)``, both in whole-solution units: what the router prices an allocation with
CostUnits = Callable[[Any, float, int], tuple[float, float]]

_NAME = re.compile(r"[a-z][a-z0-9_]*")


def written_units(solutions: float) -> tuple[float, float]:
    """:data:`CostUnits` of a strategy that writes ``solutions`` solutions' worth of new
    tokens and has each scored once: what a step-level search computes when the prefix
    caches hold every prefix it extends and every prefix the PRM scored before."""
    return float(solutions), float(solutions)


@dataclass(frozen=True)
class StrategySpec:
    """What the package needs to know about one strategy.

    ``budget_config(n)``: the config knobs that spend about ``n`` samples per question (what
    eval sweeps and budget-table calibration use). ``needs_prm``: its default config needs a
    PRM (a config may lift that, e.g. ``selection="majority"``; the builder checks).
    ``cost_units``: see :data:`CostUnits`; None when unknown (the router then cannot price
    a budget downgrade to it). ``computed_units``: the same where the models' prefix caches
    hold what the strategy re-reads (its prompts and the prefixes it extends are computed
    once): the solutions' worth of tokens it newly writes and has scored; None: as
    ``cost_units``. ``reuses_samples``: it samples ``n`` whole solutions the way
    the router's probe does, so probe samples count among its ``n``. ``state_types``: the
    pydantic classes its graph state adds (registered with the checkpoint serializer).
    ``after_rejection``: the knobs a caller sets when the ``prefix_steps`` it hands over
    end just before a step its PRM rejected (the router, continuing its estimate's
    attempt), so the strategy does not write that step again first; empty: none.
    ``embedded_policy``: the embedded policy (a :func:`~langchain_tts.models.load_default_policy`
    name) that the tools (``tts solve``/``eval``/``serve``, ``graphs/``) run this strategy on
    when no policy is named: ``"small-revise"`` for the strategies that revise through a
    prompt, which only a policy trained to revise can follow.
    """

    name: str
    config: type[StrategyConfig]
    build: Builder
    budget_config: Callable[[int], dict[str, Any]]
    summary: str
    needs_prm: bool = True
    cost_units: CostUnits | None = None
    reuses_samples: bool = False
    state_types: tuple[type, ...] = ()
    after_rejection: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    embedded_policy: str = "small"
    computed_units: CostUnits | None = None  # last: positional specs keep their meaning

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(
                f"StrategySpec.name must be lower_snake_case (it names graph nodes and HTTP "
                f"routes), got {self.name!r}; e.g. 'my_search'"
            )
        if not (isinstance(self.config, type) and issubclass(self.config, StrategyConfig)):
            raise ConfigError(
                f"StrategySpec.config of {self.name!r} must be a StrategyConfig subclass, got "
                f"{self.config!r}"
            )
        for attr in ("build", "budget_config"):
            if not callable(getattr(self, attr)):
                raise ConfigError(f"StrategySpec.{attr} of {self.name!r} must be callable")
        for attr in ("cost_units", "computed_units"):
            if getattr(self, attr) is not None and not callable(getattr(self, attr)):
                raise ConfigError(f"StrategySpec.{attr} of {self.name!r} must be callable or None")
        if not all(isinstance(t, type) for t in self.state_types):
            raise ConfigError(
                f"StrategySpec.state_types of {self.name!r} must be a tuple of classes"
            )
        for attr in ("needs_prm", "reuses_samples"):
            if not isinstance(getattr(self, attr), bool):
                raise ConfigError(f"StrategySpec.{attr} of {self.name!r} must be True or False")
        if not isinstance(self.summary, str) or not self.summary.strip():
            raise ConfigError(f"StrategySpec.summary of {self.name!r} must be a sentence")
        if self.reuses_samples and "n" not in self.config.model_fields:
            raise ConfigError(
                f"StrategySpec.reuses_samples of {self.name!r} needs an 'n' knob (the samples "
                "the router's probe counts among); its config has none"
            )
        if not isinstance(self.after_rejection, Mapping):
            raise ConfigError(
                f"StrategySpec.after_rejection of {self.name!r} must be a mapping of knobs "
                "(empty: none)"
            )
        if self.embedded_policy not in EMBEDDED_POLICIES:
            raise ConfigError(
                f"StrategySpec.embedded_policy of {self.name!r} must be one of "
                f"{list(EMBEDDED_POLICIES)}, got {self.embedded_policy!r}"
            )
        try:  # its knobs are this strategy's own
            self.validated(dict(self.after_rejection))
        except ConfigError as e:
            raise ConfigError(f"StrategySpec.after_rejection of {self.name!r}: {e}") from None

    def validated(self, config: StrategyConfig | dict | None = None) -> StrategyConfig:
        """``config`` as this strategy's pydantic config (defaults from the papers)."""
        if isinstance(config, self.config):
            return config
        if isinstance(config, StrategyConfig):
            config = config.model_dump(exclude_unset=True)
        try:
            return self.config.model_validate(config or {})
        except ValidationError as e:
            raise ConfigError(f"invalid config for strategy {self.name!r}:\n{e}") from e

    def compile(
        self,
        policy: StepPolicy,
        prm: ProcessRewardModel | None,
        config: StrategyConfig | dict | None = None,
        *,
        checkpointer: Checkpointer = None,
        name: str | None = None,
        output_key: str | None = None,
    ) -> CompiledStateGraph:
        """This strategy's compiled graph (``create_tts_graph`` checks the models first),
        with the composition contract of :mod:`langchain_tts.strategies.contract`."""
        return compile_strategy_graph(
            self.build,
            self.name,
            policy,
            prm,
            self.validated(config),
            checkpointer=checkpointer,
            name=name,
            output_key=output_key,
        )


_SPECS: dict[str, StrategySpec] = {}
#: name -> :class:`StrategySpec` of every registered strategy (read-only, live)
STRATEGY_SPECS: Mapping[str, StrategySpec] = MappingProxyType(_SPECS)


def register_strategy(spec: StrategySpec, *, replace: bool = False) -> StrategySpec:
    """Make ``spec`` available by name everywhere (graphs, sweeps, router, serve).

    A name already registered is a :class:`ConfigError` unless ``replace=True``.
    """
    if not isinstance(spec, StrategySpec):
        raise ConfigError(f"register_strategy takes a StrategySpec, got {type(spec).__name__}")
    if spec.name in _SPECS and not replace and _SPECS[spec.name] is not spec:
        raise ConfigError(
            f"strategy {spec.name!r} is already registered; pick another name, or pass "
            "replace=True to override it"
        )
    _SPECS[spec.name] = spec
    return spec


def get_strategy(name: str) -> StrategySpec:
    """The registered spec of ``name``; a :class:`ConfigError` naming the choices otherwise."""
    spec = _SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"unknown strategy {name!r}; available: {sorted(_SPECS)}")
    return spec


def strategy_config(strategy: str, config: StrategyConfig | dict | None = None) -> StrategyConfig:
    """The validated pydantic config of ``strategy`` (defaults from the papers)."""
    return get_strategy(strategy).validated(config)


def budget_config(strategy: str, budget: int) -> dict[str, Any]:
    """The config knobs of ``strategy`` that spend ``budget`` samples (N) per question."""
    return get_strategy(strategy).budget_config(budget)
