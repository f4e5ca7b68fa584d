"""Crash at any instant of a checkpoint restore or a fork's materialisation.

A restore or a fork is killed (SIGKILL of the ``agentfs`` process) at a seeded
moment; afterwards the workspace is exactly its state before or after the
operation, a retry finishes it, and ``agentfs check`` finds no error.  Rounds:
``CRASH_RESTORE_ROUNDS`` and ``CRASH_FORK_ROUNDS`` (``scripts/soak.sh`` raises
them); a failure names its seed, ``CRASH_SEED=<seed>`` reruns one.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.helpers.crash import (
    check_clean_or_repaired,
    crash_seeds,
)

#: Kill points survived, for the closing note (printed with -s).
SURVIVED: dict[str, int] = {}


@pytest.fixture
def local_url(tmp_path: Path) -> str:
    d = tmp_path / "store"
    d.mkdir()
    return f"file://{d}"


RESTORE_ROUNDS = int(os.environ.get("CRASH_RESTORE_ROUNDS", "3"))


FORK_ROUNDS = int(os.environ.get("CRASH_FORK_ROUNDS", "3"))


def _tree(url: str, ws: str) -> dict[str, str] | None:
    """sha256 of every file of workspace ``ws`` read through the library (None: no workspace)."""
    import hashlib

    import agentfs
    from agentfs.errors import NotFound

    try:
        c = agentfs.open_workspace(url, ws, create=False)
    except NotFound:
        return None
    try:
        return {s.path: hashlib.sha256(c.read_bytes(s.path)).hexdigest()
                for s in c.walk("") if s.kind == "file"}
    finally:
        c.close()


def _finish_materialisation(url: str, ws: str) -> None:
    import agentfs

    c = agentfs.open_workspace(url, ws, create=False)
    try:
        c.materialize()
    finally:
        c.close()


def _cli_killed_at(args: list[str], delay: float) -> bool:
    """Run ``agentfs ARGS``; SIGKILL it after ``delay`` s. True if it was killed."""
    import signal
    import subprocess
    import sys

    from tests.helpers.mount import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "agentfs", *args], env=env, cwd=str(REPO),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        return True


def _timed_cli(args: list[str]) -> float:
    import subprocess
    import sys

    from tests.helpers.mount import REPO

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "agentfs", *args], env=dict(os.environ, PYTHONPATH=str(REPO)),
                       cwd=str(REPO), capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t0


def _sha(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


def _two_states(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """Workspace ``ws`` with checkpoints ``old`` and ``new`` (40 files rewritten, 10 added);
    returns the two trees (path -> sha256)."""
    import agentfs

    rng = random.Random(99)
    old = {f"d{i % 4}/f{i:02d}": f"old {i}\n".encode() * 400 for i in range(40)}
    new = {p: f"new {p}\n".encode() * 300 for p in old} | {f"extra/f{i}": rng.randbytes(20_000)
                                                            for i in range(40, 50)}
    c = agentfs.open_workspace(url, "ws")
    try:
        for d in ("d0", "d1", "d2", "d3", "extra"):
            c.mkdir(d)
        for p, b in old.items():
            c.write_bytes(p, b)
        c.checkpoint("old")
        for p, b in new.items():
            c.write_bytes(p, b)
        c.checkpoint("new")
    finally:
        c.close()
    return {p: _sha(b) for p, b in old.items()}, {p: _sha(b) for p, b in new.items()}


def _kill_delay(rng: random.Random, start: float, full: float) -> float:
    """A moment in the work of a command that takes ``full`` s, ``start`` of them to start up."""
    begin = 0.8 * min(start, full)
    return begin + rng.uniform(0.0, 1.1) * max(full - begin, 0.05)


def test_kill_points_during_checkpoint_restore(store_url: str) -> None:
    """SIGKILL ``agentfs checkpoint restore`` at seeded moments: the workspace is
    the state before or the state restored, never a mix; reads are right before
    the materialisation is finished (by the next client); check is clean."""
    url = store_url
    trees = dict(zip(("old", "new"), _two_states(url), strict=True))
    at = "new"
    # calibrate: one whole restore and back
    full = _timed_cli(["checkpoint", "restore", f"{url}/ws", "old"])
    _timed_cli(["checkpoint", "restore", f"{url}/ws", "new"])
    start = _timed_cli(["checkpoint", "list", f"{url}/ws"])  # interpreter start and store open
    assert _tree(url, "ws") == trees["new"]
    killed = 0
    outcomes: dict[str, int] = {}
    for seed in crash_seeds(5000, RESTORE_ROUNDS):
        rng = random.Random(seed)
        target = "old" if at == "new" else "new"
        delay = _kill_delay(rng, start, full)
        killed += _cli_killed_at(["checkpoint", "restore", f"{url}/ws", target], delay)
        ctx = f"restore kill point seed={seed} (delay {delay:.2f}s of {full:.2f}s; CRASH_SEED={seed})"
        got = _tree(url, "ws")
        assert got in (trees[at], trees[target]), f"{ctx}: a restore interrupted by a kill is half done"
        _finish_materialisation(url, "ws")
        assert _tree(url, "ws") == got, f"{ctx}: materialisation changed the bytes"
        check_clean_or_repaired(url, ctx)
        kind = "restored" if got == trees[target] else "not started"
        outcomes[kind] = outcomes.get(kind, 0) + 1
        at = target if got == trees[target] else at
        SURVIVED["checkpoint-restore"] = SURVIVED.get("checkpoint-restore", 0) + 1
    n = len(crash_seeds(5000, RESTORE_ROUNDS))
    print(f"\n[crash] checkpoint-restore: {n} of {n} kill points survived ({killed} killed mid-run, "
          f"full restore {full:.2f}s, {outcomes})")


def test_kill_points_during_fork_materialisation(store_url: str) -> None:
    """SIGKILL ``agentfs checkpoint fork ws@old fN`` at seeded moments: the new
    workspace is absent or empty (not started; a retry of the fork then works),
    or it holds the whole checkpoint (its materialisation is finished by the
    next client); the source is unchanged; check is clean."""
    url = store_url
    old, new = _two_states(url)
    full = _timed_cli(["checkpoint", "fork", f"{url}/ws@old", "calib"])
    start = _timed_cli(["checkpoint", "list", f"{url}/ws"])
    assert _tree(url, "calib") == old
    killed = 0
    outcomes: dict[str, int] = {}
    for n, seed in enumerate(crash_seeds(6000, FORK_ROUNDS)):
        rng = random.Random(seed)
        delay = _kill_delay(rng, start, full)
        name = f"f{n}"
        killed += _cli_killed_at(["checkpoint", "fork", f"{url}/ws@old", name], delay)
        ctx = f"fork kill point seed={seed} (delay {delay:.2f}s of {full:.2f}s; CRASH_SEED={seed})"
        got = _tree(url, name)
        assert got in (None, {}, old), f"{ctx}: an interrupted fork is half done: {sorted(got or {})[:5]}"
        kind = "absent" if got is None else "empty" if not got else "forked"
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if got == old:
            _finish_materialisation(url, name)
        else:
            _timed_cli(["checkpoint", "fork", f"{url}/ws@old", name])  # the retry works
        assert _tree(url, name) == old, ctx
        assert _tree(url, "ws") == new, f"{ctx}: the source changed"
        check_clean_or_repaired(url, ctx)
        SURVIVED["fork"] = SURVIVED.get("fork", 0) + 1
    n = len(crash_seeds(6000, FORK_ROUNDS))
    print(f"\n[crash] fork: {n} of {n} kill points survived ({killed} killed mid-run, "
          f"full fork {full:.2f}s, {outcomes})")


def test_fork_retry_takes_an_empty_leftover_workspace(local_url: str) -> None:
    """Regression: a fork killed between creating the new workspace and its commit
    left it empty, and every retry failed with "workspace exists".  A retry now
    takes an empty workspace; a workspace with content is still refused."""
    import agentfs
    from agentfs.errors import AlreadyExists

    c = agentfs.open_workspace(local_url, "ws")
    try:
        c.write_bytes("f", b"1")
        c.checkpoint("cp")
        agentfs.open_workspace(local_url, "leftover").close()  # what the killed fork left
        full = agentfs.open_workspace(local_url, "full")
        full.write_bytes("g", b"2")
        full.close()
        assert c.fork("cp", "leftover") == 1
        with pytest.raises(AlreadyExists):
            c.fork("cp", "full")
        with pytest.raises(AlreadyExists):
            c.fork("cp", "ws")
    finally:
        c.close()
    assert _tree(local_url, "leftover") == {"f": _sha(b"1")}
    assert _tree(local_url, "full") == {"g": _sha(b"2")}
    check_clean_or_repaired(local_url, "fork retry")
