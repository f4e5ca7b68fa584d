"""Open marks: TTL pruning never removes a file that is open on any mount.

A file with a ``user.agentfs.ttl`` may expire while an agent on another
mount still reads or writes it.  Every mount prunes expired files, and a
mount only knows its own open files, so each open of a file that has a TTL
is published as a small object, and a pruner looks for them first:

``.agentfs/<ws>/open/<h>/<mount>.json``  a mark: the file is open on ``mount``
``.agentfs/<ws>/open/<h>/~prune``        a claim: a pruner is removing it

where ``<h>`` is a hash of the path.  The protocol, on a strongly consistent
store (S3, a local directory):

- an opener PUTs its mark, *then* reads the claim; while a live claim of
  another mount exists it waits for it to go, then the caller catches up with
  the journal (a pruned file then fails its open with ``ENOENT``);
- a pruner creates the claim (conditional create: of two pruners one
  proceeds, the other skips the path), *then* lists the marks; a live mark of
  another mount makes it drop the claim and skip the path; otherwise it
  deletes the file and then the claim.

So either the pruner sees the opener's mark or the opener sees the pruner's
claim.  Marks are refreshed every :data:`REFRESH` seconds while the file is
open and deleted at its last close; a crashed mount's marks are stale after
:data:`LIVE` seconds (by the store's modification time), a crashed pruner's
claim after :data:`CLAIM_LIVE`.  Only files with a TTL cost anything.

Error contract: store errors of marks and claims are logged and never fail
an open (a mark that could not be written only weakens the promise); a claim
that cannot be taken means "skip this path now".
Concurrency: trio tasks of one workspace; store I/O through the ``io`` callable.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from pydantic import BaseModel

from agentfs.config import settings
from agentfs.errors import AgentFSError, NotFound, PreconditionFailed
from agentfs.identity import HOSTNAME
from agentfs.journal import META
from agentfs.store.base import ObjectStore

__all__ = ["CLAIM_LIVE", "LIVE", "REFRESH", "OpenMark", "OpenMarks", "PruneClaim", "keep"]

log = logging.getLogger(__name__)

#: A mark not refreshed for this long (s) belongs to a mount that is gone.
LIVE = settings().open_mark_live
#: How often (s) a mount refreshes the marks of its open files.
REFRESH = LIVE / 3
#: A claim older than this (s) belongs to a pruner that is gone.
CLAIM_LIVE = 30.0
#: How long (s) an opener waits for a pruner's claim to go.
WAIT = CLAIM_LIVE + 5

IO = Callable[..., Awaitable[Any]]


class OpenMark(BaseModel):
    """The persisted mark of one file open on one mount."""

    path: str
    mount: str
    host: str = HOSTNAME
    time: float


class PruneClaim(BaseModel):
    """The persisted claim of a pruner on one path."""

    path: str
    mount: str
    host: str = HOSTNAME
    time: float


class OpenMarks:
    """This mount's (or client's) marks in one workspace, and its pruning claims."""

    def __init__(self, store: ObjectStore, workspace: str, mount_id: str, io: IO) -> None:
        self.store = store
        self.workspace = workspace
        self.mount_id = mount_id
        self._io = io
        self._opens: dict[str, int] = {}  # path -> open files of it here
        self._unmark: set[str] = set()  # closed: their marks are deleted by tick()
        self._refreshed = 0.0

    def _dir(self, path: str) -> str:
        h = hashlib.sha256(path.encode()).hexdigest()[:32]
        return f"{META}/{self.workspace}/open/{h}/"

    def _mark_key(self, path: str) -> str:
        return f"{self._dir(path)}{self.mount_id}.json"

    def _claim_key(self, path: str) -> str:
        return f"{self._dir(path)}~prune"

    @property
    def held(self) -> list[str]:
        """Paths marked open by this mount."""
        return sorted(self._opens)

    # -- openers ---------------------------------------------------------------------

    async def opened(self, path: str) -> bool:
        """Mark ``path`` (a file, or a directory above one, that has a TTL) open
        here before the open returns; wait while a pruner of another mount
        claims it.  True when it waited: the caller then catches up with the
        journal and re-checks that the file still exists."""
        self._unmark.discard(path)
        self._opens[path] = self._opens.get(path, 0) + 1
        if self._opens[path] > 1:
            return False
        await self._write_mark(path)
        waited = False
        deadline = trio.current_time() + WAIT
        while trio.current_time() < deadline:
            claim = await self._claim(path)
            if claim is None or claim.mount == self.mount_id:
                return waited
            waited = True
            await trio.sleep(0.1)
        log.warning("workspace %s: %s: a pruner's claim did not go away; opening anyway",
                    self.workspace, path)
        return True

    def closed(self, path: str) -> None:
        """The last open file of ``path`` here closed: its mark goes (soon)."""
        n = self._opens.get(path, 0) - 1
        if n > 0:
            self._opens[path] = n
            return
        self._opens.pop(path, None)
        self._unmark.add(path)

    async def _write_mark(self, path: str) -> None:
        body = OpenMark(path=path, mount=self.mount_id, time=time.time()).model_dump_json().encode()
        try:
            await self._io(self.store.put, self._mark_key(path), body)
        except AgentFSError as e:
            log.warning("workspace %s: cannot mark %s open (%s); TTL pruning elsewhere may remove it",
                        self.workspace, path, e)

    async def _claim(self, path: str) -> PruneClaim | None:
        """The live claim on ``path``, if any."""
        try:
            raw = await self._io(self.store.get, self._claim_key(path))
            claim = PruneClaim.model_validate_json(raw)
        except NotFound:
            return None
        except (AgentFSError, ValueError) as e:
            log.debug("workspace %s: claim of %s unreadable: %s", self.workspace, path, e)
            return None
        return claim if time.time() - claim.time < CLAIM_LIVE else None

    async def tick(self) -> None:
        """Delete the marks of closed files and refresh the others when due;
        called about twice a second by the mount's (or client's) task
        :func:`keep`.  No store request when there is nothing to do."""
        for path in sorted(self._unmark):
            self._unmark.discard(path)
            if path not in self._opens:
                await self._delete(self._mark_key(path))
        if self._opens and trio.current_time() - self._refreshed >= REFRESH:
            self._refreshed = trio.current_time()
            for path in list(self._opens):
                await self._write_mark(path)

    async def unmark_all(self) -> None:
        """Delete every mark of this mount (a clean unmount)."""
        for path in sorted(set(self._opens) | self._unmark):
            await self._delete(self._mark_key(path))
        self._opens.clear()
        self._unmark.clear()

    async def _delete(self, key: str) -> None:
        try:
            await self._io(self.store.delete, key)
        except NotFound:
            pass
        except AgentFSError as e:
            log.debug("workspace %s: deleting %s: %s", self.workspace, key, e)

    # -- pruners ---------------------------------------------------------------------

    async def claim(self, path: str) -> bool:
        """Take the right to prune ``path``: False when another mount has it
        open (a live mark) or is pruning it (a live claim)."""
        key = self._claim_key(path)
        body = PruneClaim(path=path, mount=self.mount_id, time=time.time()).model_dump_json().encode()
        try:
            await self._io(self.store.put, key, body, if_absent=True)
        except PreconditionFailed:
            if await self._claim(path) is not None:
                return False
            try:  # a crashed pruner's stale claim: replace exactly that version
                info = await self._io(self.store.head, key)
                await self._io(self.store.put, key, body, if_match=info.etag)
            except (NotFound, PreconditionFailed):
                return False
        now = time.time()
        marks = await self._io(lambda: list(self.store.list(self._dir(path))))
        for o in marks:
            name = o.key.rsplit("/", 1)[-1]
            if name in ("~prune", f"{self.mount_id}.json") or now - o.mtime >= LIVE:
                continue
            log.info("workspace %s: %s expired but is open on mount %s; pruned later",
                     self.workspace, path, name.removesuffix(".json"))
            await self.release(path)
            return False
        return True

    async def release(self, path: str) -> None:
        """Drop this pruner's claim on ``path``."""
        await self._delete(self._claim_key(path))


async def keep(ticks: Callable[[], list[Callable[[], Awaitable[None]]]]) -> None:
    """The task that keeps the marks of a mount's (or client's) workspaces:
    calls each of ``ticks()`` (e.g. ``Workspace.keep_marks``) twice a second."""
    while True:
        await trio.sleep(0.5)
        for tick in ticks():
            try:
                await tick()
            except AgentFSError as e:  # a store outage: the next tick tries again
                log.debug("open marks: %s", e)
