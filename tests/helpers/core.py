"""Core helpers without FUSE: a request-counting memory store and a Workspace driven as a mount drives it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from agentfs.cache import Cache
from agentfs.identity import Caller
from agentfs.namespace import InodeTable
from agentfs.store.memory import MemoryStore
from agentfs.workspace import Workspace
from agentfs.workspace.groupcommit import Flusher

__all__ = ["Counting", "core_workspace", "with_flusher", "write_core_file"]


class Counting(MemoryStore):
    """Counts every request by method."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def _n(self, name: str) -> None:
        self.calls[name] += 1

    def get(self, *a: Any, **kw: Any) -> Any:
        self._n("get")
        return super().get(*a, **kw)

    def head(self, *a: Any, **kw: Any) -> Any:
        self._n("head")
        return super().head(*a, **kw)

    def put(self, *a: Any, **kw: Any) -> Any:
        self._n("put")
        return super().put(*a, **kw)

    def put_file(self, *a: Any, **kw: Any) -> Any:
        self._n("put")
        return super().put_file(*a, **kw)

    def list(self, *a: Any, **kw: Any) -> Any:
        self._n("list")
        return super().list(*a, **kw)

    def copy(self, *a: Any, **kw: Any) -> Any:
        self._n("copy")
        return super().copy(*a, **kw)

    def delete(self, *a: Any, **kw: Any) -> Any:
        self._n("delete")
        return super().delete(*a, **kw)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


async def core_workspace(store: Any, cache: Path, *, verify: bool = False) -> Workspace:
    """A loaded Workspace ``w`` on ``store`` with its cache in ``cache``, as a mount makes it."""
    ws = Workspace(store, "w", table=InodeTable(), cache=Cache(cache), limiter=trio.CapacityLimiter(8),
                   agent="t", mount_id=os.urandom(6).hex())
    await ws.load(verify=verify)
    return ws


async def with_flusher(ws: Workspace, body: Callable[[], Awaitable[None]], flusher: Flusher | None = None,
                        *, flush_at_end: bool = True) -> None:
    """Run ``body`` with a flusher attached to ``ws`` as a mount does; without
    ``flush_at_end`` the flusher is stopped with the records still queued (a crash)."""
    ws.flusher = flusher or Flusher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.flusher.run, lambda: [ws])
        await body()
        if flush_at_end:
            await ws.flush_deferred()
        nursery.cancel_scope.cancel()
    ws.flusher = None


async def write_core_file(ws: Workspace, path: str, data: bytes, me: Caller, mode: int = 0o644) -> None:
    """Create or overwrite ``path`` with ``data`` through the Workspace (open, write, flush, release)."""
    parent_path, _, name = path.rpartition("/")
    parent = ws.resolve(parent_path)
    if name in (parent.children or {}):
        of = await ws.open(parent.children[name], write=True, truncate=True, append=False, caller=me)  # type: ignore[index]
    else:
        _, of = await ws.create(parent, name, mode, me)
    await ws.write(of, 0, data)
    await ws.flush(of, me)
    await ws.release(of, me)
