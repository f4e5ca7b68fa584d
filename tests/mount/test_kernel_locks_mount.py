"""flock(2) and fcntl locks across real mounts of one store (moto S3 and a local store).

Each mount is its own daemon, as on two hosts.  The lock manager itself is
tested without FUSE in tests/core/test_kernellocks.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.locks import Holder, lease_info, lock_cli
from tests.helpers.mount import REPO, Mount, fuse_available
from tests.helpers.mounts import (
    agentfs_cli,
    assert_check_clean,
    read_or_none,
    wait_for,
    write_file,
)

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")

TTL = "3"


def mounts(mounter: Callable[..., Mount], url: str, n: int, *args: str) -> list[Path]:
    """``n`` mounts of ``url``; returns the path of ``ws/f`` through each."""
    ms = [mounter(url, "--lease-ttl", TTL, *args) for _ in range(n)]
    (ms[0].path / "ws").mkdir()
    write_file(ms[0].path / "ws" / "f", b"0")
    for m in ms[1:]:
        wait_for(lambda m=m: read_or_none(m.path / "ws" / "f") == b"0", 15.0, "ws/f on every mount")
    return [m.path / "ws" / "f" for m in ms]


def nb_flock(path: Path, op: int) -> bool:
    """Can this process take ``op`` on ``path`` now?  (The lock is dropped again.)"""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def getlk(fd: int, type_: int, start: int = 0, length: int = 0) -> tuple[int, int, int, int]:
    """F_GETLK: (type, start, len, pid) of a lock that would block ``type_``."""
    arg = struct.pack("hhqqi", type_, os.SEEK_SET, start, length, 0)
    res = fcntl.fcntl(fd, fcntl.F_GETLK, arg)
    t, _, s, ln, pid = struct.unpack("hhqqi", res[:struct.calcsize("hhqqi")])
    return t, s, ln, pid


def test_flock_and_fcntl_exclude_across_mounts(mounter: Callable[..., Mount], store_url: str,
                                               holders: Callable[..., Holder]) -> None:
    fa, fb = mounts(mounter, store_url, 2)
    # flock(1) from util-linux: -n on B fails while -x holds on A
    h = subprocess.Popen(["flock", "-x", str(fa), "-c", "echo held; read x"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        assert h.stdout is not None and h.stdout.readline().strip() == b"held"
        r = subprocess.run(["flock", "-n", str(fb), "-c", "true"])
        assert r.returncode == 1
        r = subprocess.run(["flock", "-s", "-n", str(fb), "-c", "true"])
        assert r.returncode == 1
        h.communicate(b"\n", timeout=30)
    finally:
        if h.poll() is None:
            h.kill()
        h.wait(timeout=30)
    # a close releases a flock when the kernel's (asynchronous) release reaches mount A
    t = wait_for(lambda: subprocess.run(["flock", "-n", str(fb), "-c", "true"]).returncode == 0, 10.0,
                 "flock -n on B once A's holder exited")
    assert t < 3.0
    # shared locks on two mounts coexist; an exclusive one waits for both
    s = holders(fa, "flock-sh")
    assert nb_flock(fb, fcntl.LOCK_SH) and not nb_flock(fb, fcntl.LOCK_EX)
    s.stop()  # SIGKILL of the holding process: the kernel drops its lock at once
    wait_for(lambda: nb_flock(fb, fcntl.LOCK_EX), 10.0, "exclusive flock on B after A's holder died")
    # fcntl byte-range write lock on A: B's F_SETLK is refused, F_GETLK reports it
    r = holders(fa, "lockf")  # bytes 0..9
    fd = os.open(fb, os.O_RDWR)
    try:
        with pytest.raises(OSError) as ei:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        assert ei.value.errno in (errno.EAGAIN, errno.EACCES)
        t, start, length, pid = getlk(fd, fcntl.F_RDLCK, 0, 1)
        assert t == fcntl.F_WRLCK and (start, length, pid) == (0, 0, 0)  # another mount: whole file
        # on A itself the range and the process are exact
        fda = os.open(fa, os.O_RDWR)
        try:
            assert getlk(fda, fcntl.F_WRLCK, 5, 1) == (fcntl.F_WRLCK, 0, 10, r.proc.pid)
            assert getlk(fda, fcntl.F_WRLCK, 10, 5)[0] == fcntl.F_UNLCK
            fcntl.lockf(fda, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 10)  # bytes 10..14: free on A
            fcntl.lockf(fda, fcntl.LOCK_UN, 5, 10)
        finally:
            os.close(fda)
        assert r.send("release") == "released"
        r.proc.wait(timeout=30)
        wait_for(lambda: getlk(fd, fcntl.F_WRLCK)[0] == fcntl.F_UNLCK, 10.0, "A's lock gone")
        # an OFD lock on B excludes a POSIX lock on A
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        fda = os.open(fa, os.O_RDWR)
        try:
            with pytest.raises(OSError):
                fcntl.lockf(fda, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 0)
        finally:
            os.close(fda)
    finally:
        os.close(fd)  # the last close of the open file drops its OFD lock
    wait_for(lambda: nb_flock(fa, fcntl.LOCK_EX), 10.0, "free again on A")
    assert_check_clean(store_url)


WAITER = r'''
import fcntl, os, sys, signal, time
path, how = sys.argv[1], sys.argv[2]
def ring(*_):  # raising ends the call: a handler that returns would make Python retry it
    raise InterruptedError(4, "alarm")
signal.signal(signal.SIGALRM, ring)
fd = os.open(path, os.O_RDWR)
print("ready", flush=True)
if how == "alarm":
    signal.setitimer(signal.ITIMER_REAL, float(sys.argv[3]))
t0 = time.monotonic()
try:
    if how in ("flock", "alarm"):
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX)
    print("got %.2f" % (time.monotonic() - t0), flush=True)
except OSError as e:
    print("error %d %.2f" % (e.errno, time.monotonic() - t0), flush=True)
    sys.exit(1)
sys.stdin.readline()
'''


def waiter(path: Path, how: str, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", WAITER, str(path), how, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, cwd=str(REPO))
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


def test_blocking_waiters_interrupts_and_stale_waiters(mounter: Callable[..., Mount], s3_url: str,
                                                       holders: Callable[..., Holder]) -> None:
    fa, fb, fc = mounts(mounter, s3_url, 3)
    h = holders(fa, "flock-ex")
    # a blocking waiter interrupted by a signal: EINTR, and it leaves at once
    w = waiter(fb, "alarm", "1.0")
    out, _ = w.communicate(timeout=30)
    code, took = out.split()[1:3]
    assert out.startswith(b"error") and int(code) == errno.EINTR and float(took) < 5, out
    # the waiter is gone: once the holder lets go, a non-blocking lock on C is granted at once
    # (a waiting exclusive locker would refuse it for fairness)
    assert h.send("release") == "released"
    h.proc.wait(timeout=30)
    wait_for(lambda: nb_flock(fc, fcntl.LOCK_SH), 6.0, "shared flock on C")
    # agentfs lock -w gives up, and the next locker is not refused by it
    h = holders(fa, "flock-ex")
    r = lock_cli("-w", "1", str(fb), "--", "true")
    assert r.returncode == 1, r.stderr
    assert not lease_info(fa)["waiters"]  # the waiter that gave up left at once
    k = waiter(fb, "flock")  # a blocking waiter killed with SIGTERM
    wait_for(lambda: lease_info(fa)["waiters"], 10.0, "B's waiter registered")
    k.send_signal(signal.SIGTERM)
    k.wait(timeout=30)
    # removed by the interrupted request, well before its WAITER_TTL (3 s) would end it
    assert wait_for(lambda: not lease_info(fa)["waiters"], 10.0, "killed waiter gone") < 2.0
    assert h.send("release") == "released"
    h.proc.wait(timeout=30)
    wait_for(lambda: lock_cli("-n", str(fc), "--", "true").returncode == 0, 15.0, "lock -n on C")
    # a blocking waiter on B gets the lock when the holder on C lets go
    h = holders(fc, "lockf")
    w = waiter(fb, "lockf")
    time.sleep(0.5)
    assert w.poll() is None
    assert h.send("release") == "released"
    assert w.stdout is not None and w.stdout.readline().startswith(b"got")
    # across mounts a flock and an fcntl lock exclude each other (one lease per file)
    assert not nb_flock(fa, fcntl.LOCK_EX)
    w.communicate(b"\n", timeout=30)


def test_holders_mount_killed_lease_expires(mounter: Callable[..., Mount], s3_url: str,
                                            holders: Callable[..., Holder]) -> None:
    ms = [mounter(s3_url, "--lease-ttl", TTL) for _ in range(2)]
    (ms[0].path / "ws").mkdir()
    write_file(ms[0].path / "ws" / "f", b"x")
    fb = ms[1].path / "ws" / "f"
    wait_for(lambda: read_or_none(fb) == b"x", 15.0)
    h = holders(ms[0].path / "ws" / "f", "flock-ex")
    assert not nb_flock(fb, fcntl.LOCK_EX)
    ms[0].expect_errors = True
    ms[0].kill()  # the holder's mount dies: its lease expires after the TTL
    h.stop()
    t = wait_for(lambda: nb_flock(fb, fcntl.LOCK_EX), 20.0, "lock on B after A's mount died")
    assert t < float(TTL) + 6


SQLITE = r'''
import sqlite3, sys, time
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path, timeout=60, isolation_level=None)
db.execute("PRAGMA journal_mode=DELETE")
for i in range(n):
    db.execute("BEGIN IMMEDIATE")
    (v,) = db.execute("SELECT v FROM c").fetchone()
    db.execute("UPDATE c SET v = ?", (v + 1,))
    db.execute("INSERT INTO log(who) VALUES (?)", (sys.argv[3],))
    db.execute("COMMIT")
db.close()
print("done", flush=True)
'''


def test_sqlite_rollback_journal_takes_turns_from_two_mounts(mounter: Callable[..., Mount],
                                                             s3_url: str) -> None:
    fa, fb = mounts(mounter, s3_url, 2)
    da, db_ = fa.parent / "count.db", fb.parent / "count.db"
    with sqlite3.connect(da, isolation_level=None) as c:
        c.execute("PRAGMA journal_mode=DELETE")
        c.execute("CREATE TABLE c(v INTEGER)")
        c.execute("CREATE TABLE log(who TEXT)")
        c.execute("INSERT INTO c VALUES (0)")
    c.close()
    wait_for(lambda: (read_or_none(db_) or b"")[:6] == b"SQLite", 15.0, "count.db on B")
    n = 15
    procs = [subprocess.Popen([sys.executable, "-c", SQLITE, str(p), str(n), who], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=str(REPO)) for p, who in ((da, "a"), (db_, "b"))]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0 and out.strip() == b"done", err.decode()[-2000:]
    for path in (da, db_):
        with sqlite3.connect(path) as c:
            assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert c.execute("SELECT v FROM c").fetchone() == (2 * n,)
            assert c.execute("SELECT who, count(*) FROM log GROUP BY who ORDER BY who").fetchall() == [
                ("a", n), ("b", n)]
        c.close()
    assert not [p for p in fa.parent.iterdir() if ".conflict" in p.name]


COUNTER = r'''
import fcntl, os, sys
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    v = int(os.pread(fd, 64, 0) or b"0")
    data = str(v + 1).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.close(fd)  # unlock by close: the bytes go with the lock
print("done", flush=True)
'''


def test_read_modify_write_under_flock_from_three_mounts(mounter: Callable[..., Mount], s3_url: str) -> None:
    paths = mounts(mounter, s3_url, 3)
    n = 8
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(p), str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=str(REPO)) for p in paths]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    for p in paths:
        wait_for(lambda p=p: read_or_none(p) == str(3 * n).encode(), 15.0, f"count on {p}")
    assert not [x for x in paths[0].parent.iterdir() if ".conflict" in x.name]


def test_read_only_mount_takes_shared_locks(mounter: Callable[..., Mount], tmp_path: Path) -> None:
    store_url = (tmp_path / "store").as_uri()
    (fa,) = mounts(mounter, store_url, 1)
    ro = mounter(store_url, "--read-only", "--lease-ttl", TTL)
    fr = ro.path / "ws" / "f"
    wait_for(lambda: read_or_none(fr) == b"0", 15.0)
    r = lock_cli("-s", "-n", str(fr), "--", "true")
    assert r.returncode == 0, r.stderr
    fd = os.open(fr, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert not nb_flock(fa, fcntl.LOCK_EX)  # the reader on the read-only mount counts
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    wait_for(lambda: nb_flock(fa, fcntl.LOCK_EX), 10.0, "exclusive on A after the reader left")
    r = agentfs_cli("locks", "--help")
    assert r.returncode == 0


def test_no_kernel_locks_keeps_locks_to_the_mount(mounter: Callable[..., Mount], tmp_path: Path) -> None:
    url = (tmp_path / "store").as_uri()
    ms = [mounter(url, "--no-kernel-locks") for _ in range(2)]
    (ms[0].path / "ws").mkdir()
    write_file(ms[0].path / "ws" / "f", b"x")
    fb = ms[1].path / "ws" / "f"
    wait_for(lambda: read_or_none(fb) == b"x", 15.0)
    fd = os.open(ms[0].path / "ws" / "f", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert nb_flock(fb, fcntl.LOCK_EX)  # another mount: not excluded
        assert not nb_flock(ms[0].path / "ws" / "f", fcntl.LOCK_EX)  # the same mount: excluded
    finally:
        os.close(fd)
    # agentfs lock still excludes across such mounts through the lease
    r = lock_cli("-n", str(fb), "--", "sh", "-c", f"flock -n {ms[0].path / 'ws' / 'f'} true; "
                 f"{sys.executable} -m agentfs lock -n {ms[0].path / 'ws' / 'f'} -- true; echo $?")
    assert r.returncode == 0 and r.stdout.strip().endswith(b"1"), (r.stdout, r.stderr)
