"""The ``--writeback`` mount mode: close() returns once the file is
in the crash-safe on-disk queue; a background uploader follows.

Mount tests run over a local directory store and moto S3.  The uploader is
held back with ``AGENTFS_WRITEBACK_PAUSE_FILE`` (while that file exists the
background uploader uploads nothing; fsync, sync and unmount still do), so a
test can SIGKILL a daemon whose queue is not empty.  The core test drives a
``FileSystem`` without FUSE over a request-counting store.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from agentfs.identity import Caller
from agentfs.namespace import ROOT_INODE
from agentfs.vfs import CONTROL_STATUS, CONTROL_SYNC, FileSystem
from tests.helpers.core import Counting
from tests.helpers.crash import assert_check_clean, crash, snapshot
from tests.helpers.mount import Mount


def _status(m: Mount) -> dict:
    return json.loads(os.getxattr(m.path, CONTROL_STATUS))


def _paused(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    pause = tmp_path / "pause-uploads"
    pause.write_text("1")
    return pause, {"AGENTFS_WRITEBACK_PAUSE_FILE": str(pause)}


def _wait(pred: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


# ---------------------------------------------------------------- round trip


def test_round_trip_and_another_mount_sees_files_after_the_queue_drains(
        mounter: Callable[..., Mount], store_url: str, tmp_path: Path) -> None:
    pause, env = _paused(tmp_path)
    a = mounter(store_url, "--writeback", env=env)
    ws = a.path / "ws"
    (ws / "d" / "e").mkdir(parents=True)
    files = {f"d/e/f{i}": os.urandom(100 + i * 37) for i in range(20)}
    for rel, data in files.items():
        (ws / rel).write_bytes(data)
    with open(ws / "log.jsonl", "a") as f:
        f.write("first\n")
    for i in range(50):
        with open(ws / "log.jsonl", "a") as f:
            f.write(f'{{"i": {i}}}\n')
    files["log.jsonl"] = b"first\n" + b"".join(f'{{"i": {i}}}\n'.encode() for i in range(50))
    os.chmod(ws / "d/e/f1", 0o600)
    os.symlink("d/e/f0", ws / "link")
    # the writer's own view: at once, from the local copies
    got, dirs = snapshot(ws)
    assert got.pop("link") == files["d/e/f0"]
    assert got == files
    assert {"d", "d/e"} <= dirs
    assert os.readlink(ws / "link") == "d/e/f0"
    assert os.stat(ws / "d/e/f1").st_mode & 0o777 == 0o600
    assert _status(a)["queued"] == len(files)
    assert json.loads(os.getxattr(ws / "d/e/f3", "user.agentfs.sync"))["state"] == "queued"
    assert "user.agentfs.sync" not in os.listxattr(ws / "d/e/f3")

    b = mounter(store_url)  # another mount: nothing uploaded yet
    assert not (b.path / "ws" / "log.jsonl").exists()

    pause.unlink()  # the background uploader drains the queue
    _wait(lambda: _status(a)["queued"] == 0)
    assert json.loads(os.getxattr(ws / "d/e/f3", "user.agentfs.sync")) == {"state": "synced"}
    os.setxattr(a.path, CONTROL_SYNC, b"1")  # and the journal records are written

    def b_has_all() -> bool:
        try:  # (the symlink may show before its target: a dangling read fails)
            return len(snapshot(b.path / "ws")[0]) == len(files) + 1
        except FileNotFoundError:
            return False

    _wait(b_has_all)
    got_b, _ = snapshot(b.path / "ws")
    assert got_b.pop("link") == files["d/e/f0"]
    assert got_b == files
    assert os.stat(b.path / "ws/d/e/f1").st_mode & 0o777 == 0o600
    assert os.readlink(b.path / "ws/link") == "d/e/f0"


def test_unmount_waits_for_the_queue(mounter: Callable[..., Mount], store_url: str, tmp_path: Path) -> None:
    _, env = _paused(tmp_path)  # the background uploader never runs: unmount must upload
    a = mounter(store_url, "--writeback", env=env)
    ws = a.path / "ws"
    ws.mkdir()
    files = {f"f{i}": os.urandom(3000 + i) for i in range(30)}
    for rel, data in files.items():
        (ws / rel).write_bytes(data)
    assert _status(a)["queued"] == 30
    assert a.unmount() == 0
    b = mounter(store_url)
    got, _ = snapshot(b.path / "ws")
    assert got == files
    assert not list(a.cache_dir.glob("writeback/*/*/data/*"))  # nothing left queued


# ---------------------------------------------------------------- crash safety


def test_sigkill_with_a_full_queue_then_remount_replays_it(mounter: Callable[..., Mount], store_url: str,
                                                           tmp_path: Path) -> None:
    pause, env = _paused(tmp_path)
    cache = tmp_path / "wbcache"
    a = mounter(store_url, "--writeback", env=env, cache_dir=cache)
    ws = a.path / "ws"
    (ws / "old").mkdir(parents=True)
    fd = os.open(ws / "old/committed.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"version 1")
    os.fsync(fd)  # durable: uploaded and committed
    os.close(fd)
    fd = os.open(ws / "old/gone.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"to be removed")
    os.fsync(fd)
    os.close(fd)

    expected: dict[str, bytes] = {}
    (ws / "new" / "deep").mkdir(parents=True)
    for i in range(25):
        data = os.urandom(1 + i * 911)
        (ws / f"new/deep/f{i:02d}").write_bytes(data)
        expected[f"new/deep/f{i:02d}"] = data
    (ws / "old/committed.txt").write_bytes(b"version 2, queued")
    expected["old/committed.txt"] = b"version 2, queued"
    for i in range(30):
        with open(ws / "new/log", "a") as f:
            f.write(f"line {i}\n")
    expected["new/log"] = b"".join(f"line {i}\n".encode() for i in range(30))
    (ws / "new/tmp.lock").write_bytes(b"renamed before upload")
    os.rename(ws / "new/tmp.lock", ws / "new/final")  # local rename of a queued new file
    expected["new/final"] = b"renamed before upload"
    (ws / "new/x.lock").write_bytes(b"replaces the committed file")
    os.rename(ws / "new/x.lock", ws / "old/gone.txt")  # over a committed file
    expected["old/gone.txt"] = b"replaces the committed file"
    (ws / "new/scratch").write_bytes(b"unlinked before upload")
    os.unlink(ws / "new/scratch")  # must not come back
    os.chmod(ws / "new/deep/f03", 0o600)
    os.utime(ws / "new/deep/f04", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))  # as tar does
    os.chmod(ws / "old/committed.txt", 0o640)  # a committed file, queued: chmod after its close
    (ws / "emptydir").mkdir()
    os.symlink("new/final", ws / "ln")
    assert _status(a)["queued"] > 0
    crash(a)
    a.kill()
    pause.unlink()

    # another mount (no queue of its own) sees only what was durable before the crash
    b = mounter(store_url)
    assert (b.path / "ws/old/committed.txt").read_bytes() == b"version 1"
    b.unmount()

    # the crashed mount's cache: the queue is replayed before anything is served
    c = mounter(store_url, "--writeback", cache_dir=cache)
    got, dirs = snapshot(c.path / "ws")
    bad = {p: (len(got.get(p) or b""), len(d)) for p, d in expected.items() if got.get(p) != d}
    assert not bad, f"replay lost or changed {bad}"
    assert set(got) == set(expected) | {"ln"}, set(got) ^ set(expected)
    assert {"new", "new/deep", "old", "emptydir"} <= dirs
    assert os.stat(c.path / "ws/new/deep/f03").st_mode & 0o777 == 0o600
    assert os.stat(c.path / "ws/new/deep/f04").st_mtime_ns == 1_500_000_000_000_000_000
    assert os.stat(c.path / "ws/old/committed.txt").st_mode & 0o777 == 0o640
    assert os.readlink(c.path / "ws/ln") == "new/final"
    assert c.unmount() == 0
    assert_check_clean(store_url)
    d = mounter(store_url)  # and in the store, for everyone
    assert snapshot(d.path / "ws")[0] == got


def test_fsync_of_a_file_or_directory_is_durable(mounter: Callable[..., Mount], store_url: str,
                                                 tmp_path: Path) -> None:
    pause, env = _paused(tmp_path)
    a = mounter(store_url, "--writeback", env=env)
    ws = a.path / "ws"
    ws.mkdir()
    fd = os.open(ws / "synced", os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, b"fsync waits for the store")
    os.fsync(fd)
    os.close(fd)
    (ws / "d").mkdir()
    for i in range(5):
        (ws / f"d/g{i}").write_bytes(b"x" * i)
    dfd = os.open(ws / "d", os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)  # fsync(dir): the whole queue
    os.close(dfd)
    (ws / "queued-only").write_bytes(b"not synced")
    crash(a)
    a.kill()
    pause.unlink()
    b = mounter(store_url)  # another cache: no replay, the store alone
    got, _ = snapshot(b.path / "ws")
    assert got["synced"] == b"fsync waits for the store"
    assert os.stat(b.path / "ws/synced").st_mode & 0o777 == 0o640
    assert all(got[f"d/g{i}"] == b"x" * i for i in range(5))
    assert "queued-only" not in got


# ---------------------------------------------------------------- conflicts


def test_another_mounts_write_meanwhile_keeps_both_versions(mounter: Callable[..., Mount], store_url: str,
                                                            tmp_path: Path) -> None:
    pause, env = _paused(tmp_path)
    a = mounter(store_url, "--writeback", "--agent", "alice", env=env)
    b = mounter(store_url, "--agent", "bob")
    (a.path / "ws").mkdir()
    fd = os.open(a.path / "ws/report.md", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"base")
    os.fsync(fd)
    os.close(fd)
    _wait(lambda: (b.path / "ws/report.md").exists())
    (a.path / "ws/report.md").write_bytes(b"alice's queued version")
    (b.path / "ws/report.md").write_bytes(b"bob's durable version")  # lands first
    pause.unlink()
    os.setxattr(a.path, CONTROL_SYNC, b"1")
    _wait(lambda: len(os.listdir(b.path / "ws")) == 2)
    names = sorted(os.listdir(b.path / "ws"))
    assert (b.path / "ws/report.md").read_bytes() == b"bob's durable version"
    conflict = [n for n in names if n != "report.md"]
    assert len(conflict) == 1 and conflict[0].startswith("report.conflict-alice-"), names
    assert (b.path / "ws" / conflict[0]).read_bytes() == b"alice's queued version"


def test_replay_after_a_crash_keeps_both_versions_on_conflict(mounter: Callable[..., Mount], store_url: str,
                                                               tmp_path: Path) -> None:
    pause, env = _paused(tmp_path)
    cache = tmp_path / "wbcache"
    a = mounter(store_url, "--writeback", "--agent", "alice", env=env, cache_dir=cache)
    (a.path / "ws").mkdir()
    fd = os.open(a.path / "ws/f.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"base")
    os.fsync(fd)
    os.close(fd)
    (a.path / "ws/f.txt").write_bytes(b"queued at the crash")
    crash(a)
    a.kill()
    pause.unlink()
    b = mounter(store_url, "--agent", "bob")
    (b.path / "ws/f.txt").write_bytes(b"written while alice was down")
    b.unmount()
    c = mounter(store_url, "--writeback", cache_dir=cache)
    got, _ = snapshot(c.path / "ws")
    assert got["f.txt"] == b"written while alice was down"
    copies = [v for k, v in got.items() if k.startswith("f.conflict-alice-")]
    assert copies == [b"queued at the crash"], sorted(got)


# ---------------------------------------------------------------- bad input


def test_bad_input_gets_the_same_errors(mounter: Callable[..., Mount], store_url: str, tmp_path: Path) -> None:
    _, env = _paused(tmp_path)
    a = mounter(store_url, "--writeback", env=env)
    ws = a.path / "ws"
    (ws / "dir" / "sub").mkdir(parents=True)
    (ws / "q").write_bytes(b"queued")
    (ws / "dir/inside").write_bytes(b"queued too")

    def err(fn: Callable[[], object]) -> int:
        with pytest.raises(OSError) as e:
            fn()
        return e.value.errno

    assert err(lambda: os.rename(ws / "q", ws / "dir")) == errno.EISDIR
    assert err(lambda: os.rmdir(ws / "dir")) == errno.ENOTEMPTY
    assert err(lambda: os.open(ws / "q", os.O_CREAT | os.O_EXCL | os.O_WRONLY)) == errno.EEXIST
    assert err(lambda: os.mkdir(ws / "dir")) == errno.EEXIST
    assert err(lambda: (ws / ("n" * 256)).write_bytes(b"")) == errno.ENAMETOOLONG
    assert err(lambda: os.rename(ws / "missing", ws / "x")) == errno.ENOENT
    assert err(lambda: os.rename(ws / "dir", ws / "dir/sub/into")) == errno.EINVAL
    assert err(lambda: os.rename(ws / "q", ws / "dir/sub/q/x")) in (errno.ENOENT, errno.ENOTDIR)
    assert (ws / "q").read_bytes() == b"queued"
    assert (ws / "dir/inside").read_bytes() == b"queued too"


def test_writeback_on_a_read_only_mount_changes_nothing(mounter: Callable[..., Mount], store_url: str) -> None:
    a = mounter(store_url)
    (a.path / "ws").mkdir()
    (a.path / "ws/f").write_bytes(b"x")
    a.unmount()
    r = mounter(store_url, "--writeback", "--read-only")
    with pytest.raises(OSError) as e:
        (r.path / "ws/g").write_bytes(b"y")
    assert e.value.errno == errno.EROFS
    assert (r.path / "ws/f").read_bytes() == b"x"


# ---------------------------------------------------------------- coalescing (core, no FUSE)


def test_append_log_closes_coalesce_into_few_uploads(tmp_path: Path) -> None:
    """1000 open/append/close of one file: the uploads are coalesced (the
    queue keeps one entry per file, uploaded with its latest bytes)."""
    store = Counting()

    async def main() -> None:
        fs = FileSystem(store, cache_dir=tmp_path / "cache", workspace="w", writeback_mode=True)
        await fs.start()
        caller = Caller.current("t")
        async with trio.open_nursery() as nursery:
            await fs.run_background(nursery)
            before = store.calls["put"]
            fh, attr = await fs.create(ROOT_INODE, "log.jsonl", 0o644, os.O_WRONLY, caller)
            await fs.flush(fh)
            await fs.release(fh)
            size = 0
            for i in range(1000):
                line = f'{{"i": {i}}}\n'.encode()
                fh, _ = await fs.open(attr.ino, os.O_WRONLY | os.O_APPEND, caller)
                await fs.write(fh, size, line)
                size += len(line)
                await fs.flush(fh)
                await fs.release(fh)
            assert fs.getattr(attr.ino).size == size
            await fs.sync_all(caller)
            puts = store.calls["put"] - before
            nursery.cancel_scope.cancel()
        await fs.close()
        data = store.get("w/log.jsonl")
        assert data == b"".join(f'{{"i": {i}}}\n'.encode() for i in range(1000))
        # one data PUT (plus the odd journal object), not 1000
        assert puts <= 5, f"{puts} PUTs for 1000 appends"

    trio.run(main)
