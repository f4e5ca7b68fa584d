"""The ``agentfs`` command together with real FUSE mounts.

``agentfs put`` seen in a mount, ``agentfs lock`` on a mounted file (exit codes
and messages), and a daemonized ``agentfs mount`` (``umount`` waits for it; it
lets go of the caller's stdout/stderr).  The CLI runs as a subprocess
(``python -m agentfs``); the mounts are of local stores and moto S3.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.cli import cli, cli_env, ok, one_line_error
from tests.helpers.mount import REPO, Mount, fuse_available

needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """Environment that points the embedded default store at a temp dir."""
    h = tmp_path / "home"
    h.mkdir()
    return {"AGENTFS_HOME": str(h)}


# ------------------------------------------------------------------ agentfs lock on a mount


@pytest.fixture
def mounted_ws(mounter: Callable[..., Mount], tmp_path: Path) -> Path:
    (tmp_path / "store").mkdir()
    m = mounter(f"file://{tmp_path / 'store'}")
    p = m.path / "ws"
    p.mkdir()
    return p


@needs_fuse
def test_cli_lock_exit_codes_on_a_mount(mounted_ws: Path, tmp_path: Path) -> None:
    """flock(1) behaviour and messages on an agentfs mount (contention through
    the kernel lock of a second open file description)."""
    f = mounted_ws / "lockfile"
    f.write_bytes(b"")
    fd = os.open(f, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = cli("lock", "-n", str(f), "--", "true")
        assert r.returncode == 1
        # the message names the holder (this test process, through the mount's lease)
        assert re.fullmatch(rf"agentfs: could not get an exclusive lock: lock is held "
                            rf"\(\S+@{re.escape(socket.gethostname())} pid {os.getpid()} token \d+\): "
                            rf"{re.escape(str(f))}", r.stderr.decode().strip()), r.stderr
        assert cli("lock", "-n", "-E", "9", str(f), "--", "true").returncode == 9
        r = cli("lock", "-w", "0.3", str(f), "--", "true")
        assert r.returncode == 1 and b"not free within 0.3s" in r.stderr, r.stderr
        r = cli("lock", "-s", "-n", str(f), "--", "true")
        assert r.returncode == 1 and b"could not get a shared lock: lock is held" in r.stderr, r.stderr
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert cli("lock", "-s", "-n", str(f), "--", "true").returncode == 0
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    assert cli("lock", str(f), "--", "sh", "-c", "exit 4").returncode == 4
    assert cli("lock", str(f), "-c", "exit 6").returncode == 6
    assert cli("lock", str(f), "--", "sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    assert cli("lock", str(mounted_ws / "no" / "such"), "--", "true").returncode == 66
    assert cli("lock", str(f), "--", "/nonexistent/command").returncode == 69
    # Off the mount: refused before FILE is touched.
    local = tmp_path / "plain.txt"
    local.write_bytes(b"")
    err = one_line_error(cli("lock", str(local), "--", "touch", str(tmp_path / "ran")), 64)
    assert "not on an agentfs mount" in err and "flock(1)" in err
    assert not (tmp_path / "ran").exists()
    assert "user.agentfs.lock" not in os.listxattr(local)


# ------------------------------------------------------------------ a put seen in a mount, a daemonized mount


def test_cli_put_visible_in_mount(mounter, store_url: str, home: dict[str, str]) -> None:
    m = mounter(store_url)
    (m.path / "ws").mkdir()
    (m.path / "ws" / "early.txt").write_bytes(b"via mount")
    cat = ok(cli("cat", f"{store_url}/ws/early.txt", env=home))
    assert cat.stdout == b"via mount"
    ok(cli("put", "-", f"{store_url}/ws/from-cli.txt", input=b"hello mount\n", env=home))
    target = m.path / "ws" / "from-cli.txt"
    deadline = time.monotonic() + 3
    while True:
        try:
            if target.read_bytes() == b"hello mount\n":
                break
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "file put with the CLI not visible in the mount after 3 s"
        time.sleep(0.1)
    assert "from-cli.txt" in os.listdir(m.path / "ws")


def _mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (an exited, unreaped zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@contextmanager
def daemon_mount(tmp_path: Path, **popen: object) -> Iterator[tuple[Path, Path, subprocess.Popen, list[int]]]:
    """``agentfs mount STORE MNT`` without --foreground; always cleaned up."""
    if not fuse_available():
        pytest.skip("/dev/fuse is not available")
    store = tmp_path / "dstore"
    mnt = tmp_path / "dmnt"
    mnt.mkdir()
    cmd = [sys.executable, "-m", "agentfs", "mount", f"file://{store}", str(mnt),
           "--cache-dir", str(tmp_path / "dcache"), "--log-file", str(tmp_path / "daemon.log")]
    pids: list[int] = []
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(None), stdin=subprocess.DEVNULL, **popen)
    try:
        yield store, mnt, proc, pids
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if _mounted(mnt):
            try:
                pids.append(int(os.getxattr(mnt, "user.agentfs.mount.pid")))
            except OSError:
                pass
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, capture_output=True)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_umount_of_daemonized_mount(tmp_path: Path, home: dict[str, str]) -> None:
    # files, not pipes: the daemon inherits them
    with open(tmp_path / "mount.out", "wb") as out, \
            daemon_mount(tmp_path, stdout=out, stderr=out) as (store, mnt, proc, pids):
        assert proc.wait(timeout=30) == 0, (tmp_path / "mount.out").read_text()
        assert _mounted(mnt), "agentfs mount returned 0 but nothing is mounted"
        pid = int(os.getxattr(mnt, "user.agentfs.mount.pid"))
        pids.append(pid)
        assert pid != proc.pid and _alive(pid)
        (mnt / "ws").mkdir()
        (mnt / "ws" / "f.txt").write_bytes(b"durable")
        r = ok(cli("umount", str(mnt), env=home))
        assert not r.stderr
        assert not _mounted(mnt)
        assert not _alive(pid), "mount daemon still running after agentfs umount returned"
        assert (store / "ws" / "f.txt").read_bytes() == b"durable"
        log = (tmp_path / "daemon.log").read_text()
        assert " ERROR " not in log and "Traceback" not in log, log


def test_daemonized_mount_releases_callers_stderr(tmp_path: Path) -> None:
    """With --log-file, the daemon must not keep the caller's stdout/stderr open:
    ``out=$(agentfs mount ... 2>&1)`` or ``subprocess.run(..., capture_output=True)``
    would otherwise hang until unmount."""
    with daemon_mount(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as (_, mnt, proc, _p):
        assert proc.wait(timeout=30) == 0
        assert _mounted(mnt)
        try:
            for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
                assert pipe is not None
                poller = select.poll()  # not select(): descriptors above 1023
                poller.register(pipe, select.POLLIN)
                ready = poller.poll(1500)
                got = os.read(pipe.fileno(), 65536) if ready else None
                assert got == b"", f"the mount daemon holds the caller's {name} open (read {got!r})"
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
