"""Mount options and the top level of a mount: --workspace, --read-only, workspaces
as top-level directories, agentfs's own records never visible, the control channel.

Over a local store and moto S3; --workspace, --read-only and the control channel,
which the mount answers without the store, over the local store only.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agentfs.store import open_store
from agentfs.vfs import CONTROL_PID, CONTROL_STATUS
from tests.helpers.mount import REPO, Mount, local_store_only


def _errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno


def test_top_level_is_workspaces(mount: Mount) -> None:
    root = mount.path
    (root / "alpha").mkdir()
    (root / "alpha" / "f.txt").write_bytes(b"a")
    assert sorted(os.listdir(root)) == ["alpha"]  # .agentfs never shows
    assert _errno_of(lambda: (root / "file-at-top").write_bytes(b"x")) == errno.EPERM
    assert _errno_of(lambda: os.rename(root / "alpha", root / "beta")) == errno.EPERM
    assert _errno_of(lambda: (root / ".agentfs").mkdir()) == errno.EINVAL
    assert _errno_of(lambda: os.stat(root / ".agentfs")) == errno.ENOENT
    store = open_store(mount.store_url)
    assert store.get("alpha/f.txt") == b"a"
    assert any(o.key.startswith(".agentfs/alpha/log/") for o in store.list(".agentfs/"))


@local_store_only
def test_single_workspace_mount(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, "--workspace", "proj")
    (m.path / "sub").mkdir()
    (m.path / "sub" / "a.txt").write_bytes(b"hello")
    (m.path / "top.txt").write_bytes(b"top")  # files are fine at the root of a workspace
    assert sorted(os.listdir(m.path)) == ["sub", "top.txt"]
    store = open_store(store_url)
    assert store.get("proj/sub/a.txt") == b"hello"
    assert store.get("proj/top.txt") == b"top"
    m.unmount()
    whole = mounter(store_url)
    assert (whole.path / "proj" / "sub" / "a.txt").read_bytes() == b"hello"


@local_store_only
def test_read_only_mount(mounter: Callable[..., Mount], store_url: str) -> None:
    rw = mounter(store_url)
    (rw.path / "ws").mkdir()
    (rw.path / "ws" / "keep.txt").write_bytes(b"kept")
    rw.unmount()
    ro = mounter(store_url, "--read-only")
    ws = ro.path / "ws"
    assert (ws / "keep.txt").read_bytes() == b"kept"
    for attempt in (
        lambda: (ws / "new.txt").write_bytes(b"x"),
        lambda: open(ws / "keep.txt", "ab"),
        lambda: os.mkdir(ws / "d"),
        lambda: os.unlink(ws / "keep.txt"),
        lambda: os.rename(ws / "keep.txt", ws / "k2"),
        lambda: os.setxattr(ws / "keep.txt", "user.x", b"1"),
        lambda: os.chmod(ws / "keep.txt", 0o600),
    ):
        assert _errno_of(attempt) == errno.EROFS
    assert (ws / "keep.txt").read_bytes() == b"kept"


@local_store_only
def test_control_channel(mount: Mount) -> None:
    assert int(os.getxattr(mount.path, CONTROL_PID)) == mount.pid
    status = os.getxattr(mount.path, CONTROL_STATUS)
    assert b'"dirty": 0' in status


def test_mount_errors_are_one_line(tmp_path: Path) -> None:
    """A bad store URL or mountpoint fails with one line and no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (["ftp://nowhere", str(tmp_path)], [f"file://{tmp_path}/s", str(tmp_path / "missing")]):
        r = subprocess.run([sys.executable, "-m", "agentfs", "mount", "--foreground", *args],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentfs:"), r.stderr


def test_sigterm_unmounts_cleanly(mount: Mount) -> None:
    """SIGTERM (systemctl stop, a container runtime) flushes and detaches: no dead mount."""
    (mount.path / "ws").mkdir()
    (mount.path / "ws" / "f").write_bytes(b"x")
    os.kill(mount.pid, signal.SIGTERM)
    assert mount.proc.wait(timeout=30) == 0
    with open("/proc/mounts") as f:
        assert not any(line.split()[1] == str(mount.path) for line in f)
    assert open_store(mount.store_url).get("ws/f") == b"x"


def test_truncate_by_path_is_durable_while_open(mount: Mount) -> None:
    """truncate(path) while another fd holds the file open reaches the store on return."""
    (mount.path / "ws").mkdir()
    p = mount.path / "ws" / "t.txt"
    p.write_bytes(b"0123456789")
    with open(p, "rb"):
        os.truncate(p, 3)
        assert open_store(mount.store_url).get("ws/t.txt") == b"012"


def test_read_while_first_write_takes_the_cache(mount: Mount) -> None:
    """A reader streaming a file is not broken by another fd's first write."""
    (mount.path / "ws").mkdir()
    p = mount.path / "ws" / "big.bin"
    data = os.urandom(6 << 20)
    p.write_bytes(data)
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    with open(p, "rb") as r, open(p, "r+b") as w:
        first = r.read(1 << 20)
        w.write(b"Z")
        w.flush()
        rest = r.read()
    assert len(first) + len(rest) == len(data)
    assert first[1:] == data[1 : 1 << 20]
