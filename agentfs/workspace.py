"""Workspace: every file operation on one workspace, with or without FUSE.

A workspace is a tree of files at natural keys ``<ws>/<path>`` plus a journal
under ``.agentfs/<ws>/``.  This class owns the rules:

- **Durability**: a file's bytes are uploaded, then its entry is committed to
  the journal; ``flush``/``fsync``/``release`` return only after both.
- **Optimistic concurrency**: uploads are conditional on the version the
  writer started from (``if_match``) or on absence (``if_absent``).  A loser
  keeps its bytes as a conflict copy next to the file; nothing is dropped.
- **Renames** copy bytes to the new natural keys first, then commit the
  rename in one journal record (atomic as seen through the mount), then delete
  the old keys.  A crash in between leaves a tombstoned leftover that the next
  scan removes, never a half-renamed tree.
- **New files** are local ("pending") until their first flush: other mounts see
  them on close (close-to-open consistency).

Beside it: :mod:`agentfs.adoption` (the scan that reconciles natural keys with
the journal, and adopting a version a reader found), :mod:`agentfs.garbage`
(deleting old keys after the syscall), :mod:`agentfs.groupcommit` (closes that
do not wait for their record), :mod:`agentfs.names` (valid names).

Error contract: methods raise :class:`agentfs.errors.AgentFSError` subclasses
(each carries its errno) and store errors from ``agentfs.store``.

Concurrency: all methods run in one trio thread.  Store I/O runs in worker
threads under a capacity limiter.  Renames and deletes take the namespace lock
exclusively; uploads and other mutations take it shared, so a rename never
interleaves with an upload of a file it moves.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import stat as stat_mod
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from agentfs import (
    adoption,
    agentstate,
    checkpoints,
    garbage,
    groupcommit,
    intents,
    openmarks,
    streaming,
)
from agentfs.cache import Cache
from agentfs.entryreads import EntryReads
from agentfs.errors import (
    AlreadyExists,
    ConflictError,
    CorruptRecord,
    Fenced,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    PreconditionFailed,
    ReadOnly,
    Stale,
    TooBig,
)
from agentfs.identity import HOSTNAME, Caller
from agentfs.journal import COMPACT_EVERY, Journal
from agentfs.models import (
    Commit,
    DelOp,
    Entry,
    MoveOp,
    PutOp,
    Record,
    encode_xattr,
)
from agentfs.names import MAX_NAME, check_name, check_workspace_name
from agentfs.namespace import Changes, InodeTable, Namespace, Node, join, split
from agentfs.store.base import ObjectStore

__all__ = [
    "MAX_NAME",
    "MAX_XATTR_VALUE",
    "Attr",
    "OpenFile",
    "Workspace",
    "check_name",
    "check_workspace_name",
]

log = logging.getLogger(__name__)

MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 * 1024
#: Files up to this size are uploaded from memory in one request.
SMALL_FILE = 8 << 20
_RETRY = object()


@dataclass(slots=True)
class Attr:
    """Attributes of one node as the kernel sees them."""

    ino: int
    kind: str
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int

    @property
    def st_mode(self) -> int:
        fmt = {"f": stat_mod.S_IFREG, "d": stat_mod.S_IFDIR, "l": stat_mod.S_IFLNK}[self.kind]
        return fmt | self.mode


@dataclass(eq=False)
class OpenFile:
    """The open state of one file node in this mount (shared by its handles).

    ``fd`` is the local working copy once the file is written (or unlinked
    while open); ``base_etag`` is the store version that copy derives from
    (None for a file that has never been uploaded).
    """

    node: Node
    handles: int = 0
    fd: int = -1
    local: Path | None = None
    size: int = 0
    mtime_ns: int = 0
    dirty: bool = False
    gen: int = 0
    base_etag: str | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)
    #: Removed by this mount (unlink or rename over it) while open.
    unlinked: bool = False
    #: Where the file was last seen, to keep its bytes if another mount removes it.
    last_path: str | None = None
    #: the upload of a file being written sequentially (agentfs/streaming.py)
    stream: streaming.Stream | None = None
    #: The file is empty by a truncation or its creation and nothing was
    #: written since: a descriptor's close does not publish it on its own (a
    #: shell ``>`` closes a duplicate descriptor before the first write); the
    #: last close (release), fsync or the next write's upload does.
    only_trunc: bool = False
    #: The path this open file was written for before its upload lost a race
    #: (or was fenced): its bytes, and all it is written from now on, belong to
    #: the conflict copy ``node`` now is; every flush/fsync reports the loss.
    diverted_from: str | None = None
    #: (etag uploaded, version it replaced) of an upload whose commit failed.
    orphan: tuple[str, str | None] | None = None
    #: Paths with a TTL (the file, directories above it) marked open for other
    #: mounts' pruners (agentfs/openmarks.py); unmarked at the last close.
    marked: list[str] = field(default_factory=list)

    def close_local(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.local is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.local)
            self.local = None


class RWLock:
    """A trio shared/exclusive lock; waiting exclusive lockers block new shared ones."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._cond = trio.Condition()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            while self._writer or self._writers_waiting:
                await self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1  # bookkeeping first: a cancelled holder must not leak it
            with trio.CancelScope(shield=True):
                async with self._cond:
                    self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    await self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            self._writer = False
            with trio.CancelScope(shield=True):
                async with self._cond:
                    self._cond.notify_all()


@dataclass
class _Pending:
    records: list[Record]
    done: bool = False
    error: BaseException | None = None
    #: queued by a close that does not wait (agentfs/groupcommit.py)
    deferred: bool = False


class Workspace(EntryReads):
    """One workspace of a store.  Create with :meth:`open`."""

    def __init__(
        self,
        store: ObjectStore,
        name: str,
        *,
        table: InodeTable,
        cache: Cache,
        limiter: trio.CapacityLimiter,
        agent: str = "",
        mount_id: str = "",
        read_only: bool = False,
        root_ino: int | None = None,
    ) -> None:
        check_workspace_name(name)
        self.store = store
        self.name = name
        self.journal = Journal(store, name)
        self.cache = cache
        self.limiter = limiter
        self.agent = agent
        self.mount_id = mount_id
        self.read_only = read_only
        now = time.time_ns()
        root = Entry(kind="d", mode=0o755, uid=os.getuid(), gid=os.getgid(), mtime_ns=now, ctime_ns=now)
        self.ns = Namespace(table, root, root_ino=root_ino)
        self.open_files: dict[int, OpenFile] = {}
        self.ns_lock = RWLock()
        self._commit_lock = trio.Lock()
        self._queue: list[_Pending] = []
        self._last_state_seq = 0
        #: Called with the Changes of every remote commit applied (kernel invalidation).
        self.on_change: Callable[[Changes], None] | None = None
        self._missing_seen: set[str] = set()
        #: Closed files whose last upload failed, with who wrote them.
        self._retry: dict[int, Caller] = {}
        # Agent state: xattr read-modify-write is serialised in this
        # mount; recent state changes feed STATE.md (see agentstate.py).
        self._xattr_lock = trio.Lock()
        self.recent = agentstate.RecentChanges()
        #: ids of this mount's rename intents in progress (agentfs/intents.py).
        self._renaming: set[str] = set()
        #: ids of rename intents whose commit this workspace applied (settled at once by a scan)
        self.committed_intents: set[str] = set()
        #: monotonic time before which every commit is known here (a pull that
        #: found nothing newer, or a commit that took the next number)
        self.caught_up_at = -1e9

        #: locks: called before every upload with (path, caller); raises
        #: Fenced when the caller's lease on path was taken over (set by the mount).
        self.fence: Callable[[str, Caller], Awaitable[None]] | None = None

        #: set by the mount; uploads then queue their commit without
        #: waiting for it (deferred group commit, agentfs/groupcommit.py).
        self.flusher: groupcommit.Flusher | None = None
        #: deferred records of the batch being written (not yet applied from it)
        self._inflight: list[Record] = []
        #: deletes of committed garbage (old keys of unlinks and renames),
        #: drained by the mount's collector after the syscall returned (agentfs/garbage.py)
        self.garbage = garbage.Garbage(self)
        #: files with a TTL open here, published for other mounts' pruners
        #: (agentfs/openmarks.py); its run() task belongs to the mount or client
        self.marks = openmarks.OpenMarks(store, name, mount_id or f"client-{uuid.uuid4().hex[:12]}", self._io)
        #: the --writeback queue (agentfs/writeback.py), set by the mount:
        #: closes then queue the upload on local disk instead of waiting for it.
        self.writeback: Any = None

    # -- plumbing -------------------------------------------------------------

    async def _io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)

    def key(self, path: str) -> str:
        """The natural key of a workspace path."""
        return f"{self.name}/{path}" if path else f"{self.name}/"

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnly("read-only mount")

    def _path(self, node: Node) -> str:
        path = self.ns.path_of(node)
        if path is None:
            raise NotFound("file was removed")
        return path

    def record(self, action: str, op: PutOp | DelOp | MoveOp, caller: Caller, **detail: Any) -> Record:
        return Record(action=action, op=op, agent=caller.agent or self.agent, pid=caller.pid,
                      uid=caller.uid, detail=detail)

    # -- loading and the journal ----------------------------------------------

    @classmethod
    async def load_new(cls, store: ObjectStore, name: str, *, create: bool = True, **kw: Any) -> Workspace:
        ws = cls(store, name, **kw)
        await ws.load(create=create)
        return ws

    async def load(self, *, create: bool = True, verify: bool = False) -> None:
        """Read the latest state and the commits after it; create the journal
        of a new workspace.  With ``verify`` (a mount), also list the natural
        keys and adopt at once every committed file whose object is another
        version (a writer that crashed between upload and commit), so no reader
        sees bytes that disagree with the size the journal gives."""
        state = await self._io(self.journal.latest_state)
        if state is not None:
            self.ns.load_state(state)
            self._last_state_seq = state.seq
        commits = await self._io(self.journal.commits_after, self.ns.seq)
        for c in commits:
            self._apply(c, notify=False)
        new = self.ns.seq == 0
        if new:
            if not create:
                raise NotFound("no such workspace", path=self.name)
            if not self.read_only:
                caller = Caller.current(self.agent)
                await self.commit([self.record("create-workspace", PutOp(path="", entry=self.ns.root.entry), caller)])
        if verify and not self.read_only:
            # Also for a new workspace: objects another tool put under its
            # prefix before it had a journal are adopted at once.
            await self.scan(changed_now=True)
        log.info("workspace %s loaded at seq %d (%d commits replayed)", self.name, self.ns.seq, len(commits))

    def _apply(self, commit: Commit, *, notify: bool) -> Changes:
        ch = Changes()
        self.ns.seq = commit.seq  # before apply: it stamps versions and checkpoints with it
        for r in commit.records:
            ch.merge(self.ns.apply(r.op, r.time))
            if "intent" in r.detail:
                self.committed_intents.add(r.detail["intent"])
        self.recent.feed(commit, local=commit.mount == self.mount_id)  # agent state
        if self._inflight or self._queue:
            # the local view is the journal plus our deferred records,
            # which follow every commit applied so far in the journal order.
            groupcommit.apply_locally(self, [*self._inflight,
                                             *(r for p in self._queue if p.deferred for r in p.records)])
        if notify and self.on_change is not None:
            self.on_change(ch)
        return ch

    async def pull(self) -> int:
        """Apply commits other mounts made since our position; returns how many."""
        async with self._commit_lock:
            return await self._pull_locked()

    async def _pull_locked(self) -> int:
        # Callers hold _commit_lock: the position only moves under it.
        n = 0
        started = time.monotonic()
        while True:
            try:
                c = await self._io(self.journal.fetch, self.ns.seq + 1)
            except CorruptRecord as e:
                log.error("workspace %s: %s; stopping the tail here", self.name, e)
                return n
            if c is None:
                self._caught_up(started)
                return n
            self._apply(c, notify=True)
            n += 1

    async def commit(self, records: list[Record]) -> None:
        """Append records to the journal (group commit) and apply them here.

        Concurrent callers are batched into one journal object.  A lost race
        for the next sequence number is resolved by applying the winner's
        commit and retrying at the next number.
        """
        self._writable()
        me = _Pending(records)
        self._queue.append(me)
        async with self._commit_lock:
            if not me.done:
                batch, self._queue = self._queue, []
                recs = [r for p in batch for r in p.records]
                self._inflight = [r for p in batch if p.deferred for r in p.records]
                try:
                    if recs:
                        await self._write_batch(recs)
                except BaseException as e:
                    self._inflight = []
                    # deferred records have no waiter to tell; they go
                    # back to the head of the queue (order kept) for the next batch.
                    self._queue[:0] = [p for p in batch if p.deferred]
                    for p in batch:
                        if not p.deferred:
                            p.done, p.error = True, e
                    raise
                for p in batch:
                    p.done = True
                if recs:
                    await self._maybe_compact()
        if me.error is not None:
            raise me.error

    # -- deferred group commit (agentfs/groupcommit.py) ---------------

    def commit_deferred(self, records: list[Record]) -> None:
        """Queue records for the next group commit without waiting for it; they
        show in the local namespace at once.  Needs a running :attr:`flusher`."""
        assert self.flusher is not None
        self._writable()
        groupcommit.apply_locally(self, records)
        self._queue.append(_Pending(records, deferred=True))
        self.flusher.notify(self.deferred_pending)

    async def _commit_meta(self, records: list[Record]) -> None:
        """with --writeback, metadata records (mkdir, symlink, setattr)
        go through the crash-safe queue into the next group commit; otherwise
        they are committed now."""
        if self.writeback is not None and self.flusher is not None:
            await self.writeback.defer_meta(self, records)
        else:
            await self.commit(records)

    @property
    def deferred_pending(self) -> int:
        """Records queued by deferred commits and not yet written."""
        return sum(len(p.records) for p in self._queue if p.deferred)

    async def flush_deferred(self) -> None:
        """Write every deferred record now (returns when they are in the journal)."""
        if self.deferred_pending:
            await self.commit([])

    def _caught_up(self, since: float) -> None:
        """Every commit made before monotonic time ``since`` has been applied."""
        self.caught_up_at = max(self.caught_up_at, since)

    def _still_true(self, r: Record) -> bool:
        """An adoption record (``external-*``) describes what its author saw
        in the store against the version its journal had (``detail.was``); a
        commit that landed before it (another mount's deferred record of that
        very upload, say) makes it stale, and it is dropped, never applied on
        top of newer records."""
        if not r.action.startswith("external-") or "was" not in r.detail:
            return True
        path = getattr(r.op, "path", None)
        node = self.ns.resolve(path) if path is not None else None
        now = node.entry.etag if node is not None and node.entry.kind == "f" else None
        return now == r.detail["was"]

    async def _write_batch(self, records: list[Record]) -> None:
        while True:
            records = [r for r in records if self._still_true(r)]
            if not records:
                return
            seq = self.ns.seq + 1
            c = Commit(seq=seq, mount=self.mount_id, host=HOSTNAME, records=records)
            started = time.monotonic()
            if await self._io(self.journal.append, c):
                # Taking seq means no commit before it was unknown to us (this
                # spares the checkpoint fence a GET, see checkpoints.fence).
                self._caught_up(started)
                self._inflight = []  # applied from the commit now
                self._apply(c, notify=False)
                break
            # The number is taken: by another mount, or by this very commit when
            # a retried request had in fact succeeded.
            theirs = await self._io(self.journal.fetch, seq)
            if theirs is not None and theirs.id == c.id:
                self._inflight = []
                self._apply(c, notify=False)
                break
            await self._pull_locked()

    async def _maybe_compact(self) -> None:
        # never while deferred records are applied locally but not
        # committed (the snapshot would contain them); the next batch retries.
        if self.ns.seq - self._last_state_seq >= COMPACT_EVERY and not any(p.deferred for p in self._queue):
            await self.compact()

    async def compact(self) -> None:
        """Write a state snapshot at the current position."""
        state = self.ns.to_state()
        await self._io(self.journal.write_state, state)
        self._last_state_seq = state.seq
        log.info("workspace %s: state snapshot at seq %d", self.name, state.seq)

    # -- reading the tree -----------------------------------------------------

    def resolve(self, path: str) -> Node:
        """The node at a workspace path (``""`` or ``"/"`` is the root)."""
        path = path.strip("/")
        node = self.ns.root
        for part in path.split("/") if path else []:
            node = self.lookup(node, part)
        return node

    def attr(self, node: Node) -> Attr:
        e = node.entry
        size, mtime = e.size, e.mtime_ns
        if e.kind == "l":
            size = len((e.target or "").encode())
        of = self.open_files.get(node.ino)
        if of is not None and of.fd >= 0:
            size, mtime = of.size, of.mtime_ns
        nlink = 1
        if node.children is not None:
            nlink = 2 + sum(1 for c in node.children.values() if c.children is not None)
        elif not node.attached:
            nlink = 0
        node.told_size = size
        return Attr(node.ino, e.kind, e.mode, nlink, e.uid, e.gid, size, mtime, max(e.ctime_ns, mtime),
                    e.atime_ns if e.atime_ns is not None else mtime)

    # -- creating -------------------------------------------------------------

    def _new_entry(self, kind: str, mode: int, caller: Caller, **kw: Any) -> Entry:
        now = time.time_ns()
        return Entry(kind=kind, mode=mode & 0o7777, uid=caller.uid, gid=caller.gid,
                     mtime_ns=now, ctime_ns=now, **kw)

    def _check_new(self, parent: Node, name: str) -> None:
        self._writable()
        check_name(name)
        if parent.children is None:
            raise NotADirectory()
        if not parent.attached:
            raise NotFound("directory was removed")
        if name in parent.children:
            raise AlreadyExists(path=name)

    async def _touch_dir(self, parent: Node, caller: Caller) -> list[Record]:
        """Records that bump a directory's mtime (after a change of its entries)."""
        path = self.ns.path_of(parent)
        if path is None:
            return []
        now = time.time_ns()
        entry = parent.entry.model_copy(update={"mtime_ns": now, "ctime_ns": now})
        return [self.record("touch-dir", PutOp(path=path, entry=entry), caller)]

    async def mkdir(self, parent: Node, name: str, mode: int, caller: Caller) -> Node:
        async with self.ns_lock.shared():
            self._check_new(parent, name)
            path = join(self._path(parent), name)
            entry = self._new_entry("d", mode, caller)
            await self._commit_meta([self.record("mkdir", PutOp(path=path, entry=entry), caller),
                               *await self._touch_dir(parent, caller)])
            return self.lookup(parent, name)

    async def symlink(self, parent: Node, name: str, target: str, caller: Caller) -> Node:
        async with self.ns_lock.shared():
            self._check_new(parent, name)
            if len(target.encode("utf-8", "surrogateescape")) > 4095:
                raise NameTooLong("symlink target too long")
            path = join(self._path(parent), name)
            entry = self._new_entry("l", 0o777, caller, target=target)
            await self._commit_meta([self.record("symlink", PutOp(path=path, entry=entry), caller),
                               *await self._touch_dir(parent, caller)])
            return self.lookup(parent, name)

    async def create(self, parent: Node, name: str, mode: int, caller: Caller) -> tuple[Node, OpenFile]:
        """A new empty file, open for writing; it reaches the store on flush."""
        self._check_new(parent, name)
        node = self.ns.add_pending(parent, name, self._new_entry("f", mode, caller))
        of = self._open_file(node)
        self._make_local(of, b"")
        of.dirty = of.only_trunc = True
        of.handles += 1
        node.opens += 1
        return node, of

    # -- open files -----------------------------------------------------------

    def _open_file(self, node: Node) -> OpenFile:
        of = self.open_files.get(node.ino)
        if of is None:
            of = OpenFile(node=node, size=node.entry.size, mtime_ns=node.entry.mtime_ns,
                          base_etag=node.entry.etag, last_path=self.ns.path_of(node))
            self.open_files[node.ino] = of
        return of

    def _make_local(self, of: OpenFile, initial: bytes | None, path: Path | None = None) -> None:
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
            self._writable()
        if not node.attached and node.ino not in self.open_files:
            # The kernel still knows a name that left the tree (another mount
            # removed it, or its new file lost a race): ESTALE makes it look
            # the name up again.
            raise Stale("the file was removed; look it up again")
        of = self._open_file(node)
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
                self._make_local(of, b"")
                return
            if e.data_key:  # checkpoints: bytes not yet at the natural key
                local = await checkpoints.fetch_version(self, self._path(of.node), e)
                if of.fd < 0:
                    self._make_local(of, None, local)
                    of.size = e.size
                return
            key = self.key(self._path(of.node))
            bf = self.cache.blockfile(key, e.etag, e.size)
            if await self._pinned(of.node, key, self.cache.fill(bf, self._fetcher(key, e.etag))) is not _RETRY:
                if of.fd >= 0:  # another task won the race while we fetched
                    return
                # base_etag stays the version seen at open: if the file changed
                # since, the upload fails its condition and becomes a conflict copy.
                self._make_local(of, None, self.cache.take(bf))
                of.size = e.size
                return
        raise Stale("the file keeps changing in the store", path=self.ns.path_of(of.node))

    def _fetcher(self, key: str, etag: str) -> Callable[[int, int], Any]:
        """Ranged GETs pinned to the committed version ``etag``."""
        async def fetch(start: int, end: int) -> bytes:
            data = await self._io(self.store.get, key, start, end, if_match=etag)
            if len(data) != end - start:
                raise PreconditionFailed("object is shorter than its committed size", path=key)
            return data
        return fetch

    async def _pinned(self, node: Node, key: str, work: Any, *, follow_changes: bool = True) -> Any:
        """Run a fetch pinned to the node's committed version.

        Returns the result, or ``_RETRY`` after the object turned out to be
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
                    return _RETRY  # renamed or unlinked here meanwhile: read from the new place
                raise Stale("the object vanished from the store", path=key) from None
            if not isinstance(err, PreconditionFailed):
                raise err from None
        old = node.entry.etag
        await self._refresh_version(node, key)
        if node.entry.etag != old and not follow_changes:
            raise Stale("the file changed in the store; reopen it", path=key)
        return _RETRY

    async def _refresh_version(self, node: Node, key: str) -> None:
        """The object at ``key`` is not the committed version (see
        :func:`agentfs.adoption.refresh_version`)."""
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
                return await checkpoints.read_version(self, path, e, off, size)
            key = self.key(path)
            bf = self.cache.blockfile(key, e.etag, e.size)
            data = await self._pinned(node, key, self.cache.read(bf, off, size, self._fetcher(key, e.etag)),
                                      follow_changes=follow_changes)
            if data is not _RETRY:
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
        self._writable()
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
        self._writable()
        if size < 0:
            raise InvalidArgument("negative size")
        if of.fd < 0 and size == 0:
            self._make_local(of, b"")
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
            await self._upload(of, caller)
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
                await self._upload(of, caller)
            except (Fenced, ConflictError):
                pass  # the bytes are already kept as a conflict copy (the close was told)
            except Exception as e:
                log.warning("workspace %s: upload of %s failed (%s); kept for retry",
                            self.name, self.ns.path_of(of.node), e)
                self._retry[of.node.ino] = caller
                return
        self._forget_open(of)

    def _forget_open(self, of: OpenFile) -> None:
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

    async def _upload(self, of: OpenFile, caller: Caller) -> None:
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
                    await checkpoints.preserve(self, path, node.entry)
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
            info = await self._io(self.store.put, key, data, **cond)
            return info, sha
        local = str(of.local)
        sha = await trio.to_thread.run_sync(_sha256_file, local, size)
        info = await self._io(self.store.put_file, key, local, **cond)
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
            await self._upload(of, caller)  # durable, also with --writeback
        await self.flush_deferred()  # fsync waits for the journal record too
        self._raise_if_diverted(of)

    # -- changing attributes ----------------------------------------------------

    async def setattr(self, node: Node, caller: Caller, *, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None, size: int | None = None,
                      mtime_ns: int | None = None, atime_ns: int | None = None,
                      of: OpenFile | None = None, by_handle: bool = False) -> None:
        self._writable()
        if size is not None:
            if node.entry.kind == "d":
                raise IsADirectory()
            # An open file whose last handle is being released (its upload runs
            # in the background) is held again, so the release cannot close it
            # under this truncation.
            own = of is None or of.handles == 0
            if own:
                of = await self.open(node, write=True, truncate=False, append=False, caller=caller)
            assert of is not None
            try:
                await self.truncate(of, size)
                if own or not by_handle:
                    await self.publish(of, caller)  # truncate(path) is durable on return, empty too
            finally:
                if own:
                    await self.release(of, caller)
        upd: dict[str, Any] = {}
        if mode is not None:
            upd["mode"] = mode & 0o7777
        if uid is not None:
            upd["uid"] = uid
        if gid is not None:
            upd["gid"] = gid
        if mtime_ns is not None:
            upd["mtime_ns"] = mtime_ns
            o = self.open_files.get(node.ino)
            if o is not None:
                o.mtime_ns = mtime_ns
        if atime_ns is not None:
            upd["atime_ns"] = atime_ns
        if not upd:
            return
        upd["ctime_ns"] = time.time_ns()
        await self._update_entry(node, upd, "setattr", caller)

    async def _update_entry(self, node: Node, upd: dict[str, Any], action: str, caller: Caller,
                            **detail: Any) -> None:
        async with self.ns_lock.shared():
            new = node.entry.model_copy(update=upd)
            if node.pending:
                node.entry = new  # committed with the data on first flush
                if self.writeback is not None:
                    self.writeback.entry_changed(self, node)  # its queue record follows
                return
            path = self._path(node)
            records = [self.record(action, PutOp(path=path, entry=new), caller, **detail)]
            if action == "setattr" and self.writeback is None and groupcommit.rides_along(self, node, path):
                self.commit_deferred(records)  # as durable as the record it follows
            elif action == "setattr":
                await self._commit_meta(records)  # deferred with --writeback
            else:
                await self.commit(records)
            if self.writeback is not None:
                self.writeback.entry_changed(self, node)  # a queued file's record follows

    # -- xattrs -------------------------------------------------------------------

    @staticmethod
    def _check_xattr_name(name: str) -> None:
        if not name.startswith("user."):
            raise NotSupported("only user.* extended attributes are supported")
        if len(name.encode()) > MAX_XATTR_NAME or name == "user.":
            raise NameTooLong("xattr name too long") if name != "user." else InvalidArgument("empty xattr name")

    async def setxattr(self, node: Node, name: str, value: bytes, caller: Caller) -> None:
        self._writable()
        self._check_xattr_name(name)
        if len(value) > MAX_XATTR_VALUE:
            raise TooBig("xattr value larger than 64 KiB")
        async with self._xattr_lock:
            # Agent state: typed user.agentfs.* names are validated,
            # stamped and journaled as "state" old -> new (agentstate.py).
            change = agentstate.prepare_set(node, self.ns.root.entry, name, value, caller,
                                            path=self.ns.path_of(node) or "", default_agent=self.agent)
            if change is not None:
                of = self.open_files.get(node.ino)
                if node.pending and of is not None and of.dirty:
                    # A new file reaches the store first (as for a rename), so
                    # the state change is a record of its own.
                    await self._upload(of, caller)
                await self._update_entry(node, {"xattrs": change.xattrs, "ctime_ns": time.time_ns()},
                                         change.action, caller, **change.detail)
                return
            xattrs = {**node.entry.xattrs, name: encode_xattr(value)}
            await self._update_entry(node, {"xattrs": xattrs, "ctime_ns": time.time_ns()}, "setxattr",
                                     caller, name=name, size=len(value))

    async def removexattr(self, node: Node, name: str, caller: Caller) -> None:
        self._writable()
        async with self._xattr_lock:
            if name not in node.entry.xattrs:
                raise NoAttribute(path=name)
            # Agent state: see setxattr.
            change = agentstate.prepare_remove(node, name, caller, path=self.ns.path_of(node) or "",
                                               default_agent=self.agent)
            if change is not None:
                await self._update_entry(node, {"xattrs": change.xattrs, "ctime_ns": time.time_ns()},
                                         change.action, caller, **change.detail)
                return
            xattrs = {k: v for k, v in node.entry.xattrs.items() if k != name}
            await self._update_entry(node, {"xattrs": xattrs, "ctime_ns": time.time_ns()}, "removexattr",
                                     caller, name=name)

    # -- removing -------------------------------------------------------------------

    async def unlink(self, parent: Node, name: str, caller: Caller) -> None:
        self._writable()
        async with self.ns_lock.exclusive():
            node = self.lookup(parent, name)
            if node.children is not None:
                raise IsADirectory()
            of = self.open_files.get(node.ino)
            if of is not None:
                # Open elsewhere: keep a local copy so the fd stays readable.
                await self._ensure_local(of)
                of.unlinked = True
            if node.pending:
                self.ns.detach(node)
                if of is not None and self.writeback is not None:
                    self.writeback.discard(self, of)  # never uploaded, never will be
                return
            path = self._path(node)
            await checkpoints.preserve(self, path, node.entry)  # checkpoints: copy-on-write
            await self.commit([self.record("delete", DelOp(path=path), caller),
                               *await self._touch_dir(parent, caller)])
            if of is not None and self.writeback is not None:
                self.writeback.discard(self, of)  # its queued bytes are garbage now
            if node.entry.kind == "f" and node.entry.etag is not None:
                await self.garbage.add([(self.key(path), node.entry.etag)])

    async def rmdir(self, parent: Node, name: str, caller: Caller) -> None:
        self._writable()
        async with self.ns_lock.exclusive():
            node = self.lookup(parent, name)
            if node.children is None:
                raise NotADirectory()
            if node.children:
                raise NotEmpty(path=name)
            path = self._path(node)
            await self.commit([self.record("rmdir", DelOp(path=path), caller),
                               *await self._touch_dir(parent, caller)])

    async def _delete_keys(self, keys: Iterable[tuple[str, str | None]]) -> None:
        """Delete garbage keys, each only at the version that became garbage:
        a key another writer has rewritten since is kept (its commit follows)."""
        async def one(key: str, etag: str | None) -> None:
            try:
                await self._io(self.store.delete, key, if_match=etag)
            except PreconditionFailed:
                log.info("workspace %s: %s was rewritten meanwhile; not deleted", self.name, key)

        async with trio.open_nursery() as nursery:
            for k, etag in keys:
                nursery.start_soon(one, k, etag)

    # -- rename ---------------------------------------------------------------------

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                     caller: Caller, *, noreplace: bool = False) -> None:
        self._writable()
        check_name(new_name)
        if self.writeback is not None and await self.writeback.rename_local(
                self, old_parent, old_name, new_parent, new_name, noreplace=noreplace):
            return  # --writeback: a file not uploaded yet moves locally
        of = self.open_files.get(self.lookup(old_parent, old_name).ino)
        if of is not None and of.dirty:
            # A file never uploaded (or changed since) reaches the store first,
            # so the rename moves committed bytes.
            await self._upload(of, caller)
        async with self.ns_lock.exclusive():
            src = self.lookup(old_parent, old_name)
            if new_parent.children is None:
                raise NotADirectory()
            dst = new_parent.children.get(new_name)
            if dst is src:
                return
            if noreplace and dst is not None:
                raise AlreadyExists(path=new_name)
            # Moving a directory into its own subtree.
            n: Node | None = new_parent
            while n is not None:
                if n is src:
                    raise InvalidArgument("cannot move a directory into itself")
                n = n.parent
            if dst is not None:
                if src.children is not None and dst.children is None:
                    raise NotADirectory()
                if src.children is None and dst.children is not None:
                    raise IsADirectory()
                if dst.children:
                    raise NotEmpty(path=new_name)
            src_path = self._path(src)
            dst_path = join(self._path(new_parent), new_name)
            if dst is not None and dst.ino in self.open_files:
                # The replaced file stays readable through its open fds.
                await self._ensure_local(self.open_files[dst.ino])
                self.open_files[dst.ino].unlinked = True
            # checkpoints: copy-on-write of what leaves its natural key
            await checkpoints.preserve_tree(self, src_path, src)
            if dst is not None:
                await checkpoints.preserve(self, dst_path, dst.entry)
            # 1. copy every committed file to its new natural key
            moves: list[tuple[str, Node]] = [("", src), *self.ns.walk(src)]
            files = [(rel, n) for rel, n in moves
                     if n.entry.kind == "f" and n.entry.etag is not None and not n.pending]
            etags: dict[str, str] = {}

            async def copy_one(rel: str, n: Node) -> None:
                old_key = n.entry.data_key or self.key(join(src_path, rel) if rel else src_path)
                new_key = self.key(join(dst_path, rel) if rel else dst_path)
                await self.garbage.claim(new_key)  # a pending delete of new_key runs first
                try:
                    # the committed size spares S3 a HEAD of the source
                    info = await self._io(self.store.copy, old_key, new_key, if_match=n.entry.etag,
                                          size=n.entry.size)
                except PreconditionFailed:
                    raise Stale("the file changed in the store during the rename", path=old_key) from None
                etags[rel] = info.etag

            # an intent names the new keys first, so copies of a rename
            # killed before its commit are removed, not adopted (agentfs/intents.py)
            intent = await self._io(intents.begin, self.journal, seq=self.ns.seq, src=src_path,
                                    dst=dst_path, mount=self.mount_id,
                                    keys=[self.key(join(dst_path, rel) if rel else dst_path)
                                          for rel, _ in files]) if files else None
            if intent is not None:
                self._renaming.add(intent.id)
            try:
                async with trio.open_nursery() as nursery:
                    for rel, n in files:
                        nursery.start_soon(copy_one, rel, n)
                old_etags = {rel: n.entry.etag for rel, n in files}
                # 2. one commit: the rename is atomic as seen through the mount
                tag = {"intent": intent.id} if intent is not None else {}
                records = [self.record("rename", MoveOp(src=src_path, dst=dst_path, etags=etags), caller,
                                       **tag)]
                records += await self._touch_dir(old_parent, caller)
                if new_parent is not old_parent:
                    records += await self._touch_dir(new_parent, caller)
                await self.commit(records)
            except BaseException:
                # the intent stays in the store; a later scan settles it
                if intent is not None:
                    self._renaming.discard(intent.id)
                raise
            # Open working copies now derive from the copied versions.
            for rel, n in files:
                of = self.open_files.get(n.ino)
                if of is not None and of.base_etag == old_etags[rel]:
                    of.base_etag = etags.get(rel)
            # 3. the old keys are garbage now (and the replaced file's, unless a copy took it)
            old_keys = [(self.key(join(src_path, rel) if rel else src_path), old_etags[rel])
                        for rel, _ in files]
            if dst is not None and dst.entry.kind == "f" and dst.entry.etag is not None and "" not in etags:
                old_keys.append((self.key(dst_path), dst.entry.etag))
            # deleted after the syscall returns (agentfs/garbage.py); a crash
            # first leaves tombstoned leftovers and a committed intent, which scans settle.
            if intent is not None:
                self._renaming.discard(intent.id)
            await self.garbage.add(old_keys, intent)

    # -- whole-workspace operations ---------------------------------------------------

    async def sync(self, caller: Caller) -> None:
        """Flush every dirty file, including closed ones whose upload failed."""
        try:
            for of in list(self.open_files.values()):
                if of.dirty:
                    try:
                        await self._upload(of, self._retry.get(of.node.ino, caller))
                    except (Fenced, ConflictError):
                        pass  # already kept as a conflict copy; go on with the rest
                if of.handles <= 0 and not of.dirty:
                    self._forget_open(of)
        finally:
            with trio.CancelScope(shield=True):
                await self.flush_deferred()  # closed files' records reach the journal
                if len(self.garbage):
                    try:  # no leftovers after an unmount (else the scan removes them)
                        await self.garbage.drain()
                    except Exception as e:  # nurseries wrap store errors
                        log.warning("workspace %s: deleting garbage: %s", self.name, e)

    @property
    def pending_retries(self) -> int:
        return len(self._retry)

    async def scan(self, *, now: float | None = None, changed_now: bool = False) -> int:
        """Reconcile the natural keys with the journal (see :func:`agentfs.adoption.scan`)."""
        return await adoption.scan(self, now=now, changed_now=changed_now)


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

