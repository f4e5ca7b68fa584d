"""Deferred group commit: a close waits for its data PUT only.

Core tests drive ``Workspace`` without FUSE, with a :class:`Flusher` running
as a mount runs it: store requests per small file, journal order after
operations right behind a close, fsync, failed flushes, and the crash window
(records queued, never written) recovered by the next load.  The mount test
SIGKILLs a real daemon whose deferred records were never written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from agentfs.errors import StoreUnavailable
from agentfs.identity import Caller
from agentfs.store.faults import FaultyStore
from agentfs.store.memory import MemoryStore
from agentfs.workspace import Workspace
from agentfs.workspace.groupcommit import Flusher
from tests.helpers.core import Counting, core_workspace, with_flusher, write_core_file


def _tree(ws: Workspace) -> dict[str, Any]:
    return {p: e.model_dump() for p, e in ws.ns.to_state().entries.items()}


# ---------------------------------------------------------------- requests per file


@pytest.mark.parametrize("n", [200])
def test_small_file_creates_cost_about_one_request_each(tmp_path: Path, n: int) -> None:
    store = Counting()
    me = Caller.current("t")

    async def main() -> None:
        ws = await core_workspace(store, tmp_path / "a")
        await ws.mkdir(ws.ns.root, "d", 0o755, me)

        # Without deferral: data PUT + journal PUT per file.
        before = store.total
        for i in range(20):
            await write_core_file(ws, f"d/sync{i}", b"x" * 4096, me)
        assert (store.total - before) / 20 >= 2

        # With deferral: the data PUT per file, the journal in batches.
        before = store.total

        async def body() -> None:
            for i in range(n):
                await write_core_file(ws, f"d/f{i:04d}", os.urandom(4096), me)
                # the local view does not lag: committed-looking, with its etag
                node = ws.resolve(f"d/f{i:04d}")
                assert not node.pending and node.entry.etag is not None and node.entry.size == 4096

        await with_flusher(ws, body)
        per_file = (store.total - before) / n
        assert per_file <= 1.1, f"{per_file:.3f} requests per file ({store.calls})"
        assert ws.deferred_pending == 0

        fresh = await core_workspace(store, tmp_path / "b")
        assert _tree(fresh) == _tree(ws)
        for i in range(0, n, 37):
            node = fresh.resolve(f"d/f{i:04d}")
            assert await fresh.read(node, 0, 8192) == await ws.read(ws.resolve(f"d/f{i:04d}"), 0, 8192)

    trio.run(main)


def test_times_and_modes_set_right_after_close_ride_along(tmp_path: Path) -> None:
    """tar x / cp -p / rsync -a set times and modes right after each close: the
    change joins the file's deferred record (one request per file, not two); a
    setattr of a file whose record is committed still commits before it returns."""
    store = Counting()
    me = Caller.current("t")
    n = 100

    async def main() -> None:
        ws = await core_workspace(store, tmp_path / "a")
        await ws.mkdir(ws.ns.root, "d", 0o755, me)
        before = store.total

        async def body() -> None:
            for i in range(n):
                await write_core_file(ws, f"d/f{i:03d}", b"t" * 512, me)
                node = ws.resolve(f"d/f{i:03d}")
                await ws.setattr(node, me, mtime_ns=1_000_000_000 * (1000 + i), atime_ns=1)
                await ws.setattr(node, me, mode=0o600)

        await with_flusher(ws, body)
        per_file = (store.total - before) / n
        assert per_file <= 1.1, f"{per_file:.3f} requests per file ({store.calls})"

        fresh = await core_workspace(store, tmp_path / "b")
        assert _tree(fresh) == _tree(ws)
        for i in (0, 57, n - 1):
            e = fresh.resolve(f"d/f{i:03d}").entry
            assert (e.mode, e.mtime_ns) == (0o600, 1_000_000_000 * (1000 + i))

        # A committed file: the change is in the journal when setattr returns.
        async def committed() -> None:
            node = ws.resolve("d/f000")
            assert node.entry.vseq >= 0
            await ws.setattr(node, me, mode=0o640)
            assert ws.deferred_pending == 0

        await with_flusher(ws, committed, Flusher(delay=3600, max_pending=10**6), flush_at_end=False)
        again = await core_workspace(store, tmp_path / "c")
        assert again.resolve("d/f000").entry.mode == 0o640

    trio.run(main)


@pytest.mark.parametrize("delay", [0.0, 0.002])
def test_appends_while_batches_are_in_flight(tmp_path: Path, delay: float) -> None:
    """open(append)/write/close in a loop while the flusher writes batches:
    an older batch landing must not take the local view back to an older
    version (the next open would start from it and lose a race with itself)."""
    store = MemoryStore()
    me = Caller.current("t")

    async def main() -> None:
        ws = await core_workspace(store, tmp_path / "a")
        await write_core_file(ws, "log", b"", me)
        expected = b""

        async def body() -> None:
            nonlocal expected
            for i in range(150):
                line = f"line {i}\n".encode()
                node = ws.resolve("log")
                of = await ws.open(node, write=True, truncate=False, append=True, caller=me)
                await ws.write(of, of.size, line)
                await ws.release(of, me)
                expected += line
                await trio.sleep(0)

        await with_flusher(ws, body, Flusher(delay=delay, max_pending=1))
        assert sorted(p for p, _ in ws.ns.walk()) == ["log"]  # no conflict copies
        assert await ws.read(ws.resolve("log"), 0, 1 << 20) == expected
        fresh = await core_workspace(store, tmp_path / "b")
        assert _tree(fresh) == _tree(ws)
        assert await fresh.read(fresh.resolve("log"), 0, 1 << 20) == expected

    trio.run(main)


# ---------------------------------------------------------------- order


def test_operations_right_after_close_keep_journal_order(tmp_path: Path) -> None:
    store = MemoryStore()
    me = Caller.current("t")

    async def main() -> None:
        ws = await core_workspace(store, tmp_path / "a")
        # A long delay: only the operations' own commits carry the deferred records.
        flusher = Flusher(delay=3600, max_pending=10**6)

        async def body() -> None:
            root = ws.ns.root
            await write_core_file(ws, "a.txt", b"a1", me)
            await ws.rename(root, "a.txt", root, "b.txt", me)            # rename right after close
            await write_core_file(ws, "gone.txt", b"g", me)
            await ws.unlink(root, "gone.txt", me)                        # unlink right after close
            await write_core_file(ws, "x.txt", b"x1", me, mode=0o600)
            await ws.setxattr(ws.resolve("x.txt"), "user.k", b"v", me)   # setxattr right after close
            await write_core_file(ws, "x.txt", b"x2, longer", me)            # overwrite, deferred
            await ws.setattr(ws.resolve("x.txt"), me, mode=0o640)        # chmod right after
            await ws.mkdir(root, "d", 0o755, me)
            await write_core_file(ws, "d/in.txt", b"in", me)
            await ws.rename(root, "d", root, "e", me)                    # dir rename moves a deferred file
            await write_core_file(ws, "last.txt", b"last", me)                # left deferred: sync writes it
            assert ws.deferred_pending == 1
            await ws.sync(me)
            assert ws.deferred_pending == 0

        await with_flusher(ws, body, flusher, flush_at_end=False)

        fresh = await core_workspace(store, tmp_path / "b")
        assert _tree(fresh) == _tree(ws)
        assert sorted(p for p, _ in fresh.ns.walk()) == ["b.txt", "e", "e/in.txt", "last.txt", "x.txt"]
        x = fresh.resolve("x.txt")
        assert x.entry.mode == 0o640 and fresh.getxattr(x, "user.k") == b"v"
        assert await fresh.read(x, 0, 100) == b"x2, longer"
        assert await fresh.read(fresh.resolve("e/in.txt"), 0, 100) == b"in"
        assert await fresh.read(fresh.resolve("b.txt"), 0, 100) == b"a1"
        assert not any(k.endswith("gone.txt") for k in (o.key for o in store.list("w/")))

    trio.run(main)


def test_other_mounts_commits_between_close_and_batch(tmp_path: Path) -> None:
    """Commits of another mount applied while our records are queued: the local
    view keeps our closes on top, and after the batch it equals a fresh replay
    (versions stamped with the seq of our batch)."""
    store = MemoryStore()
    me = Caller.current("t")

    async def main() -> None:
        a = await core_workspace(store, tmp_path / "a")
        await write_core_file(a, "f", b"v1", me)
        b = await core_workspace(store, tmp_path / "b")

        async def body() -> None:
            await write_core_file(a, "f", b"v2 from a", me)
            await write_core_file(a, "g", b"new from a", me)
            await write_core_file(b, "h", b"from b", me)
            await b.mkdir(b.ns.root, "dir-b", 0o755, me)
            await a.pull()   # b's commits under our queued records
            assert await a.read(a.resolve("f"), 0, 100) == b"v2 from a"
            assert a.resolve("g").entry.etag is not None and a.deferred_pending == 2

        await with_flusher(a, body, Flusher(delay=3600, max_pending=10**6))
        fresh = await core_workspace(store, tmp_path / "c")
        assert _tree(fresh) == _tree(a)
        assert await fresh.read(fresh.resolve("f"), 0, 100) == b"v2 from a"

    trio.run(main)


def test_fsync_waits_for_the_journal_record(tmp_path: Path) -> None:
    store = MemoryStore()
    me = Caller.current("t")

    async def main() -> None:
        ws = await core_workspace(store, tmp_path / "a")

        async def body() -> None:
            _, of = await ws.create(ws.ns.root, "f", 0o600, me)
            await ws.write(of, 0, b"durable")
            await ws.fsync(of, me)
            assert ws.deferred_pending == 0
            other = await core_workspace(store, tmp_path / "b")   # the journal alone, no adoption
            assert other.resolve("f").entry.mode == 0o600
            assert await other.read(other.resolve("f"), 0, 100) == b"durable"
            await ws.release(of, me)

        await with_flusher(ws, body, Flusher(delay=3600, max_pending=10**6))

    trio.run(main)


def test_failed_flush_keeps_records_queued_in_order(tmp_path: Path) -> None:
    store = FaultyStore(MemoryStore())
    me = Caller.current("t")

    async def main() -> None:
        ws = await core_workspace(store, tmp_path / "a")

        async def body() -> None:
            await write_core_file(ws, "f", b"one", me)
            store.outage = True
            with pytest.raises(StoreUnavailable):
                await ws.flush_deferred()
            assert ws.deferred_pending == 1
            with pytest.raises(StoreUnavailable):
                await ws.mkdir(ws.ns.root, "d", 0o755, me)
            assert ws.deferred_pending == 1
            store.outage = False
            await ws.unlink(ws.ns.root, "f", me)     # carries the deferred create first
            assert ws.deferred_pending == 0

        await with_flusher(ws, body, Flusher(delay=3600, max_pending=10**6))
        fresh = await core_workspace(store, tmp_path / "b")
        assert [p for p, _ in fresh.ns.walk()] == []
        assert _tree(fresh) == _tree(ws)

    trio.run(main)


def test_reader_waits_for_another_mounts_deferred_record(tmp_path: Path) -> None:
    """Mount B reading a file that A overwrote (record still queued) waits for
    A's record instead of adopting A's object as an external write."""
    store = MemoryStore()
    me = Caller.current("t")

    async def main() -> None:
        a = await core_workspace(store, tmp_path / "a")
        await write_core_file(a, "f", b"version one", me)
        b = await core_workspace(store, tmp_path / "b")

        async def body() -> None:
            await write_core_file(a, "f", b"version two, longer", me)
            assert a.deferred_pending == 1

            async def flush_later() -> None:
                await trio.sleep(0.2)
                await a.flush_deferred()

            async with trio.open_nursery() as n:
                n.start_soon(flush_later)
                data = await b.read(b.resolve("f"), 0, 100, follow_changes=True)
            assert data == b"version two, longer"

        await with_flusher(a, body, Flusher(delay=3600, max_pending=10**6))
        actions = [r.action for seq in range(1, a.ns.seq + 1)
                   for r in (a.journal.fetch(seq) or _no()).records]
        assert "external-write" not in actions, actions

    trio.run(main)


def _no() -> Any:
    raise AssertionError("journal gap")


# ---------------------------------------------------------------- crash window


def test_load_adopts_closes_whose_records_were_never_written(tmp_path: Path) -> None:
    store = MemoryStore()
    me = Caller.current("t")
    files = {f"d/f{i}": os.urandom(100 + i) for i in range(10)}

    async def main() -> None:
        ws = await core_workspace(store, tmp_path / "a")
        await ws.mkdir(ws.ns.root, "d", 0o755, me)
        await write_core_file(ws, "old.txt", b"old version", me)

        async def body() -> None:
            for p, data in files.items():
                await write_core_file(ws, p, data, me)
            await write_core_file(ws, "old.txt", b"new version, closed", me)
            assert ws.deferred_pending == len(files) + 1

        # the "crash": the flusher stops with every record still queued
        await with_flusher(ws, body, Flusher(delay=3600, max_pending=10**6), flush_at_end=False)
        journal_only = await core_workspace(store, tmp_path / "b")
        assert journal_only.ns.resolve("d/f0") is None  # really never committed

        fresh = await core_workspace(store, tmp_path / "c", verify=True)   # what a mount does
        for p, data in files.items():
            assert await fresh.read(fresh.resolve(p), 0, 1000) == data, p
        assert await fresh.read(fresh.resolve("old.txt"), 0, 100) == b"new version, closed"
        # adoption is journaled: a third load needs no scan
        again = await core_workspace(store, tmp_path / "d")
        assert await again.read(again.resolve("d/f3"), 0, 1000) == files["d/f3"]

    trio.run(main)
