"""Shared test fixtures and the test tiers.

Fixtures live in small plugin modules of ``tests/helpers/`` so that each has one owner:

- ``tests/helpers/s3.py``: the moto S3 server (session), buckets, store URLs;
- ``tests/helpers/mount.py``: real FUSE mounts of ``agentfs mount --foreground``;
- ``tests/helpers/api.py``: store URLs of every kind and Python API clients;
- ``tests/helpers/locks.py``: lock-holding child processes.

Every test is marked with its tier, the folder it lives in (``core``: no FUSE;
``api``: the Python API, CLI, MCP and web without mounts; ``mount``: real FUSE
mounts; ``crash``: SIGKILLed mounts), so ``pytest -m core`` runs one tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.helpers.s3", "tests.helpers.mount", "tests.helpers.api", "tests.helpers.locks"]

TESTS = Path(__file__).resolve().parent
TIERS = ("core", "api", "mount", "crash")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the tier named by its folder below ``tests/``."""
    for item in items:
        try:
            tier = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
