"""Fixes from the CLI review, one test per misbehaviour.

The CLI runs as a subprocess (``python -m agentfs``) against a local store
(the embedded default store under a temp ``AGENTFS_HOME``, or ``file://``);
the lock tests use a real FUSE mount of a local store (``mounter``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

import agentfs
from agentfs import agentstate
from agentfs.journal import Journal
from tests.fixtures_mount import Mount, fuse_available
from tests.test_cli import cli, lines, ok, one_line_error

needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """Environment that points the embedded default store at a temp dir."""
    h = tmp_path / "home"
    h.mkdir()
    return {"AGENTFS_HOME": str(h)}


# 1 ------------------------------------------------------------------ mv: DST is written like SRC


def test_mv_dst_is_written_like_src(home: dict[str, str], tmp_path: Path) -> None:
    ok(cli("put", "-", "demo/m1.txt", input=b"one\n", env=home))
    ok(cli("mv", "demo/m1.txt", "demo/m2.txt", env=home))
    assert lines(ok(cli("ls", "demo", env=home))) == ["m2.txt"]
    # Another workspace, or no path in the workspace: bad input, nothing moves.
    assert "within one workspace" in one_line_error(cli("mv", "demo/m2.txt", "other/m3.txt", env=home), 64)
    one_line_error(cli("mv", "demo/m2.txt", "demo", env=home), 64)
    assert lines(ok(cli("ls", "demo", env=home))) == ["m2.txt"]
    # Full targets on both sides, --store with ws/path on both sides, and a
    # relative DST after a full SRC (a path inside SRC's workspace).
    url = f"file://{tmp_path / 'store'}"
    (tmp_path / "store").mkdir()
    ok(cli("mkdir", "--store", url, "ws", env=home))  # a new store: the first workspace
    ok(cli("put", "-", f"{url}/ws/a.txt", input=b"a\n", env=home))
    ok(cli("mkdir", f"{url}/ws/old", env=home))
    ok(cli("mv", f"{url}/ws/a.txt", f"{url}/ws/b.txt", env=home))
    ok(cli("mv", "--store", url, "ws/b.txt", "ws/c.txt", env=home))
    ok(cli("mv", f"{url}/ws/c.txt", "old/d.txt", env=home))
    assert ok(cli("cat", f"{url}/ws/old/d.txt", env=home)).stdout == b"a\n"
    assert lines(ok(cli("ls", f"{url}/ws", env=home))) == ["old/"]


# 2 ------------------------------------------------------------------ user.agentfs.lock via the Python API


def test_setxattr_lock_through_the_api_is_refused(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, "ws", create=True, agent="alice") as w:
        w.write_bytes("p.txt", b"x")
        commits = len(list(agentstate.read_records(Journal(w.store, "ws"))))
        for path in ("p.txt", ""):
            with pytest.raises(OSError) as ei:
                w.setxattr(path, "user.agentfs.lock", b"garbage")
            assert ei.value.errno == errno.EINVAL
            assert "agentfs.lock()" in str(ei.value) and "WorkspaceClient.lock()" in str(ei.value)
            assert "user.agentfs.lock" not in w.listxattr(path)
        assert len(list(agentstate.read_records(Journal(w.store, "ws")))) == commits  # nothing journaled
        with w.lock("p.txt", wait=0):  # the lease API still works
            pass


# 3, 4, 5 ------------------------------------------------------------------ ls FILE, cat WS, mkdir WS


def test_ls_of_a_file_prints_its_name(home: dict[str, str]) -> None:
    ok(cli("put", "-", "ws/file.txt", input=b"f", env=home))
    ok(cli("put", "-", "ws/sub/g.txt", input=b"g", env=home))
    assert ok(cli("ls", "ws/file.txt", env=home)).stdout == b"file.txt\n"
    assert ok(cli("ls", "ws/sub/g.txt", env=home)).stdout == b"sub/g.txt\n"
    assert lines(ok(cli("ls", "ws/sub", env=home))) == ["g.txt"]


def test_cat_of_a_workspace_is_a_directory(home: dict[str, str]) -> None:
    ok(cli("mkdir", "-p", "ws/subdir", env=home))
    sub = one_line_error(cli("cat", "ws/subdir", env=home), 1)
    root = one_line_error(cli("cat", "ws", env=home), 1)
    assert "Is a directory" in sub and "Is a directory" in root
    assert "no such workspace" in one_line_error(cli("cat", "nows", env=home), 2)


def test_mkdir_of_an_existing_workspace_is_eexist(home: dict[str, str]) -> None:
    ok(cli("mkdir", "ws", env=home))
    ok(cli("mkdir", "ws/sub", env=home))
    sub = one_line_error(cli("mkdir", "ws/sub", env=home), 1)
    top = one_line_error(cli("mkdir", "ws", env=home), 1)
    assert "File exists" in sub and "File exists" in top
    ok(cli("mkdir", "-p", "ws", env=home))
    ok(cli("mkdir", "-p", "ws/sub", env=home))
    assert json.loads(ok(cli("workspaces", "--json", env=home)).stdout) == ["ws"]


# 6, 7 ------------------------------------------------------------------ agentfs lock


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


# 8 ------------------------------------------------------------------ put of a missing local file


def test_put_of_a_missing_local_file_is_not_found(home: dict[str, str], tmp_path: Path) -> None:
    err = one_line_error(cli("put", str(tmp_path / "nonexistent"), "newws/x", env=home), 2)
    assert "No such file or directory" in err
    assert "newws" not in json.loads(ok(cli("workspaces", "--json", env=home)).stdout)  # nothing created
    ok(cli("mkdir", "ws", env=home))
    one_line_error(cli("get", "ws/missing.txt", str(tmp_path / "out"), env=home), 2)


# 9 ------------------------------------------------------------------ checkpoint list, none yet


def test_checkpoint_list_without_checkpoints(home: dict[str, str]) -> None:
    ok(cli("put", "-", "ws/a.txt", input=b"a", env=home))
    r = ok(cli("checkpoint", "list", "ws", env=home))
    assert r.stdout == b"no checkpoints\n" and r.stderr == b""
    assert json.loads(ok(cli("checkpoint", "list", "--json", "ws", env=home)).stdout) == []
    ok(cli("checkpoint", "create", "ws", "first", env=home))
    out = lines(ok(cli("checkpoint", "list", "ws", env=home)))
    assert len(out) == 1 and out[0].startswith("first\t")
