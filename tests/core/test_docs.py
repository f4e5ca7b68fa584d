"""The docs name tests that exist.

A row of the semantics tables in docs/SEMANTICS.md cites ``test_file.py::test_name``
(or ``tests/<tier>/test_file.py::test_name``, ``::test_name`` after a cited file,
or ``test_prefix_*`` for a family of tests); the file is looked up in the tier
folders (``tests/core``, ``tests/api``, ``tests/mount``, ``tests/crash``).
A renamed or deleted test would leave a promise without its check.  Paths of
test files named in README.md, docs/SEMANTICS.md and docs/ARCHITECTURE.md exist too.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("core", "api", "mount", "crash")
CITE = re.compile(r"`(?:tests/(?:\w+/)?)?(test_\w+\.py)?::(test_\w+\*?)")
PATH = re.compile(r"\btests/[\w/]*\.py\b")


def cited(doc: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in doc.read_text().splitlines():
        last = None
        for m in CITE.finditer(line):
            last = m.group(1) or last
            if last is not None:
                out.append((last, m.group(2)))
    return out


def tier_file(name: str) -> Path | None:
    """The one test file called ``name`` in the tier folders (None: none or several)."""
    found = [ROOT / "tests" / tier / name for tier in TIERS if (ROOT / "tests" / tier / name).exists()]
    return found[0] if len(found) == 1 else None


def test_every_test_named_in_semantics_exists() -> None:
    cites = cited(ROOT / "docs" / "SEMANTICS.md")
    assert len(cites) > 50
    missing = []
    for file, name in cites:
        path = tier_file(file)
        pattern = re.escape(name.rstrip("*")) + (r"\w*" if name.endswith("*") else r"\b")
        if path is None or not re.search(rf"^(async )?def {pattern}", path.read_text(), re.M):
            missing.append(f"{file}::{name}")
    assert not missing, "docs/SEMANTICS.md cites tests that do not exist: " + ", ".join(sorted(set(missing)))


def test_every_test_path_in_the_docs_exists() -> None:
    docs = [ROOT / "README.md", ROOT / "docs" / "SEMANTICS.md", ROOT / "docs" / "ARCHITECTURE.md"]
    missing = sorted({f"{doc.relative_to(ROOT)}: {p}" for doc in docs
                      for p in PATH.findall(doc.read_text()) if not (ROOT / p).exists()})
    assert not missing, "the docs name test files that do not exist: " + ", ".join(missing)
