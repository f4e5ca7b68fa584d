"""Real FUSE mounts for tests.

``mounter(store_url, *extra_args)`` starts ``python -m agentfs mount --foreground``
in a subprocess and waits until the mountpoint is live.  Every mount a test makes
is unmounted at teardown (``fusermount3 -u``, then lazy unmount and SIGKILL of the
daemon by its PID), and the test fails if the daemon logged an unexpected ERROR.

``store_url`` is parametrized over a local directory store and moto S3, and
``ws`` is a mounted, freshly created workspace directory on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentfs.check import check_store
from agentfs.store import open_store

__all__ = ["Mount", "fuse_available", "is_mounted", "local_store_only"]

REPO = Path(__file__).resolve().parents[2]


def fuse_available() -> bool:
    """True when /dev/fuse exists and this process may open it (the mount tests need it)."""
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)


def is_mounted(path: Path) -> bool:
    """True when ``path`` is a mount point in /proc/mounts."""
    target = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


@dataclass
class Mount:
    """One running ``agentfs mount`` daemon."""

    path: Path
    store_url: str
    args: tuple[str, ...]
    log: Path
    cache_dir: Path
    proc: subprocess.Popen
    expect_errors: bool = False
    dead: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def unmount(self, timeout: float = 60.0) -> int | None:
        """Clean unmount (waits for the daemon to exit); returns its exit code."""
        if self.dead:
            return self.proc.returncode
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False,
                           capture_output=True)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon {self.pid} did not exit after unmount") from None
        self.dead = True
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], check=False)
        return rc

    def kill(self) -> None:
        """SIGKILL the daemon (a crash) and detach its dead mountpoint."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.dead = True
        self.expect_errors = True
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], check=False,
                           capture_output=True)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def error_lines(self) -> list[str]:
        # A reply that finds its request gone (ENOENT: the kernel aborted the requests
        # still pending when the mount went, e.g. a release) is not an error of ours.
        return [ln for ln in self.log_text().splitlines() if (" ERROR " in ln or "Traceback" in ln)
                and "fuse_reply_* failed with No such file or directory" not in ln]


def _wait_mounted(m: Mount, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(m.path):
            return
        if m.proc.poll() is not None:
            raise AssertionError(
                f"agentfs mount exited with {m.proc.returncode}:\n{m.log_text()[-4000:]}"
            )
        time.sleep(0.05)
    m.kill()
    raise AssertionError(f"mount did not appear within {timeout}s:\n{m.log_text()[-4000:]}")


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Factory: ``mounter(store_url, *args, mountpoint=None, env=None) -> Mount``."""
    if not fuse_available():
        pytest.skip("/dev/fuse is not available")
    mounts: list[Mount] = []

    def start(store_url: str, *args: str, mountpoint: Path | None = None,
              env: dict[str, str] | None = None, cache_dir: Path | None = None) -> Mount:
        n = len(mounts)
        mp = mountpoint or tmp_path / f"mnt{n}"
        mp.mkdir(parents=True, exist_ok=True)
        log = tmp_path / f"mount{n}-{uuid.uuid4().hex[:6]}.log"
        cache = cache_dir or tmp_path / f"cache{n}"
        cmd = [sys.executable, "-m", "agentfs", "mount", "--foreground",
               "--log-file", str(log), "--cache-dir", str(cache), *args, store_url, str(mp)]
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONPATH", str(REPO))
        if env:
            full_env.update(env)
        with open(log.with_suffix(".err"), "wb") as err:  # the child keeps its own copy
            proc = subprocess.Popen(cmd, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, cwd=str(REPO))
        m = Mount(path=mp, store_url=store_url, args=args, log=log, cache_dir=cache, proc=proc)
        mounts.append(m)
        _wait_mounted(m)
        return m

    yield start

    problems = []
    for m in reversed(mounts):
        try:
            m.unmount()
        except AssertionError as e:
            problems.append(str(e))
        if not m.expect_errors and m.error_lines():
            problems.append(f"unexpected ERROR lines in {m.log}:\n" + "\n".join(m.error_lines()[:20]))
    # As S3QL does after every test: the store must be consistent once every
    # mount of it is cleanly gone (crash tests check their stores themselves).
    clean_stores = {m.store_url for m in mounts} - {m.store_url for m in mounts if m.expect_errors}
    for url in sorted(clean_stores):
        if url.startswith("memory://"):
            continue
        report = check_store(open_store(url))
        if not report.clean:
            problems.append(f"agentfs check of {url} after the test:\n" + report.model_dump_json(indent=1))
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: a local directory or a moto S3 bucket."""
    if request.param == "local":
        d = tmp_path / "store"
        d.mkdir()
        return f"file://{d}"
    return request.getfixturevalue("s3_url")


#: Runs a ``store_url`` test on the local store only.  For claims the journal
#: holds alike on every store (names, metadata, error paths): what a store
#: itself does is pinned on every backend by the store conformance tests.
local_store_only = pytest.mark.parametrize("store_url", ["local"], indirect=True)


@pytest.fixture
def mount(mounter: Callable[..., Mount], store_url: str) -> Mount:
    """The whole store mounted (every top-level directory a workspace)."""
    return mounter(store_url)


@pytest.fixture
def ws(request: pytest.FixtureRequest, tmp_path: Path, store_url: str) -> Path:
    """A freshly created workspace directory inside a live mount.

    With ``AGENTFS_TEST_TARGET=localdir`` it is a plain local directory instead:
    a way to check that a POSIX test itself is right (it must pass on ext4/tmpfs).
    """
    if os.environ.get("AGENTFS_TEST_TARGET") == "localdir":
        p = tmp_path / "localws"
        p.mkdir()
        return p
    m: Mount = request.getfixturevalue("mount")
    p = m.path / "ws"
    p.mkdir()
    return p
