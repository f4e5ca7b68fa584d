"""Deferred group commit through real mounts: a SIGKILL right after closes or an fsync loses
nothing, and with group commit switched off every close commits."""

from __future__ import annotations

import os
from collections.abc import Callable

from tests.helpers.crash import assert_check_clean, crash, snapshot
from tests.helpers.mount import Mount


def test_sigkill_right_after_closes_keeps_every_closed_file(mounter: Callable[..., Mount],
                                                            store_url: str) -> None:
    # The flusher would wait an hour: every close below is a data PUT whose
    # journal record is still queued when the daemon is killed.
    env = {"AGENTFS_GROUP_COMMIT_DELAY": "3600", "AGENTFS_GROUP_COMMIT_MAX": "1000000"}
    m = mounter(store_url, env=env)
    ws = m.path / "ws"
    (ws / "d").mkdir(parents=True)
    fd = os.open(ws / "kept.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"committed before")
    os.fsync(fd)  # fsync waits for the journal (and carries nothing else queued)
    os.close(fd)
    expected: dict[str, bytes] = {"kept.txt": b"committed before"}
    for i in range(40):
        rel = f"d/f{i:02d}" if i % 3 else f"top{i:02d}"
        data = os.urandom(1 + (i * 977) % 9000)
        (ws / rel).write_bytes(data)
        expected[rel] = data
    (ws / "kept.txt").write_bytes(b"overwritten and closed")
    expected["kept.txt"] = b"overwritten and closed"
    crash(m)
    m.kill()

    m2 = mounter(store_url)
    files, _ = snapshot(m2.path / "ws")
    bad = {rel: len(files.get(rel) or b"") for rel, d in expected.items() if files.get(rel) != d}
    assert not bad, f"{len(bad)} of {len(expected)} closed files differ after SIGKILL: {bad}"
    assert set(files) == set(expected)
    m2.unmount()
    assert_check_clean(store_url)


def test_fsync_of_file_or_directory_commits_entries_before_a_crash(mounter: Callable[..., Mount],
                                                                     store_url: str) -> None:
    """fsync(file) and fsync(directory) commit the journal records of earlier closes:
    after SIGKILL the entries come back exactly (mode 0600), not as adoptions (0644)."""
    env = {"AGENTFS_GROUP_COMMIT_DELAY": "3600", "AGENTFS_GROUP_COMMIT_MAX": "1000000"}
    m = mounter(store_url, env=env)
    ws = m.path / "ws"
    ws.mkdir()
    fd = os.open(ws / "c", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"c" * 10)
    os.fsync(fd)
    os.close(fd)
    for name in ("a", "b"):
        fd = os.open(ws / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, name.encode() * 10)
        os.close(fd)
    dfd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    crash(m)
    m.kill()

    m2 = mounter(store_url)
    for name in ("a", "b", "c"):
        p = m2.path / "ws" / name
        assert p.read_bytes() == name.encode() * 10
        assert (p.stat().st_mode & 0o777) == 0o600, name


def test_switched_off_every_close_commits(mounter: Callable[..., Mount], store_url: str) -> None:
    """AGENTFS_GROUP_COMMIT=0: a close waits for its record, so a SIGKILL right after
    it finds the exact entry (mode 0600) in the journal."""
    m = mounter(store_url, env={"AGENTFS_GROUP_COMMIT": "0", "AGENTFS_GROUP_COMMIT_DELAY": "3600"})
    ws = m.path / "ws"
    ws.mkdir()
    fd = os.open(ws / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"exact")
    os.close(fd)
    crash(m)
    m.kill()
    m2 = mounter(store_url)
    assert (m2.path / "ws" / "f").read_bytes() == b"exact"
    assert ((m2.path / "ws" / "f").stat().st_mode & 0o777) == 0o600
