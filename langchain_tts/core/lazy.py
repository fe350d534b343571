"""Lazy re-exports: a package names its public classes without importing their modules, so
importing it loads no torch, httpx or vLLM until a class is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, modules: dict[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], list[str]]:
    """A module ``__getattr__`` and ``__all__`` for ``{submodule: names}`` of ``package``:
    each name is imported from ``package.submodule`` on first use."""
    where = {name: f"{package}.{sub}" for sub, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(where)
