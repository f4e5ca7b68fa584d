"""Open files of a workspace: reads through the cache, local working copies,
uploads conditional on the version a writer started from, conflict copies.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from agentfs import agentstate, streaming
from agentfs.errors import (
    AlreadyExists,
    ConflictError,
    Fenced,
    InvalidArgument,
    IsADirectory,
    NotFound,
    PreconditionFailed,
    Stale,
)
from agentfs.identity import Caller
from agentfs.models import (
    Entry,
    PutOp,
    encode_xattr,
)
from agentfs.names import MAX_NAME
from agentfs.namespace import Changes, Node, join, split
from agentfs.workspace import adoption, cow, groupcommit
from agentfs.workspace.base import WorkspaceBase
from agentfs.workspace.types import (
    RETRY,
    SMALL_FILE,
    OpenFile,
)

__all__ = ['FileOps']

log = logging.getLogger(__name__)

class FileOps(WorkspaceBase):
    """Open files: create, open, read, write, truncate, and the durable close
    (upload, then commit; a lost race keeps a conflict copy)."""

    async def create(self, parent: Node, name: str, mode: int, caller: Caller) -> tuple[Node, OpenFile]:
        """A new empty file, open for writing; it reaches the store on flush."""
        self._check_new(parent, name)
        node = self.ns.add_pending(parent, name, self._new_entry("f", mode, caller))
        of = self.open_file(node)
        self.make_local(of, b"")
        of.dirty = of.only_trunc = True
        of.handles += 1
        node.opens += 1
        return node, of

    # -- open files -----------------------------------------------------------

    def open_file(self, node: Node) -> OpenFile:
        of = self.open_files.get(node.ino)
        if of is None:
            of = OpenFile(node=node, size=node.entry.size, mtime_ns=node.entry.mtime_ns,
                          base_etag=node.entry.etag, last_path=self.ns.path_of(node))
            self.open_files[node.ino] = of
        return of

    def make_local(self, of: OpenFile, initial: bytes | None, path: Path | None = None) -> None:
        if path is None:
            path = self.cache.new_dirty_path()
            with open(path, "wb") as f:
                f.write(initial or b"")
        of.local = path
        of.fd = os.open(path, os.O_RDWR)
        of.size = os.fstat(of.fd).st_size

    async def open(self, node: Node, *, write: bool, truncate: bool, append: bool,
                   caller: Caller) -> OpenFile:
        if node.entry.kind == "d":
            if write:
                raise IsADirectory()
        elif node.entry.kind != "f":
            raise InvalidArgument("not a regular file")
        if write:
            self.check_writable()
        if not node.attached and node.ino not in self.open_files:
            # The kernel still knows a name that left the tree (another mount
            # removed it, or its new file lost a race): ESTALE makes it look
            # the name up again.
            raise Stale("the file was removed; look it up again")
        of = self.open_file(node)
        if of.fd < 0:
            of.base_etag = node.entry.etag  # a new opener starts from the current version
        of.handles += 1
        node.opens += 1
        if not of.marked and self._ttl_paths(node):
            try:
                await self._mark_open(of, node)
            except BaseException:
                await self.release(of, caller)
                raise
        del append  # the kernel applies O_APPEND (it passes the offset to write at)
        if truncate and write:
            try:
                await self.truncate(of, 0)
            except BaseException:
                await self.release(of, caller)
                raise
        return of

    def _ttl_paths(self, node: Node) -> list[str]:
        """The paths of ``node`` and its directories that carry a TTL."""
        out = []
        n: Node | None = node
        while n is not None and n is not self.ns.root:
            if agentstate.expires_at(n.entry) is not None:
                path = self.ns.path_of(n)
                if path is not None:
                    out.append(path)
            n = n.parent
        return out

    async def _mark_open(self, of: OpenFile, node: Node) -> None:
        """Tell other mounts' TTL pruners that this file is open here (see
        :mod:`agentfs.openmarks`); a file pruned meanwhile fails with ENOENT."""
        of.marked = self._ttl_paths(node)
        waited = False
        for p in of.marked:
            waited = await self.marks.opened(p) or waited
        if waited:
            await self.pull()
            if not node.attached:
                raise NotFound("the file expired and was pruned", path=of.last_path)

    async def keep_marks(self) -> None:
        """Mark open files that gained a TTL since they were opened (a state
        change here or on another mount), then let the marks do their
        periodic work (agentfs/openmarks.py)."""
        for of in list(self.open_files.values()):
            if not of.marked and of.handles > 0 and self._ttl_paths(of.node):
                of.marked = self._ttl_paths(of.node)
                for p in of.marked:
                    await self.marks.opened(p)
        await self.marks.tick()

    async def _ensure_local(self, of: OpenFile) -> None:
        """Give the file a complete local working copy (before a modification)."""
        for _ in range(3):
            if of.fd >= 0:
                return
            e = of.node.entry
            if e.etag is None or e.size == 0:
                self.make_local(of, b"")
                return
            if e.data_key:  # checkpoints: bytes not yet at the natural key
                local = await cow.fetch_version(self, self.path_of(of.node), e)
                if of.fd < 0:
                    self.make_local(of, None, local)
                    of.size = e.size
                return
            key = self.key(self.path_of(of.node))
            bf = self.cache.blockfile(key, e.etag, e.size)
            if await self._pinned(of.node, key, self.cache.fill(bf, self.fetcher(key, e.etag))) is not RETRY:
                if of.fd >= 0:  # another task won the race while we fetched
                    return
                # base_etag stays the version seen at open: if the file changed
                # since, the upload fails its condition and becomes a conflict copy.
                self.make_local(of, None, self.cache.take(bf))
                of.size = e.size
                return
        raise Stale("the file keeps changing in the store", path=self.ns.path_of(of.node))

    def fetcher(self, key: str, etag: str) -> Callable[[int, int], Any]:
        """Ranged GETs pinned to the committed version ``etag``."""
        async def fetch(start: int, end: int) -> bytes:
            data = await self.io(self.store.get, key, start, end, if_match=etag)
            if len(data) != end - start:
                raise PreconditionFailed("object is shorter than its committed size", path=key)
            return data
        return fetch

    async def _pinned(self, node: Node, key: str, work: Any, *, follow_changes: bool = True) -> Any:
        """Run a fetch pinned to the node's committed version.

        Returns the result, or ``RETRY`` after the object turned out to be
        another version than the journal says (the caller retries with the
        refreshed entry).  A vanished object raises Stale.
        """
        try:
            return await work
        except (NotFound, PreconditionFailed, BaseExceptionGroup) as raw:
            err = _first_error(raw) if isinstance(raw, BaseExceptionGroup) else raw
            if isinstance(err, NotFound):
                path = self.ns.path_of(node)
                of = self.open_files.get(node.ino)
                if (path is not None and self.key(path) != key) or (of is not None and of.fd >= 0):
                    return RETRY  # renamed or unlinked here meanwhile: read from the new place
                raise Stale("the object vanished from the store", path=key) from None
            if not isinstance(err, PreconditionFailed):
                raise err from None
        old = node.entry.etag
        await self._refresh_version(node, key)
        if node.entry.etag != old and not follow_changes:
            raise Stale("the file changed in the store; reopen it", path=key)
        return RETRY

    async def _refresh_version(self, node: Node, key: str) -> None:
        """The object at ``key`` is not the committed version (see
        :func:`agentfs.workspace.adoption.refresh_version`)."""
        await adoption.refresh_version(self, node, key)

    async def read(self, of_or_node: OpenFile | Node, off: int, size: int, *,
                   follow_changes: bool = False) -> bytes:
        """Bytes of a file.  A clean file is read from the store pinned to the
        committed version; when the store holds another version, the journal is
        caught up (or the new version adopted) and the read fails with ``Stale``
        since the caller's idea of the file (its size) is outdated, unless
        ``follow_changes`` lets it continue with the new version."""
        of = of_or_node if isinstance(of_or_node, OpenFile) else self.open_files.get(of_or_node.ino)
        node = of.node if of is not None else of_or_node
        assert isinstance(node, Node)
        for _ in range(3):
            if of is not None and of.fd >= 0:
                return os.pread(of.fd, size, off)
            e = node.entry
            if e.kind != "f":
                raise IsADirectory()
            if e.etag is None or off >= e.size:
                return b""
            path = self.ns.path_of(node)
            if path is None:
                raise Stale("file was removed by another mount")
            if e.data_key:  # checkpoints: restored/forked bytes not yet at the natural key
                return await cow.read_version(self, path, e, off, size)
            key = self.key(path)
            bf = self.cache.blockfile(key, e.etag, e.size)
            data = await self._pinned(node, key, self.cache.read(bf, off, size, self.fetcher(key, e.etag)),
                                      follow_changes=follow_changes)
            if data is not RETRY:
                if (not follow_changes and len(data) < size
                        and off + len(data) < min(node.told_size, off + size)):
                    # The file shrank (another mount, an adopted external write)
                    # after the kernel learnt its size: a short read would be
                    # padded with zeros up to the page end.  The invalidation is
                    # on its way; this reader must reopen.
                    raise Stale("the file changed size in the store; reopen it", path=key)
                return data
        raise Stale("the file changed in the store; reopen it", path=self.ns.path_of(node))

    async def write(self, of: OpenFile, off: int, data: bytes) -> int:
        self.check_writable()
        await self._ensure_local(of)
        os.pwrite(of.fd, data, off)
        of.size = max(of.size, off + len(data))
        of.mtime_ns = time.time_ns()
        of.dirty = True
        of.only_trunc = False
        of.gen += 1
        streaming.wrote(self, of, off, len(data))  # upload finished parts in the background
        return len(data)

    async def truncate(self, of: OpenFile, size: int) -> None:
        self.check_writable()
        if size < 0:
            raise InvalidArgument("negative size")
        if of.fd < 0 and size == 0:
            self.make_local(of, b"")
        else:
            await self._ensure_local(of)
        os.ftruncate(of.fd, size)
        of.size = size
        of.mtime_ns = time.time_ns()
        of.dirty = True
        of.only_trunc = size == 0
        of.gen += 1
        streaming.truncated(of, size)

    async def flush(self, of: OpenFile, caller: Caller) -> None:
        """A descriptor of the file is closed: upload the file if it changed and
        commit its entry (durable on return; with --writeback: in the crash-safe
        local queue on return).

        A file whose only change is a truncation to empty (``O_TRUNC``) or its
        creation, with nothing written yet, is not published here: the truncation
        rides with the next write's upload, or the last :meth:`release` (or
        :meth:`fsync`, :meth:`publish`) publishes it.  So a shell ``>`` costs one
        upload and no reader ever sees the spurious empty version.

        Raises :class:`ConflictError` (``ESTALE``) when the file's bytes are in
        a conflict copy instead of at its path (this upload, or an earlier one
        of this open file, lost a race).
        """
        if of.only_trunc:
            self._raise_if_diverted(of)
            return
        if of.dirty and self.writeback is not None and await self.writeback.enqueue(self, of, caller):
            return  # --writeback (agentfs/writeback.py)
        await self.publish(of, caller)

    async def publish(self, of: OpenFile, caller: Caller) -> None:
        """Upload the file if it changed and commit its entry (durable in the
        store on return, empty or not; the record may be group-committed).
        Raises :class:`ConflictError` as :meth:`flush` does."""
        if of.dirty:
            await self.upload(of, caller)
        self._raise_if_diverted(of)

    def _raise_if_diverted(self, of: OpenFile) -> None:
        if of.diverted_from is not None:
            raise ConflictError("another writer changed the file first", path=of.diverted_from,
                                copy=self.ns.path_of(of.node) or of.last_path or "")

    async def release(self, of: OpenFile, caller: Caller) -> None:
        """Drop one handle; the last one uploads what is still dirty.

        If that upload fails (the store is unreachable), the working copy is
        kept and retried by :meth:`sync` (the mount retries in the background
        and on unmount): the writer's ``close()`` already reported the error
        from ``flush``, and the bytes are not dropped.
        """
        of.handles -= 1
        of.node.opens -= 1
        if of.handles > 0:
            return
        if of.dirty:
            if self.writeback is not None and await self.writeback.enqueue(self, of, caller):
                return  # --writeback: kept open and queued (agentfs/writeback.py)
            try:
                await self.upload(of, caller)
            except (Fenced, ConflictError):
                pass  # the bytes are already kept as a conflict copy (the close was told)
            except Exception as e:
                log.warning("workspace %s: upload of %s failed (%s); kept for retry",
                            self.name, self.ns.path_of(of.node), e)
                self._retry[of.node.ino] = caller
                return
        self.forget_open(of)

    def forget_open(self, of: OpenFile) -> None:
        if of.handles > 0:
            return
        for p in of.marked:
            self.marks.closed(p)
        of.marked = []
        self.open_files.pop(of.node.ino, None)
        self._retry.pop(of.node.ino, None)
        streaming.discard(of)  # an unused streaming upload is aborted
        e = of.node.entry
        path = self.ns.path_of(of.node)
        if (of.local is not None and of.fd >= 0 and not of.dirty and e.etag is not None
                and e.etag == of.base_etag and path is not None):
            # The working copy holds the committed version: keep it as the
            # clean cached copy (read-back and the next append need no GET).
            os.close(of.fd)
            of.fd = -1
            local, of.local = of.local, None
            self.cache.adopt(local, self.key(path), e.etag, e.size)
        of.close_local()
        self.ns.table.maybe_drop(of.node)

    async def upload(self, of: OpenFile, caller: Caller) -> None:
        # Shielded: an upload and its commit are never cancelled halfway (a
        # cancelled commit after a finished PUT would turn into a false conflict).
        with trio.CancelScope(shield=True):
            try:
                await self._upload_now(of, caller)
            finally:
                if self.writeback is not None and not of.dirty:
                    self.writeback.settled(self, of)  # drop its queue record

    async def _upload_now(self, of: OpenFile, caller: Caller) -> None:
        async with self.ns_lock.shared(), of.lock:
            if not of.dirty:
                return
            node = of.node
            path = self.ns.path_of(node)
            if path is None:
                if of.unlinked:
                    of.dirty = False  # removed here while open: nothing to keep
                    return
                if of.last_path is None:  # never had a path here: say so, never drop silently
                    raise Stale("the file was removed; its bytes were not stored")
                # Another mount removed it (or its directory) under us: keep the bytes.
                await self._keep_conflict(of, of.last_path, caller)
                self._raise_if_diverted(of)
                return
            of.last_path = path
            gen, size = of.gen, of.size
            key = self.key(path)
            cond: dict[str, Any] = {"if_absent": True} if of.base_etag is None else {"if_match": of.base_etag}
            # -- locks: a writer whose lease was taken over is fenced --
            if self.fence is not None:
                try:
                    await self.fence(path, caller)
                except Fenced as e:
                    await self._keep_conflict(of, path, caller, action="fenced", token=e.token)
                    raise

            # checkpoints: keep the version a checkpoint references before replacing it
            # (no request without live checkpoints); an unmaterialised entry's natural
            # key holds garbage, so its first upload is unconditional.
            if not node.pending and node.entry.etag == of.base_etag:
                if node.entry.data_key:
                    cond = {}
                else:
                    await cow.preserve(self, path, node.entry)
            await self.garbage.claim(key)  # a pending delete of this key runs first
            try:
                info, sha = await self._put_local(of, key, size, cond)
            except PreconditionFailed:
                # Another writer committed a version this one never saw: its
                # bytes stay at the path, ours go to a conflict copy, and this
                # open file never continues on top of the winner.
                await self._keep_conflict(of, path, caller)
                self._raise_if_diverted(of)
                return
            # the object at the key is ours now.  Should the commit below
            # fail (store outage), the retried upload must replace this version,
            # not fail its condition against it and turn into a false conflict.
            replaces = of.base_etag
            if of.orphan is not None and of.orphan[0] == replaces:
                replaces = of.orphan[1]  # our upload whose commit failed: the journal never knew it
            of.orphan = (info.etag, replaces)
            of.base_etag = info.etag
            entry = node.entry.model_copy(update={
                "size": size, "etag": info.etag, "sha256": sha, "data_key": None,
                "mtime_ns": of.mtime_ns, "ctime_ns": time.time_ns(),
            })
            action = "create" if node.pending else "write"
            # ``base``: the version these bytes replace knowingly (check.py finds
            # a version replaced by a writer that never saw it: a lost write).
            records = [self.record(action, PutOp(path=path, entry=entry), caller, size=size, sha256=sha,
                                   base=replaces)]
            if groupcommit.may_defer(self, path):
                self.commit_deferred(records)  # the bytes are durable; the record follows
            else:
                await self.commit(records)
            of.base_etag, of.orphan = info.etag, None
            if of.gen == gen:
                of.dirty = False

    async def _put_local(self, of: OpenFile, key: str, size: int, cond: dict[str, Any]) -> tuple[Any, str]:
        # a file written sequentially has its parts uploaded already
        # (None: no usable stream, upload the whole file)
        done = await streaming.finish(of, key, size, cond, self.limiter)
        if done is not None:
            return done
        if size <= SMALL_FILE:
            data = os.pread(of.fd, size, 0)
            sha = hashlib.sha256(data).hexdigest() if size < (1 << 20) else await trio.to_thread.run_sync(
                lambda: hashlib.sha256(data).hexdigest())
            info = await self.io(self.store.put, key, data, **cond)
            return info, sha
        local = str(of.local)
        sha = await trio.to_thread.run_sync(_sha256_file, local, size)
        info = await self.io(self.store.put_file, key, local, **cond)
        return info, sha

    async def _keep_conflict(self, of: OpenFile, path: str, caller: Caller, *, action: str = "conflict",
                             **detail: Any) -> None:
        """Our upload lost a race (or was fenced: ``action="fenced"``): keep our
        bytes under a visible conflict name, and divert the open file to it.

        Callers hold ``of.lock``.  The path keeps the winner; this mount shows
        the winner there at once (see :meth:`_divert`)."""
        gen = of.gen
        parent_path, name = split(path)
        stem, dot, ext = name.rpartition(".")
        if not stem:
            stem, dot, ext = name, "", ""
        agent = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in (caller.agent or self.agent))[:40]
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        for n in range(100):
            suffix = f".conflict-{agent}-{stamp}" + (f"-{n}" if n else "")
            cname = f"{stem}{suffix}{dot}{ext}"[:MAX_NAME]
            cpath = join(parent_path, cname)
            try:
                info, sha = await self._put_local(of, self.key(cpath), of.size, {"if_absent": True})
                break
            except PreconditionFailed:
                continue
        else:
            raise AlreadyExists("could not find a free conflict name", path=path)
        now = time.time_ns()
        note = f'{{"of": "{path}", "agent": "{caller.agent or self.agent}", "time": {time.time():.3f}}}'
        entry = Entry(kind="f", mode=of.node.entry.mode, uid=caller.uid, gid=caller.gid, mtime_ns=now,
                      ctime_ns=now, size=of.size, etag=info.etag, sha256=sha,
                      xattrs={"user.agentfs.conflict": encode_xattr(note.encode())})
        await self.commit([self.record(action, PutOp(path=cpath, entry=entry), caller, of=path,
                                       size=of.size, sha256=sha, **detail)])
        log.warning("workspace %s: write to %s %s; kept as %s", self.name, path,
                    "was fenced (its lease was taken over)" if action == "fenced"
                    else "lost a race with another writer", cpath)
        if of.gen == gen:
            of.dirty = False
        copy = self.ns.resolve(cpath)
        if copy is not None:
            self._divert(of, path, copy)

    def _divert(self, of: OpenFile, path: str, copy: Node) -> None:
        """Bind an open file whose bytes lost a race to their conflict copy.

        The handles keep their working copy (reads see what they wrote; later
        writes and flushes update the copy, conditional on its version), while
        the path serves the winner: new opens start from it, and the kernel
        drops the loser's pages and attributes of the path.  A new file that
        was never committed leaves the tree (its bytes are the copy)."""
        old = of.node
        if self.writeback is not None:
            self.writeback.settled(self, of)  # its queued close is done: the bytes are in the copy
        if self.open_files.get(old.ino) is of:
            del self.open_files[old.ino]
        self._retry.pop(old.ino, None)
        old.opens -= of.handles
        copy.opens += of.handles
        if old.pending:
            self.ns.detach(old)
        of.node = copy
        self.open_files[copy.ino] = of
        of.diverted_from = of.diverted_from or path
        of.last_path = self.ns.path_of(copy)
        of.base_etag, of.orphan = copy.entry.etag, None
        self.ns.table.maybe_drop(old)
        if self.on_change is not None:
            self.on_change(Changes(inodes={old.ino}, data={old.ino}))

    async def fsync(self, of: OpenFile, caller: Caller) -> None:
        """Upload the file if it changed and wait for its journal record.
        Raises :class:`ConflictError` as :meth:`flush` does."""
        if of.dirty:
            await self.upload(of, caller)  # durable, also with --writeback
        await self.flush_deferred()  # fsync waits for the journal record too
        self._raise_if_diverted(of)


def _sha256_file(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = size
        while remaining > 0:
            chunk = f.read(min(8 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def _first_error(eg: BaseExceptionGroup) -> BaseException:
    """The most meaningful error inside an exception group (nurseries wrap errors)."""
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first_error(e)
        return e
    return OSError(errno.EIO, "unknown error")


