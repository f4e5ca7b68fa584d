"""Crash at any instant: many seeded SIGKILL points.

Builds on the crash helpers (``tests/helpers/crash.py``: the :class:`Workload` model and verifier).
Every round: a busy workload runs on a live mount, the daemon is SIGKILLed at a
seeded moment, the store is remounted and

- the tree is exactly the state before or after the operation in flight
  (every closed or fsync'ed file byte-exact, the namespace equal to the
  journal's);
- ``agentfs check`` finds no error; temporary objects (if any) are removed by
  ``--repair`` and the store then checks clean without them.

Kill points: random moments of a mixed workload; with ``AGENTFS_COMPACT_EVERY=2``
so that kills land in journal compaction (state snapshots); in the middle of
renaming a directory of many files; in the middle of multipart uploads (S3).

``CRASH_POINTS_ROUNDS`` scales the random rounds (``scripts/soak.sh`` raises it);
a failure names its seed, ``CRASH_SEED=<seed>`` reruns one.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentfs.check import check_store
from agentfs.journal import META
from agentfs.store import open_store
from tests.helpers.crash import (
    DEAD_MOUNT,
    MiB,
    Workload,
    check_clean_or_repaired,
    crash,
    crash_seeds,
    desc,
    kill_during_close,
    snapshot,
    verify_round,
    write_big_in_thread,
)
from tests.helpers.mount import Mount

ROUNDS = int(os.environ.get("CRASH_POINTS_ROUNDS", "16"))
COMPACT_ROUNDS = int(os.environ.get("CRASH_COMPACT_ROUNDS", "8"))
RENAME_ROUNDS = int(os.environ.get("CRASH_RENAME_ROUNDS", "6"))
MULTIPART_ROUNDS = int(os.environ.get("CRASH_MULTIPART_ROUNDS", "4"))
#: Shifts every seed (the soak script runs new kill points each pass).

#: Kill points survived, for the closing note (printed with -s).
SURVIVED: dict[str, int] = {}


def _kill_workload(m: Mount, w: Workload, delay: float, seed: int) -> None:
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    time.sleep(delay)
    killed_at = time.monotonic()
    crash(m)
    t.join(60)
    assert not t.is_alive(), f"seed {seed}: the workload is still blocked on the dead mount"
    m.kill()
    assert w.error is not None and w.error_at >= killed_at, (
        f"seed {seed}: operation failed before the kill: {w.inflight and w.inflight[0]}: {w.error!r}")
    assert w.error.errno in DEAD_MOUNT, f"seed {seed}: unexpected error after the kill: {w.error!r}"


def _rounds(mounter: Callable[..., Mount], url: str, seeds: list[int], label: str,
            env: dict[str, str] | None = None, max_delay: float = 0.8) -> None:
    m = mounter(url, env=env)
    failures: list[str] = []
    for r, seed in enumerate(seeds):
        rng = random.Random(seed)
        name = f"{label}{r}"
        root = m.path / name
        root.mkdir()
        w = Workload(root, rng)
        for _ in range(rng.randrange(3, 10)):
            w.step()
        _kill_workload(m, w, rng.uniform(0.02, max_delay), seed)
        m = mounter(url, env=env)
        try:
            verify_round(seed, w, m.path / name)
            check_clean_or_repaired(url, f"seed {seed}")
            SURVIVED[label] = SURVIVED.get(label, 0) + 1
        except (AssertionError, pytest.fail.Exception) as e:
            failures.append(str(e))
    print(f"\n[crash] {label}: {len(seeds) - len(failures)} of {len(seeds)} kill points survived")
    if failures:
        pytest.fail(f"{len(failures)} of {len(seeds)} rounds failed (rerun with CRASH_SEED=<seed>):\n"
                    + "\n".join(failures))


@pytest.fixture
def local_url(tmp_path: Path) -> str:
    d = tmp_path / "store"
    d.mkdir()
    return f"file://{d}"


def test_kill_points_random(mounter: Callable[..., Mount], local_url: str) -> None:
    _rounds(mounter, local_url, crash_seeds(70000, ROUNDS), "random")


def test_kill_points_during_compaction(mounter: Callable[..., Mount], local_url: str) -> None:
    """A state snapshot after every 2 commits: kills land in compaction too."""
    _rounds(mounter, local_url, crash_seeds(71000, COMPACT_ROUNDS), "compact",
            env={"AGENTFS_COMPACT_EVERY": "2"})
    states = [o.key for o in open_store(local_url).list(f"{META}/")
              if "/state/" in o.key]
    assert len(states) > COMPACT_ROUNDS, f"compaction did not run: {states}"


def test_kill_points_during_directory_rename(mounter: Callable[..., Mount], store_url: str) -> None:
    """Rename of a directory of many files, killed at a seeded moment within it:
    afterwards the whole tree is at the old name or at the new one, byte-exact."""
    seeds = crash_seeds(72000, RENAME_ROUNDS if store_url.startswith("file:") else RENAME_ROUNDS // 2)
    m = mounter(store_url)
    failures: list[str] = []
    for r, seed in enumerate(seeds):
        rng = random.Random(seed)
        root = m.path / f"rn{r}"
        (root / "src" / "sub").mkdir(parents=True)
        files = {f"{'sub/' if i % 3 else ''}f{i}": rng.randbytes(rng.randrange(1, 3000))
                 for i in range(40)}
        for rel, data in files.items():
            (root / "src" / rel).write_bytes(data)
        # the time one such rename takes, to aim the kill inside the next one
        t0 = time.monotonic()
        os.rename(root / "src", root / "tmp")
        os.rename(root / "tmp", root / "src")
        took = (time.monotonic() - t0) / 2
        delay = rng.uniform(0, took * 1.1)
        outcome: dict[str, Any] = {}

        def go(root: Path = root, outcome: dict[str, Any] = outcome) -> None:
            try:
                os.rename(root / "src", root / "dst")
                outcome["done"] = True
            except OSError as e:
                outcome["error"] = e

        t = threading.Thread(target=go, daemon=True)
        t.start()
        time.sleep(delay)
        crash(m)
        t.join(60)
        m.kill()
        # adoption without delay and an early scan: copies a killed rename left
        # at the new keys must not come back as "external writes"
        m = mounter(store_url, "--scan-interval", "1", env={"AGENTFS_ADOPT_GRACE": "0", "AGENTFS_INTENT_GRACE": "0"})
        time.sleep(2.5)
        try:
            got, dirs = snapshot(m.path / f"rn{r}")
            old = ({f"src/{k}": v for k, v in files.items()}, {"src", "src/sub"})
            new = ({f"dst/{k}": v for k, v in files.items()}, {"dst", "dst/sub"})
            state = "old" if (got, dirs) == old else "new" if (got, dirs) == new else None
            if outcome.get("done"):
                assert state == "new", f"seed {seed}: rename returned but the tree is {state}"
            assert state is not None, (
                f"seed {seed}: after a kill {delay:.3f}s into a rename ({took:.3f}s) the tree is "
                f"neither old nor new: dirs {sorted(dirs)}, files "
                f"{ {k: desc(v) for k, v in sorted(got.items())[:6]} }...")
            check_clean_or_repaired(store_url, f"seed {seed}")
            SURVIVED["rename-dir"] = SURVIVED.get("rename-dir", 0) + 1
        except AssertionError as e:
            failures.append(str(e))
    print(f"\n[crash] rename-dir: {len(seeds) - len(failures)} of {len(seeds)} kill points survived")
    assert not failures, "\n".join(failures)


def test_kill_points_during_multipart_upload(mounter: Callable[..., Mount], s3_url: str,
                                              request: pytest.FixtureRequest) -> None:
    """20 MiB files (two parts on S3) killed at seeded moments of close():
    afterwards absent or complete, and no unfinished upload survives a repair."""
    failures: list[str] = []
    m = mounter(s3_url)
    for r, seed in enumerate(crash_seeds(73000, MULTIPART_ROUNDS)):
        rng = random.Random(seed)
        data = rng.randbytes(20 * MiB)
        (m.path / f"mp{r}").mkdir()
        state: dict[str, Any] = {}
        t = write_big_in_thread(m.path / f"mp{r}" / "big.bin", data, state)
        note = kill_during_close(request, m, s3_url, f"mp{r}/big.bin", state, "during-close", rng)
        t.join(60)
        m.kill()
        closed = state.get("phase") == "closed"
        m = mounter(s3_url)
        p = m.path / f"mp{r}" / "big.bin"
        try:
            if closed:
                assert p.exists(), f"seed {seed}: closed before the kill but missing ({note})"
            if p.exists():
                got = p.read_bytes()
                assert got == data, f"seed {seed}: {desc(got)} is not {desc(data)} ({note})"
            check_clean_or_repaired(s3_url, f"seed {seed}")
            SURVIVED["multipart"] = SURVIVED.get("multipart", 0) + 1
        except AssertionError as e:
            failures.append(str(e))
    m.unmount()
    s3 = request.getfixturevalue("s3_client")
    bucket = s3_url[len("s3://"):].split("/")[0]
    open_uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    print(f"\n[crash] multipart: {MULTIPART_ROUNDS - len(failures)} survived; "
          f"unfinished uploads left by the kills: {len(open_uploads)}")
    assert not failures, "\n".join(failures)
    # agentfs check reports them as temporary objects, --repair aborts them
    rep = check_store(open_store(s3_url))
    assert bool(open_uploads) == any("temporary" in n for n in rep.notices), rep.notices
    check_store(open_store(s3_url), repair=True)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_rename_intents_are_settled(local_url: str) -> None:
    """Library level: an old intent of a rename that never committed has its
    copies removed (not adopted); one whose rename committed is only dropped;
    a key that has a committed entry is never deleted."""
    import agentfs
    from agentfs.models import RenameIntent

    c = agentfs.open_workspace(local_url, "ws")
    try:
        c.mkdir("d")
        c.write_bytes("d/a", b"A")
        c.write_bytes("d/b", b"B")
        c.rename("d", "f")
        ws = c.ws
        assert ws is not None
        store = ws.store
        pre = f"{META}/ws/intent/"
        assert list(store.list(pre)) == []  # a finished rename leaves no intent
        tagged = [r.detail.get("intent") for cm in ws.journal.commits_after(0) for r in cm.records
                  if r.action == "rename"]
        assert tagged and tagged[0]
        # 1. never committed: a copy at a new key, plus a key that is committed now
        store.put("ws/ghost/a", b"A")
        lost = RenameIntent(id="lost", seq=ws.ns.seq, src="x", dst="ghost", time=1.0,
                            keys=["ws/ghost/a", "ws/f/a"])
        store.put(f"{pre}lost.json", lost.model_dump_json().encode())
        # 2. committed (the journal has its tagged record): only the intent goes
        done = RenameIntent(id=str(tagged[0]), seq=0, src="d", dst="f", time=1.0, keys=["ws/f/a", "ws/f/b"])
        store.put(f"{pre}{done.id}.json", done.model_dump_json().encode())
        # 3. young (a rename maybe in progress elsewhere): its key is not adopted
        store.put("ws/young/a", b"Y")
        young = RenameIntent(id="young", seq=ws.ns.seq, src="y", dst="young", keys=["ws/young/a"])
        store.put(f"{pre}young.json", young.model_dump_json().encode())
        c._run(lambda: ws.scan(now=time.time() + 60, changed_now=True))  # type: ignore[attr-defined]
        assert sorted(o.key for o in store.list(pre)) == [f"{pre}young.json"]
        keys = {o.key for o in store.list("ws/")}
        assert "ws/ghost/a" not in keys and {"ws/f/a", "ws/f/b", "ws/young/a"} <= keys
        assert sorted(c.listdir("")) == ["f"] and c.read_bytes("f/a") == b"A"
    finally:
        c.close()
