"""Process liveness from ``/proc``: which process asked, is it still running, its ancestors.

A lease taken through the lock attribute belongs to the calling process: the
mount keeps it while that process lives (a reused pid is told apart by its
start time) and fences the writes of it and its descendants.

Error contract: nothing raises; an unreadable ``/proc`` entry reads as "no
such process" (``None``, ``False`` or an empty set).  Concurrency: stateless,
safe from any thread.
"""

from __future__ import annotations

__all__ = ["alive", "lineage", "start_time", "tgid_of"]


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def tgid_of(pid: int | None) -> int | None:
    """The process (thread group) of a FUSE request's thread id."""
    if pid is None or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return pid


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot): tells a reused pid apart."""
    f = _stat_fields(pid)
    return int(f[19]) if f is not None and len(f) > 19 else None


def alive(pid: int, started: int | None) -> bool:
    """Is ``pid`` still the same running (not zombie) process?"""
    f = _stat_fields(pid)
    if f is None or not f or f[0] in ("Z", "X"):
        return False
    return started is None or (len(f) > 19 and int(f[19]) == started)


def lineage(pid: int | None) -> set[int]:
    """``pid``'s process and all its ancestors."""
    out: set[int] = set()
    p = tgid_of(pid)
    while p is not None and p > 1 and p not in out and len(out) < 128:
        out.add(p)
        f = _stat_fields(p)
        p = int(f[1]) if f is not None and len(f) > 1 else None
    return out
