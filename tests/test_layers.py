"""The package's layers import one way: core <- backends <- policies, PRMs <- the rest."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "langchain_tts"

# layer -> the package's subpackages it must never import
FORBIDDEN = {
    "backends": ("policies", "prms", "models", "strategies", "routing", "ledger", "graph"),
    "policies": ("prms", "models", "strategies", "routing", "ledger", "graph"),
    "prms": ("policies", "models", "strategies", "routing", "ledger", "graph"),
}
# The embedded PRM's head class registers itself with transformers' Auto classes when its
# module is imported; QwenPRM.from_pretrained does that on use (a function-local import).
ALLOWED = {("prms/qwen.py", "langchain_tts.models.checker_prm")}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_a_higher_one(layer: str) -> None:
    bad = []
    for path in sorted((PACKAGE / layer).glob("*.py")):
        rel = f"{layer}/{path.name}"
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "langchain_tts" or len(parts) < 2 or (rel, name) in ALLOWED:
                continue
            if parts[1] in FORBIDDEN[layer]:
                bad.append(f"{rel} imports {name}")
    assert not bad, bad


def test_protocols_and_light_backends_load_no_torch() -> None:
    code = (
        "import sys\n"
        "import langchain_tts.policies, langchain_tts.prms, langchain_tts.policies.base\n"
        "import langchain_tts.prms.base, langchain_tts.backends.sync, langchain_tts.backends.text\n"
        "import langchain_tts.backends.batching, langchain_tts.ledger\n"
        "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
