"""The package's layers import one way, from the top down; research tooling stays outside."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "langchain_tts"

#: Each part of the package and its layer: a module may import only from its own layer or
#: lower ones (core <- backends <- policies, PRMs <- ledger, models <- strategies <- graph <-
#: routing <- checkpoint, eval <- serve, CLI). Research tooling lives outside the package.
LAYERS = {
    "core": 0,
    "backends": 1,
    "policies": 2,
    "prms": 2,
    "ledger": 3,
    "models": 3,
    "scaling": 3,
    "tracing": 3,
    "strategies": 4,
    "graph": 5,
    "routing": 6,
    "checkpoint": 7,
    "eval": 7,
    "testing": 7,
    "tools": 7,
    "openai_api": 8,
    "threads": 8,
    "limits": 8,
    "serve": 8,
    "cli": 9,
    "__init__": 9,
}
#: parts of one layer that must still not import each other
SIBLINGS_APART = {("policies", "prms"), ("prms", "policies")}
# The embedded PRM's head class registers itself with transformers' Auto classes when its
# module is imported; QwenPRM.from_pretrained does that on use (a function-local import).
ALLOWED = {("prms/qwen.py", "langchain_tts.models.checker_prm")}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, function-local ones included, except imports only for
    type checkers (``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _part(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py")


def test_every_module_has_a_layer() -> None:
    parts = {_part(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert parts - set(LAYERS) == set(), "add the new part of the package to LAYERS"


def test_no_import_runs_back_up_between_layers() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        mine = _part(rel)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "research":
                bad.append(f"{rel} imports the research tooling ({name})")
            if parts[0] != "langchain_tts" or len(parts) < 2:
                continue
            theirs = parts[1]
            if (rel.as_posix(), name) in ALLOWED or theirs == mine:
                continue
            if LAYERS[theirs] > LAYERS[mine] or (mine, theirs) in SIBLINGS_APART:
                bad.append(f"{rel} (layer {LAYERS[mine]}) imports {name} (layer {LAYERS[theirs]})")
    assert not bad, "\n".join(bad)


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
