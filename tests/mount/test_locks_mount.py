"""Locks through real FUSE mounts.

- On one mount, ``flock(2)`` and ``fcntl`` byte-range locks are the kernel's
  (local store and moto S3).
- Across two mounts (two daemon processes) of ONE moto S3 store, leases:
  exclusion, shared vs exclusive, ``-n``/``EWOULDBLOCK`` and exit codes, wait
  with timeout, release when the holding process exits, expiry after
  ``kill -9`` of the holding mount, fencing of a frozen (``SIGSTOP``) holder.

Holders are child processes (``HOLDER`` below) driven line by line over a
pipe; every child and every stopped daemon is ended by its PID in a finally.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import agentfs
from agentfs.journal import Journal
from agentfs.locks import LOCK_XATTR, LeaseStore
from agentfs.store import open_store
from tests.helpers.locks import Holder, lease_info, lock_cli
from tests.helpers.mount import REPO, Mount
from tests.helpers.mounts import agentfs_cli, read_or_none, wait_for, write_file

TTL = "2"  # seconds: short leases so that expiry is quick to test

@dataclass
class Two:
    a: Mount
    b: Mount
    fa: Path  # ws/task.md through mount A
    fb: Path  # the same file through mount B


def two_mounts(mounter: Callable[..., Mount], url: str, *args: str) -> Two:
    a = mounter(url, *args)
    b = mounter(url, *args)
    (a.path / "ws").mkdir()
    write_file(a.path / "ws" / "task.md", b"v0")
    wait_for(lambda: read_or_none(b.path / "ws" / "task.md") == b"v0", 10.0, "task.md on B")
    return Two(a, b, a.path / "ws" / "task.md", b.path / "ws" / "task.md")


@pytest.fixture
def two(mounter: Callable[..., Mount], s3_url: str) -> Two:
    """Two mounts (two daemons) of one moto S3 store, leases of TTL seconds."""
    return two_mounts(mounter, s3_url, "--lease-ttl", TTL)


# -- one mount: the kernel's locks ---------------------------------------------------------


def test_local_flock_and_fcntl_on_one_mount(ws: Path, holders: Callable[..., Holder]) -> None:
    f = ws / "lockfile"
    write_file(f, b"0123456789" * 4)
    h = holders(f, "flock-ex")
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert h.send("release") == "released"  # unlock by close
        h.proc.wait(timeout=30)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        # Shared locks coexist; an exclusive one waits for all of them.
        s1 = holders(f, "flock-sh")
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        s1.stop()  # process death releases
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        # fcntl byte ranges: bytes 0..9 locked by another process.
        r = holders(f, "lockf")
        wfd = os.open(f, os.O_RDWR)
        try:
            with pytest.raises(OSError) as ei:
                fcntl.lockf(wfd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 5)
            assert ei.value.errno in (errno.EAGAIN, errno.EACCES)
            fcntl.lockf(wfd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 20)  # a range nobody holds
            fcntl.lockf(wfd, fcntl.LOCK_UN, 10, 20)
            r.stop()  # SIGKILL: the kernel drops its locks
            fcntl.lockf(wfd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
            fcntl.lockf(wfd, fcntl.LOCK_UN, 10, 0)
        finally:
            os.close(wfd)
    finally:
        os.close(fd)


# -- two mounts: leases -------------------------------------------------------------------


def test_exclusion_across_mounts_and_exit_codes(two: Two, holders: Callable[..., Holder],
                                                s3_url: str) -> None:
    h = holders(two.fa, "exclusive", agent="alice")
    info = lease_info(two.fb)
    assert info is not None and info["mode"] == "exclusive"
    assert info["holders"][0]["agent"] == "alice" and info["holders"][0]["pid"] == h.proc.pid
    # The kernel lock of A does not reach B; the lease does.
    # (EBUSY on the raw xattr: Linux turns an EAGAIN reply to setxattr into EOPNOTSUPP.)
    for mode in (b"exclusive", b"shared"):
        with pytest.raises(OSError) as ei:
            os.setxattr(two.fb, LOCK_XATTR, mode)
        assert ei.value.errno == errno.EBUSY
    with pytest.raises(OSError) as ei2, agentfs.lock(two.fb, wait=0):  # EWOULDBLOCK, as flock(2)
        pass
    assert ei2.value.errno == errno.EWOULDBLOCK and "alice" in str(ei2.value)
    r = lock_cli("-n", str(two.fb), "--", "true")
    assert r.returncode == 1, r.stderr
    assert b"alice" in r.stderr
    assert lock_cli("-n", "-E", "7", str(two.fb), "--", "true").returncode == 7
    assert lock_cli("-s", "-n", str(two.fb), "--", "true").returncode == 1
    # agentfs locks lists it without a mount.
    r = agentfs_cli("locks", f"{s3_url}/ws", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["path"], x["mode"], x["holders"][0]["agent"]) for x in rows] == [("task.md", "exclusive", "alice")]
    assert h.send("release") == "released"
    h.proc.wait(timeout=30)
    assert lease_info(two.fb) is None
    # Now B gets it; the command's exit code is passed through.
    r = lock_cli("-n", str(two.fb), "--", sys.executable, "-c",
                 f"import os,sys; print(os.getxattr({str(two.fb)!r}, 'user.agentfs.lock').decode()); sys.exit(5)")
    assert r.returncode == 5, r.stderr
    assert json.loads(r.stdout)["mode"] == "exclusive"
    assert lease_info(two.fa) is None  # released after the command
    assert lock_cli("-n", str(two.fb)).returncode == 64  # no command: usage error


def test_shared_vs_exclusive_across_mounts(two: Two, holders: Callable[..., Holder]) -> None:
    s1 = holders(two.fa, "shared", agent="r1")
    s2 = holders(two.fb, "shared", agent="r2")
    info = lease_info(two.fa)
    assert info is not None and info["mode"] == "shared"
    assert sorted(x["agent"] for x in info["holders"]) == ["r1", "r2"]
    assert lock_cli("-x", "-n", str(two.fb), "--", "true").returncode == 1
    assert lock_cli("-s", "-n", str(two.fb), "--", "true").returncode == 0
    s1.send("release")
    assert lock_cli("-x", "-n", str(two.fa), "--", "true").returncode == 1  # r2 still holds
    s2.send("release")
    assert lock_cli("-x", "-n", str(two.fa), "--", "true").returncode == 0


def test_wait_with_timeout_and_waiting_locker_gets_it(two: Two, holders: Callable[..., Holder]) -> None:
    h = holders(two.fa, "exclusive")
    t0 = time.monotonic()
    r = lock_cli("-w", "1.5", str(two.fb), "--", "true")
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - t0 >= 1.5
    # A blocking locker on B gets the lock once A's holder lets go.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    waiter = subprocess.Popen([sys.executable, "-m", "agentfs", "lock", "-w", "60", str(two.fb), "--",
                               "sh", "-c", "echo got"], stdout=subprocess.PIPE, env=env, cwd=str(REPO))
    try:
        # While it waits, a new shared locker is refused (no starvation of the exclusive one).
        wait_for(lambda: (lease_info(two.fa) or {}).get("waiters"), 30.0, "B's waiter registered")
        assert lock_cli("-s", "-n", str(two.fa), "--", "true").returncode == 1
        h.send("release")
        out, _ = waiter.communicate(timeout=60)
        assert waiter.returncode == 0 and out.strip() == b"got"
    finally:
        if waiter.poll() is None:
            waiter.kill()
        waiter.wait(timeout=30)


def test_lease_released_when_holder_process_exits(mounter: Callable[..., Mount], s3_url: str,
                                                  holders: Callable[..., Holder]) -> None:
    # A long TTL: getting the lock quickly proves the release on exit, not expiry.
    two = two_mounts(mounter, s3_url, "--lease-ttl", "120")
    h = holders(two.fa, "xattr")  # takes the lease and never removes it
    assert lock_cli("-n", str(two.fb), "--", "true").returncode == 1
    h.stop()  # SIGKILL of the holding process (its mount lives on)
    wait_for(lambda: lock_cli("-n", str(two.fb), "--", "true").returncode == 0, 30.0,
             "lease released after the holder died")


def test_lease_expires_after_kill_9_of_holding_mount(two: Two, holders: Callable[..., Holder],
                                                     s3_url: str) -> None:
    h = holders(two.fa, "exclusive")
    two.a.kill()  # SIGKILL of the mount daemon: nobody renews or releases
    h.stop()
    lease = LeaseStore(open_store(s3_url), "ws").read("task.md")[0]
    assert lease is not None and [x.pid for x in lease.holders] == [h.proc.pid]
    wait_for(lambda: lock_cli("-n", str(two.fb), "--", "true").returncode == 0, 60.0,
             "lease expired after the mount died")
    lease2 = LeaseStore(open_store(s3_url), "ws").read("task.md")[0]
    assert lease2 is not None and lease2.token > lease.token


def test_frozen_holder_is_fenced(two: Two, holders: Callable[..., Holder], s3_url: str) -> None:
    h = holders(two.fa, "exclusive", agent="frozen")
    assert h.send("write FROZEN-WRITE") == "written"  # dirty on A, not yet uploaded
    store = open_store(s3_url)
    try:
        os.kill(two.a.pid, signal.SIGSTOP)
        time.sleep(float(TTL) + 1.0)  # past the TTL: A cannot renew
        r = lock_cli("-w", "60", str(two.fb), "--", "sh", "-c", f"printf NEW > '{two.fb}'")
        assert r.returncode == 0, r.stderr
        assert store.get("ws/task.md") == b"NEW"
    finally:
        os.kill(two.a.pid, signal.SIGCONT)
    # The frozen writer wakes up and closes: refused (EIO), bytes kept as a conflict copy.
    assert h.send("close") == f"closed {errno.EIO}"
    h.send("release")
    assert store.get("ws/task.md") == b"NEW"
    wait_for(lambda: read_or_none(two.fa) == b"NEW", 10.0, "A sees B's write")
    wait_for(lambda: [n for n in os.listdir(two.fb.parent) if n.startswith("task.conflict-frozen-")],
             10.0, "conflict copy on B")
    copies = [n for n in os.listdir(two.fb.parent) if n.startswith("task.conflict-frozen-")]
    assert read_or_none(two.fb.parent / copies[0]) == b"FROZEN-WRITE"
    recs = [r for c in Journal(store, "ws").commits_after(0) for r in c.records if r.action == "fenced"]
    assert len(recs) == 1 and recs[0].agent == "frozen" and recs[0].detail["of"] == "task.md"
    assert "was fenced" in two.a.log_text()


def test_break_clears_a_lease_and_is_audited(two: Two, holders: Callable[..., Holder], s3_url: str) -> None:
    h = holders(two.fa, "exclusive", agent="stuck")
    r = lock_cli("--break", f"{s3_url}/ws/task.md")
    assert r.returncode == 0, r.stderr
    assert b"stuck" in r.stdout
    assert lock_cli("-n", str(two.fb), "--", "true").returncode == 0
    h2 = holders(two.fb, "exclusive", agent="next")
    assert lock_cli("--break", str(two.fa)).returncode == 0  # through a mount
    assert lease_info(two.fb) is None
    for x in (h, h2):
        x.send("release")
    recs = [r for c in Journal(open_store(s3_url), "ws").commits_after(0) for r in c.records
            if r.action == "lock-break"]
    assert len(recs) == 2 and "stuck" in str(recs[0].detail["holders"]) and "next" in str(recs[1].detail["holders"])
