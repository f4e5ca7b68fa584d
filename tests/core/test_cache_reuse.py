"""A file's own uploaded working copy becomes its clean cached copy.

Core tests without FUSE: reading back what this mount just wrote, or opening
it again to append, makes no GET of the file's bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from agentfs.cache import Cache
from agentfs.identity import Caller
from agentfs.namespace import InodeTable
from agentfs.store.memory import MemoryStore
from agentfs.workspace import Workspace


class DataGets(MemoryStore):
    """Counts GETs of file bytes (not of the journal)."""

    def __init__(self) -> None:
        super().__init__()
        self.data_gets = 0

    def get(self, key: str, *args: Any, **kw: Any) -> bytes:
        if not key.startswith(".agentfs/"):
            self.data_gets += 1
        return super().get(key, *args, **kw)


async def _ws(store: MemoryStore, cache: Path) -> Workspace:
    return await Workspace.load_new(store, "w", table=InodeTable(), cache=Cache(cache),
                                    limiter=trio.CapacityLimiter(4))


def test_read_back_and_append_need_no_get(tmp_path: Path) -> None:
    store = DataGets()

    async def main() -> None:
        ws = await _ws(store, tmp_path / "a")
        me = Caller.current("me")
        node, of = await ws.create(ws.ns.root, "log.txt", 0o644, me)
        await ws.write(of, 0, b"one\n")
        await ws.release(of, me)
        for line in (b"two\n", b"three\n"):
            of = await ws.open(node, write=True, truncate=False, append=True, caller=me)
            await ws.write(of, node.entry.size, line)
            await ws.release(of, me)
        assert await ws.read(node, 0, 100) == b"one\ntwo\nthree\n"
        assert store.data_gets == 0
        # Another mount sees the bytes from the store (and GETs them).
        other = await _ws(store, tmp_path / "b")
        assert await other.read(other.resolve("log.txt"), 0, 100) == b"one\ntwo\nthree\n"
        assert store.data_gets > 0

    trio.run(main)


def test_cached_copy_not_used_after_another_mount_overwrote(tmp_path: Path) -> None:
    store = MemoryStore()

    async def main() -> None:
        a = await _ws(store, tmp_path / "a")
        me = Caller.current("a")
        node, of = await a.create(a.ns.root, "f", 0o644, me)
        await a.write(of, 0, b"from a")
        await a.release(of, me)
        b = await _ws(store, tmp_path / "b")
        them = Caller.current("b")
        bnode = b.resolve("f")
        of = await b.open(bnode, write=True, truncate=True, append=False, caller=them)
        await b.write(of, 0, b"from b, longer")
        await b.release(of, them)
        await a.pull()
        assert await a.read(node, 0, 100) == b"from b, longer"

    trio.run(main)
