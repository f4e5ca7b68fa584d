"""Checkpoints and crashes through real mounts (a local store and moto S3).

A mount SIGKILLed during a restore shows the old or the restored tree, never a
mix, and a mount killed while materialising a restore resumes it after a remount.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agentfs.check import check_store
from agentfs.store import open_store
from tests.helpers.checkpoints import ok, settle_and_unmount, wait_for
from tests.helpers.mount import REPO, Mount


def _hashes(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_crash_during_restore_is_all_or_nothing(mounter: Callable[..., Mount], store_url: str,
                                                  tmp_path: Path) -> None:
    m = mounter(store_url)
    ws = m.path / "ws"
    ws.mkdir()
    for i in range(40):
        (ws / f"f{i:02d}").write_bytes(f"old {i}\n".encode() * 100)
    os.mkdir(ws / ".snapshots" / "old")
    old = _hashes(ws)
    for i in range(40):
        (ws / f"f{i:02d}").write_bytes(f"new {i}\n".encode())
    for i in range(40, 50):
        (ws / f"f{i:02d}").write_bytes(b"extra")
    new = _hashes(ws)
    settle_and_unmount(m)
    rng = random.Random(int(os.environ.get("CRASH_SEED", str(time.time_ns()))))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    outcomes = set()
    current = new
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-m", "agentfs", "checkpoint", "restore", f"{store_url}/ws", "old"],
                             env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 2.5))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        m2 = mounter(store_url)
        got = _hashes(m2.path / "ws")
        assert got in (current, old), "a restore interrupted by a crash is half done"
        outcomes.add("done" if got == old else "not started")
        # a mount finishes the materialisation in the background
        wait_for(lambda: not any(e for e in _data_keys(store_url)), timeout=60, what="materialisation")
        assert _hashes(m2.path / "ws") == got
        settle_and_unmount(m2)
        rep = check_store(open_store(store_url))
        assert rep.clean, rep.model_dump_json(indent=1)
        if got == old:
            # undo for the next round
            cps = json.loads(ok("checkpoint", "list", f"{store_url}/ws", "--json"))
            ok("checkpoint", "restore", f"{store_url}/ws", cps[-1]["name"])
            current = new
    assert outcomes


def _data_keys(store_url: str) -> list[str]:
    from agentfs.api import WorkspaceClient

    st = open_store(store_url)
    c = WorkspaceClient(st, "ws")
    try:
        return [s.path for s in c.walk("") if s.kind == "file" and c._w.resolve(s.path).entry.data_key]
    finally:
        c.close()


def test_mount_killed_during_materialisation_resumes(mounter: Callable[..., Mount], store_url: str) -> None:
    m = mounter(store_url)
    ws = m.path / "ws"
    ws.mkdir()
    for i in range(30):
        (ws / f"f{i:02d}").write_bytes(os.urandom(64 << 10))
    os.mkdir(ws / ".snapshots" / "base")
    want = _hashes(ws)
    for i in range(30):
        (ws / f"f{i:02d}").write_bytes(b"changed")
    settle_and_unmount(m)
    ok("checkpoint", "restore", f"{store_url}/ws", "base", "--no-materialize")
    assert len(_data_keys(store_url)) == 30
    m = mounter(store_url)
    assert _hashes(m.path / "ws") == want  # served from the blobs before materialisation
    time.sleep(random.uniform(4.5, 6.0))  # the mount's background materialisation starts at ~5 s
    m.kill()
    m = mounter(store_url)
    os.listdir(m.path / "ws")  # a whole-store mount loads (and resumes) a workspace on first use
    wait_for(lambda: not _data_keys(store_url), timeout=60, what="materialisation after remount")
    assert _hashes(m.path / "ws") == want
    st = open_store(store_url)
    assert st.get("ws/f07") == (m.path / "ws" / "f07").read_bytes()
