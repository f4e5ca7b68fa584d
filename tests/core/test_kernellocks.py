"""The kernel-lock manager without FUSE: two "mounts" (two KernelLocks) on one store.

What a mount does with flock/fcntl requests the binding hands it: local
conflicts, POSIX ranges, the lease across mounts, cached leases and the
doorbell, waiters that leave, the journal position handed over.  The same
requests through real mounts are in tests/mount/test_kernel_locks_mount.py.
"""

from __future__ import annotations

import fcntl
from collections import Counter
from typing import Any

import pytest
import trio

from agentfs.errors import WouldBlock
from agentfs.identity import Caller
from agentfs.locks import KernelLocks, LeaseManager, LeaseStore, Who, doorbell_key
from agentfs.store.memory import MemoryStore

WS, INO, PATH = "ws", 7, "data/f.db"


class CountingStore(MemoryStore):
    """A memory store that counts requests by operation."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def get(self, key: str, *a: Any, **kw: Any) -> bytes:
        self.calls["get"] += 1
        return super().get(key, *a, **kw)

    def head(self, key: str) -> Any:
        self.calls["head"] += 1
        return super().head(key)

    def put(self, key: str, data: bytes, **kw: Any) -> Any:
        self.calls["put"] += 1
        return super().put(key, data, **kw)

    def total(self) -> int:
        return sum(self.calls.values())


class Mount:
    """One mount's KernelLocks with its handover hooks recorded."""

    def __init__(self, store: MemoryStore, name: str, seq: int = 0) -> None:
        self.seq = seq
        self.caught_up: list[int] = []
        self.settled = 0
        self.kl = KernelLocks(store, agent=name, mount_id=name, ttl=30.0, limiter=None,
                              settle=self._settle, catch_up=self._catch_up)

    async def _settle(self, ws: str, path: str) -> int:
        self.settled += 1
        return self.seq

    async def _catch_up(self, ws: str, path: str, seq: int) -> None:
        self.caught_up.append(seq)

    async def flock(self, owner: int, op: int, *, fh: int | None = None) -> None:
        await self.kl.flock(WS, INO, PATH, fh=fh or owner, owner=owner, op=op, pid=owner)

    async def setlk(self, owner: int, type_: int, start: int = 0, length: int = 0, *,
                    sleep: bool = False, fh: int | None = None) -> None:
        await self.kl.setlk(WS, INO, PATH, fh=fh or owner, owner=owner, type_=type_, start=start,
                            length=length, pid=owner, sleep=sleep)


def holders(store: MemoryStore) -> list[tuple[str, str, bool]]:
    lease, _ = LeaseStore(store, WS).read(PATH)
    return [(h.mount, h.mode, h.cached) for h in lease.holders] if lease else []


def run(fn: Any) -> None:
    trio.run(fn)


def test_flock_local_conflicts_without_the_store() -> None:
    async def main() -> None:
        store = CountingStore()
        a = Mount(store, "A")
        await a.flock(1, fcntl.LOCK_SH | fcntl.LOCK_NB)
        await a.flock(2, fcntl.LOCK_SH | fcntl.LOCK_NB)
        with pytest.raises(WouldBlock):
            await a.flock(3, fcntl.LOCK_EX | fcntl.LOCK_NB)
        n = store.total()
        await a.flock(1, fcntl.LOCK_UN)
        with pytest.raises(WouldBlock):
            await a.flock(3, fcntl.LOCK_EX | fcntl.LOCK_NB)  # 2 still shares it
        await a.flock(2, fcntl.LOCK_UN)
        await a.flock(3, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # the last unlock marks the lease cached, the upgrade takes it: one put each
        assert store.total() - n == 2 and store.calls["put"] == 3, store.calls
        assert holders(store) == [("A", "exclusive", False)]
    run(main)


def test_posix_ranges_split_merge_and_getlk() -> None:
    async def main() -> None:
        store = MemoryStore()
        a = Mount(store, "A")
        await a.setlk(1, fcntl.F_WRLCK, 0, 100)
        await a.setlk(1, fcntl.F_UNLCK, 40, 20)  # split: [0,40) and [60,100)
        await a.setlk(2, fcntl.F_WRLCK, 45, 10)  # inside the hole: granted
        with pytest.raises(WouldBlock):
            await a.setlk(2, fcntl.F_RDLCK, 30, 20)
        got = await a.kl.getlk(WS, INO, owner=2, type_=fcntl.F_RDLCK, start=30, length=20)
        assert got == (fcntl.F_WRLCK, 0, 40, 1)
        got = await a.kl.getlk(WS, INO, owner=2, type_=fcntl.F_WRLCK, start=100, length=0)
        assert got[0] == fcntl.F_UNLCK
        await a.setlk(1, fcntl.F_WRLCK, 40, 5)  # merges with [0,40)
        got = await a.kl.getlk(WS, INO, owner=3, type_=fcntl.F_RDLCK, start=0, length=0)
        assert got == (fcntl.F_WRLCK, 0, 45, 1)
        await a.kl.unlock_owner(WS, INO, 1)  # a close by process 1: all its locks go
        got = await a.kl.getlk(WS, INO, owner=3, type_=fcntl.F_WRLCK, start=0, length=0)
        assert got == (fcntl.F_WRLCK, 45, 10, 2)
        # flock and POSIX locks are independent on one mount, as on Linux
        await a.flock(9, fcntl.LOCK_EX | fcntl.LOCK_NB)
    run(main)


def test_two_mounts_exclude_and_cached_lease_is_given_back() -> None:
    async def main() -> None:
        store = CountingStore()
        a, b = Mount(store, "A", seq=5), Mount(store, "B")
        async with trio.open_nursery() as n:
            n.start_soon(a.kl.heartbeat)
            n.start_soon(b.kl.heartbeat)
            await a.flock(1, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(WouldBlock):
                await b.flock(2, fcntl.LOCK_SH | fcntl.LOCK_NB)  # held for real: refused at once
            await a.flock(1, fcntl.LOCK_UN)
            assert holders(store) == [("A", "exclusive", True)]  # kept, marked cached
            # relock and unlock on A: no request at all
            before = store.total() - store.calls["head"]  # the doorbell polls are HEADs
            for _ in range(20):
                await a.flock(1, fcntl.LOCK_EX | fcntl.LOCK_NB)
                await a.flock(1, fcntl.LOCK_UN)
            assert store.total() - store.calls["head"] == before, store.calls
            assert a.settled == 0  # nothing handed over while nobody else asked
            # B asks: A hears the doorbell, settles and gives the lease back; B catches up
            with trio.fail_after(10):
                await b.flock(2, fcntl.LOCK_SH | fcntl.LOCK_NB)
            assert a.settled == 1 and b.caught_up == [5]
            assert holders(store) == [("B", "shared", False)]
            # A does not cache in this workspace for a while: its unlock gives back
            await b.flock(2, fcntl.LOCK_UN)
            await a.flock(1, fcntl.LOCK_SH | fcntl.LOCK_NB)
            await a.flock(1, fcntl.LOCK_UN)
            assert ("A", "shared", False) not in holders(store)
            n.cancel_scope.cancel()
    run(main)


def test_a_blocking_waiter_gets_the_lock_and_an_interrupted_one_leaves() -> None:
    async def main() -> None:
        store = MemoryStore()
        a, b = Mount(store, "A"), Mount(store, "B")
        b.kl._no_cache_until[WS] = float("inf")  # B gives back at once
        await b.setlk(1, fcntl.F_WRLCK, 0, 10)
        # A waits; it registers as an exclusive waiter, so a shared locker is refused
        with trio.move_on_after(0.5):
            await a.setlk(5, fcntl.F_WRLCK, sleep=True)
        lease, _ = LeaseStore(store, WS).read(PATH)
        assert lease is not None and lease.waiters == []  # the interrupted waiter left at once
        got: list[str] = []

        async def waiter() -> None:
            await a.setlk(5, fcntl.F_WRLCK, sleep=True)
            got.append("A")

        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await trio.sleep(0.3)
            lease, _ = LeaseStore(store, WS).read(PATH)
            assert lease is not None and [w.mount for w in lease.waiters] == ["A"]
            c = Mount(store, "C")
            with pytest.raises(WouldBlock):  # fairness: a waiting exclusive locker blocks readers
                await c.setlk(7, fcntl.F_RDLCK)
            await b.setlk(1, fcntl.F_UNLCK, 0, 10)
            with trio.fail_after(5):
                while not got:
                    await trio.sleep(0.02)
        assert holders(store)[0][:2] == ("A", "exclusive")
    run(main)


def test_a_local_waiter_is_woken_by_a_local_unlock() -> None:
    async def main() -> None:
        store = MemoryStore()
        a = Mount(store, "A")
        await a.flock(1, fcntl.LOCK_EX)
        order: list[int] = []

        async def second() -> None:
            await a.flock(2, fcntl.LOCK_EX)
            order.append(2)

        async with trio.open_nursery() as n:
            n.start_soon(second)
            await trio.sleep(0.1)
            assert order == []
            with trio.fail_after(0.5):  # woken by the event, not by a poll
                await a.kl.release_fh(WS, INO, 1)
                while not order:
                    await trio.sleep(0.005)
    run(main)


def test_downgrade_hands_over_and_release_all_gives_back() -> None:
    async def main() -> None:
        store = MemoryStore()
        a, b = Mount(store, "A", seq=3), Mount(store, "B")
        await a.setlk(1, fcntl.F_WRLCK, 0, 1)
        await a.setlk(2, fcntl.F_RDLCK, 10, 1)
        await a.setlk(1, fcntl.F_UNLCK, 0, 1)  # only a read lock is left: shared
        assert holders(store) == [("A", "shared", False)] and a.settled == 1
        await b.setlk(3, fcntl.F_RDLCK, 20, 1)
        assert b.caught_up == [3]
        await a.kl.release_all()
        await b.kl.release_all()
        assert holders(store) == []
        assert LeaseStore(store, WS).read(PATH)[0].token == 3  # type: ignore[union-attr]
    run(main)


def test_doorbell_key_is_per_workspace_and_mount() -> None:
    assert doorbell_key("w", "m1") != doorbell_key("w", "m2")
    assert doorbell_key("w", "m1").startswith(".agentfs/")
    assert Who(agent="a", host="h", mount="m", pid=None).owns  # the mount-level identity


def test_a_lease_client_gets_a_lease_a_mount_keeps_cached() -> None:
    async def main() -> None:
        store = MemoryStore()
        a = Mount(store, "A")
        client = LeaseManager(store, agent="client", mount_id="client-1", ttl=30.0)
        async with trio.open_nursery() as n:
            n.start_soon(a.kl.heartbeat)
            await a.flock(1, fcntl.LOCK_EX | fcntl.LOCK_NB)
            await a.flock(1, fcntl.LOCK_UN)
            assert holders(store) == [("A", "exclusive", True)]
            with trio.fail_after(5):  # the mount hears the doorbell and gives it back
                await client.acquire(WS, PATH, b"exclusive", Caller.current("client"))
            assert [m for m, _, _ in holders(store)] == ["client-1"]
            with pytest.raises(WouldBlock):  # held for real now: the mount is refused
                await a.flock(1, fcntl.LOCK_SH | fcntl.LOCK_NB)
            await client.release_all()
            n.cancel_scope.cancel()
    run(main)
