"""Old keys of unlinks and renames are deleted after the syscall returns.

``agentfs/workspace/garbage.py``: the deletes are queued and drained by the mount's
collector.  ``AGENTFS_GARBAGE_DELAY`` keeps them pending, so these tests see
what happens while a delete is still queued:

- a key written again before its pending delete ran keeps the new object
  (a copy of the same bytes has the same etag on S3 and on a local store, so a
  late conditional delete would remove it): the writer runs the delete first;
- unmount drains the queue; a crash leaves leftovers that the next mount's
  scan removes; ``agentfs check`` is clean either way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from agentfs.store import open_store
from tests.helpers.crash import assert_check_clean, crash
from tests.helpers.mount import Mount

SLOW = {"AGENTFS_GARBAGE_DELAY": "3"}


def _keys(url: str, prefix: str) -> set[str]:
    store = open_store(url)
    try:
        return {o.key for o in store.list(prefix)}
    finally:
        store.close()


def test_key_reused_while_its_delete_is_pending(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, env=SLOW)
    ws = m.path / "ws"
    ws.mkdir()
    data = b"same bytes, same etag\n" * 100
    (ws / "a").write_bytes(data)
    for _ in range(3):
        # a -> b leaves key ws/a pending deletion; b -> a copies the same bytes back
        os.rename(ws / "a", ws / "b")
        os.rename(ws / "b", ws / "a")
    # unlink then create the same name with the same bytes
    (ws / "c").write_bytes(data)
    os.unlink(ws / "c")
    (ws / "c").write_bytes(data)
    time.sleep(4)  # every queued delete has run now
    assert (ws / "a").read_bytes() == data
    assert (ws / "c").read_bytes() == data
    assert not (ws / "b").exists()
    assert _keys(store_url, "ws/") == {"ws/a", "ws/c"}
    m.unmount()
    m2 = mounter(store_url)
    assert (m2.path / "ws" / "a").read_bytes() == data
    assert (m2.path / "ws" / "c").read_bytes() == data


def test_key_reused_while_its_delete_is_running(mounter: Callable[..., Mount], store_url: str) -> None:
    """Every delete takes 1.5 s (injected latency): the rename back copies onto a key
    whose conditional delete is already on its way, with the same etag."""
    m = mounter(store_url, env={"AGENTFS_FAULTS": "seed=1,spike=1,latency=1.5,ops=delete"})
    ws = m.path / "ws"
    ws.mkdir()
    data = b"same bytes again\n" * 50
    (ws / "a").write_bytes(data)
    os.rename(ws / "a", ws / "b")
    time.sleep(0.3)  # the collector is inside the slow delete of ws/a now
    os.rename(ws / "b", ws / "a")
    time.sleep(3.5)
    assert (ws / "a").read_bytes() == data
    assert _keys(store_url, "ws/") == {"ws/a"}


def test_unmount_drains_pending_deletes(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url, env={"AGENTFS_GARBAGE_DELAY": "60"})
    ws = m.path / "ws"
    (ws / "d").mkdir(parents=True)
    for i in range(5):
        (ws / "d" / f"f{i}").write_bytes(b"x" * i)
    os.rename(ws / "d", ws / "e")
    os.unlink(ws / "e" / "f0")
    assert "ws/d/f1" in _keys(store_url, "ws/")  # still pending: the collector waits 60 s
    m.unmount()
    assert _keys(store_url, "ws/") == {f"ws/e/f{i}" for i in range(1, 5)}
    assert _keys(store_url, ".agentfs/ws/intent/") == set()


def test_crash_with_pending_deletes_leaves_nothing_behind(mounter: Callable[..., Mount],
                                                          store_url: str) -> None:
    m = mounter(store_url, env={"AGENTFS_GARBAGE_DELAY": "60"})
    ws = m.path / "ws"
    (ws / "d").mkdir(parents=True)
    for i in range(5):
        (ws / "d" / f"f{i}").write_bytes(b"y" * (i + 1))
    os.rename(ws / "d", ws / "e")
    os.unlink(ws / "e" / "f0")
    os.fsync(os.open(ws, os.O_RDONLY))  # nothing else pending: only the deletes
    crash(m)
    m.kill()
    assert "ws/d/f1" in _keys(store_url, "ws/")
    m2 = mounter(store_url)
    got = {p.name: p.read_bytes() for p in (m2.path / "ws" / "e").iterdir()}
    assert got == {f"f{i}": b"y" * (i + 1) for i in range(1, 5)}
    assert not (m2.path / "ws" / "d").exists()
    # the mount's first scan removes the leftovers (tombstoned keys) at once
    assert _keys(store_url, "ws/") == {f"ws/e/f{i}" for i in range(1, 5)}
    m2.unmount()
    assert_check_clean(store_url)
