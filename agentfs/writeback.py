"""The ``--writeback`` mount mode (issue 6): close() returns before the upload.

In the default mode a close returns once the file's bytes are in the store.
With ``agentfs mount --writeback`` a close (FUSE ``flush``/``release``)
returns once the file is in the **on-disk queue** of this mount:

- its working copy (already a file in the cache directory) is hard-linked
  as ``<queue>/<id>.data``, so the queue always holds the latest closed bytes;
- a :class:`~agentfs.models.QueuedWrite` record ``<queue>/<id>.json`` names
  it: workspace, path, the store version the bytes derive from (``base_etag``),
  the entry (mode, owner, mtime, xattrs), who wrote it.  It is written to a
  temporary name and renamed into place, so it is never torn;
- with :data:`FSYNC` (``AGENTFS_WRITEBACK_FSYNC=1``) the data, the record and
  the directory are also fsync'd before the close returns (power-loss safe;
  without it the queue survives a crash of the mount process or of the
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

The record is removed when the file's upload settles (uploaded, or kept as a
conflict copy, or the file was removed here): :meth:`Writeback.settled`.

Durability points: ``fsync(file)`` uploads that file and commits its record;
``fsync(dir)``/``syncfs``, the control xattr ``user.agentfs.mount.sync``,
releasing a lock lease, creating a checkpoint and unmount drain the whole
queue (:meth:`Writeback.drain`) first.

Crash recovery: the queue lives in ``<cache dir>/writeback/<store hash>-<n>/``
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
import logging
import os
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from pydantic import ValidationError

from agentfs.errors import AgentFSError, Fenced, InvalidArgument
from agentfs.identity import Caller
from agentfs.models import PutOp, QueuedWrite
from agentfs.namespace import join, split

if TYPE_CHECKING:
    from agentfs.namespace import Node
    from agentfs.vfs import FileSystem
    from agentfs.workspace import OpenFile, Workspace

__all__ = ["DELAY", "FSYNC", "MAX_AGE", "MAX_QUEUED", "PARALLEL", "Writeback", "queue_root"]

log = logging.getLogger(__name__)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise InvalidArgument(f"{name} must be a number") from None


#: A queued file is uploaded once no close of it came for this long (s).
DELAY = _env_float("AGENTFS_WRITEBACK_DELAY", 0.2)
#: ...and at the latest after this long (s), even while the mount is busy.
MAX_AGE = _env_float("AGENTFS_WRITEBACK_MAX_AGE", 3.0)
#: The mount counts as busy until it served no request for this long (s).
QUIET = _env_float("AGENTFS_WRITEBACK_QUIET", 0.05)
#: Concurrent uploads.
PARALLEL = int(_env_float("AGENTFS_WRITEBACK_PARALLEL", 16))
#: Beyond this many queued files a close uploads synchronously (back-pressure:
#: every queued file keeps an open working copy).
MAX_QUEUED = int(_env_float("AGENTFS_WRITEBACK_MAX_QUEUED", 4096))
#: fsync data, record and directory before a close returns (power-loss safe).
FSYNC = os.environ.get("AGENTFS_WRITEBACK_FSYNC", "0") not in ("0", "off", "no", "false", "")
#: Tests only: while this file exists the background uploader does not upload
#: (fsync, sync and unmount still do), so a test can crash a non-empty queue.
PAUSE_FILE = os.environ.get("AGENTFS_WRITEBACK_PAUSE_FILE", "")
#: After a failed upload, wait this long before that file's next attempt (s).
RETRY_AFTER = 2.0
#: Replay compares bytes with the store's object up to this size (larger: conflict copy).
COMPARE_MAX = 64 << 20


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
    ino: int = -1
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
        self.dir, self._lock_fd = self._claim()
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
        data = self.dir / f"{q.id}.data"
        if key not in self.entries or q.of is not of or q.ino != os.fstat(of.fd).st_ino:
            # the queue's name for the working copy (a hard link: later writes show in it)
            q.of = of
            q.ino = os.fstat(of.fd).st_ino
            with contextlib.suppress(FileNotFoundError):
                os.unlink(data)
            os.link(of.local, data)
        self.entries[key] = q
        self._write_record(q, path)
        if FSYNC:
            await trio.to_thread.run_sync(self._sync_disk, of.fd, q.id)
        self._wake.set()
        return True

    def entry_changed(self, ws: Workspace, node: Node) -> None:
        """A queued (new) file's entry changed locally (chmod, utimens, xattr):
        rewrite its record so a replay restores it."""
        q = self.entries.get((ws.name, node.ino))
        path = ws.ns.path_of(node)
        if q is not None and path is not None:
            self._write_record(q, path)

    def settled(self, ws: Workspace, of: OpenFile) -> None:
        """The file's upload settled (uploaded, conflict copy, removed): drop its record."""
        q = self.entries.get((ws.name, of.node.ino))
        if q is None or q.of is not of:
            return
        del self.entries[(ws.name, of.node.ino)]
        self._remove(q.id)
        self._changed.set()

    def discard(self, ws: Workspace, of: OpenFile) -> None:
        """The queued file was removed here (unlink): its bytes are not to be uploaded."""
        if (ws.name, of.node.ino) not in self.entries:
            return
        self.settled(ws, of)
        if of.handles <= 0:
            of.dirty = False
            ws._forget_open(of)

    # -- records ----------------------------------------------------------------------

    def _record(self, q: _Queued, path: str) -> QueuedWrite:
        of = q.of
        entry = of.node.entry.model_copy(update={"mtime_ns": of.mtime_ns, "size": of.size})
        return QueuedWrite(id=q.id, workspace=q.ws.name, path=path, base_etag=of.base_etag, entry=entry,
                           agent=q.caller.agent, pid=q.caller.pid, uid=q.caller.uid, gid=q.caller.gid,
                           mount=self.mount_id)

    def _write_record(self, q: _Queued, path: str) -> None:
        rec = self._record(q, path)
        # what a replay needs besides the bytes; unchanged: no rewrite
        sig = (path, rec.base_etag, rec.entry.mode, rec.entry.uid, rec.entry.gid, rec.entry.mtime_ns,
               tuple(sorted(rec.entry.xattrs.items())), rec.agent)
        if sig == q.written:
            return
        tmp = self.dir / f"{q.id}.tmp"
        with open(tmp, "w") as f:
            f.write(rec.model_dump_json())
        os.replace(tmp, self.dir / f"{q.id}.json")
        q.written = sig

    def _sync_disk(self, fd: int, qid: str) -> None:
        os.fdatasync(fd)
        _fsync_path(self.dir / f"{qid}.json")
        _fsync_path(self.dir, directory=True)

    def _remove(self, qid: str, d: Path | None = None) -> None:
        d = d or self.dir
        for suffix in (".json", ".data", ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d / f"{qid}{suffix}")

    # -- uploading ----------------------------------------------------------------------

    async def _upload_one(self, q: _Queued) -> None:
        """Upload one queued file (its lock serialises it with other uploads of it)."""
        ws, of = q.ws, q.of
        q.uploading = True
        try:
            async with self._limit:
                try:
                    await ws._upload(of, q.caller)
                except Fenced:
                    pass  # locks (issue 4): kept as a conflict copy (settled)
            if not of.dirty:
                self.settled(ws, of)
                if of.handles <= 0:
                    ws._forget_open(of)
        finally:
            q.uploading = False

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
            if not self.entries:
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
                await self._upload_one(q)
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
        for w in touched:
            with trio.CancelScope(shield=True):
                await w.flush_deferred()

    # -- crash recovery -------------------------------------------------------------------

    async def recover(self, fs: FileSystem) -> int:
        """Replay every queue left by a mount that ended without draining it
        (a crash), before the mount serves requests.  Returns the number of files."""
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
                recs = []
                for p in d.glob("*.json"):
                    try:
                        recs.append(QueuedWrite.model_validate_json(p.read_bytes()))
                    except (ValidationError, ValueError, OSError) as e:
                        log.error("writeback: unreadable queue record %s (%s); left in place", p, e)
                for rec in sorted(recs, key=lambda r: r.queued):
                    data = d / f"{rec.id}.data"
                    if not data.exists():
                        log.error("writeback: queue record %s has no data; dropped", rec.id)
                        self._remove(rec.id, d)
                        continue
                    ws = await fs._load(rec.workspace, create=True)
                    await self._replay(ws, rec, data)
                    self._remove(rec.id, d)
                    n += 1
                for p in d.glob("*.data"):  # data without a record: a close cut before its record
                    p.unlink()
                for p in d.glob("*.tmp"):
                    p.unlink()
        finally:
            for d, fd in dirs:
                if fd is not None:
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        os.unlink(d / "lock")
                        d.rmdir()
        for ws in list(fs.workspaces.values()):
            await ws.flush_deferred()
        if n:
            log.warning("writeback: replayed %d queued files left by an earlier mount", n)
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
        of = ws._open_file(node)
        local = ws.cache.new_dirty_path()
        os.link(data, local)
        ws._make_local(of, None, local)
        of.mtime_ns = rec.entry.mtime_ns
        of.base_etag = rec.base_etag
        of.last_path = rec.path
        of.dirty = True
        of.gen += 1
        try:
            await ws._upload(of, caller)
        finally:
            if not of.dirty:
                ws._forget_open(of)
        if of.dirty:
            raise AgentFSError(f"writeback: replay of {rec.path} did not settle")
        log.info("writeback: replayed %s%s", rec.path, " (kept as a conflict copy)" if detached else "")

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


def _raise_nofile() -> None:
    """Queued files keep their working copies open: allow as many fds as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

