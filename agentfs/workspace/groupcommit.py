"""Deferred group commit: close() without waiting for the journal.

A small file's close used to cost two store requests: the data PUT and the
journal commit PUT.  With deferred group commit the close waits for the data
PUT only (the bytes are durable at their natural key), applies the file's
entry to the local namespace at once (the mount's own view never lags), and
queues the journal record into the workspace's group-commit queue
(``Workspace.commit_queue``) without waiting for it.  The :class:`Flusher` writes the
queued records a short delay later (:data:`DELAY`), or at once when
:data:`MAX_PENDING` records are waiting, so N closes in a row cost about
N + N/MAX_PENDING requests.

Ordering: every operation that waits for its own commit (fsync, rename,
unlink, mkdir, setxattr, checkpoint, a lease release, unmount/sync, ...)
appends its records after the deferred ones and its batch carries them all,
so the journal order is the operation order.

Crash between a deferred close and the batch write: the object is at its
natural key, untracked by the journal.  The next mount's
``Workspace.load(verify=True)`` adopts every untracked object at once (see
``Workspace.scan``), so the closed file is back, byte for byte; its mode,
owner and mtime fall back to the adoption defaults (0644, the mount's
uid/gid, the object's mtime).

Switch: ``AGENTFS_GROUP_COMMIT=0`` in the mount's environment turns deferral
off (every close waits for its commit, as before).  Library users
(``Workspace`` without a mount, the Python API) commit synchronously unless
they attach a :class:`Flusher` and run it.

Concurrency: everything runs in the workspace's trio thread; the flusher is
one task in the mount's nursery serving every loaded workspace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio

from agentfs.config import settings
from agentfs.errors import AgentFSError
from agentfs.models import PutOp, Record

if TYPE_CHECKING:
    from agentfs.namespace import Node
    from agentfs.workspace import Workspace

__all__ = ["DELAY", "ENABLED", "MAX_AGE", "MAX_PENDING", "TOMB_GUARD", "UNSTAMPED", "YOUNG", "Flusher", "apply_locally",
           "await_record", "may_defer", "rides_along"]

log = logging.getLogger(__name__)

#: Deferral on (default) or off (``AGENTFS_GROUP_COMMIT=0``).
ENABLED = settings().group_commit
#: The flusher writes the queue once no new deferred record came for this long (s)...
DELAY = settings().group_commit_delay
#: ...or once the oldest queued record waited this long (s), during a stream of closes.
MAX_AGE = settings().group_commit_max_age
#: Write at once when this many records are waiting.
MAX_PENDING = settings().group_commit_max
#: A path removed less than this many seconds ago is committed synchronously:
#: a crash-recovery scan treats an untracked object no newer than its path's
#: tombstone (+1 s of clock slack) as a leftover of the removal, not as a file.
TOMB_GUARD = 2.5
#: ``Entry.vseq`` of a version applied locally but not yet committed: the
#: commit restamps it with its seq (``Namespace._put``); until then it is
#: treated as old (referenced by any live checkpoint), the safe side for COW.
UNSTAMPED = -1
#: An object younger than this (s) that the journal does not know yet may be
#: another mount's close whose deferred record is on its way: a reader waits
#: for it (:func:`await_record`) before adopting the object as an external write.
YOUNG = 5.0
#: The waits (s) between journal pulls in :func:`await_record` (about 1.5 s in all).
AWAIT_STEPS = (0.05, 0.1, 0.2, 0.4, 0.75)
#: After a failed flush, wait this long before the next attempt (s).
RETRY_AFTER = 1.0


def may_defer(ws: Workspace, path: str) -> bool:
    """May the commit of an upload of ``path`` be deferred on ``ws``?"""
    if ws.flusher is None:
        return False
    tomb = ws.ns.tombstones.get(path)
    return tomb is None or time.time() - tomb > TOMB_GUARD


def rides_along(ws: Workspace, node: Node, path: str) -> bool:
    """May a metadata change (chmod, chown, utimens) of ``node`` join the
    deferred queue instead of committing before it returns?

    Yes when the file's own last record is itself deferred (a close whose
    record is not written yet: ``vseq`` is :data:`UNSTAMPED`): the change is
    then exactly as durable as that record (a crash before the batch brings the
    file back with default metadata either way) and lands in the same batch.
    ``tar x``, ``cp -p`` and ``rsync -a`` set times (and modes) right after
    each close: one store request per file instead of two.
    """
    return (node.entry.kind == "f" and node.entry.vseq == UNSTAMPED and may_defer(ws, path))


def apply_locally(ws: Workspace, records: Iterable[Record]) -> None:
    """Show deferred records in the local namespace now (not stamped with a seq).

    The later journal apply of the same records is idempotent and stamps the
    version with the real commit seq.
    """
    for r in records:
        op = r.op
        before = None
        if isinstance(op, PutOp):
            cur = ws.ns.resolve(op.path)
            if cur is not None and cur.entry.kind == "f":
                # an unstamped version stays unstamped when applied again
                before = (cur.entry.etag, cur.entry.data_key) if cur.entry.vseq >= 0 else ("", "")
        ws.ns.apply(op, r.time)
        if isinstance(op, PutOp) and op.entry.kind == "f" and before != (op.entry.etag, op.entry.data_key):
            node = ws.ns.resolve(op.path)
            if node is not None and node.entry.kind == "f":
                node.entry = node.entry.model_copy(update={"vseq": UNSTAMPED})


async def await_record(ws: Workspace, node: Node, old_etag: str | None, mtime: float) -> bool:
    """A reader found another version at a file's key than the journal says:
    if the object is young, pull the journal a few times (another mount's
    deferred record is usually there within :data:`DELAY` plus one request).
    True when the node's version changed meanwhile (nothing to adopt)."""
    if time.time() - mtime >= YOUNG:
        return False
    for pause in AWAIT_STEPS:
        await trio.sleep(pause)
        await ws.pull()
        if node.entry.etag != old_etag:
            return True
    return False


class Flusher:
    """Writes the deferred records of every workspace of a mount.

    :meth:`notify` is called by a workspace that queued a deferred record;
    :meth:`run` (a background task) waits until no record came for ``delay``,
    the first one waited ``max_age`` or ``max_pending`` records wait, then
    commits every workspace's queue (one journal object per workspace).
    Errors are logged and retried; the records stay queued (and ride along
    with the next commit anyone makes).
    """

    def __init__(self, delay: float = DELAY, max_pending: int = MAX_PENDING,
                 max_age: float | None = None) -> None:
        self.delay = delay
        self.max_age = max(delay, MAX_AGE if max_age is None else max_age)
        self.max_pending = max_pending
        self._wake = trio.Event()
        self._full = trio.Event()

    def notify(self, pending: int) -> None:
        self._wake.set()
        if pending >= self.max_pending:
            self._full.set()

    async def run(self, workspaces: Callable[[], list[Workspace]]) -> None:
        while True:
            await self._wake.wait()
            start = trio.current_time()
            while not self._full.is_set():  # debounce, bounded by max_age
                self._wake = trio.Event()
                with trio.move_on_at(min(trio.current_time() + self.delay, start + self.max_age)) as cs:
                    await self._wake.wait()
                if cs.cancelled_caught:
                    break
            self._wake = trio.Event()
            self._full = trio.Event()
            failed = False
            for ws in workspaces():
                if not ws.deferred_pending:
                    continue
                try:
                    # Shielded: a commit is never cancelled halfway (unmount
                    # cancels this task, then flushes what is left).
                    with trio.CancelScope(shield=True):
                        await ws.flush_deferred()
                except AgentFSError as e:
                    failed = True
                    log.warning("workspace %s: group commit of %d deferred records failed (%s); retrying",
                                ws.name, ws.deferred_pending, e)
                except Exception:
                    failed = True
                    log.exception("workspace %s: group commit failed", ws.name)
            if failed:
                await trio.sleep(RETRY_AFTER)
                self._wake.set()
