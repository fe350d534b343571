"""The package never depends on the research tooling (research/ depends on the package)."""

from __future__ import annotations

import ast
from pathlib import Path

import langchain_tts

PACKAGE = Path(langchain_tts.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_package_module_imports_research():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(m for m in mods if m.split(".")[0] == "research")
        for path in sorted(PACKAGE.rglob("*.py"))
        if (mods := _imported_modules(path))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) > 20  # the walk saw the package
