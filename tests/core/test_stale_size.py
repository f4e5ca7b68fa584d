"""A file that shrank after the kernel learnt its size reads as ESTALE, not as
zero padding (the kernel pads a short FUSE read to the page end)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio

from agentfs.cache import Cache
from agentfs.errors import Stale
from agentfs.identity import Caller
from agentfs.namespace import InodeTable
from agentfs.store.memory import MemoryStore
from agentfs.workspace import Workspace


async def _ws(store: MemoryStore, cache: Path) -> Workspace:
    return await Workspace.load_new(store, "w", table=InodeTable(), cache=Cache(cache),
                                    limiter=trio.CapacityLimiter(4))


async def _write(ws: Workspace, name: str, data: bytes) -> None:
    me = Caller.current("t")
    node = ws.ns.resolve(name)
    if node is None:
        _, of = await ws.create(ws.ns.root, name, 0o644, me)
    else:
        of = await ws.open(node, write=True, truncate=True, append=False, caller=me)
    await ws.write(of, 0, data)
    await ws.release(of, me)


def test_shrunk_file_is_stale_for_a_reader_told_the_old_size(tmp_path: Path) -> None:
    store = MemoryStore()

    async def main() -> None:
        a = await _ws(store, tmp_path / "a")
        b = await _ws(store, tmp_path / "b")
        await _write(a, "f", b"x" * 15000)
        await b.pull()
        node = b.resolve("f")
        assert b.attr(node).size == 15000          # the kernel now believes 15000
        await _write(a, "f", b"short")
        await b.pull()                             # the change arrives before the invalidation
        with pytest.raises(Stale) as ei:
            await b.read(node, 0, 128 * 1024)
        assert ei.value.errno == errno.ESTALE
        assert b.attr(node).size == 5              # the kernel is told the new size...
        assert await b.read(node, 0, 128 * 1024) == b"short"   # ...and then reads it whole
        # A reader whose idea of the size is current gets a normal short read at EOF.
        assert await b.read(node, 2, 128 * 1024) == b"ort"

    trio.run(main)
