"""Checkpoints through a real FUSE mount of a local directory store.

``<mount>/<ws>/.snapshots/NAME/`` is the read-only view; ``mkdir``/``rmdir``
there create and delete checkpoints; restore, fork and gc run from the CLI
while the store is mounted.  ``agentfs check`` runs after every test (fixtures).
The same checkpoint operations run on every store (moto S3 included) through the
library in ``tests/api/test_checkpoints.py``, so these tests of the mount's view
run on the local store only (``local_store_only``); kills during a restore are
in ``tests/crash/test_checkpoints_crash.py`` (local and S3).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentfs.store import open_store
from tests.helpers.checkpoints import cli, ok, wait_for
from tests.helpers.mount import Mount, local_store_only


def snapshot_of(root: Path) -> dict[str, Any]:
    """Everything visible below root: kind, mode, mtime, bytes/target, xattrs."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
                continue
            xattrs = {n: os.getxattr(p, n) for n in sorted(os.listxattr(p))}
            body = p.read_bytes() if p.is_file() else None
            out[rel] = (oct(st.st_mode), st.st_mtime_ns if p.is_file() else 0, body, xattrs)
    return out


def populate(ws: Path) -> None:
    (ws / "a.txt").write_bytes(b"alpha v1\n")
    (ws / "docs").mkdir()
    (ws / "docs" / "b.md").write_bytes(b"# b\n" * 1000)
    (ws / "docs" / "big.bin").write_bytes(os.urandom(3 << 20))
    os.symlink("docs/b.md", ws / "link")
    os.chmod(ws / "a.txt", 0o640)
    os.utime(ws / "docs" / "b.md", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    os.setxattr(ws / "docs" / "b.md", "user.agentfs.status", b"draft")


@local_store_only
def test_view_is_read_only_and_unchanged_by_later_writes(ws: Path) -> None:
    populate(ws)
    snaps = ws / ".snapshots"
    os.mkdir(snaps / "one")
    assert os.listdir(snaps) == ["one"]
    assert ".snapshots" not in os.listdir(ws)  # hidden from listings, like CephFS's .snap
    view = snaps / "one"
    want = snapshot_of(ws)
    assert snapshot_of(view) == want
    # change everything: overwrite, truncate, delete, rename away and over, chmod, xattr
    (ws / "a.txt").write_bytes(b"alpha v2\n")
    os.truncate(ws / "docs" / "big.bin", 10)
    os.unlink(ws / "link")
    os.rename(ws / "docs" / "b.md", ws / "b-moved.md")
    (ws / "new.txt").write_bytes(b"new")
    os.rename(ws / "new.txt", ws / "docs" / "big.bin")
    os.chmod(ws / "a.txt", 0o600)
    os.setxattr(ws / "b-moved.md", "user.agentfs.status", b"review")
    assert snapshot_of(view) == want  # byte for byte, modes, mtimes, symlinks, xattrs
    # every write in the view is EROFS
    attempts: list[Callable[[], Any]] = [
        lambda: open(view / "a.txt", "wb"),
        lambda: open(view / "a.txt", "ab"),
        lambda: open(view / "fresh.txt", "wb"),
        lambda: os.unlink(view / "a.txt"),
        lambda: os.rename(view / "a.txt", view / "c.txt"),
        lambda: os.rename(view / "a.txt", ws / "c.txt"),
        lambda: os.rename(ws / "a.txt", view / "c.txt"),
        lambda: os.mkdir(view / "sub"),
        lambda: os.rmdir(view / "docs"),
        lambda: os.symlink("x", view / "l2"),
        lambda: os.chmod(view / "a.txt", 0o777),
        lambda: os.truncate(view / "a.txt", 0),
        lambda: os.setxattr(view / "a.txt", "user.x", b"1"),
        lambda: os.removexattr(view / "docs" / "b.md", "user.agentfs.status"),
        lambda: open(snaps / "file", "wb"),
    ]
    for i, attempt in enumerate(attempts):
        with pytest.raises(OSError) as ei:
            attempt()
        assert ei.value.errno == errno.EROFS, (i, ei.value)
    assert snapshot_of(view) == want
    # a second checkpoint; rmdir deletes one
    os.mkdir(snaps / "two")
    assert sorted(os.listdir(snaps)) == ["one", "two"]
    assert (snaps / "two" / "a.txt").read_bytes() == b"alpha v2\n"
    with pytest.raises(FileExistsError):
        os.mkdir(snaps / "two")
    os.rmdir(snaps / "one")
    assert os.listdir(snaps) == ["two"]
    assert not (snaps / "one").exists()


@local_store_only
def test_checkpoint_while_another_process_writes_is_consistent(ws: Path) -> None:
    (ws / "data").mkdir()
    n = 120
    script = (
        "import sys, pathlib\n"
        "d = pathlib.Path(sys.argv[1])\n"
        f"for i in range({n}):\n"
        "    (d / f'f{i:04d}').write_bytes(str(i).encode() * 2000)\n"
        "    (d / 'counter').write_bytes(str(i).encode())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(ws / "data")])
    names = []
    try:
        for k in range(4):
            time.sleep(0.3 + 0.2 * k)
            name = f"c{k}"
            os.mkdir(ws / ".snapshots" / name)
            names.append(name)
    finally:
        assert proc.wait(timeout=300) == 0
    for name in names:
        view = ws / ".snapshots" / name / "data"
        files = sorted(p for p in os.listdir(view) if p.startswith("f")) if view.exists() else []
        # a prefix of the writer's sequence, each file whole, counter matching
        assert files == [f"f{i:04d}" for i in range(len(files))], name
        for f in files:
            i = int(f[1:])
            assert (view / f).read_bytes() == str(i).encode() * 2000
        if files:
            c = int((view / "counter").read_bytes())
            assert c in (len(files) - 1, len(files) - 2), (name, c, len(files))


@local_store_only
def test_restore_while_mounted_is_seen_and_undoable(mount: Mount, store_url: str) -> None:
    ws = mount.path / "ws"
    ws.mkdir()
    populate(ws)
    ok("checkpoint", "create", f"{store_url}/ws", "good", "--note", "all fine")
    good = snapshot_of(ws)
    (ws / "a.txt").write_bytes(b"ruined")
    (ws / "docs" / "big.bin").unlink()
    (ws / "junk").mkdir()
    (ws / "junk" / "x").write_bytes(b"x")
    bad = snapshot_of(ws)
    out = json.loads(ok("checkpoint", "restore", f"{store_url}/ws", "good", "--json"))
    undo = out["undo"]
    wait_for(lambda: snapshot_of(ws) == good, what="the mount to show the restored tree")
    listed = json.loads(ok("checkpoint", "list", f"{store_url}/ws", "--json"))
    assert [c["name"] for c in listed] == ["good", undo]
    assert listed[0]["note"] == "all fine"
    diff = json.loads(ok("checkpoint", "diff", f"{store_url}/ws@good", f"@{undo}", "--json"))
    assert "junk/x" in diff["added"] and "docs/big.bin" in diff["removed"] and "a.txt" in diff["changed"]
    md = ok("checkpoint", "diff", f"{store_url}/ws@good", "@head")
    assert "## Added (0)" in md
    ok("checkpoint", "restore", f"{store_url}/ws", undo)
    wait_for(lambda: snapshot_of(ws) == bad, what="the undo")


@local_store_only
def test_fork_appears_in_the_mount_and_is_isolated(mount: Mount, store_url: str) -> None:
    ws = mount.path / "ws"
    ws.mkdir()
    populate(ws)
    os.mkdir(ws / ".snapshots" / "base")
    want = snapshot_of(ws)
    ok("checkpoint", "fork", f"{store_url}/ws@base", "exp", "--no-materialize")
    exp = mount.path / "exp"
    wait_for(lambda: exp.exists(), what="the fork to appear")
    got = snapshot_of(exp)
    assert {k: v[2] if len(v) == 4 else v for k, v in got.items()} == \
        {k: v[2] if len(v) == 4 else v for k, v in want.items()}
    (exp / "a.txt").write_bytes(b"fork's own")
    (ws / "docs" / "b.md").write_bytes(b"source's own")
    assert (ws / "a.txt").read_bytes() == b"alpha v1\n"
    assert (exp / "docs" / "b.md").read_bytes() == b"# b\n" * 1000
    r = cli("checkpoint", "delete", f"{store_url}/ws@base")
    wait_for(lambda: not _pending("exp", store_url), timeout=60, what="the fork's materialisation")
    st = open_store(store_url)
    assert st.get("exp/docs/b.md") == b"# b\n" * 1000
    assert r.returncode in (0, 1)
    if r.returncode == 1:
        assert "not materialised" in r.stderr
        ok("checkpoint", "delete", f"{store_url}/ws@base")
    assert (exp / "docs" / "big.bin").read_bytes() == want["docs/big.bin"][2]


def _pending(name: str, store_url: str) -> bool:
    from agentfs.api import WorkspaceClient

    c = WorkspaceClient(open_store(store_url), name)
    try:
        return any(c._w.resolve(s.path).entry.data_key for s in c.walk("") if s.kind == "file")
    finally:
        c.close()


@local_store_only
def test_gc_keeps_what_checkpoints_reference(mount: Mount, store_url: str) -> None:
    ws = mount.path / "ws"
    ws.mkdir()
    (ws / "f").write_bytes(b"v1")
    os.mkdir(ws / ".snapshots" / "c1")
    (ws / "f").write_bytes(b"v2")
    os.mkdir(ws / ".snapshots" / "c2")
    (ws / "f").write_bytes(b"v3")
    st = open_store(store_url)
    assert len(list(st.list(".agentfs/ws/blobs/"))) == 2
    out = ok("gc", store_url, "--grace", "0", "--json")
    assert json.loads(out)["deleted"] == []
    os.rmdir(ws / ".snapshots" / "c1")
    out = json.loads(ok("gc", store_url, "--grace", "0", "--json"))
    assert len(out["deleted"]) == 1
    assert (ws / ".snapshots" / "c2" / "f").read_bytes() == b"v2"
    r = cli("checkpoint", "prune", f"{store_url}/ws")
    assert r.returncode == 64 and "keep" in r.stderr
    ok("checkpoint", "prune", f"{store_url}/ws", "--keep-last", "0")
    wait_for(lambda: os.listdir(ws / ".snapshots") == [], what="prune to show in the mount")


@local_store_only
def test_snapshots_in_a_single_workspace_mount(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, "--workspace", "solo")
    (m.path / "f.txt").write_bytes(b"one")
    os.mkdir(m.path / ".snapshots" / "s1")
    (m.path / "f.txt").write_bytes(b"two")
    assert (m.path / ".snapshots" / "s1" / "f.txt").read_bytes() == b"one"
    assert os.listdir(m.path) == ["f.txt"]
    with pytest.raises(OSError) as ei:
        (m.path / ".snapshots" / "s1" / "f.txt").write_bytes(b"x")
    assert ei.value.errno == errno.EROFS
