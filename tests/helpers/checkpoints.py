"""The ``agentfs`` command for checkpoint tests: text output, a long timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.mount import REPO

__all__ = ["cli", "ok"]


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
