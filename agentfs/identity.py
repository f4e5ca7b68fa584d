"""Who is asking: the caller of an operation, for attribution in the journal.

An agent names itself with the environment variable ``AGENTFS_AGENT``; the
mount reads it from ``/proc/<pid>/environ`` of the calling process, falling
back to the mount's ``--agent`` name, then to ``uid:<uid>``.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from agentfs.config import settings

__all__ = ["HOSTNAME", "Caller", "agent_of_pid"]

HOSTNAME = socket.gethostname()
ENV_AGENT = "AGENTFS_AGENT"

_cache: dict[int, tuple[float, str | None]] = {}
_CACHE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Caller:
    """The process behind one request."""

    pid: int | None
    uid: int
    gid: int
    agent: str
    umask: int = 0o022

    @classmethod
    def current(cls, default_agent: str = "") -> Caller:
        agent = settings().agent or default_agent or f"uid:{os.getuid()}"
        return cls(pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), agent=agent)


def agent_of_pid(pid: int) -> str | None:
    """``AGENTFS_AGENT`` of process ``pid``, or None (cached for a moment,
    since one process makes many requests in a row)."""
    now = time.monotonic()
    hit = _cache.get(pid)
    if hit is not None and now - hit[0] < _CACHE_SECONDS:
        return hit[1]
    agent: str | None = None
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"AGENTFS_AGENT="):
                    agent = item.split(b"=", 1)[1].decode("utf-8", "replace")[:128] or None
                    break
    except OSError:
        agent = None
    if len(_cache) > 4096:
        _cache.clear()
    _cache[pid] = (now, agent)
    return agent
