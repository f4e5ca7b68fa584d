"""Locks hand over data: what a releaser commits and an acquirer catches up to.

A lock (a lease taken through the lock attribute, the API or a kernel
``flock``/``fcntl`` lock) protects the bytes of its file only if the next
holder sees every write the previous holder made under it:

- **Release** (:func:`settle`): before a lease is given back, the releasing
  mount commits what it acknowledged for the workspace (deferred journal
  records, its ``--writeback`` queue) and records its journal position in the
  lease object (``Lease.seq``).
- **Acquire** (:func:`catch_up`): once a lease is taken, the acquiring mount
  applies the journal at least up to that position before the locker goes
  on, and every open file of the path on this mount that holds no unwritten
  bytes starts from the committed version: its working copy of an older
  version is dropped and its base version moves to the committed one, so its
  next read returns the previous holder's bytes and its next write replaces
  that version instead of losing a race against it (as NFS revalidates its
  cache when a lock is taken).

Error contract: store errors of the journal catch-up propagate (the lock is
held; the caller decides).  Concurrency: runs in the owning trio thread; an
open file is changed under its own lock.
"""

from __future__ import annotations

import logging

import trio

from agentfs.errors import AgentFSError
from agentfs.workspace import Workspace

__all__ = ["catch_up", "settle"]

log = logging.getLogger(__name__)


async def settle(ws: Workspace) -> int:
    """Commit the deferred records of ``ws``; returns the journal position they are at."""
    with trio.CancelScope(shield=True):
        await ws.flush_deferred()
    return ws.ns.seq


async def catch_up(ws: Workspace, path: str, seq: int) -> None:
    """Apply ``ws``'s journal up to at least ``seq`` and refresh the clean open file of ``path``."""
    if ws.ns.seq < seq:
        await ws.pull()
        if ws.ns.seq < seq:
            log.warning("lock on %s/%s: journal at %d, the releaser committed up to %d",
                        ws.name, path, ws.ns.seq, seq)
    try:
        node = ws.resolve(path)
    except AgentFSError:
        return  # not a file of this mount's tree (yet): nothing open to refresh
    of = ws.open_files.get(node.ino)
    e = node.entry
    if of is None or e.kind != "f":
        return
    async with of.lock:
        if of.dirty or of.stream is not None or of.diverted_from is not None or of.base_etag == e.etag:
            return
        if of.fd >= 0:
            of.close_local()
        of.base_etag = e.etag
        of.size = e.size
        log.debug("lock on %s/%s: open file moved to the committed version %s", ws.name, path, e.etag)
