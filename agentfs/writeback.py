"""The ``--writeback`` mount mode: close() returns before the upload.

In the default mode a close returns once the file's bytes are in the store.
With ``agentfs mount --writeback`` a close (FUSE ``flush``/``release``)
returns once the file is in the **on-disk queue** of this mount:

- its working copy already lives in the queue directory's ``data/`` (the
  mount points ``Cache.dirty_dir`` there), so the queue holds the latest
  closed bytes without a copy;
- a :class:`~agentfs.models.QueuedWrite` line appended to ``queue.log`` names
  it: workspace, path, the store version the bytes derive from (``base_etag``),
  the entry (mode, owner, mtime, xattrs), who wrote it.  One ``write(2)`` per
  close (none when nothing a replay needs changed); a torn last line is
  ignored at replay.  Metadata commits (mkdir, symlink, setattr) are queued as
  :class:`~agentfs.models.QueuedMeta` lines (:meth:`Writeback.defer_meta`);
  ``{"done": id}`` lines finish records; the log is truncated whenever nothing
  is live and compacted past :data:`COMPACT_BYTES`;
- with :data:`FSYNC` (``AGENTFS_WRITEBACK_FSYNC=1``) the data, the log and
  the data directory are also fsync'd before the close returns (power-loss
  safe; without it the queue survives a crash of the mount process or of the
  sandbox, which is what agents meet, but not a host power loss).

The mount's own view shows the file at once (it stays an open, dirty working
copy: reads come from the local bytes).  :meth:`Writeback.run`, a task in the
mount's nursery, uploads queued files with the ordinary
:meth:`~agentfs.workspace.Workspace._upload` (conditional PUT, conflict
copies, fencing, deferred group commit of the journal record), in parallel
across files, and serially per file (the file's lock).  Repeated closes of one
file coalesce: the entry is uploaded once, with the latest bytes, once no
close came for :data:`DELAY` seconds (or it waited :data:`MAX_AGE`).  While the
mount is busy serving requests the uploader holds back (up to ``MAX_AGE``) so
it does not compete with the foreground for the CPU (the GIL).

A record is done when the file's upload settles (uploaded, or kept as a
conflict copy, or the file was removed here: :meth:`Writeback.settled`) and
the upload's journal record is written (the deferred group commit).  A file
not uploaded yet is renamed in the local tree only (:meth:`Writeback.rename_local`).

Durability points: ``fsync(file)`` uploads that file and commits its record;
``fsync(dir)``, the control xattr ``user.agentfs.mount.sync``,
releasing a lock lease, creating a checkpoint and unmount drain the whole
queue (:meth:`Writeback.drain`) first.

Crash recovery: the queue lives in ``<cache dir>/writeback/<store hash>/<n>/``
(not under the per-mount cache, which is wiped at mount).  A mount holds an
``flock`` on its queue directory; the next mount of the same store with the
same cache directory replays every queue directory nobody holds
(:meth:`Writeback.recover`) before it serves requests: each record becomes an
upload conditional on its ``base_etag``.  An object uploaded before the crash
whose journal record was lost (the next mount adopts it) is recognised by its
bytes and only gets its metadata back; a file changed meanwhile by another
mount keeps both versions (the conflict-copy rule); a file removed meanwhile
is kept as a conflict copy.

Concurrency: everything runs in the mount's trio thread; file I/O on the
queue directory is a few syscalls per close (done inline), fsyncs run in a
worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import resource
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from pydantic import ValidationError

from agentfs.config import settings
from agentfs.errors import AgentFSError, ConflictError, Fenced
from agentfs.identity import Caller
from agentfs.models import PutOp, QueuedMeta, QueuedWrite, Record
from agentfs.namespace import join, split

if TYPE_CHECKING:
    from agentfs.namespace import Node
    from agentfs.vfs import FileSystem
    from agentfs.workspace import OpenFile, Workspace

__all__ = ["DELAY", "FSYNC", "MAX_AGE", "MAX_QUEUED", "PARALLEL", "SYNC_XATTR", "Writeback", "queue_root",
           "sync_state"]

log = logging.getLogger(__name__)


#: A queued file is uploaded once no close of it came for this long (s).
DELAY = settings().writeback_delay
#: ...and at the latest after this long (s), even while the mount is busy.
MAX_AGE = settings().writeback_max_age
#: The mount counts as busy until it served no request for this long (s).
QUIET = settings().writeback_quiet
#: Concurrent uploads.
PARALLEL = settings().writeback_parallel
#: Concurrent background uploads while the mount is busy (files older than MAX_AGE).
BUSY_PARALLEL = settings().writeback_busy_parallel
#: Beyond this many queued files a close uploads synchronously (back-pressure:
#: every queued file keeps an open working copy).
MAX_QUEUED = settings().writeback_max_queued
#: fsync data, record and directory before a close returns (power-loss safe).
FSYNC = settings().writeback_fsync
#: Tests only: while this file exists the background uploader does not upload
#: (fsync, sync and unmount still do), so a test can crash a non-empty queue.
PAUSE_FILE = settings().writeback_pause_file
#: After a failed upload, wait this long before that file's next attempt (s).
RETRY_AFTER = 2.0
#: Replay compares bytes with the store's object up to this size (larger: conflict copy).
COMPARE_MAX = 64 << 20


LOG = "queue.log"
#: Read-only, per file: whether its last close is in the store yet (not listed by listxattr).
SYNC_XATTR = "user.agentfs.sync"
#: Rewrite the log with its live records when it grows past this (bytes).
COMPACT_BYTES = 16 << 20


def queue_root(cache_dir: Path, store_url: str) -> Path:
    """Where the queues of mounts of ``store_url`` with cache ``cache_dir`` live."""
    h = hashlib.sha256(store_url.encode()).hexdigest()[:16]
    return cache_dir / "writeback" / h


@dataclass(eq=False)
class _Queued:
    ws: Workspace
    of: OpenFile
    caller: Caller
    id: str
    first: float
    last: float
    written: tuple[object, ...] = ()
    local: Path | None = None
    data: str = ""
    line: str = ""
    uploading: bool = False
    retry_at: float = 0.0


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Writeback:
    """The on-disk upload queue of one mount (see the module docstring).

    Error contract: :meth:`enqueue` raises only OSError from the local disk
    (the close then reports it); :meth:`drain` raises the first upload error
    (the queue keeps the files); the background :meth:`run` logs and retries.
    """

    def __init__(self, cache_dir: Path, store_url: str, *, mount_id: str = "",
                 busy: Callable[[], bool] | None = None) -> None:
        self.root = queue_root(cache_dir, store_url)
        self.root.mkdir(parents=True, exist_ok=True)
        self.mount_id = mount_id
        self.busy = busy or (lambda: False)
        self.entries: dict[tuple[str, int], _Queued] = {}
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._limit = trio.CapacityLimiter(PARALLEL)
        self._trickle = trio.CapacityLimiter(BUSY_PARALLEL)
        #: queue files whose journal record is in a deferred group commit not yet
        #: written: removed once it is (see _prune)
        self._awaiting: list[tuple[Workspace, Any, str, str]] = []
        self.dir, self._lock_fd = self._claim()
        #: working copies of files written through this mount (Cache.new_dirty_path)
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self._log_fd = os.open(self.dir / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._log_bytes = os.fstat(self._log_fd).st_size
        _raise_nofile()
        log.info("writeback queue at %s", self.dir)

    # -- the queue directory --------------------------------------------------------

    def _claim(self) -> tuple[Path, int]:
        """The first queue directory no live mount holds (flock), locked."""
        for n in range(1000):
            d = self.root / str(n)
            d.mkdir(exist_ok=True)
            fd = self._try_lock(d)
            if fd is not None:
                return d, fd
        raise AgentFSError(f"no free writeback queue directory under {self.root}")

    @staticmethod
    def _try_lock(d: Path) -> int | None:
        fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def close(self) -> None:
        """Release the queue directory (records left in it are replayed by the next mount)."""
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @property
    def pending(self) -> int:
        return len(self.entries)

    def is_queued(self, ws: Workspace, node: Node) -> bool:
        return (ws.name, node.ino) in self.entries

    # -- hooks called by Workspace --------------------------------------------------

    async def enqueue(self, ws: Workspace, of: OpenFile, caller: Caller) -> bool:
        """Queue a dirty file at close; False if it must be uploaded now instead
        (removed meanwhile, no working copy, or the queue is full)."""
        path = ws.ns.path_of(of.node)
        if path is None or of.fd < 0 or of.local is None or of.unlinked:
            return False
        key = (ws.name, of.node.ino)
        q = self.entries.get(key)
        if q is None:
            if len(self.entries) >= MAX_QUEUED:
                return False
            q = _Queued(ws, of, caller, uuid.uuid4().hex, time.monotonic(), time.monotonic())
        q.caller = caller
        q.last = time.monotonic()
        if q.of is not of or q.local != of.local:
            self._drop_link(q)
            q.of, q.local = of, of.local
            if of.local.parent == self.data_dir:
                q.data = of.local.name
            else:  # a working copy made elsewhere: the queue names it by a hard link
                q.data = f"{self.mount_id}-l{q.id}"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.data_dir / q.data)
                os.link(of.local, self.data_dir / q.data)
        self.entries[key] = q
        self._write_record(q, path)
        if FSYNC:
            await trio.to_thread.run_sync(self._sync_disk, of.fd)
        self._wake.set()
        return True

    def _drop_link(self, q: _Queued) -> None:
        if q.data and q.local is not None and q.data != q.local.name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.data_dir / q.data)

    def entry_changed(self, ws: Workspace, node: Node) -> None:
        """A queued (new) file's entry changed locally (chmod, utimens, xattr):
        rewrite its record so a replay restores it."""
        q = self.entries.get((ws.name, node.ino))
        path = ws.ns.path_of(node)
        if q is not None and path is not None:
            self._write_record(q, path)

    def settled(self, ws: Workspace, of: OpenFile) -> None:
        """The file's upload settled (uploaded, conflict copy, removed): its
        record is done once the upload's journal record is written."""
        q = self.entries.get((ws.name, of.node.ino))
        if q is None or q.of is not of:
            return
        del self.entries[(ws.name, of.node.ino)]
        self._drop_link(q)
        self._changed.set()
        path = ws.ns.path_of(of.node)
        for p in reversed(ws.commit_queue):
            # the upload's journal record waits in a deferred group commit: the
            # queue keeps the record (the bytes are in the store) until it is written
            if p.deferred and not p.done and any(isinstance(r.op, PutOp) and r.op.path == path
                                                 for r in p.records):
                self._awaiting.append((ws, p, q.id, q.line))
                return
        self._done(q.id)

    # -- metadata (mkdir, symlink, chmod/utimens) ------------------------------------

    async def defer_meta(self, ws: Workspace, records: list[Record]) -> None:
        """Queue metadata records for the next group commit, persisted here
        first (a crash replays them); they show in the mount at once."""
        qid = uuid.uuid4().hex
        line = QueuedMeta(id=qid, workspace=ws.name, records=records).model_dump_json()
        self._append(line)
        if FSYNC:
            await trio.to_thread.run_sync(os.fsync, self._log_fd)
        ws.commit_deferred(records)
        self._awaiting.append((ws, ws.commit_queue[-1], qid, line))
        self._wake.set()

    def _prune(self) -> None:
        """Mark done the records whose deferred journal commit is written."""
        done = [a[2] for a in self._awaiting if a[1].done and a[1].error is None]
        if done:
            self._awaiting = [a for a in self._awaiting if not (a[1].done and a[1].error is None)]
            for qid in done:
                self._done(qid)

    # -- the log --------------------------------------------------------------------------

    def _append(self, line: str) -> None:
        b = (line + "\n").encode()
        os.write(self._log_fd, b)
        self._log_bytes += len(b)

    def _done(self, qid: str) -> None:
        if not self.entries and not self._awaiting:
            if self._log_bytes:  # nothing live: start the log afresh
                os.ftruncate(self._log_fd, 0)
                self._log_bytes = 0
            return
        self._append(f'{{"done": "{qid}"}}')
        if self._log_bytes > COMPACT_BYTES:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the log with the live records only (it grows while the queue never empties)."""
        for q in self.entries.values():
            q.written = ()
        tmp = self.dir / (LOG + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        old, self._log_fd, self._log_bytes = self._log_fd, fd, 0
        for q in self.entries.values():
            path = q.ws.ns.path_of(q.of.node)
            if path is not None:
                self._write_record(q, path)
        for _ws, _p, _qid, line in self._awaiting:
            self._append(line)
        os.fsync(fd)
        os.replace(tmp, self.dir / LOG)
        os.close(old)

    def _write_record(self, q: _Queued, path: str) -> None:
        of = q.of
        entry = of.node.entry
        # what a replay needs besides the bytes; unchanged: no new line
        sig = (path, of.base_etag, q.data, entry.mode, entry.uid, entry.gid, of.mtime_ns,
               tuple(sorted(entry.xattrs.items())), q.caller.agent)
        if sig == q.written:
            return
        rec = QueuedWrite(id=q.id, workspace=q.ws.name, path=path, base_etag=of.base_etag, data=q.data,
                          entry=entry.model_copy(update={"mtime_ns": of.mtime_ns, "size": of.size}),
                          agent=q.caller.agent, pid=q.caller.pid, uid=q.caller.uid, gid=q.caller.gid,
                          mount=self.mount_id)
        q.line = rec.model_dump_json()
        self._append(q.line)
        q.written = sig

    def _sync_disk(self, fd: int) -> None:
        os.fdatasync(fd)
        os.fsync(self._log_fd)
        _fsync_path(self.data_dir, directory=True)

    def discard(self, ws: Workspace, of: OpenFile) -> None:
        """The queued file was removed here (unlink): its bytes are not to be uploaded."""
        if (ws.name, of.node.ino) not in self.entries:
            return
        self.settled(ws, of)
        if of.handles <= 0:
            of.dirty = False
            ws.forget_open(of)

    async def rename_local(self, ws: Workspace, old_parent: Node, old_name: str, new_parent: Node,
                           new_name: str, *, noreplace: bool) -> bool:
        """Rename a file this mount created and has not uploaded yet without any
        store request: it moves in the local tree and its queue record follows
        (git's lock files and loose objects, editors' temporary files).  Over a
        committed file, the moved file takes that file's place as its next
        version (uploaded conditional on it, as an overwrite would be).

        False when the fast path does not apply (the caller renames as usual).
        """
        async with ws.ns_lock.exclusive():
            src = (old_parent.children or {}).get(old_name)
            if src is None or not src.pending or src.entry.kind != "f" or new_parent.children is None \
                    or not new_parent.attached or not old_parent.attached:
                return False
            of = ws.open_files.get(src.ino)
            if of is None or of.fd < 0 or of.unlinked:
                return False
            dst = new_parent.children.get(new_name)
            if dst is src:
                return True
            if dst is not None:
                if noreplace or dst.entry.kind != "f" or dst.entry.data_key:
                    return False
                dof = ws.open_files.get(dst.ino)
                if dst.pending:
                    if dof is not None and dof.handles > 0:
                        return False
                elif dst.entry.etag is None or dof is not None:
                    return False
            # Checked (nothing can fail below): rename in the local tree.
            if dst is not None:
                if dst.pending:
                    dof = ws.open_files.get(dst.ino)
                    if dof is not None:
                        self.settled(ws, dof)
                        dof.dirty = False
                        ws.forget_open(dof)
                else:
                    # the moved file becomes the next version of the committed one
                    src.entry = dst.entry.model_copy(update={
                        k: getattr(src.entry, k) for k in ("mode", "uid", "gid", "xattrs", "mtime_ns",
                                                           "ctime_ns")})
                    src.pending = False
                    of.base_etag = dst.entry.etag
                ws.ns.detach(dst)
            del old_parent.children[old_name]  # type: ignore[union-attr]
            src.parent, src.name = new_parent, new_name
            new_parent.children[new_name] = src
            of.last_path = ws.ns.path_of(src)
            q = self.entries.get((ws.name, src.ino))
            if q is not None and of.last_path is not None:
                self._write_record(q, of.last_path)
                if FSYNC:
                    await trio.to_thread.run_sync(self._sync_disk, of.fd)
            of.dirty = True
            return True

    # -- uploading ----------------------------------------------------------------------

    async def _upload_one(self, q: _Queued, *, background: bool = False) -> None:
        """Upload one queued file (its lock serialises it with other uploads of it).

        In the background, a file whose turn comes while the mount is busy
        waits (until ``MAX_AGE``), then goes through a narrower gate
        (:data:`BUSY_PARALLEL`): uploads must not starve request handling."""
        ws, of = q.ws, q.of
        q.uploading = True
        try:
            async with self._limit:
                if background and self.busy():
                    if time.monotonic() - q.first < MAX_AGE:
                        return  # the foreground came back: later
                    async with self._trickle:
                        await self._upload_call(q)
                else:
                    await self._upload_call(q)
            if not of.dirty:
                self.settled(ws, of)
                if of.handles <= 0:
                    ws.forget_open(of)
        finally:
            q.uploading = False

    async def _upload_call(self, q: _Queued) -> None:
        try:
            await q.ws.upload(q.of, q.caller)
        except (Fenced, ConflictError):
            pass  # kept as a conflict copy (settled); the close already returned

    def _due(self, now: float, *, force: bool) -> list[_Queued]:
        if force:
            return [q for q in self.entries.values() if not q.uploading]
        busy = self.busy()
        out = []
        for q in self.entries.values():
            if q.uploading or q.retry_at > now:
                continue
            if now - q.first >= MAX_AGE or (now - q.last >= DELAY and not busy):
                out.append(q)
        return out

    async def run(self) -> None:
        """Background uploader (a task in the mount's nursery)."""
        while True:
            self._prune()
            if not self.entries:
                if self._awaiting:
                    await trio.sleep(0.1)
                    continue
                self._wake = trio.Event()
                await self._wake.wait()
            if PAUSE_FILE and os.path.exists(PAUSE_FILE):
                await trio.sleep(0.1)
                continue
            now = time.monotonic()
            due = self._due(now, force=False)
            if not due:
                await trio.sleep(min(DELAY, QUIET) / 2 or 0.01)
                continue
            async with trio.open_nursery() as nursery:
                for q in due:
                    nursery.start_soon(self._background_one, q)

    async def _background_one(self, q: _Queued) -> None:
        try:
            with trio.CancelScope(shield=True):  # an upload and its commit are never cut halfway
                await self._upload_one(q, background=True)
        except (AgentFSError, OSError) as e:
            q.retry_at = time.monotonic() + RETRY_AFTER
            log.warning("writeback: upload of %s failed (%s); retrying", q.ws.ns.path_of(q.of.node), e)
        except Exception:
            q.retry_at = time.monotonic() + RETRY_AFTER
            log.exception("writeback: upload of %s failed", q.ws.ns.path_of(q.of.node))

    async def drain(self, ws: Workspace | None = None) -> None:
        """Upload every queued file (of ``ws``, or all) now and commit their
        records; returns when the queue holds none of them.  Raises the first
        upload error (the failed files stay queued)."""
        touched: set[Workspace] = {ws} if ws is not None else set()
        errors: list[BaseException] = []
        while True:
            todo = [q for q in self.entries.values() if ws is None or q.ws is ws]
            if not todo:
                break
            touched |= {q.ws for q in todo}

            async def one(q: _Queued) -> None:
                try:
                    await self._upload_one(q)
                except AgentFSError as e:
                    errors.append(e)

            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as nursery:
                    for q in todo:
                        if q.uploading:
                            continue
                        nursery.start_soon(one, q)
                # uploads in flight in the background task: wait for them
                while any(q.uploading for q in todo):
                    self._changed = trio.Event()
                    with trio.move_on_after(0.05):
                        await self._changed.wait()
            if errors:
                raise errors[0]
        for w in touched | {a[0] for a in self._awaiting}:
            with trio.CancelScope(shield=True):
                await w.flush_deferred()
        self._prune()

    # -- crash recovery -------------------------------------------------------------------

    async def recover(self, fs: FileSystem) -> int:
        """Replay every queue left by a mount that ended without draining it
        (a crash), before the mount serves requests.  Returns the number of
        records replayed.  Raises the store's error (the queue is kept)."""
        dirs: list[tuple[Path, int | None]] = [(self.dir, None)]
        for d in sorted(self.root.iterdir()):
            if d == self.dir or not d.is_dir():
                continue
            fd = self._try_lock(d)
            if fd is not None:
                dirs.append((d, fd))
        n = 0
        try:
            for d, _fd in dirs:
                n += await self._recover_dir(fs, d)
        finally:
            for _d, fd in dirs:
                if fd is not None:
                    os.close(fd)
        for d, fd in dirs:
            if fd is not None:
                shutil.rmtree(d, ignore_errors=True)
        os.ftruncate(self._log_fd, 0)
        self._log_bytes = 0
        for p in self.data_dir.iterdir():  # working copies of the earlier mount: consumed
            if not p.name.startswith(f"{self.mount_id}-"):
                with contextlib.suppress(OSError):
                    p.unlink()
        for ws in list(fs.workspaces.values()):
            await ws.flush_deferred()
        if n:
            log.warning("writeback: replayed %d queued changes left by an earlier mount", n)
        return n

    async def _recover_dir(self, fs: FileSystem, d: Path) -> int:
        live: dict[str, QueuedWrite | QueuedMeta] = {}
        try:
            lines = (d / LOG).read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for i, line in enumerate(lines):
            try:
                raw = json.loads(line)
                if "done" in raw:
                    live.pop(raw["done"], None)
                    continue
                rec: QueuedWrite | QueuedMeta = (QueuedMeta if "records" in raw else QueuedWrite).model_validate(raw)
            except (ValidationError, ValueError) as e:
                if i == len(lines) - 1:
                    log.warning("writeback: torn last queue line in %s (%s); ignored", d, e)
                    continue
                raise AgentFSError(f"writeback: unreadable queue record in {d / LOG}: {e}") from None
            live.pop(rec.id, None)
            live[rec.id] = rec  # the newest line of an id wins
        # the newest record naming a working copy owns its bytes
        owner = {r.data: r.id for r in live.values() if isinstance(r, QueuedWrite)}
        n = 0
        for rec in live.values():
            if isinstance(rec, QueuedMeta):
                ws = await fs._load(rec.workspace, create=True)
                await self._replay_meta(ws, rec.records)
                n += 1
        for rec in live.values():
            if not isinstance(rec, QueuedWrite):
                continue
            ws = await fs._load(rec.workspace, create=True)
            data = d / "data" / rec.data
            if owner.get(rec.data) != rec.id or not data.exists():
                # uploaded; its journal record was in a group commit the crash cut
                caller = Caller(pid=rec.pid, uid=rec.uid, gid=rec.gid, agent=rec.agent)
                await self._replay_meta(ws, [ws.record("write", PutOp(path=rec.path, entry=rec.entry), caller)])
            else:
                await self._replay(ws, rec, data)
            n += 1
        return n

    async def _replay(self, ws: Workspace, rec: QueuedWrite, data: Path) -> None:
        caller = Caller(pid=rec.pid, uid=rec.uid, gid=rec.gid, agent=rec.agent or ws.agent)
        size = data.stat().st_size
        entry = rec.entry.model_copy(update={"size": size, "etag": rec.base_etag, "sha256": None,
                                             "data_key": None, "kind": "f"})
        node = ws.ns.resolve(rec.path)
        if node is not None and node.entry.kind == "f" and node.entry.etag != rec.base_etag \
                and node.entry.etag is not None and await self._same_bytes(ws, node, data, size):
            # Uploaded before the crash; the journal record was lost (and the
            # object adopted by this mount's load): give back its metadata.
            upd = {k: getattr(entry, k) for k in ("mode", "uid", "gid", "mtime_ns", "xattrs")}
            if any(getattr(node.entry, k) != v for k, v in upd.items()):
                new = node.entry.model_copy(update={**upd, "ctime_ns": time.time_ns()})
                await ws.commit([ws.record("write", PutOp(path=rec.path, entry=new), caller, replayed=rec.id)])
            log.info("writeback: %s was uploaded before the crash; metadata restored", rec.path)
            return
        parent_path, name = split(rec.path)
        detached = False
        if node is None:
            parent = await self._parents(ws, parent_path, caller)
            node = ws.ns.add_pending(parent, name, entry)
            if rec.base_etag is not None:
                ws.ns.detach(node)  # removed meanwhile: _upload keeps the bytes as a conflict copy
                detached = True
        elif node.entry.kind != "f":
            parent = node.parent
            assert parent is not None
            node = ws.ns.add_pending(parent, name + ".replayed", entry)
            ws.ns.detach(node)
            detached = True
        elif node.entry.etag == rec.base_etag:
            node.entry = node.entry.model_copy(update={
                k: getattr(entry, k) for k in ("mode", "uid", "gid", "xattrs")})
        of = ws.open_file(node)
        ws.make_local(of, None, data)
        of.mtime_ns = rec.entry.mtime_ns
        of.base_etag = rec.base_etag
        of.last_path = rec.path
        of.dirty = True
        of.gen += 1
        try:
            await ws.upload(of, caller)
        except ConflictError:
            detached = True  # another mount changed it meanwhile: the queued bytes are the copy
        finally:
            if not of.dirty:
                ws.forget_open(of)
        if of.dirty:
            raise AgentFSError(f"writeback: replay of {rec.path} did not settle")
        log.info("writeback: replayed %s%s", rec.path, " (kept as a conflict copy)" if detached else "")

    async def _replay_meta(self, ws: Workspace, records: list[Record]) -> None:
        """Commit metadata records a crash cut, where they still fit: a new
        directory or symlink only where nothing is; new attributes only on an
        entry of the same kind (its bytes and version are left alone)."""
        out: list[Record] = []
        for r in records:
            op = r.op
            if not isinstance(op, PutOp):
                continue
            node = ws.ns.resolve(op.path)
            if node is None:
                if op.entry.kind in ("d", "l"):
                    out.append(r)
                continue
            if node.entry.kind != op.entry.kind:
                log.warning("writeback: %s is a %s now; queued change not replayed", op.path, node.entry.kind)
                continue
            upd = {k: getattr(op.entry, k) for k in ("mode", "uid", "gid", "mtime_ns", "atime_ns", "xattrs")}
            if any(getattr(node.entry, k) != v for k, v in upd.items()):
                out.append(r.model_copy(update={"op": PutOp(path=op.path, entry=node.entry.model_copy(
                    update=upd))}))
        if out:
            await ws.commit(out)

    async def _parents(self, ws: Workspace, path: str, caller: Caller) -> Node:
        """The directory at ``path``, created (with its parents) if a mount removed it."""
        node = ws.ns.root
        done = ""
        for part in path.split("/") if path else []:
            done = join(done, part)
            assert node.children is not None
            nxt = node.children.get(part)
            if nxt is None or nxt.children is None:
                if nxt is not None:
                    raise AgentFSError(f"writeback: cannot replay under {done}: not a directory")
                nxt = await ws.mkdir(node, part, 0o755, caller)
            node = nxt
        return node

    async def _same_bytes(self, ws: Workspace, node: Node, data: Path, size: int) -> bool:
        if node.entry.size != size or size > COMPARE_MAX:
            return False
        try:
            theirs = await ws.read(node, 0, size, follow_changes=True) if size else b""
        except AgentFSError:
            return False
        return theirs == data.read_bytes()


def sync_state(ws: Workspace, node: Node) -> bytes:
    """The value of :data:`SYNC_XATTR`: ``{"state": S}`` with S ``queued`` (closed,
    waiting in the writeback queue, with ``"age"`` seconds), ``uploading``, ``dirty``
    (written, not closed or not uploaded yet) or ``synced`` (in the store; its journal
    record may still be in the group commit, at most about 0.25 s)."""
    wb = ws.writeback
    q = wb.entries.get((ws.name, node.ino)) if isinstance(wb, Writeback) else None
    of = ws.open_files.get(node.ino)
    if q is not None:
        state = {"state": "uploading" if q.uploading else "queued", "age": round(time.monotonic() - q.first, 3)}
    elif (of is not None and of.dirty) or node.pending:
        state = {"state": "dirty"}
    else:
        state = {"state": "synced"}
    return json.dumps(state).encode()


def _raise_nofile() -> None:
    """Queued files keep their working copies open: allow as many fds as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

