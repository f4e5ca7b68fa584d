"""Helpers for tests of several mounts of one store: polling for visibility, reading and writing files, the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mount import REPO, Mount

__all__ = ["POLL", "VISIBLE_WITHIN", "Pair", "agentfs_cli", "assert_check_clean", "read_or_none", "wait_for", "write_all", "write_file"]


VISIBLE_WITHIN = 2.0  # seconds: the promise for changes made through the journal


POLL = 0.05


def wait_for(pred: Callable[[], Any], timeout: float = VISIBLE_WITHIN, what: str = "") -> float:
    """Poll ``pred`` every 50 ms until it is truthy; return the elapsed seconds.

    An ``OSError`` from ``pred`` counts as "not yet".  Fails after ``timeout``.
    """
    t0 = time.monotonic()
    last: object = None
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except OSError as e:
            last = e
        if time.monotonic() - t0 >= timeout:
            pytest.fail(f"not within {timeout:.1f}s: {what or pred}" + (f" (last error: {last})" if last else ""))
        time.sleep(POLL)


def read_or_none(p: Path) -> bytes | None:
    """The bytes of ``p`` read through a fresh open (close-to-open), or None."""
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError:
        return None


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_file(p: Path, data: bytes) -> None:
    """Write ``p`` whole with one open/write/close."""
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def agentfs_cli(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m agentfs ARGS`` from the repository root and capture its output."""
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run([sys.executable, "-m", "agentfs", *args], capture_output=True, input=input,
                          env=env, cwd=str(REPO), timeout=timeout)


def assert_check_clean(store_url: str) -> None:
    """Assert ``agentfs check STORE`` exits 0."""
    r = agentfs_cli("check", store_url)
    assert r.returncode == 0, (
        f"agentfs check {store_url} exited {r.returncode}:\n{r.stdout.decode()}\n{r.stderr.decode()}")


@dataclass
class Pair:
    """Two mounts of one store and workspace ``ws`` seen through each."""
    a: Mount
    b: Mount
    wa: Path  # workspace "ws" seen through mount A
    wb: Path  # the same workspace through mount B
