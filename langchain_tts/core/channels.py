"""State channels that checkpoint plain data and rebuild the package's objects on load.

The strategy graphs' state holds pydantic objects (``Trajectory``, ``Usage``, MCTS nodes).
Their keys use these channels, so any saver with LangGraph's default serializer stores plain
JSON-like data and logs no "Deserializing unregistered type ..." warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from langgraph._internal._typing import MISSING
from langgraph.channels import BinaryOperatorAggregate, LastValue
from pydantic import TypeAdapter

__all__ = ["PlainAggregate", "PlainValue", "from_plain", "to_plain"]


@cache
def _adapter(typ: Any) -> TypeAdapter:
    return TypeAdapter(typ)


def to_plain(typ: Any, value: Any) -> Any:
    """``value`` (of type ``typ``) as plain data: dicts, lists, strings, numbers."""
    return value if value is MISSING else _adapter(typ).dump_python(value)


def from_plain(typ: Any, data: Any) -> Any:
    """The ``typ`` value that ``data`` holds (objects already of that type pass as they are:
    checkpoints written before these channels held the objects themselves)."""
    return data if data is MISSING else _adapter(typ).validate_python(data)


def _typed(typ: Any, value: Any) -> Any:
    """A write as ``typ``: plain data (``update_state`` from a JSON client) is rebuilt, and a
    value of the wrong kind is a ``ValidationError`` (a 4xx over HTTP) before anything is
    checkpointed, where it would fail every later load of the thread. The graph's own writes
    hold the objects, which pydantic passes without copying them."""
    return from_plain(typ, value)


class PlainValue(LastValue):
    """A ``LastValue`` channel whose checkpoint is plain data, rebuilt as ``typ`` on load.

    Use it as ``Annotated[list[Trajectory], PlainValue(list[Trajectory])]`` in a state
    schema. The running graph holds the objects; only checkpoints see plain data.
    """

    __slots__ = ()

    def update(self, values: Sequence[Any]) -> bool:
        return super().update([_typed(self.typ, v) for v in values])

    def checkpoint(self) -> Any:
        return to_plain(self.typ, self.value)

    def from_checkpoint(self, checkpoint: Any) -> PlainValue:
        return super().from_checkpoint(from_plain(self.typ, checkpoint))


class PlainAggregate(BinaryOperatorAggregate):
    """A ``BinaryOperatorAggregate`` (a reducer's channel) checkpointed as plain data:
    ``Annotated[Usage, PlainAggregate(Usage, add_usage)]``."""

    __slots__ = ()

    def __init__(self, typ: Any, operator: Callable[[Any, Any], Any]):
        super().__init__(typ, operator)

    def checkpoint(self) -> Any:
        return to_plain(self.typ, self.value)

    def from_checkpoint(self, checkpoint: Any) -> PlainAggregate:
        return super().from_checkpoint(from_plain(self.typ, checkpoint))
