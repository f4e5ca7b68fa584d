"""Files for tests: the sha256 of a file read in blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["MiB", "sha256_file"]

MiB = 1024 * 1024


def sha256_file(path: Path, block: int = MiB) -> str:
    """The sha256 hex digest of ``path``, read ``block`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
