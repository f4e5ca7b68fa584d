"""The base of a workspace: its state, the journal it commits to, and the tree.

Concurrency: all methods run in one trio thread; store I/O runs in worker
threads under the capacity limiter (:meth:`WorkspaceBase.io`).
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Self

import trio

from agentfs import agentstate, openmarks
from agentfs.cache import Cache
from agentfs.entryreads import EntryReads
from agentfs.errors import (
    AlreadyExists,
    CorruptRecord,
    NotADirectory,
    NotFound,
    ReadOnly,
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
)
from agentfs.names import check_name, check_workspace_name
from agentfs.namespace import Changes, InodeTable, Namespace, Node
from agentfs.store.base import ObjectStore
from agentfs.workspace import garbage, groupcommit
from agentfs.workspace.types import (
    Attr,
    OpenFile,
    Pending,
    RWLock,
)

__all__ = ['WorkspaceBase']

log = logging.getLogger(__name__)

class WorkspaceBase(EntryReads):
    """The state of one workspace and its journal: loading, pulling, committing,
    resolving paths.  The file and tree operations build on it
    (:mod:`agentfs.workspace.files`, :mod:`agentfs.workspace.tree`)."""

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
        self.commit_queue: list[Pending] = []
        self._last_state_seq = 0
        #: Called with the Changes of every remote commit applied (kernel invalidation).
        self.on_change: Callable[[Changes], None] | None = None
        self.missing_seen: set[str] = set()
        #: Closed files whose last upload failed, with who wrote them.
        self._retry: dict[int, Caller] = {}
        # Agent state: xattr read-modify-write is serialised in this
        # mount; recent state changes feed STATE.md (see agentstate.py).
        self._xattr_lock = trio.Lock()
        self.recent = agentstate.RecentChanges()
        #: ids of this mount's rename intents in progress (agentfs/workspace/intents.py).
        self.renaming: set[str] = set()
        #: ids of rename intents whose commit this workspace applied (settled at once by a scan)
        self.committed_intents: set[str] = set()
        #: monotonic time before which every commit is known here (a pull that
        #: found nothing newer, or a commit that took the next number)
        self.caught_up_at = -1e9

        #: locks: called before every upload with (path, caller); raises
        #: Fenced when the caller's lease on path was taken over (set by the mount).
        self.fence: Callable[[str, Caller], Awaitable[None]] | None = None

        #: set by the mount; uploads then queue their commit without
        #: waiting for it (deferred group commit, agentfs/workspace/groupcommit.py).
        self.flusher: groupcommit.Flusher | None = None
        #: deferred records of the batch being written (not yet applied from it)
        self._inflight: list[Record] = []
        #: deletes of committed garbage (old keys of unlinks and renames),
        #: drained by the mount's collector after the syscall returned (agentfs/workspace/garbage.py)
        self.garbage = garbage.Garbage(self)
        #: files with a TTL open here, published for other mounts' pruners
        #: (agentfs/openmarks.py); its run() task belongs to the mount or client
        self.marks = openmarks.OpenMarks(store, name, mount_id or f"client-{uuid.uuid4().hex[:12]}", self.io)
        #: the --writeback queue (agentfs/writeback.py), set by the mount:
        #: closes then queue the upload on local disk instead of waiting for it.
        self.writeback: Any = None

    # -- plumbing -------------------------------------------------------------

    async def io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)

    def key(self, path: str) -> str:
        """The natural key of a workspace path."""
        return f"{self.name}/{path}" if path else f"{self.name}/"

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("read-only mount")

    def path_of(self, node: Node) -> str:
        path = self.ns.path_of(node)
        if path is None:
            raise NotFound("file was removed")
        return path

    def record(self, action: str, op: PutOp | DelOp | MoveOp, caller: Caller, **detail: Any) -> Record:
        return Record(action=action, op=op, agent=caller.agent or self.agent, pid=caller.pid,
                      uid=caller.uid, detail=detail)

    # -- loading and the journal ----------------------------------------------

    @classmethod
    async def load_new(cls, store: ObjectStore, name: str, *, create: bool = True, **kw: Any) -> Self:
        ws = cls(store, name, **kw)
        await ws.load(create=create)
        return ws

    async def load(self, *, create: bool = True, verify: bool = False) -> None:
        """Read the latest state and the commits after it; create the journal
        of a new workspace.  With ``verify`` (a mount), also list the natural
        keys and adopt at once every committed file whose object is another
        version (a writer that crashed between upload and commit), so no reader
        sees bytes that disagree with the size the journal gives."""
        state = await self.io(self.journal.latest_state)
        if state is not None:
            self.ns.load_state(state)
            self._last_state_seq = state.seq
        commits = await self.io(self.journal.commits_after, self.ns.seq)
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
        if self._inflight or self.commit_queue:
            # the local view is the journal plus our deferred records,
            # which follow every commit applied so far in the journal order.
            groupcommit.apply_locally(self, [*self._inflight,
                                             *(r for p in self.commit_queue if p.deferred for r in p.records)])
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
                c = await self.io(self.journal.fetch, self.ns.seq + 1)
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
        self.check_writable()
        me = Pending(records)
        self.commit_queue.append(me)
        async with self._commit_lock:
            if not me.done:
                batch, self.commit_queue = self.commit_queue, []
                recs = [r for p in batch for r in p.records]
                self._inflight = [r for p in batch if p.deferred for r in p.records]
                try:
                    if recs:
                        await self._write_batch(recs)
                except BaseException as e:
                    self._inflight = []
                    # deferred records have no waiter to tell; they go
                    # back to the head of the queue (order kept) for the next batch.
                    self.commit_queue[:0] = [p for p in batch if p.deferred]
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

    # -- deferred group commit (agentfs/workspace/groupcommit.py) ---------------

    def commit_deferred(self, records: list[Record]) -> None:
        """Queue records for the next group commit without waiting for it; they
        show in the local namespace at once.  Needs a running :attr:`flusher`."""
        assert self.flusher is not None
        self.check_writable()
        groupcommit.apply_locally(self, records)
        self.commit_queue.append(Pending(records, deferred=True))
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
        return sum(len(p.records) for p in self.commit_queue if p.deferred)

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
            if await self.io(self.journal.append, c):
                # Taking seq means no commit before it was unknown to us (this
                # spares the checkpoint fence a GET, see cow.fence).
                self._caught_up(started)
                self._inflight = []  # applied from the commit now
                self._apply(c, notify=False)
                break
            # The number is taken: by another mount, or by this very commit when
            # a retried request had in fact succeeded.
            theirs = await self.io(self.journal.fetch, seq)
            if theirs is not None and theirs.id == c.id:
                self._inflight = []
                self._apply(c, notify=False)
                break
            await self._pull_locked()

    async def _maybe_compact(self) -> None:
        # never while deferred records are applied locally but not
        # committed (the snapshot would contain them); the next batch retries.
        if self.ns.seq - self._last_state_seq >= COMPACT_EVERY and not any(p.deferred for p in self.commit_queue):
            await self.compact()

    async def compact(self) -> None:
        """Write a state snapshot at the current position."""
        state = self.ns.to_state()
        await self.io(self.journal.write_state, state)
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
        self.check_writable()
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
