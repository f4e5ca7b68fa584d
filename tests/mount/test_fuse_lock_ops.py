"""The patched pyfuse3 binding's lock operations, through a real FUSE mount.

A tiny in-memory file system (``tests/helpers/lock_ops_fs.py``) runs in a child process and
logs every lock call; the test process (and small helper processes, which are other
POSIX lock owners) lock its one file with ``flock(2)`` and ``fcntl(2)`` and check what
reached the handlers and what the system calls returned.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from tests.helpers import lock_ops_fs
from tests.helpers.mount import REPO, fuse_available, is_mounted

# struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (native alignment).
FLOCK_FMT = "hhqqi"


def flock_struct(type_: int, start: int = 0, length: int = 0) -> bytes:
    return struct.pack(FLOCK_FMT, type_, os.SEEK_SET, start, length, 0)


@dataclass
class LockFs:
    """One running ``tests.helpers.lock_ops_fs`` daemon and its mountpoint."""

    path: Path
    log: Path
    err: Path
    proc: subprocess.Popen[bytes]
    expect_errors: bool = False

    @property
    def file(self) -> Path:
        return self.path / "f"

    def calls(self, op: str | None = None) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        calls = [json.loads(ln) for ln in lines]
        return [c for c in calls if op is None or c["op"] == op]

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        """The first logged call matching *pred* (polls: FUSE_RELEASE is asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            for c in self.calls():
                if pred(c):
                    return c
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching call in {self.calls()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False, capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], check=False, capture_output=True)


@pytest.fixture
def start_fs(tmp_path: Path) -> Iterator[Callable[..., LockFs]]:
    """Factory: ``start_fs(*args)`` mounts a ``tests.helpers.lock_ops_fs`` daemon."""
    if not fuse_available():
        pytest.skip("/dev/fuse is not available")
    started: list[LockFs] = []

    def start(*args: str) -> LockFs:
        n = len(started)
        mp = tmp_path / f"mnt{n}"
        mp.mkdir()
        log, err = tmp_path / f"calls{n}.jsonl", tmp_path / f"fs{n}.err"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(err, "wb") as err_file:
            proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.lock_ops_fs", str(mp), str(log),
                                     *args], cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err_file)
        fs = LockFs(mp, log, err, proc)
        started.append(fs)
        deadline = time.monotonic() + 20
        while not is_mounted(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                fs.stop()
                raise AssertionError(f"file system did not mount:\n{err.read_text()}")
            time.sleep(0.02)
        return fs

    yield start
    problems = []
    for fs in started:
        fs.stop()
        text = fs.err.read_text()
        if not fs.expect_errors and ("Traceback" in text or " ERROR " in text):
            problems.append(text)
    assert not problems, "\n".join(problems)


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    """A helper process (its own POSIX lock owner) printing one JSON line per step."""
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kernel_locks_on(path: Path) -> list[str]:
    """The lines of /proc/locks that the kernel keeps locally for *path*."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    with open("/proc/locks") as f:
        return [ln for ln in f if key in ln]


def test_file_lock_value() -> None:
    lock = pyfuse3.FileLock(fcntl.F_WRLCK, 3, 7, 42)
    assert (lock.type, lock.start, lock.length, lock.pid) == (fcntl.F_WRLCK, 3, 7, 42)
    assert lock == pyfuse3.FileLock(fcntl.F_WRLCK, start=3, length=7, pid=42)
    assert pyfuse3.FileLock(fcntl.F_UNLCK).length == 0
    with pytest.raises(ValueError, match="F_RDLCK"):
        pyfuse3.FileLock(99)
    with pytest.raises(ValueError, match="negative"):
        pyfuse3.FileLock(fcntl.F_RDLCK, -1)
    # The base class defines no lock handler: file systems keep kernel-local locks.
    for name in ("getlk", "setlk", "flock", "unlock_owner"):
        assert not hasattr(pyfuse3.Operations, name)


def test_flock_reaches_the_handler_and_conflicts(start_fs: Callable[..., LockFs]) -> None:
    fs = start_fs()
    a = os.open(fs.file, os.O_RDONLY)
    b = os.open(fs.file, os.O_RDONLY)  # a second open file description: another owner
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first = fs.calls("flock")[0]
        assert first["flock_op"] == fcntl.LOCK_EX | fcntl.LOCK_NB
        assert first["pid"] == os.getpid()
        assert kernel_locks_on(fs.file) == []  # held by the file system, not the kernel

        with pytest.raises(BlockingIOError) as exc:
            fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert exc.value.errno == errno.EWOULDBLOCK
        refused = [c for c in fs.calls("flock") if c.get("flock_op") == fcntl.LOCK_SH | fcntl.LOCK_NB]
        assert refused and refused[0]["owner"] != first["owner"]

        fcntl.flock(a, fcntl.LOCK_UN)
        assert fs.calls("flock")[-2] == {"op": "flock", "owner": first["owner"],
                                         "flock_op": fcntl.LOCK_UN, "pid": os.getpid()}
        fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(b)
    # The last close of a file that had flock locks releases its owner's locks.
    fs.wait_for(lambda c: c["op"] == "unlock_owner" and c["owner"] == refused[0]["owner"])
    os.close(a)


GETLK_CHILD = r"""
import errno, fcntl, json, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
got = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK,
                                         struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0)))
try:
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0))
    setlk = 0
except OSError as e:
    setlk = e.errno
print(json.dumps({"getlk": got, "setlk": setlk}))
"""


def test_fcntl_setlk_getlk_and_unlock_on_close(start_fs: Callable[..., LockFs]) -> None:
    fs = start_fs()
    fd = os.open(fs.file, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 3, 7))
        taken = fs.calls("setlk")[0]
        assert (taken["type"], taken["start"], taken["length"], taken["pid"], taken["sleep"]) == \
            (fcntl.F_WRLCK, 3, 7, os.getpid(), False)

        child = run_child(GETLK_CHILD, str(fs.file))
        out, err = child.communicate(timeout=10)
        assert child.returncode == 0, err
        result = json.loads(out)
        # F_GETLK reports exactly what getlk answered: the holder's lock.
        l_type, _, l_start, l_len, l_pid = result["getlk"]
        assert (l_type, l_start, l_len, l_pid) == (fcntl.F_WRLCK, 3, 7, os.getpid())
        asked = next(c for c in fs.calls("getlk") if "type" in c)
        assert (asked["type"], asked["start"], asked["length"]) == (fcntl.F_RDLCK, 0, 0)
        assert asked["owner"] != taken["owner"]
        assert result["setlk"] in (errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    # POSIX unlock-on-close: FUSE_FLUSH carries the owner of the closing process's locks.
    fs.wait_for(lambda c: c["op"] == "unlock_owner" and c["owner"] == taken["owner"])


def test_ofd_setlk_reaches_the_handler(start_fs: Callable[..., LockFs]) -> None:
    fs = start_fs()
    a = os.open(fs.file, os.O_RDWR)
    b = os.open(fs.file, os.O_RDWR)
    try:
        fcntl.fcntl(a, fcntl.F_OFD_SETLK, flock_struct(fcntl.F_WRLCK, 0, 100))
        with pytest.raises(OSError) as exc:
            fcntl.fcntl(b, fcntl.F_OFD_SETLK, flock_struct(fcntl.F_RDLCK, 10, 1))
        assert exc.value.errno in (errno.EAGAIN, errno.EACCES)
        calls = [c for c in fs.calls("setlk") if "type" in c]
        assert [(c["type"], c["start"], c["length"]) for c in calls] == \
            [(fcntl.F_WRLCK, 0, 100), (fcntl.F_RDLCK, 10, 1)]
        # OFD locks belong to the open file description, not to the process.
        assert calls[0]["owner"] != calls[1]["owner"]
        # Closing the holder's description (FUSE_RELEASE) frees its OFD lock.
        os.close(a)
        fs.wait_for(lambda c: c["op"] == "release" and calls[0]["owner"] in c["dropped"])
        fcntl.fcntl(b, fcntl.F_OFD_SETLK, flock_struct(fcntl.F_RDLCK, 10, 1))
    finally:
        os.close(b)
        with contextlib.suppress(OSError):
            os.close(a)


WAITER_CHILD = r"""
import ctypes, fcntl, json, os, signal, sys, time

class Flock(ctypes.Structure):
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_int64), ("l_len", ctypes.c_int64),
                ("l_pid", ctypes.c_int32)]

libc = ctypes.CDLL(None, use_errno=True)
path, kind, alarm = sys.argv[1], sys.argv[2], float(sys.argv[3])
fd = os.open(path, os.O_RDWR)
signal.signal(signal.SIGALRM, lambda signum, frame: None)  # no SA_RESTART
signal.setitimer(signal.ITIMER_REAL, alarm)
t0 = time.monotonic()
if kind == "setlkw":
    rc = libc.fcntl(fd, fcntl.F_SETLKW, ctypes.byref(Flock(fcntl.F_WRLCK, 0, 0, 0, 0)))
else:
    rc = libc.flock(fd, fcntl.LOCK_EX)
print(json.dumps({"rc": rc, "errno": ctypes.get_errno(), "elapsed": time.monotonic() - t0}))
"""


@pytest.mark.parametrize("kind", ["setlkw", "flock"])
def test_blocking_wait_is_interrupted_and_does_not_stall(start_fs: Callable[..., LockFs],
                                                         kind: str) -> None:
    fs = start_fs()
    holder = os.open(fs.file, os.O_RDWR)
    try:
        if kind == "setlkw":
            fcntl.fcntl(holder, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK))
        else:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        op = "setlk" if kind == "setlkw" else "flock"
        alarm = 1.5
        child = run_child(WAITER_CHILD, str(fs.file), kind, str(alarm))
        try:
            waiting = fs.wait_for(lambda c: c["op"] == op and c.get("pid", c.get("ctx_pid"))
                                  == child.pid)
            assert waiting.get("sleep", True) is True
            assert waiting.get("flock_op", fcntl.LOCK_EX) == fcntl.LOCK_EX
            # The waiting handler holds one worker; the others serve new requests.
            # (Reads go through the holder's descriptor: closing another one would
            # release this process's POSIX locks, as close(2) must.)
            t0 = time.monotonic()
            for _ in range(3):
                os.stat(fs.file)
                assert os.pread(holder, 100, 0) == b"lock ops test file\n"
            assert time.monotonic() - t0 < 0.5 * alarm
            assert child.poll() is None, "the waiter returned before its signal"
            out, err = child.communicate(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        result = json.loads(out)
        assert (result["rc"], result["errno"]) == (-1, errno.EINTR), err
        assert result["elapsed"] >= alarm - 0.1
        fs.wait_for(lambda c: c["op"] == op and c["owner"] == waiting["owner"]
                    and c.get("outcome") == "cancelled")
    finally:
        os.close(holder)


def test_handler_exception_is_eio_and_the_loop_goes_on(start_fs: Callable[..., LockFs]) -> None:
    fs = start_fs()
    fs.expect_errors = True
    fd = os.open(fs.file, os.O_RDWR)
    try:
        with pytest.raises(OSError) as exc:
            fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, lock_ops_fs.FAILING_START))
        assert exc.value.errno == errno.EIO
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 0, 1))  # still served
        assert os.pread(fd, 4, 0) == b"lock"
    finally:
        os.close(fd)
    assert "setlk() raised an unexpected exception" in fs.err.read_text()
    assert "a handler bug, on purpose" in fs.err.read_text()


def test_without_handlers_locks_stay_kernel_local(start_fs: Callable[..., LockFs]) -> None:
    fs = start_fs("--no-locks")
    a = os.open(fs.file, os.O_RDWR)
    b = os.open(fs.file, os.O_RDWR)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.fcntl(a, fcntl.F_OFD_SETLK, flock_struct(fcntl.F_WRLCK))
        with pytest.raises(OSError) as exc:
            fcntl.fcntl(b, fcntl.F_OFD_SETLK, flock_struct(fcntl.F_WRLCK))
        assert exc.value.errno in (errno.EAGAIN, errno.EACCES)
        kinds = {ln.split()[1] for ln in kernel_locks_on(fs.file)}
        assert kinds == {"FLOCK", "OFDLCK"}  # the kernel holds them itself
    finally:
        os.close(b)
        os.close(a)
    assert fs.calls() == []
