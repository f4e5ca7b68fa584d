"""Adoption never describes a file by a version older than its journal's.

The adoption scan compares a listing of the store with the journal; a file
written here while the listing ran is left to the next scan.  An adoption
record (``external-*``) names the version its author's journal had
(``detail.was``); if a commit for that file lands first, the record is
dropped at commit time, never applied on top of the newer record.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import trio

from agentfs.identity import Caller
from agentfs.models import PutOp
from agentfs.store.memory import MemoryStore
from agentfs.workspace import adoption
from agentfs.workspace.groupcommit import Flusher
from tests.helpers.core import core_workspace, with_flusher, write_core_file


class SlowList(MemoryStore):
    """A listing of the workspace's files takes its snapshot at once and
    returns it only after ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: threading.Event | None = None

    def list(self, *a: Any, **kw: Any) -> Any:
        items = list(super().list(*a, **kw))
        if self.hold is not None and (a[0] if a else kw.get("prefix", "")) == "w/":
            self.hold.wait(10)
        return iter(items)


def _actions(ws: Any) -> list[str]:
    return [r.action for seq in range(1, ws.ns.seq + 1) for r in ws.journal.fetch(seq).records]


def test_a_write_during_the_listing_is_not_adopted_back(tmp_path: Path) -> None:
    store = SlowList()
    me = Caller.current("t")

    async def main() -> None:
        ws = await core_workspace(store, tmp_path / "a")
        await write_core_file(ws, "f", b"version one", me)
        store.hold = threading.Event()
        async with trio.open_nursery() as n:
            n.start_soon(lambda: adoption.scan(ws, now=time.time() + 3600))
            await trio.sleep(0.1)  # the listing has its snapshot: version one
            await write_core_file(ws, "f", b"version two", me)
            store.hold.set()
        store.hold = None
        assert ws.resolve("f").entry.etag == store.head("w/f").etag
        assert "external-write" not in _actions(ws), _actions(ws)
        assert await ws.read(ws.resolve("f"), 0, 100) == b"version two"

    trio.run(main)


def test_an_adoption_overtaken_by_a_commit_is_dropped(tmp_path: Path) -> None:
    store = MemoryStore()
    me = Caller.current("t")

    async def main() -> None:
        a = await core_workspace(store, tmp_path / "a")
        await write_core_file(a, "f", b"version one", me)
        b = await core_workspace(store, tmp_path / "b")
        seen = b.resolve("f").entry

        async def body() -> None:
            await write_core_file(a, "f", b"version two, longer", me)  # record queued
            info = store.head("w/f")
            # B found A's object before A's record: it would adopt it as external
            stale = b.record("external-write", PutOp(path="f", entry=seen.model_copy(
                update={"etag": "an-older-listing", "size": 3})), Caller(pid=None, uid=0, gid=0, agent="external"),
                was=seen.etag)
            await a.flush_deferred()
            await b.commit([stale])
            assert b.resolve("f").entry.etag == info.etag
            assert b.resolve("f").entry.size == len(b"version two, longer")

        await with_flusher(a, body, Flusher(delay=3600, max_pending=10**6))
        await a.pull()
        assert "external-write" not in _actions(a), _actions(a)

    trio.run(main)
