"""Fixtures for the Python API without FUSE (``agentfs.open_workspace``).

- ``url`` (function): a fresh store URL of each kind (memory, a local
  directory, a moto S3 bucket); the store must check clean once the test is
  done.  A test module may override it (e.g. without S3).
- ``clients`` (function): a factory ``clients(ws="ws", **kw)`` of
  :class:`agentfs.api.WorkspaceClient` on ``url``, all closed at teardown;
  ``AGENTFS_AGENT`` is cleared so the agent is what the test says.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentfs
from agentfs.api import WorkspaceClient
from agentfs.check import check_store
from agentfs.store import open_store

__all__ = ["WS", "checked_clean"]

#: The workspace ``clients()`` opens by default.
WS = "ws"


@pytest.fixture(params=["memory", "file", "s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL; the store must be consistent when the test is done."""
    if request.param == "memory":
        u = f"memory://t{uuid.uuid4().hex}"
    elif request.param == "file":
        u = f"file://{tmp_path}/store"
    else:
        u = request.getfixturevalue("s3_url")
    yield from checked_clean(u)


def checked_clean(u: str) -> Iterator[str]:
    """Yield the store URL ``u``; afterwards the store must be consistent (agentfs check)."""
    yield u
    store = open_store(u)
    try:
        rep = check_store(store)
    finally:
        store.close()
    assert rep.clean, rep.model_dump_json(indent=2)


@pytest.fixture
def clients(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., WorkspaceClient]]:
    """Factory of clients of workspace ``ws`` of ``url``; all closed at teardown."""
    monkeypatch.delenv("AGENTFS_AGENT", raising=False)
    opened: list[WorkspaceClient] = []

    def make(ws: str = WS, **kw: Any) -> WorkspaceClient:
        c = agentfs.open_workspace(url, ws, **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()
