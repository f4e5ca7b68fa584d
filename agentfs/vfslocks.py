"""The lock requests of a mount: the lease attribute and the binding's flock/fcntl.

:class:`LockRequests` is the part of :class:`agentfs.vfs.FileSystem` that
turns lock requests into calls on :class:`agentfs.locks.LeaseManager` (the
``user.agentfs.lock`` attribute) and :class:`agentfs.locks.kernel.KernelLocks`
(``flock(2)``, ``fcntl`` locks), and hands both what locks need from the
mount: committing a holder's writes before a lease goes, catching up before
a locker goes on (:mod:`agentfs.workspace.handover`), refusing fenced writes.

Error contract: as the two lock managers (WouldBlock, InvalidArgument, store
errors); a setxattr refused by a held lease is LeaseBusy (EBUSY).
Concurrency: the mount's trio thread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agentfs.errors import AgentFSError, LeaseBusy, NotSupported, WouldBlock
from agentfs.identity import Caller
from agentfs.locks import KernelLocks, LeaseManager, break_record, lineage, parse_lock_value
from agentfs.namespace import Node
from agentfs.workspace import handover

if TYPE_CHECKING:
    from agentfs.vfs import FileHandle
    from agentfs.workspace import Workspace
    from agentfs.writeback import Writeback

__all__ = ["LockRequests"]

log = logging.getLogger(__name__)


class LockRequests:
    """Lock requests of :class:`agentfs.vfs.FileSystem` (a mixin of it)."""

    workspaces: dict[str, Workspace]
    handles: dict[int, FileHandle]
    leases: LeaseManager
    kernel_locks: KernelLocks | None
    writeback: Writeback | None
    agent: str

    if TYPE_CHECKING:
        def node(self, ino: int) -> Node: ...
        def _ws(self, node: Node) -> Workspace: ...
        def _h(self, fh: int) -> FileHandle: ...
        async def _invalidations_done(self) -> None: ...

    # -- user.agentfs.lock: a lease in the store, not a stored xattr ------------------

    async def _lock_xattr(self, ino: int, op: str, value: bytes, caller: Caller | None) -> bytes:
        """get: the holders as JSON; set ``exclusive``/``shared`` [``wait``]: take
        the lease for the calling process (EBUSY when held elsewhere, see LeaseBusy);
        set ``break``: clear it (audited); remove: release the caller's lease."""
        node = self.node(ino)
        ws = self._ws(node)
        path = ws.path_of(node)
        if op == "get":
            return await self.leases.show(ws.name, path)
        assert caller is not None
        if op == "remove":
            await self.leases.release(ws.name, path, caller)
            return b""
        mode, _ = parse_lock_value(value)
        if mode == "break":
            old = await self.leases.break_lock(ws.name, path)
            if not ws.read_only:
                await ws.commit([break_record(path, old, caller, self.agent)])
            return b""
        try:
            await self.leases.acquire(ws.name, path, value, caller)
        except WouldBlock as e:
            raise LeaseBusy(e.strerror or "", path=path) from None  # see LeaseBusy: not EAGAIN
        return b""

    async def _flush_deferred_of(self, name: str) -> int:
        """Commit a workspace's deferred records (before a lease is released);
        returns the journal position they are committed at."""
        ws = self.workspaces.get(name)
        if ws is None:
            return 0
        if self.writeback is not None:
            await self.writeback.drain(ws)  # what the holder wrote, before others may
        return await handover.settle(ws)

    async def _settle_path(self, name: str, path: str) -> int:
        """Before a kernel lock's lease goes: upload the file's unwritten bytes
        (an unlock hands over data like a close), then commit the records."""
        ws = self.workspaces.get(name)
        if ws is not None:
            try:
                of = ws.open_files.get(ws.resolve(path).ino)
                if of is not None and of.dirty:
                    await ws.fsync(of, Caller.current(self.agent))
            except AgentFSError as e:  # the close reports it; the unlock still happens
                log.warning("unlock of %s/%s: its bytes are not uploaded yet: %s", name, path, e)
        return await self._flush_deferred_of(name)

    async def _caught_up_to(self, name: str, path: str, seq: int) -> None:
        """A lease was taken: show the previous holder's writes before the locker goes on."""
        ws = self.workspaces.get(name)
        if ws is None:
            return
        await handover.catch_up(ws, path, seq)
        await self._invalidations_done()

    async def _fence(self, name: str, path: str, caller: Caller) -> None:
        """Refuse a write by a holder whose lease was taken over (lease or kernel lock)."""
        await self.leases.fence(name, path, caller)
        if self.kernel_locks is not None and self.kernel_locks.files:
            ws = self.workspaces.get(name)
            if ws is not None:
                try:
                    ino = ws.resolve(path).ino
                except AgentFSError:
                    return  # not in this mount's tree: nothing locked here
                await self.kernel_locks.fence(name, ino, lineage(caller.pid))

    # -- kernel locks (the binding's flock/getlk/setlk) --------------------------------

    def _lock_target(self, fh: int) -> tuple[str, int, str]:
        h = self._h(fh)
        node = h.of.node
        path = h.of.diverted_from or h.ws.ns.path_of(node) or h.of.last_path or f".unlinked/{node.ino}"
        return h.ws.name, node.ino, path

    def _kl(self) -> KernelLocks:
        if self.kernel_locks is None:
            raise NotSupported("this mount keeps locks to itself (--no-kernel-locks)")
        return self.kernel_locks

    async def flock(self, fh: int, owner: int, op: int, pid: int) -> None:
        ws, ino, path = self._lock_target(fh)
        await self._kl().flock(ws, ino, path, fh=fh, owner=owner, op=op, pid=pid)

    async def setlk(self, fh: int, owner: int, type_: int, start: int, length: int, pid: int,
                    sleep: bool) -> None:
        ws, ino, path = self._lock_target(fh)
        await self._kl().setlk(ws, ino, path, fh=fh, owner=owner, type_=type_, start=start,
                               length=length, pid=pid, sleep=sleep)

    async def getlk(self, fh: int, owner: int, type_: int, start: int, length: int) -> tuple[int, int, int, int]:
        ws, ino, _ = self._lock_target(fh)
        return await self._kl().getlk(ws, ino, owner=owner, type_=type_, start=start, length=length)

    async def unlock_owner(self, fh: int, owner: int) -> None:
        h = self.handles.get(fh)
        if h is not None and self.kernel_locks is not None:
            await self.kernel_locks.unlock_owner(h.ws.name, h.of.node.ino, owner)
