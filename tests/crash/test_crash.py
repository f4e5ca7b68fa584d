"""Crash safety: SIGKILL the mount daemon, remount the same store, check the data.

The promise (DESIGN.md §1): ``close()`` and ``fsync()`` return only when the
bytes are in the store.  So after a crash at any instant:

- every file whose last completed operation was a close or an fsync has
  exactly the bytes of that operation;
- a file with an operation in flight at the kill has its old or its new
  state, never torn or mixed bytes; a rename is atomic (a whole tree moves
  or nothing does);
- ``agentfs check`` finds the store consistent.

Every test runs over a local directory store and over moto S3.  Kills at
random moments of a busy workload are in ``tests/crash/test_crash_random.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers.crash import (
    KiB,
    MiB,
    agentfs_cli,
    assert_check_clean,
    crash,
    desc,
    kill_during_close,
    snapshot,
    store_bytes,
    wait_state,
    write_all,
    write_big_in_thread,
)
from tests.helpers.mount import Mount, is_mounted

#: errnos a syscall on the mount returns once its daemon is dead.


# ---------------------------------------------------------------- durability


def test_closed_and_fsynced_files_survive_sigkill(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url)
    ws = m.path / "ws"
    ws.mkdir()
    for d in range(5):
        (ws / f"d{d}").mkdir()
    rng = random.Random(7)
    expected: dict[str, bytes] = {}
    open_fds: list[int] = []
    for i in range(50):
        rel = f"d{i % 5}/f{i:02d}.bin" if i % 7 else f"top{i:02d}.bin"
        data = rng.randbytes(rng.choice([0, 1, rng.randrange(200 * KiB + 1), rng.randrange(200 * KiB + 1)]))
        fd = os.open(ws / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        write_all(fd, data)
        if i % 6 == 0:
            os.fsync(fd)  # durable now; the fd stays open across the crash
            open_fds.append(fd)
        else:
            if i % 4 == 0:
                os.fsync(fd)
            os.close(fd)
        expected[rel] = data
    # A few overwrites of closed files: the last closed version must win.
    for rel in sorted(expected)[:5]:
        data = rng.randbytes(rng.randrange(100 * KiB))
        fd = os.open(ws / rel, os.O_WRONLY | os.O_TRUNC)
        write_all(fd, data)
        os.close(fd)
        expected[rel] = data
    crash(m)
    for fd in open_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    m.kill()

    m2 = mounter(store_url)
    files, _ = snapshot(m2.path / "ws")
    bad = {rel: f"expected {desc(d)}, got {desc(files.get(rel))}"
           for rel, d in expected.items() if files.get(rel) != d}
    assert not bad, f"{len(bad)} of {len(expected)} durable files differ after SIGKILL: {bad}"
    assert set(files) == set(expected), f"unexpected files: {sorted(set(files) - set(expected))}"
    assert_check_clean(store_url)


# ---------------------------------------------------------------- large files


BIG_IDS = ["during-close", "after-upload"]


@pytest.mark.parametrize("kill_point", BIG_IDS)
def test_sigkill_during_large_overwrite(mounter: Callable[..., Mount], store_url: str,
                                        request: pytest.FixtureRequest, kill_point: str) -> None:
    """A committed 20 MiB version is overwritten by 40 MiB (multipart on S3);
    the kill comes while close() uploads and commits: old or new, never torn."""
    rng = random.Random(99)
    v1 = rng.randbytes(20 * MiB)
    v2 = rng.randbytes(40 * MiB)
    m = mounter(store_url)
    ws = m.path / "ws"
    ws.mkdir()
    (ws / "big.bin").write_bytes(v1)
    state: dict[str, Any] = {}
    t = write_big_in_thread(ws / "big.bin", v2, state)
    note = kill_during_close(request, m, store_url, "ws/big.bin", state, kill_point, rng)
    t.join(60)
    m.kill()
    closed = state.get("phase") == "closed"
    print(f"{note}; close returned: {closed}")

    m = mounter(store_url)
    p = m.path / "ws" / "big.bin"
    st_size = p.stat().st_size
    got = p.read_bytes()
    allowed = {v2: "new"} if closed else {v1: "old", v2: "new"}
    torn = ""
    if got not in allowed:
        for name, v in (("old", v1), ("new", v2)):
            for cut in (len(got), len(v)):
                if got[:cut] == v[:cut] and cut:
                    torn = f" (its first {cut} bytes are the {name} version's)"
                    break
            if torn:
                break
    if got not in allowed:
        pytest.fail(f"big.bin after a kill during its upload ({note}, close returned: {closed}) is "
                    f"{desc(got)}, st_size {st_size}: neither the old {desc(v1)} nor the new "
                    f"{desc(v2)} version{torn}")
    print(f"big.bin has the {allowed[got]} version")
    assert_check_clean(store_url)


def test_sigkill_midway_through_large_new_file(mounter: Callable[..., Mount], store_url: str) -> None:
    """A new 40 MiB file, never closed nor fsynced: after the kill it does not exist."""
    new = random.Random(98).randbytes(40 * MiB)
    m = mounter(store_url)
    ws = m.path / "ws"
    ws.mkdir()
    (ws / "keep.txt").write_bytes(b"committed before\n")
    state: dict[str, Any] = {}
    t = write_big_in_thread(ws / "new.bin", new, state)
    wait_state(state, lambda s: s.get("written", 0) >= 20 * MiB or s.get("phase") == "closed")
    crash(m)
    t.join(60)
    m.kill()
    assert state.get("phase") != "closed", "the write finished before the kill (test too slow to kill)"
    m = mounter(store_url)
    ws = m.path / "ws"
    assert not (ws / "new.bin").exists(), (
        f"a file never closed or fsynced exists after the crash: {desc((ws / 'new.bin').read_bytes())}")
    assert (ws / "keep.txt").read_bytes() == b"committed before\n"
    assert_check_clean(store_url)


@pytest.mark.parametrize("kill_point", BIG_IDS)
def test_sigkill_during_large_new_file_upload(mounter: Callable[..., Mount], store_url: str,
                                              request: pytest.FixtureRequest, kill_point: str) -> None:
    """A new 40 MiB file killed in close(): absent, or complete (never torn)."""
    rng = random.Random(97)
    new = rng.randbytes(40 * MiB)
    m = mounter(store_url)
    (m.path / "ws").mkdir()
    state: dict[str, Any] = {}
    t = write_big_in_thread(m.path / "ws" / "new.bin", new, state)
    note = kill_during_close(request, m, store_url, "ws/new.bin", state, kill_point, rng)
    t.join(60)
    m.kill()
    closed = state.get("phase") == "closed"
    m = mounter(store_url)
    p = m.path / "ws" / "new.bin"
    present = p.exists()
    print(f"{note}; close returned: {closed}; present after remount: {present}")
    if closed:
        assert present, "new.bin was closed before the kill but is missing after remount"
    if present:
        got = p.read_bytes()
        if got != new:
            pytest.fail(f"new.bin after a kill during its upload is {desc(got)}, not {desc(new)}")
    assert_check_clean(store_url)


# ---------------------------------------------------------------- clean unmount


def test_agentfs_umount_waits_for_the_daemon(mounter: Callable[..., Mount], store_url: str,
                                             request: pytest.FixtureRequest) -> None:
    m = mounter(store_url)
    ws = m.path / "ws"
    ws.mkdir()
    (ws / "sub").mkdir()
    rng = random.Random(11)
    expected = {f"sub/f{i}.bin" if i % 2 else f"f{i}.bin": rng.randbytes(rng.randrange(300 * KiB))
                for i in range(20)}
    expected["large.bin"] = rng.randbytes(12 * MiB)
    for rel, data in expected.items():
        fd = os.open(ws / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        write_all(fd, data[: len(data) // 2])
        write_all(fd, data[len(data) // 2:])
        os.close(fd)
    t0 = time.monotonic()
    r = agentfs_cli("umount", str(m.path))
    took = time.monotonic() - t0
    assert r.returncode == 0, f"agentfs umount exited {r.returncode}: {r.stderr.decode()}"
    # The daemon is our child: once it exited, poll() reaps it immediately.
    rc = m.proc.poll()
    assert rc is not None, f"agentfs umount returned after {took:.2f}s but daemon {m.pid} still runs"
    assert rc == 0, f"the daemon exited with {rc} after a clean unmount:\n{m.log_text()[-3000:]}"
    assert not is_mounted(m.path)
    print(f"agentfs umount took {took:.2f}s")
    bad = {rel: desc(store_bytes(request, store_url, f"ws/{rel}")) for rel, data in expected.items()
           if store_bytes(request, store_url, f"ws/{rel}") != data}
    assert not bad, f"closed files missing or wrong at their natural keys after umount: {bad}"
    assert_check_clean(store_url)
    m2 = mounter(store_url)
    files, _ = snapshot(m2.path / "ws")
    assert set(files) == set(expected)
    bad = {rel: desc(files[rel]) for rel, data in expected.items() if files[rel] != data}
    assert not bad, f"files differ when mounted again after umount: {bad}"
