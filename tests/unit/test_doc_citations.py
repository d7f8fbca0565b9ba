"""Every test the README and docs/ cite as backing a guarantee exists, in the file named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"`(?:(?P<path>[\w/]*test_\w+\.py)::)?(?P<name>test_\w+)`")
CITED_FILE = re.compile(r"`(?P<path>(?:tests/)?[\w/]*test_\w+\.py)`")


def _test_files() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "tests").rglob("test_*.py")}


def _find(path: str, files: dict[str, str]) -> list[str]:
    return [f for f in files if f == path or f.endswith("/" + path)]


def test_every_test_the_docs_cite_is_defined_in_the_file_they_name() -> None:
    files = _test_files()
    missing = []
    for doc in DOCS:
        for m in CITED.finditer(doc.read_text()):
            where = _find(m["path"], files) if m["path"] else list(files)
            if not any(re.search(rf"^\s*(async )?def {m['name']}\(", files[f], re.M)
                       for f in where):
                missing.append(f"{doc.name}: {m[0]}")
    assert not missing


def test_every_test_file_the_docs_cite_exists() -> None:
    files = _test_files()
    missing = [f"{doc.name}: {m['path']}" for doc in DOCS
               for m in CITED_FILE.finditer(doc.read_text()) if not _find(m["path"], files)]
    assert not missing


def test_the_citation_check_sees_the_guarantees_table() -> None:
    # A pattern that matched nothing would pass the checks above vacuously.
    assert len(CITED.findall((ROOT / "README.md").read_text())) >= 30
