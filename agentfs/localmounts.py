"""Ordering the CLI and the Python API after what local mounts acknowledged.

A mount's ``close()`` returns once the bytes are in the store; its journal
record follows in the next group commit (a ``--writeback`` mount's upload
later still).  A CLI command or an API call made on the same machine right
after that close must not act on the older state (a restore that a queued
record then undoes, a checkpoint without the file).  So before each call a
client asks every local agentfs mount of the same store (found by the source
column of /proc/mounts, ``agentfs:<store URL>``, see :func:`fsname`), through the
control attribute :data:`BARRIER` on the mount root, to commit what it acknowledged
for the workspace; after a call that committed something it asks them to
catch up with the journal, so the mount shows the change when the call
returns, not a tail poll later.

Mounts on other hosts are not reached: they commit within the group-commit
delay (at most about 0.25 s) and see others' commits by their journal tail
(about a second); see docs/SEMANTICS.md.

Error contract: never raises.  A mount that is gone, not ours, or does not
answer within :data:`TIMEOUT` seconds is skipped (logged at DEBUG/WARNING).
Concurrency: blocking system calls; call from an ordinary thread, never from
a trio task of a mount.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time

from agentfs.config import settings

__all__ = ["BARRIER", "STATUS", "TIMEOUT", "barrier", "fsname", "mounts_of"]

log = logging.getLogger(__name__)

#: Control attribute of a mount root: ``setxattr(root, BARRIER, b"WS[:SEQ]")``
#: commits the mount's queued records of workspace WS (and its writeback queue),
#: then catches up with WS's journal to at least SEQ.
BARRIER = "user.agentfs.mount.barrier"
#: Read-only control attribute of a mount root: JSON with the store URL.
STATUS = "user.agentfs.mount.status"
#: Seconds a mount may take to answer before the client goes on without it.
TIMEOUT = settings().barrier_timeout


def fsname(store_url: str) -> str:
    """The FUSE ``fsname`` (the source column of /proc/mounts) of a mount of
    ``store_url``: ``agentfs:<url>``, with the option separators escaped."""
    return "agentfs:" + store_url.replace("\\", "\\\\").replace(",", "\\,")


def _unescape(field: str) -> str:
    """A /proc/mounts field: octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _agentfs_mounts() -> list[tuple[str, str]]:
    """(source, mountpoint) of every agentfs mount this process can see."""
    try:
        with open("/proc/self/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "fuse.agentfs":
            out.append((_unescape(parts[0]), _unescape(parts[1])))
    return out


def _call(fn: object, *args: object) -> object:
    """Run a blocking call on a mount with :data:`TIMEOUT` (a hung daemon
    must not hang the CLI); returns the result, or the exception raised."""
    box: list[object] = [TimeoutError(f"no answer within {TIMEOUT:.0f} s")]

    def run() -> None:
        try:
            box[0] = fn(*args)  # type: ignore[operator]
        except OSError as e:
            box[0] = e

    t = threading.Thread(target=run, daemon=True, name="agentfs-barrier")
    t.start()
    t.join(TIMEOUT)
    return box[0]


#: How long a list of mounts is reused (s): a long-lived API client asks once a
#: call, and a mount started since then is found this much later at most.
CACHE_FOR = 2.0
_cache: dict[str, tuple[float, list[str]]] = {}


def mounts_of(store_url: str) -> list[str]:
    """Mountpoints of live agentfs mounts of ``store_url`` on this machine."""
    now = time.monotonic()
    hit = _cache.get(store_url)
    if hit is not None and now - hit[0] < CACHE_FOR:
        return hit[1]
    out = _find(store_url)
    _cache[store_url] = (now, out)
    return out


def _find(store_url: str) -> list[str]:
    out = []
    for source, mp in _agentfs_mounts():
        if source == f"agentfs:{store_url}":
            out.append(mp)
        elif source == "agentfs":  # a daemon that does not name its store: ask it
            raw = _call(os.getxattr, mp, STATUS)
            if isinstance(raw, bytes):
                try:
                    if json.loads(raw).get("store") == store_url:
                        out.append(mp)
                except ValueError:
                    pass
    return out


def barrier(store_url: str, workspace: str, seq: int | None = None) -> int:
    """Ask every local mount of ``store_url`` to commit what it acknowledged in
    ``workspace`` and (with ``seq``) to apply the journal up to ``seq``.
    Returns how many mounts answered."""
    value = f"{workspace}:{seq}" if seq is not None else workspace
    done = 0
    for mp in mounts_of(store_url):
        r = _call(os.setxattr, mp, BARRIER, value.encode())
        if isinstance(r, TimeoutError):
            log.warning("mount %s did not answer within %.0f s; going on without it", mp, TIMEOUT)
        elif isinstance(r, BaseException):
            log.debug("mount %s: barrier: %s", mp, r)
        else:
            done += 1
    return done
