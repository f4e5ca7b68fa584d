"""Mount options and the top level of a mount: --workspace, --read-only, workspaces
as top-level directories, agentfs's own records never visible, the control channel."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agentfs.store import open_store
from agentfs.vfs import CONTROL_PID, CONTROL_STATUS
from tests.fixtures_mount import REPO, Mount


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
