"""Leases without FUSE: the store layer (``LeaseStore``) and the mount layer
(``FileSystem`` + ``LeaseManager``) driven directly.

Stores: memory, a local directory and moto S3.  Time is a fake clock where
expiry matters, so nothing here sleeps past a TTL.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agentfs.check import check_store
from agentfs.errors import Fenced, LeaseBusy, NoAttribute, WouldBlock
from agentfs.identity import Caller
from agentfs.journal import Journal
from agentfs.locks import (
    LOCK_XATTR,
    WAITER_TTL,
    LeaseStore,
    Who,
    alive,
    lease_key,
    lineage,
    start_time,
)
from agentfs.namespace import ROOT_INODE
from agentfs.store import ObjectStore, open_store
from agentfs.vfs import FileSystem

WS = "ws"


@pytest.fixture(params=["memory", "file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "memory":
        st = open_store(f"memory://locks{uuid.uuid4().hex}")
    elif request.param == "file":
        st = open_store(f"file://{tmp_path}/store")
    else:
        st = open_store(request.getfixturevalue("s3_url"))
    yield st
    st.close()


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def who(n: int, mount: str = "m") -> Who:
    return Who(agent=f"agent{n}", host="h", mount=mount, pid=n)


def test_exclusive_excludes_and_tokens_only_grow(store: ObjectStore) -> None:
    ls = LeaseStore(store, WS)
    t1 = ls.acquire("task.md", "exclusive", who(1), 30)
    with pytest.raises(WouldBlock) as ei:
        ls.acquire("task.md", "exclusive", who(2), 30)
    assert ei.value.errno == errno.EWOULDBLOCK and "agent1" in str(ei.value)
    with pytest.raises(WouldBlock):
        ls.acquire("task.md", "shared", who(2), 30)
    assert ls.release("task.md", t1)
    assert not ls.release("task.md", t1)  # released twice: nothing held
    # The object stays (with the last token) so the next token is larger.
    lease, _ = ls.read("task.md")
    assert lease is not None and lease.holders == [] and lease.token == t1
    t2 = ls.acquire("task.md", "exclusive", who(2), 30)
    assert t2 > t1
    ls.break_("task.md")
    t3 = ls.acquire("task.md", "shared", who(3), 30)
    assert t3 > t2
    # Another path is another lease.
    assert ls.acquire("other.md", "exclusive", who(1), 30) == 1
    assert store.head(lease_key(WS, "task.md")).size > 0


def test_shared_holders_count(store: ObjectStore) -> None:
    ls = LeaseStore(store, WS)
    toks = [ls.acquire("f", "shared", who(i), 30) for i in range(1, 4)]
    lease, _ = ls.read("f")
    assert lease is not None and lease.mode == "shared" and len(lease.holders) == 3
    for t in toks[:2]:
        ls.release("f", t)
        with pytest.raises(WouldBlock):
            ls.acquire("f", "exclusive", who(9), 30)
    ls.release("f", toks[2])
    assert ls.acquire("f", "exclusive", who(9), 30) > toks[2]


def test_waiting_exclusive_is_not_starved_by_shared() -> None:
    store = open_store(f"memory://locks{uuid.uuid4().hex}")
    clock = Clock()
    ls = LeaseStore(store, WS, clock=clock)
    s1 = ls.acquire("f", "shared", who(1), 30)
    with pytest.raises(WouldBlock):
        ls.acquire("f", "exclusive", who(2), 30, wait=True)  # registers as a waiter
    with pytest.raises(WouldBlock) as ei:
        ls.acquire("f", "shared", who(3), 30)  # refused: an exclusive locker waits
    assert "waiting" in str(ei.value)
    with pytest.raises(WouldBlock):
        ls.acquire("f", "exclusive", who(4), 30, wait=True)  # queued behind 2
    ls.release("f", s1)
    with pytest.raises(WouldBlock):
        ls.acquire("f", "exclusive", who(4), 30, wait=True)  # 2 came first
    x2 = ls.acquire("f", "exclusive", who(2), 30, wait=True)
    ls.release("f", x2)
    x4 = ls.acquire("f", "exclusive", who(4), 30, wait=True)
    ls.release("f", x4)
    assert ls.acquire("f", "shared", who(3), 30) > x4
    # A waiter that gave up (stopped retrying) stops blocking after its TTL.
    with pytest.raises(WouldBlock):
        ls.acquire("f", "exclusive", who(5), 30, wait=True)
    with pytest.raises(WouldBlock):
        ls.acquire("f", "shared", who(6), 30)
    clock.t += 31
    assert ls.acquire("f", "shared", who(6), 30)


def test_a_waiter_that_gave_up_leaves() -> None:
    store = open_store(f"memory://locks{uuid.uuid4().hex}")
    clock = Clock()
    ls = LeaseStore(store, WS, clock=clock)
    x = ls.acquire("f", "exclusive", who(1), 30)
    with pytest.raises(WouldBlock):
        ls.acquire("f", "exclusive", who(2), 30, wait=True)
    assert ls.leave("f", who(2)) and not ls.leave("f", who(2))
    ls.release("f", x)
    s = ls.acquire("f", "shared", who(3), 30)  # nobody waits any more
    # one that cannot say so (killed) stops blocking after WAITER_TTL, not the lease TTL
    with pytest.raises(WouldBlock):
        ls.acquire("f", "exclusive", who(4), 30, wait=True)
    with pytest.raises(WouldBlock):
        ls.acquire("f", "shared", who(5), 30)
    clock.t += WAITER_TTL + 0.1
    assert ls.acquire("f", "shared", who(5), 30) > s


def test_expiry_renewal_takeover_and_holds() -> None:
    store = open_store(f"memory://locks{uuid.uuid4().hex}")
    clock = Clock()
    ls = LeaseStore(store, WS, clock=clock)
    t1 = ls.acquire("f", "exclusive", who(1), 10)
    clock.t += 8
    assert ls.renew("f", t1, 10)
    clock.t += 8  # 16 s after acquiring, but renewed at 8
    with pytest.raises(WouldBlock):
        ls.acquire("f", "exclusive", who(2), 10)
    clock.t += 3  # past the renewed expiry: the holder died or froze
    assert ls.holds("f", t1)  # nobody took it over yet
    t2 = ls.acquire("f", "exclusive", who(2), 10)
    assert t2 > t1
    assert not ls.holds("f", t1) and ls.holds("f", t2)
    assert not ls.renew("f", t1, 10)  # the frozen holder learns it lost the lease
    assert not ls.release("f", t1)
    assert ls.holds("f", t2)


def test_concurrent_acquire_exactly_one_wins(store: ObjectStore) -> None:
    ls = LeaseStore(store, WS)
    wins: list[int] = []
    blocked: list[int] = []
    barrier = threading.Barrier(8)

    def run(n: int) -> None:
        barrier.wait()
        try:
            ls.acquire("hot", "exclusive", who(n, mount=f"m{n}"), 30)
            wins.append(n)
        except WouldBlock:
            blocked.append(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(blocked) == 7
    lease, _ = ls.read("hot")
    assert lease is not None and [h.pid for h in lease.holders] == wins


def test_list_and_break(store: ObjectStore) -> None:
    ls = LeaseStore(store, WS)
    ls.acquire("a/x", "exclusive", who(1), 30)
    t = ls.acquire("b", "shared", who(2), 30)
    ls.release("b", t)
    assert [le.path for le in ls.list()] == ["a/x"]
    assert [le.path for le in ls.list(include_free=True)] == ["a/x", "b"]
    old = ls.break_("a/x")
    assert old is not None and old.holders[0].agent == "agent1"
    assert ls.list() == []
    assert ls.break_("never-locked") is None


def test_process_helpers() -> None:
    me = os.getpid()
    assert alive(me, start_time(me))
    assert not alive(me, (start_time(me) or 0) + 1)  # same pid, other process
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert me in lineage(child.pid) and child.pid in lineage(child.pid)
        started = start_time(child.pid)
        assert alive(child.pid, started)
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid, started)


# -- the mount layer without FUSE ----------------------------------------------------------


def me(agent: str = "tester") -> Caller:
    return Caller(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), agent=agent)


async def _fs(store: ObjectStore, tmp: Path, ttl: float = 30.0) -> FileSystem:
    fs = FileSystem(store, cache_dir=tmp / uuid.uuid4().hex, workspace=WS, agent="mnt", lease_ttl=ttl,
                    scan_interval=0)
    await fs.start()
    return fs


async def _write(fs: FileSystem, name: str, data: bytes) -> int:
    fh, attr = await fs.create(ROOT_INODE, name, 0o644, os.O_WRONLY, me())
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)
    return attr.ino


def test_xattr_acquire_show_release(store: ObjectStore, tmp_path: Path) -> None:
    async def main() -> None:
        a = await _fs(store, tmp_path)
        b = await _fs(store, tmp_path)
        ino = await _write(a, "task.md", b"v1")
        await b.workspaces[WS].pull()
        ino_b = b.workspaces[WS].resolve("task.md").ino
        with pytest.raises(NoAttribute):
            await a.getxattr(ino, LOCK_XATTR)
        await a.setxattr(ino, LOCK_XATTR, b"exclusive", me("alice"))
        info = json.loads(await b.getxattr(ino_b, LOCK_XATTR))
        assert info["mode"] == "exclusive" and info["holders"][0]["agent"] == "alice"
        assert info["holders"][0]["pid"] == os.getpid() and info["token"] == 1
        assert info["holders"][0]["expires_in"] > 0
        assert LOCK_XATTR not in a.listxattr(ino)  # a lease, not a stored attribute
        with pytest.raises(LeaseBusy):  # EBUSY on the xattr (see LeaseBusy)
            await b.setxattr(ino_b, LOCK_XATTR, b"shared", me("bob"))
        for bad in (b"", b"exclusiv", b"shared now", b"\xff"):
            with pytest.raises(OSError) as ei:
                await b.setxattr(ino_b, LOCK_XATTR, bad, me("bob"))
            assert ei.value.errno == errno.EINVAL
        with pytest.raises(NoAttribute):
            await b.removexattr(ino_b, LOCK_XATTR, me("bob"))  # bob holds nothing
        await a.removexattr(ino, LOCK_XATTR, me("alice"))
        await b.setxattr(ino_b, LOCK_XATTR, b"shared", me("bob"))
        assert json.loads(await a.getxattr(ino, LOCK_XATTR))["token"] == 2
        await b.close()  # unmount gives the lease back
        await a.setxattr(ino, LOCK_XATTR, b"exclusive", me("alice"))
        await a.close()

    trio.run(main)


def test_fenced_writer_is_refused_and_kept_as_conflict(store: ObjectStore, tmp_path: Path) -> None:
    """The lease of a writer is taken over before its upload: even though the
    file did not change in the store (the etag condition would pass), the
    upload is refused with EIO, the bytes become a conflict copy, and the
    refusal is in the journal."""
    async def main() -> None:
        a = await _fs(store, tmp_path, ttl=30.0)
        ino = await _write(a, "task.md", b"original")
        await a.setxattr(ino, LOCK_XATTR, b"exclusive", me("alice"))
        fh, _ = await a.open(ino, os.O_WRONLY, me("alice"))
        await a.write(fh, 0, b"STALE!!!")
        # The holder froze past its TTL; another locker (a clock 100 s ahead) takes over.
        later = LeaseStore(store, WS, clock=lambda: time.time() + 100)
        token = later.acquire("task.md", "exclusive", Who("bob", "h2", "other", 4242), 30)
        assert token == 2
        with pytest.raises(Fenced) as ei:
            await a.flush(fh)
        assert ei.value.errno == errno.EIO and ei.value.token == 1
        await a.release(fh)
        w = a.workspaces[WS]
        assert store.get(f"{WS}/task.md") == b"original"
        copies = [n for n, _ in w.listdir(w.ns.root) if n.startswith("task.conflict-")]
        assert len(copies) == 1
        assert store.get(f"{WS}/{copies[0]}") == b"STALE!!!"
        recs = [r for c in Journal(store, WS).commits_after(0) for r in c.records]
        fenced = [r for r in recs if r.action == "fenced"]
        assert len(fenced) == 1 and fenced[0].detail["of"] == "task.md" and fenced[0].detail["token"] == 1
        # Files this process holds no lease on are not fenced; nor is a new holder.
        await _write(a, "free.md", b"free")
        await a.close()

    trio.run(main)
    assert check_store(store).clean


def test_holder_exit_releases_and_break_is_audited(store: ObjectStore, tmp_path: Path) -> None:
    async def main() -> None:
        a = await _fs(store, tmp_path)
        ino = await _write(a, "f", b"x")
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            who_child = Caller(pid=child.pid, uid=os.getuid(), gid=os.getgid(), agent="child")
            await a.setxattr(ino, LOCK_XATTR, b"exclusive", who_child)
            await a.leases.tick(renew=True)
            assert a.leases.held
            with pytest.raises(LeaseBusy):
                await a.setxattr(ino, LOCK_XATTR, b"exclusive", me())  # another process, same mount
        finally:
            child.kill()
            child.wait()
        await a.leases.tick(renew=False)
        assert not a.leases.held
        await a.setxattr(ino, LOCK_XATTR, b"exclusive", me())
        await a.setxattr(ino, LOCK_XATTR, b"break", me("admin"))
        with pytest.raises(NoAttribute):
            await a.getxattr(ino, LOCK_XATTR)
        # The broken holder's writes are fenced.
        fh, _ = await a.open(ino, os.O_WRONLY, me())
        await a.write(fh, 0, b"y")
        with pytest.raises(Fenced):
            await a.flush(fh)
        await a.release(fh)
        await a.close()

    trio.run(main)
    recs = [r for c in Journal(store, WS).commits_after(0) for r in c.records]
    brk = [r for r in recs if r.action == "lock-break"]
    assert len(brk) == 1 and brk[0].agent == "admin" and brk[0].op.path == "f"
    assert "tester" in str(brk[0].detail["holders"])
    assert check_store(store).clean


def test_closing_the_file_releases_the_lease(tmp_path: Path) -> None:
    """As closing a file releases its flock: the holder's last handle of the
    file on this mount closes -> the lease goes; a process that never opened
    the file keeps it until removexattr or exit."""
    store = open_store(f"file://{tmp_path}/store")

    async def main() -> None:
        a = await _fs(store, tmp_path)
        ino = await _write(a, "f", b"x")
        fh1, _ = await a.open(ino, os.O_RDONLY, me())
        await a.setxattr(ino, LOCK_XATTR, b"exclusive", me())
        fh2, _ = await a.open(ino, os.O_RDWR, me())
        await a.release(fh2)
        assert json.loads(await a.getxattr(ino, LOCK_XATTR))["holders"][0]["pid"] == os.getpid()
        await a.release(fh1)  # the last handle of the holder
        with pytest.raises(NoAttribute):
            await a.getxattr(ino, LOCK_XATTR)
        assert not a.leases.held
        await a.setxattr(ino, LOCK_XATTR, b"shared", me())  # never opened: kept
        await a.leases.tick(renew=True)
        assert json.loads(await a.getxattr(ino, LOCK_XATTR))["mode"] == "shared"
        await a.close()

    trio.run(main)


# -- the CLI without a mount ------------------------------------------------------------------


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return cli_all(args, timeout=timeout)[0]


def cli_all(*calls: tuple[str, ...], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Run independent ``agentfs`` invocations at once (each one pays for
    starting Python and importing agentfs) and return their results in order."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [subprocess.Popen([sys.executable, "-m", "agentfs", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env) for args in calls]
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_cli_lock_on_a_local_file_is_refused(tmp_path: Path) -> None:
    """Off an agentfs mount ``agentfs lock`` refuses (exit 64, pointing to
    flock(1)) before opening FILE: nothing is created, no xattr is written, the
    command does not run.  The flock(1) exit codes on a mount are in
    tests/mount/test_cli_mount.py::test_cli_lock_exit_codes_on_a_mount."""
    f = tmp_path / "lockfile"
    f.write_bytes(b"")
    marker = tmp_path / "ran"
    *refused, bad_code, no_command, both_modes = cli_all(
        *(("lock", str(target), "--", "touch", str(marker)) for target in (f, tmp_path / "new")),
        ("lock", "-E", "300", str(f), "--", "true"), ("lock", str(f)),
        ("lock", "-s", "-x", str(f), "--", "true"))
    for r in refused:
        assert r.returncode == 64, r.stderr
        err = r.stderr.decode().strip()
        assert err.startswith("agentfs: not on an agentfs mount") and "flock(1)" in err, err
        assert len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "new").exists()
    assert "user.agentfs.lock" not in os.listxattr(f)
    assert bad_code.returncode == 64
    assert no_command.returncode == 64
    assert both_modes.returncode == 64


def test_cli_locks_and_break_without_a_mount(tmp_path: Path) -> None:
    import agentfs

    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, WS, create=True) as w:
        w.write_bytes("a.md", b"a")
    ls = LeaseStore(open_store(url), WS)
    ls.acquire("a.md", "exclusive", Who("carol", "h9", "m9", 99), 300)
    r, text = cli_all(("locks", f"{url}/{WS}", "--json"), ("locks", f"{url}/{WS}"))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["path"] == "a.md" and rows[0]["holders"][0]["agent"] == "carol"
    assert b"carol@h9" in text.stdout
    r = cli("lock", "--break", f"{url}/{WS}/a.md")
    assert r.returncode == 0, r.stderr
    assert b"carol@h9" in r.stdout
    live, every, other_ws = cli_all(("locks", f"{url}/{WS}", "--json"), ("locks", f"{url}/{WS}", "--json", "--all"),
                                    ("lock", "--break", f"{url}/nosuchws/a.md"))
    assert json.loads(live.stdout) == []
    assert json.loads(every.stdout)[0]["token"] == 1
    recs = [r for c in Journal(open_store(url), WS).commits_after(0) for r in c.records]
    assert [r.action for r in recs if r.op.op == "note"] == ["lock-break"]
    assert other_ws.returncode == 2
    assert check_store(open_store(url)).clean


def test_fencing_covers_the_holders_children_only(tmp_path: Path) -> None:
    """`agentfs lock FILE -- CMD`: the CLI holds the lease, CMD (its child) writes.
    A child's write is fenced once the lease is taken over; an unrelated
    process's write is not (locks are advisory)."""
    store = open_store(f"file://{tmp_path}/store")

    async def main() -> None:
        a = await _fs(store, tmp_path)
        ino = await _write(a, "f", b"v0")
        await a.setxattr(ino, LOCK_XATTR, b"exclusive", me("cli"))
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            kid = Caller(pid=child.pid, uid=os.getuid(), gid=os.getgid(), agent="cmd")
            LeaseStore(store, WS, clock=lambda: time.time() + 100).acquire(
                "f", "exclusive", Who("bob", "h2", "other", 7), 30)
            fh, _ = await a.open(ino, os.O_WRONLY, kid)
            await a.write(fh, 0, b"child")
            with pytest.raises(Fenced):
                await a.flush(fh)
            await a.release(fh)
            stranger = Caller(pid=1, uid=os.getuid(), gid=os.getgid(), agent="stranger")
            fh, _ = await a.open(ino, os.O_WRONLY, stranger)
            await a.write(fh, 0, b"strng")
            await a.flush(fh)  # not a holder's process: not fenced
            await a.release(fh)
        finally:
            child.kill()
            child.wait()
        assert store.get(f"{WS}/f") == b"strng"
        await a.close()

    trio.run(main)


# -- leases from the Python API without a mount ---------------------------------------------


def test_workspace_client_lock_without_a_mount(tmp_path: Path) -> None:
    import agentfs

    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, WS, agent="c1", lease_ttl=1.0) as c1, \
            agentfs.open_workspace(url, WS, agent="c2", lease_ttl=1.0) as c2:
        c1.write_bytes("task.md", b"v0")
        with c1.lock("task.md"):
            with pytest.raises(WouldBlock) as ei, c2.lock("task.md", wait=0):
                pass
            assert ei.value.errno == errno.EWOULDBLOCK
            time.sleep(2.5)  # > TTL: c1's client renews it meanwhile
            with pytest.raises(WouldBlock), c2.lock("task.md", shared=True, wait=0.3):
                pass
            with pytest.raises(WouldBlock), c2.lock("task.md", wait=0.3):  # an exclusive waiter gives up
                pass
            lease, _ = LeaseStore(open_store(url), WS).read("task.md")
            assert lease is not None and lease.waiters == []  # and left at once
            c1.write_bytes("task.md", b"v1")  # the holder writes normally
        got: list[float] = []

        def other() -> None:
            with c2.lock("task.md", wait=30):
                got.append(time.monotonic())

        with c1.lock("task.md"):
            t = threading.Thread(target=other)
            t.start()
            time.sleep(0.3)
            released = time.monotonic()
        t.join(timeout=60)
        assert got and got[0] >= released
        # Fencing: c1's lease is taken over (another holder, clock 100 s ahead);
        # c1's next write through the client is refused and kept as a conflict copy.
        with c1.lock("task.md"):
            LeaseStore(open_store(url), WS, clock=lambda: time.time() + 100).acquire(
                "task.md", "exclusive", Who("bob", "h", "m", 1), 30)
            with pytest.raises(Fenced):
                c1.write_bytes("task.md", b"stale")
        assert c2.read_bytes("task.md") == b"v1"
        assert any(n.startswith("task.conflict-c1-") for n in c2.listdir(""))
    assert check_store(open_store(url)).clean
