"""Crash safety: SIGKILL the mount daemon, remount the same store, check the data.

The promise (DESIGN.md §1): ``close()`` and ``fsync()`` return only when the
bytes are in the store.  So after a crash at any instant:

- every file whose last completed operation was a close or an fsync has
  exactly the bytes of that operation;
- a file with an operation in flight at the kill has its old or its new
  state, never torn or mixed bytes; a rename is atomic (a whole tree moves
  or nothing does);
- ``agentfs check`` finds the store consistent.

Every test runs over a local directory store and over moto S3.  The random
kill test prints its seed; rerun one round with ``CRASH_SEED=<seed>``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_mount import REPO, Mount, is_mounted

KiB = 1024
MiB = 1024 * KiB
#: errnos a syscall on the mount returns once its daemon is dead.
DEAD_MOUNT = {errno.ENOTCONN, errno.EIO, errno.ECONNABORTED, errno.ENODEV}


# ---------------------------------------------------------------- helpers


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def desc(data: bytes | None) -> str:
    if data is None:
        return "<missing>"
    return f"<{len(data)} bytes sha {hashlib.sha256(data).hexdigest()[:10]}>"


def agentfs_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run([sys.executable, "-m", "agentfs", *args], capture_output=True, env=env,
                          cwd=str(REPO), timeout=timeout)


def assert_check_clean(store_url: str, context: str = "") -> None:
    r = agentfs_cli("check", store_url)
    assert r.returncode == 0, (f"{context}agentfs check {store_url} exited {r.returncode}:\n"
                               f"{r.stdout.decode()}\n{r.stderr.decode()}")


def crash(m: Mount) -> None:
    """SIGKILL the daemon and wait for it; the dead mount stays attached so
    that syscalls in flight fail with ENOTCONN instead of reaching the
    underlying directory.  Call ``m.kill()`` afterwards to detach it."""
    if m.proc.poll() is None:
        os.kill(m.pid, signal.SIGKILL)
        m.proc.wait(timeout=30)
    m.expect_errors = True


def snapshot(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """(files: rel path -> bytes, dirs: rel paths) of a tree."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            dirs.add(d if rel == "." else f"{rel}/{d}")
        for f in filenames:
            p = f if rel == "." else f"{rel}/{f}"
            files[p] = _read_reopening(root / p)
    return files, dirs


def _read_reopening(path: Path) -> bytes:
    """Read a file; ESTALE (it changed size while the kernel cached the old
    one, e.g. a dead mount's last request landing late) means reopen it."""
    for _ in range(10):
        try:
            return path.read_bytes()
        except OSError as e:
            if e.errno != errno.ESTALE:
                raise
            time.sleep(0.3)
    return path.read_bytes()


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


# ---------------------------------------------------------------- kills at random moments


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


@dataclass
class Workload:
    """A busy single-threaded workload on one workspace with a model of it.

    ``files``/``dirs`` reflect every operation that returned; ``inflight`` is
    the operation running now with the state it leads to.
    """

    root: Path
    rng: random.Random
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    inflight: tuple[str, dict[str, bytes], set[str]] | None = None
    done: list[str] = field(default_factory=list)
    error: OSError | None = None
    error_at: float = 0.0
    n: int = 0

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def _data(self) -> bytes:
        r = self.rng.random()
        size = 0 if r < 0.08 else self.rng.randrange(1, 4 * KiB) if r < 0.5 else self.rng.randrange(96 * KiB)
        return self.rng.randbytes(size)

    def _write(self, rel: str, data: bytes, fsync: bool) -> None:
        fd = os.open(self.root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def plan(self) -> tuple[str, Callable[[], None], dict[str, bytes], set[str]]:
        """Pick the next operation (deterministic given the seed and the model)."""
        rng, files, dirs = self.rng, dict(self.files), set(self.dirs)
        parents = ["", *sorted(dirs)]
        empty = sorted(d for d in dirs if not any(p.startswith(d + "/") for p in [*files, *dirs]))
        choices = ["create"] * 4 + ["mkdir"] * 2
        if files:
            choices += ["overwrite"] * 4 + ["rename"] * 2 + ["replace"] + ["unlink"] * 2
        if dirs:
            choices += ["rename_dir"] * 2
        if empty:
            choices += ["rmdir"]
        op = rng.choice(choices)
        if op == "create":
            rel, data, fsync = _join(rng.choice(parents), self._name("f")), self._data(), rng.random() < 0.3
            files[rel] = data
            return f"create {rel} {desc(data)}", lambda: self._write(rel, data, fsync), files, dirs
        if op == "overwrite":
            rel, data, fsync = rng.choice(sorted(files)), self._data(), rng.random() < 0.3
            files[rel] = data
            return f"overwrite {rel} {desc(data)}", lambda: self._write(rel, data, fsync), files, dirs
        if op in ("rename", "replace"):
            src = rng.choice(sorted(files))
            others = sorted(set(files) - {src})
            dst = rng.choice(others) if op == "replace" and others else _join(rng.choice(parents),
                                                                               self._name("r"))
            files[dst] = files.pop(src)
            return f"rename {src} -> {dst}", lambda: os.rename(self.root / src, self.root / dst), files, dirs
        if op == "unlink":
            rel = rng.choice(sorted(files))
            del files[rel]
            return f"unlink {rel}", lambda: os.unlink(self.root / rel), files, dirs
        if op == "mkdir":
            rel = _join(rng.choice(parents), self._name("d"))
            dirs.add(rel)
            return f"mkdir {rel}", lambda: os.mkdir(self.root / rel), files, dirs
        if op == "rmdir":
            rel = rng.choice(empty)
            dirs.discard(rel)
            return f"rmdir {rel}", lambda: os.rmdir(self.root / rel), files, dirs
        # rename_dir: a whole subtree moves to a new name (not into itself)
        src = rng.choice(sorted(dirs))
        dst = _join(rng.choice([p for p in parents if p != src and not p.startswith(src + "/")]),
                    self._name("D"))

        def moved(p: str) -> str:
            return dst + p[len(src):] if p == src or p.startswith(src + "/") else p

        files = {moved(p): d for p, d in files.items()}
        dirs = {moved(p) for p in dirs}
        return f"rename dir {src} -> {dst}", lambda: os.rename(self.root / src, self.root / dst), files, dirs

    def step(self) -> None:
        what, fn, files, dirs = self.plan()
        self.inflight = (what, files, dirs)
        fn()
        self.files, self.dirs = files, dirs
        self.inflight = None
        self.done.append(what)

    def run(self) -> None:
        """Work until a syscall fails (the daemon was killed)."""
        try:
            while True:
                self.step()
        except OSError as e:
            self.error, self.error_at = e, time.monotonic()


def _verify_round(seed: int, w: Workload, root: Path) -> None:
    files, dirs = snapshot(root)
    candidates = [("before the op in flight", w.files, w.dirs)]
    if w.inflight is not None:
        candidates.append(("after the op in flight", w.inflight[1], w.inflight[2]))
        what = w.inflight[0]
        if what.startswith("rename ") and not what.startswith("rename dir "):
            src, dst = what[len("rename "):].split(" -> ")
            if dst in w.files:
                # Documented (SEMANTICS.md, known gaps): a rename over an existing
                # file copies onto the target before it commits, so a crash in
                # between leaves the target replaced and the source still there.
                candidates.append(("rename over a file, interrupted after its copy",
                                   {**w.files, dst: w.files[src]}, w.dirs))
    for _label, cf, cd in candidates:
        if files == cf and dirs == cd:
            return
    # Explain the difference against the state of the completed operations.
    lines = [f"seed {seed}: after SIGKILL and remount the tree is neither the state before nor after "
             f"the operation in flight ({w.inflight[0] if w.inflight else 'none'}); "
             f"{len(w.done)} operations completed, last: {w.done[-3:]}"]
    inflight_files = w.inflight[1] if w.inflight else w.files
    for p in sorted(set(files) | set(w.files) | set(inflight_files)):
        got, old, new = files.get(p), w.files.get(p), inflight_files.get(p)
        if got != old:
            kind = "TORN/UNKNOWN" if got is not None and got not in (old, new) else "differs"
            if kind != "differs":
                for label, v in (("in-flight", new), ("completed", old)):
                    if v and got and len(got) != len(v) and (got.startswith(v) or v.startswith(got)):
                        kind += f": the {label} bytes {'padded' if len(got) > len(v) else 'cut'} to {len(got)}"
                        break
            lines.append(f"  {p}: got {desc(got)}, completed state {desc(old)}, "
                         f"in-flight state {desc(new)} [{kind}]")
    for d in sorted(dirs ^ w.dirs):
        lines.append(f"  dir {d}: {'present' if d in dirs else 'missing'} "
                     f"(completed state: {'present' if d in w.dirs else 'absent'})")
    pytest.fail("\n".join(lines))


ROUNDS = int(os.environ.get("CRASH_ROUNDS", "10"))


def test_sigkill_at_random_moments(mounter: Callable[..., Mount], store_url: str) -> None:
    seeds = [int(os.environ["CRASH_SEED"])] if "CRASH_SEED" in os.environ else \
        [20240 + r for r in range(ROUNDS)]
    m = mounter(store_url)
    started = time.monotonic()
    failures: list[str] = []
    for r, seed in enumerate(seeds):
        print(f"round {r}: seed {seed}")
        rng = random.Random(seed)
        name = f"w{r}"
        root = m.path / name
        root.mkdir()
        w = Workload(root, rng)
        for _ in range(rng.randrange(3, 12)):  # a starting tree, completed before the kill
            w.step()
        delay = rng.uniform(0.05, 1.5)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        time.sleep(delay)
        killed_at = time.monotonic()
        crash(m)
        t.join(60)
        assert not t.is_alive(), f"seed {seed}: the workload is still blocked on the dead mount"
        m.kill()
        assert w.error is not None, f"seed {seed}: the workload ended without an error"
        assert w.error_at >= killed_at, (
            f"seed {seed}: operation failed before the kill: {w.inflight and w.inflight[0]}: {w.error!r}")
        assert w.error.errno in DEAD_MOUNT, f"seed {seed}: unexpected error after the kill: {w.error!r}"
        print(f"  killed after {delay:.2f}s, {len(w.done)} ops done, in flight: "
              f"{w.inflight[0] if w.inflight else None}")
        m = mounter(store_url)
        try:  # run every round, then report every failing seed
            _verify_round(seed, w, m.path / name)
            assert_check_clean(store_url, f"seed {seed}: ")
        except (AssertionError, pytest.fail.Exception) as e:
            failures.append(str(e))
            print(f"  FAILED: {str(e).splitlines()[0]}")
    print(f"{len(seeds)} rounds in {time.monotonic() - started:.1f}s, {len(failures)} failed")
    if failures:
        pytest.fail(f"{len(failures)} of {len(seeds)} rounds failed "
                    f"(rerun one with CRASH_SEED=<seed>):\n" + "\n".join(failures))


# ---------------------------------------------------------------- large files


def _write_big_in_thread(path: Path, data: bytes, state: dict[str, Any]) -> threading.Thread:
    """Write ``data`` in 1 MiB chunks then close; ``state`` tracks the phase."""

    def go() -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            state["phase"] = "writing"
            try:
                for off in range(0, len(data), MiB):
                    write_all(fd, data[off:off + MiB])
                    state["written"] = off + MiB
                state["phase"] = "closing"
            finally:
                os.close(fd)
            state["phase"] = "closed"
        except OSError as e:
            state["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _wait_state(state: dict[str, Any], pred: Callable[[dict[str, Any]], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred(state):
        assert time.monotonic() < deadline, f"writer did not get there: {state}"
        assert "error" not in state, f"writer failed before the kill: {state['error']!r}"
        time.sleep(0.002)


def _key_version(request: pytest.FixtureRequest, store_url: str, key: str) -> str | None:
    """The current version of an object, read directly from the store (None: absent)."""
    if store_url.startswith("file://"):
        try:
            st = os.stat(Path(store_url[len("file://"):]) / key)
        except FileNotFoundError:
            return None
        return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
    from botocore.exceptions import ClientError

    s3 = request.getfixturevalue("s3_client")
    try:
        return s3.head_object(Bucket=store_url[len("s3://"):].split("/")[0], Key=key)["ETag"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _kill_during_close(request: pytest.FixtureRequest, m: Mount, store_url: str, key: str,
                       state: dict[str, Any], kill_point: str, rng: random.Random) -> str:
    """Wait until the writer is in close(), then SIGKILL: after a random delay
    (``during-close``) or the moment the object at ``key`` changes, i.e. the
    data is uploaded but (most likely) not yet committed (``after-upload``)."""
    before = _key_version(request, store_url, key)
    _wait_state(state, lambda s: s.get("phase") in ("closing", "closed"))
    if kill_point == "during-close":
        delay = rng.uniform(0.0, 0.1) if store_url.startswith("file://") else rng.uniform(0.05, 0.5)
        time.sleep(delay)
        note = f"killed {delay:.2f}s into close()"
    else:
        t0 = time.monotonic()
        while _key_version(request, store_url, key) == before and state.get("phase") != "closed":
            assert time.monotonic() - t0 < 60, "the object never changed"
            time.sleep(0.001)
        note = f"killed {time.monotonic() - t0:.3f}s into close(), right after the object changed"
    crash(m)
    return note


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
    t = _write_big_in_thread(ws / "big.bin", v2, state)
    note = _kill_during_close(request, m, store_url, "ws/big.bin", state, kill_point, rng)
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
    t = _write_big_in_thread(ws / "new.bin", new, state)
    _wait_state(state, lambda s: s.get("written", 0) >= 20 * MiB or s.get("phase") == "closed")
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
    t = _write_big_in_thread(m.path / "ws" / "new.bin", new, state)
    note = _kill_during_close(request, m, store_url, "ws/new.bin", state, kill_point, rng)
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


def _store_bytes(request: pytest.FixtureRequest, store_url: str, key: str) -> bytes | None:
    """An object's bytes read directly from the store (not through agentfs)."""
    if store_url.startswith("file://"):
        p = Path(store_url[len("file://"):]) / key
        return p.read_bytes() if p.is_file() else None
    s3 = request.getfixturevalue("s3_client")
    bucket = store_url[len("s3://"):].split("/")[0]
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


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
    bad = {rel: desc(_store_bytes(request, store_url, f"ws/{rel}")) for rel, data in expected.items()
           if _store_bytes(request, store_url, f"ws/{rel}") != data}
    assert not bad, f"closed files missing or wrong at their natural keys after umount: {bad}"
    assert_check_clean(store_url)
    m2 = mounter(store_url)
    files, _ = snapshot(m2.path / "ws")
    assert set(files) == set(expected)
    bad = {rel: desc(files[rel]) for rel, data in expected.items() if files[rel] != data}
    assert not bad, f"files differ when mounted again after umount: {bad}"
