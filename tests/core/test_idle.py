"""An idle mount polls the store rarely, and catches up on its first request.

Core tests of :class:`agentfs.vfs.FileSystem` without FUSE: the adapter calls
``accessed()``/``request_done()`` around every request, as here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from agentfs import vfs
from agentfs.identity import Caller
from agentfs.namespace import InodeTable
from agentfs.store.memory import MemoryStore
from agentfs.workspace import Workspace


class CountingStore(MemoryStore):
    """A memory store that counts GETs of journal records (the tail's poll)."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def get(self, key: str, *args: Any, **kw: Any) -> bytes:
        if "/log/" in key:
            self.lists += 1
        return super().get(key, *args, **kw)


@pytest.fixture
def fast_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vfs, "IDLE_AFTER", 0.5)
    monkeypatch.setattr(vfs, "TAIL_IDLE_MAX", 30.0)


async def _request(fs: vfs.FileSystem) -> None:
    await fs.accessed()
    fs.request_done()


def test_idle_mount_polls_rarely_and_busy_mount_often(tmp_path: Path, fast_idle: None) -> None:
    store = CountingStore()

    async def main() -> tuple[int, int]:
        fs = vfs.FileSystem(store, cache_dir=tmp_path, workspace="w", scan_interval=0)
        await fs.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.tail)
            # In use: a request every 0.1 s for 4 s.
            before = store.lists
            for _ in range(40):
                await _request(fs)
                await trio.sleep(0.1)
            busy = store.lists - before
            # Idle: let the backoff settle, then count over the same 4 s.
            await trio.sleep(6)
            before = store.lists
            await trio.sleep(4)
            idle = store.lists - before
            nursery.cancel_scope.cancel()
        return busy, idle

    busy, idle = trio.run(main)
    assert busy >= 4, busy           # at least one poll a second while in use
    assert idle <= 1, idle           # backed off (interval > 4 s) while idle


def test_first_request_after_idle_sees_other_mounts_changes(tmp_path: Path, fast_idle: None) -> None:
    store = CountingStore()

    async def main() -> bool:
        fs = vfs.FileSystem(store, cache_dir=tmp_path / "a", workspace="w", scan_interval=0)
        await fs.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.tail)
            await trio.sleep(8)  # idle: the tail now sleeps for several seconds
            from agentfs.cache import Cache
            other = await Workspace.load_new(store, "w", table=InodeTable(), cache=Cache(tmp_path / "b"),
                                            limiter=trio.CapacityLimiter(4))
            caller = Caller.current("other")
            _, of = await other.create(other.ns.root, "news.txt", 0o644, caller)
            await other.write(of, 0, b"hello")
            await other.release(of, caller)
            ws = fs.workspaces["w"]
            assert ws.ns.resolve("news.txt") is None
            with trio.fail_after(vfs.CATCH_UP_WAIT):
                await _request(fs)   # the first request after idle waits for the catch-up
            seen = ws.ns.resolve("news.txt") is not None
            nursery.cancel_scope.cancel()
        return seen

    assert trio.run(main)
