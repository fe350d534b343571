"""The docs: their Python blocks run as written, their links resolve, they read as user docs
(no development history), and the committed results stay small."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
RESULTS_LIMIT = 2 * 1024 * 1024  # bytes: tables and plots, not raw records

# Words of a lab notebook, not of user docs: git log holds the history, papers are cited by
# title and authors (a reader has no "paper 001").
HISTORY = re.compile(
    r"\bsessions? ?[-#]? ?\d"
    r"|\bsessions \d"
    r"|\b(?:paper|seed|reference) 0\d\d\b"
    r"|\bissues? #?\d"
    r"|\bdesign notes? \d"
    r"|\bbefore this work\b"
    r"|\bthe previous (?:calculator|PRM|policy)\b",
    re.IGNORECASE,
)


def _user_pages() -> list[Path]:
    # docs/experiments/ holds research scripts on their way to research/experiments/.
    docs = [p for p in sorted(DOCS.rglob("*.md")) if "experiments" not in p.parts]
    pages = [ROOT / "README.md", *docs]
    notes = ROOT / "research" / "NOTES.md"
    return pages + ([notes] if notes.exists() else [])


@pytest.mark.slow
@pytest.mark.parametrize("page", ["quickstart.md", "strategies.md", "router.md"])
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


def test_history_regex_catches_notebook_words():
    for text in ("the session-1 PRM", "sessions 2-4", "Session 7 ships", "paper 001",
                 "seed 002's allocation", "issue 4", "issue #6", "design note 16"):  # fmt: skip
        assert HISTORY.search(text), text
    for text in ("--seed 1000", "seed 0", "a thread_id per session", "sessions share nothing"):
        assert not HISTORY.search(text), text


def test_docs_have_no_development_history():
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {m.group(0)!r}"
        for page in _user_pages()
        for n, line in enumerate(page.read_text().splitlines(), 1)
        for m in HISTORY.finditer(line)
    ]
    assert not hits, (
        "the docs narrate development history (git log holds it; cite papers by title and "
        "authors):\n" + "\n".join(hits)
    )


def test_doc_links_resolve():
    link = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in _user_pages()
        for target in link.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def _anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives ``page``: lower case, punctuation dropped, spaces as
    hyphens (the first of equal headings; outside code blocks)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    out = set()
    for title in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_doc_anchors_resolve():
    link = re.compile(r"\]\(([^)\s#]*)#([^)\s]+)\)")
    broken = []
    for page in _user_pages():
        for target, anchor in link.findall(page.read_text()):
            doc = (page.parent / target) if target else page
            if doc.suffix == ".md" and doc.exists() and anchor not in _anchors(doc):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, "links to missing headings:\n" + "\n".join(broken)


def _committed(folder: Path) -> list[Path]:
    """The files git tracks under ``folder`` (what a clone gets); every file without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", str(folder)],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        out = b""
    files = [ROOT / p for p in out.decode().split("\0") if p]
    return [f for f in files if f.exists()] or [f for f in folder.rglob("*") if f.is_file()]


def test_results_stay_small():
    files = _committed(RESULTS)
    total = sum(f.stat().st_size for f in files)
    largest = sorted(files, key=lambda f: f.stat().st_size, reverse=True)[:5]
    assert total < RESULTS_LIMIT, (
        f"docs/results holds {total / 2**20:.1f} MB (limit 2 MB): commit summary tables and "
        "plots, not per-problem records; largest: "
        + ", ".join(f"{f.relative_to(ROOT)} ({f.stat().st_size // 1024} KB)" for f in largest)
    )


def test_every_result_is_cited():
    """A committed result is there because a page cites it: by its path under docs/results,
    or by name from a page next to it (a report citing its plots)."""
    text = "\n".join(p.read_text() for p in _user_pages())

    def cited(f: Path) -> bool:
        if f.relative_to(RESULTS).as_posix() in text:
            return True
        return any(f.name in page.read_text() for page in f.parent.glob("*.md") if page != f)

    uncited = [str(f.relative_to(ROOT)) for f in _committed(RESULTS) if not cited(f)]
    assert not uncited, f"results no page cites (cite them or delete them): {uncited}"
