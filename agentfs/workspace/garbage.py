"""Deleting what a committed operation made garbage, off the syscall path.

After an unlink or a rename is committed, the old natural keys (and the
rename's intent) are garbage: the journal no longer points at them, the
namespace has *tombstoned* them, and a crash before they are deleted leaves
leftovers that the next adoption scan removes.  Nothing therefore needs the
deletes to finish before the syscall returns; they used to cost one or two
sequential store requests per unlink and per rename (git renames every
object and lock file it writes).

:class:`Garbage` is one workspace's queue of such deletes; the mount's
:class:`Collector` task drains every workspace's queue as soon as something
is queued (no batching delay: the window in which another mount may still
find the old object is what it was).  Without a collector (library use, the
Python API, the CLI) :meth:`Garbage.add` callers drain inline.

The one rule: a key with a delete pending (queued or running) must not be
written before that delete finished.  Deletes are conditional on the garbage version's etag, and a new
object at the same key can have the same etag (S3 gives a copy of the same
bytes the same MD5 etag; a local store gives a hard link the same
inode/mtime/size), so a late delete could remove the new object.  Every
writer of a natural key calls :meth:`Garbage.claim` first, which runs the
pending delete of that key at once.

Concurrency: everything runs in the workspace's trio thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from agentfs.config import settings
from agentfs.errors import AgentFSError
from agentfs.workspace import intents

if TYPE_CHECKING:
    from agentfs.models import RenameIntent
    from agentfs.workspace import Workspace

__all__ = ["DELAY", "Collector", "Garbage"]

log = logging.getLogger(__name__)

#: Seconds the collector waits before draining (0: at once).  For tests that
#: need pending deletes to stay pending (``AGENTFS_GARBAGE_DELAY``).
DELAY = settings().garbage_delay
#: After a failed drain (store outage), wait this long before the next attempt (s).
RETRY_AFTER = 1.0


class Garbage:
    """One workspace's pending deletes: keys (with the garbage version's etag)
    and finished rename intents."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self._keys: dict[str, str | None] = {}
        self._intents: list[RenameIntent] = []
        #: deletes running now: a writer of one of these keys waits for it
        self._running: dict[str, list[trio.Event]] = {}
        #: set by the mount: drains in the background; None: callers drain inline
        self.collector: Collector | None = None

    def __len__(self) -> int:
        return len(self._keys) + len(self._intents)

    async def add(self, keys: list[tuple[str, str | None]], intent: RenameIntent | None = None) -> None:
        """Queue deletes of committed garbage (drained now without a collector).

        Never raises for store trouble: the operation that made the garbage is
        committed already."""
        for key, etag in keys:
            self._keys[key] = etag
        if intent is not None:
            self._intents.append(intent)
        if self.collector is not None:
            self.collector.notify()
            return
        try:
            await self.drain()
        except Exception as e:  # store errors arrive wrapped by nurseries
            # The operation is committed; what is left is removed by a later
            # drain or by the adoption scan (tombstoned leftovers).
            log.warning("workspace %s: deleting garbage: %s; left for later", self._ws.name, e)

    async def claim(self, key: str) -> None:
        """Before writing ``key``: run its pending delete now, or wait for the
        one running (raises the store's error; the delete stays queued)."""
        while self._running.get(key):
            await self._running[key][0].wait()
        if key in self._keys:
            await self._delete([(key, self._keys.pop(key))])

    async def _delete(self, keys: list[tuple[str, str | None]]) -> None:
        events = [(k, trio.Event()) for k, _ in keys]
        for k, ev in events:
            self._running.setdefault(k, []).append(ev)
        try:
            await self._ws.delete_keys(keys)
        except BaseException:
            for k, e in keys:
                self._keys.setdefault(k, e)
            raise
        finally:
            for k, ev in events:
                self._running[k].remove(ev)
                if not self._running[k]:
                    del self._running[k]
                ev.set()

    async def drain(self) -> None:
        """Delete everything queued; what fails stays queued (raises the error)."""
        while self._keys or self._intents:
            keys, self._keys = list(self._keys.items()), {}
            done, self._intents = self._intents, []
            try:
                if keys:
                    await self._delete(keys)
            except BaseException:
                self._intents[:0] = done
                raise
            for i, intent in enumerate(done):
                try:
                    await self._ws.io(intents.end, self._ws.journal, intent)
                except AgentFSError:
                    self._intents[:0] = done[i:]
                    raise


class Collector:
    """The mount's background task that drains every workspace's :class:`Garbage`."""

    def __init__(self) -> None:
        self._wake = trio.Event()

    def notify(self) -> None:
        self._wake.set()

    async def run(self, workspaces: Callable[[], list[Workspace]]) -> None:
        while True:
            await self._wake.wait()
            if DELAY:
                await trio.sleep(DELAY)
            self._wake = trio.Event()
            failed = False
            for ws in workspaces():
                if not len(ws.garbage):
                    continue
                try:
                    with trio.CancelScope(shield=True):
                        await ws.garbage.drain()
                except Exception as e:  # store errors arrive wrapped by nurseries
                    # Leftovers are also removed by the adoption scan: no data depends on this.
                    failed = True
                    log.warning("workspace %s: deleting garbage: %s; retrying", ws.name, e)
            if failed:
                await trio.sleep(RETRY_AFTER)
                self._wake.set()
