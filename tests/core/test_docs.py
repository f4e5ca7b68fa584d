"""docs/SEMANTICS.md names a test for every promise: each named test exists.

A row of the semantics tables cites ``test_file.py::test_name`` (or
``tests/test_file.py::test_name``, ``::test_name`` after a cited file, or
``test_prefix_*`` for a family of tests).
A renamed or deleted test would leave a promise without its check.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITE = re.compile(r"`(?:tests/)?(test_\w+\.py)?::(test_\w+\*?)")


def cited(doc: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for line in doc.read_text().splitlines():
        last = None
        for m in CITE.finditer(line):
            last = m.group(1) or last
            if last is not None:
                out.append((last, m.group(2)))
    return out


def test_every_test_named_in_semantics_exists() -> None:
    cites = cited(ROOT / "docs" / "SEMANTICS.md")
    assert len(cites) > 50
    missing = []
    for file, name in cites:
        path = ROOT / "tests" / file
        pattern = re.escape(name.rstrip("*")) + (r"\w*" if name.endswith("*") else r"\b")
        if not path.exists() or not re.search(rf"^(async )?def {pattern}", path.read_text(), re.M):
            missing.append(f"{file}::{name}")
    assert not missing, "docs/SEMANTICS.md cites tests that do not exist: " + ", ".join(sorted(set(missing)))
