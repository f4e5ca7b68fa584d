"""The ``agentfs`` command for checkpoint tests (text output, a long timeout), waiting for a condition, and
unmounting once the commits are settled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from tests.helpers.mount import REPO, Mount

__all__ = ["cli", "ok", "settle_and_unmount", "wait_for"]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m agentfs ARGS`` with text output; raises TimeoutExpired after ``timeout`` s."""
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run([sys.executable, "-m", "agentfs", *args], capture_output=True, text=True,
                          env=env, cwd=str(REPO), timeout=timeout)


def ok(*args: str) -> str:
    """Run ``agentfs ARGS``; assert it exits 0 and return its stdout."""
    r = cli(*args)
    assert r.returncode == 0, f"agentfs {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def settle_and_unmount(m: Mount) -> None:
    """Unmount after the kernel's asynchronous RELEASE requests are answered
    (unmounting under one makes pyfuse3 log an ERROR about its reply)."""
    time.sleep(0.5)
    m.unmount()
