"""Lock holders for tests: a child process that takes a lock and obeys commands.

``holders(path, how)`` starts one (``flock-ex``, ``flock-sh``, ``lockf``,
``xattr``, ``exclusive``/``shared`` through agentfs.lock) and stops every one
it started at teardown, by its PID.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentfs.locks import LOCK_XATTR
from tests.helpers.mount import REPO
from tests.helpers.mounts import agentfs_cli

__all__ = ["HOLDER", "Holder", "holders", "lease_info", "lock_cli"]

#: A lock holder: locks argv[1] with argv[2] (flock/lockf/lease), then obeys
#: commands on stdin: "write TEXT" (open for writing, write, keep open),
#: "close" (report the errno of close), "release" (unlock and exit).
HOLDER = r'''
import fcntl, json, os, sys
import agentfs
from agentfs.errors import WouldBlock
path, how = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
wfd = -1
fl = None
try:
    if how == "flock-ex":
        fcntl.flock(fd, fcntl.LOCK_EX)
    elif how == "flock-sh":
        fcntl.flock(fd, fcntl.LOCK_SH)
    elif how == "lockf":  # bytes 0..9
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
    elif how == "xattr":  # the lease only, never released by this process
        os.setxattr(path, "user.agentfs.lock", b"exclusive")
    else:
        fl = agentfs.lock(path, shared=(how == "shared"), wait=0)
        fl.__enter__()
except (WouldBlock, BlockingIOError) as e:
    print("busy", e, flush=True)
    sys.exit(3)
print("locked", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "write":
        wfd = os.open(path, os.O_WRONLY)
        os.write(wfd, cmd[1].encode())
        print("written", flush=True)
    elif cmd[0] == "close":
        try:
            os.close(wfd)
            print("closed 0", flush=True)
        except OSError as e:
            print("closed", e.errno, flush=True)
    elif cmd[0] == "release":
        break
if fl is not None:
    fl.__exit__(None, None, None)
os.close(fd)
print("released", flush=True)
'''


@dataclass
class Holder:
    """A lock-holding child process and its command pipe."""
    proc: subprocess.Popen

    def line(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        # poll, not select: select() refuses descriptors above 1023
        p = select.poll()
        p.register(self.proc.stdout, select.POLLIN)
        r = p.poll(timeout * 1000)
        if not r:
            raise AssertionError(f"holder {self.proc.pid} said nothing within {timeout}s")
        return self.proc.stdout.readline().decode().strip()

    def send(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd}\n".encode())
        self.proc.stdin.flush()
        return self.line()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    """Factory of lock holders; every holder started is stopped at teardown."""
    started: list[Holder] = []

    def start(path: Path, how: str, agent: str = "holder", expect: str = "locked") -> Holder:
        env = dict(os.environ, PYTHONPATH=str(REPO), AGENTFS_AGENT=agent)
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), how], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, cwd=str(REPO))
        h = Holder(proc)
        started.append(h)
        first = h.line()
        assert first.startswith(expect), first
        return h

    yield start
    for h in started:
        h.stop()


def lock_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m agentfs ARGS`` (lock commands) and capture its output."""
    return agentfs_cli("lock", *args, timeout=timeout)


def lease_info(p: Path) -> dict | None:
    """The lease record on ``p`` (its lock xattr), or None when it holds none."""
    try:
        return json.loads(os.getxattr(p, LOCK_XATTR))
    except OSError as e:
        assert e.errno == errno.ENODATA
        return None
