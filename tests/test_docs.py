"""The Python blocks of the docs run as written, in order, on the embedded models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("page", ["quickstart.md", "strategies.md"])
def test_doc_examples_run(page: str):
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"no python blocks in {page}"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message names the failing block
            raise AssertionError(f"{page} block {i} failed: {e!r}\n{block}") from e
