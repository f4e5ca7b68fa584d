"""The inode-level filesystem of one mount: workspaces under one root.

This is the core the FUSE adapter calls, and it is tested without FUSE.  It
routes inode numbers to workspaces, keeps open file and directory handles,
runs the background work of a mount (journal tail, adoption scan, kernel
cache invalidation) and answers the top level: in a whole-store mount every
top-level directory is a workspace (``mkdir`` creates one); with
``workspace=NAME`` the root *is* that workspace.

Error contract: :class:`agentfs.errors.AgentFSError` subclasses, each with
its errno.  Concurrency: one trio thread; see ``Workspace``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import trio

from agentfs import agentstate, checkpoints, localmounts, openmarks, writeback
from agentfs.cache import Cache
from agentfs.errors import (
    AgentFSError,
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NoAttribute,
    NotFound,
    NotPermitted,
    NotSupported,
    ReadOnly,
)
from agentfs.identity import Caller
from agentfs.journal import META, conditional_create_enforced
from agentfs.locks import (
    DEFAULT_TTL,
    LOCK_XATTR,
    KernelLocks,
    LeaseManager,
)
from agentfs.namespace import ROOT_INODE, Changes, InodeTable, Node
from agentfs.store.base import ObjectStore
from agentfs.vfslocks import LockRequests
from agentfs.workspace import Attr, OpenFile, Workspace, check_workspace_name, garbage, groupcommit

__all__ = ["CONTROL_PID", "CONTROL_SYNC", "FileSystem", "Notifier"]

log = logging.getLogger(__name__)

#: Control xattrs on the mount root (the CLI's channel to a live mount).
CONTROL_PID = "user.agentfs.mount.pid"
CONTROL_SYNC = "user.agentfs.mount.sync"
CONTROL_STATUS = "user.agentfs.mount.status"

RETRY_INTERVAL = 5.0
TAIL_MIN = 0.2
TAIL_MAX = 1.0
#: With no request from the kernel for this long the mount is idle: the
#: journal tail backs off towards TAIL_IDLE_MAX and the scanner pauses, so an
#: unused mount costs a few requests a minute instead of one a second.
IDLE_AFTER = 10.0
TAIL_IDLE_MAX = 30.0
#: The first request after an idle period waits this long at most for the
#: journal catch-up it triggers (so a store outage cannot stall it).
CATCH_UP_WAIT = 2.0


class Notifier:
    """Kernel cache invalidation; the FUSE layer supplies a real one."""

    def invalidate_inode(self, ino: int, attr_only: bool) -> None:
        pass

    def invalidate_entry(self, parent_ino: int, name: str) -> None:
        pass


@dataclass
class FileHandle:
    ws: Workspace
    of: OpenFile
    write: bool
    caller: Caller  # who opened it: flush/release carry no caller of their own


class FileSystem(LockRequests):
    """Every workspace of one store, as inodes."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        cache_dir: Path,
        workspace: str | None = None,
        agent: str = "",
        read_only: bool = False,
        scan_interval: float = 60.0,
        connections: int = 32,
        lease_ttl: float = DEFAULT_TTL,
        writeback_mode: bool = False,
        kernel_locks: bool = True,
    ) -> None:
        self.store = store
        self.single = workspace
        self.agent = agent or f"uid:{os.getuid()}"
        self.read_only = read_only
        self.scan_interval = scan_interval
        self.mount_id = uuid.uuid4().hex[:12]
        self.table = InodeTable()
        self.cache = Cache(cache_dir / self.mount_id)
        self.limiter = trio.CapacityLimiter(connections)
        self.workspaces: dict[str, Workspace] = {}
        self.known_names: set[str] = set()
        self.handles: dict[int, FileHandle] = {}
        self.dirs: dict[int, list[tuple[str, int]]] = {}
        self._fh = itertools.count(1)
        self.notifier: Notifier = Notifier()
        self._inval: list[tuple[str, int, str | bool]] = []
        self._inval_event = trio.Event()
        self._invalidating = False  # the invalidator is telling the kernel a batch
        #: the mount's nursery (run_background): last closes that still upload run there
        self._background: trio.Nursery | None = None
        self._releasing = 0
        self.root_mtime_ns = time.time_ns()
        self._loading: dict[str, trio.Event] = {}
        self._kept_etag: dict[int, str | None] = {}
        self._last_access = time.monotonic()
        self._requests = 0
        self._wake_tail = trio.Event()
        self._caught_up: trio.Event | None = None

        #: locks: leases this mount holds for its processes.
        self.leases = LeaseManager(store, agent=self.agent, mount_id=self.mount_id, ttl=lease_ttl,
                                   limiter=self.limiter)

        #: deferred group commit of closes (agentfs/workspace/groupcommit.py); set
        #: when the flusher task runs (run_background): without it, closes commit.
        self.flusher: groupcommit.Flusher | None = None
        #: deletes garbage keys in the background (agentfs/workspace/garbage.py)
        self.collector: garbage.Collector | None = None
        #: whether the store refuses a second conditional create (probed at start)
        self.cas = True
        self.leases.before_release = self._flush_deferred_of
        self.leases.after_acquire = self._caught_up_to
        #: flock/fcntl locks passed by the binding, across mounts on leases
        #: (None with --no-kernel-locks: the kernel keeps them to this mount)
        self.kernel_locks: KernelLocks | None = None
        if kernel_locks:
            self.kernel_locks = KernelLocks(store, agent=self.agent, mount_id=self.mount_id, ttl=lease_ttl,
                                            limiter=self.limiter, settle=self._settle_path,
                                            catch_up=self._caught_up_to)

        #: checkpoints: the virtual ``.snapshots`` directory of each workspace
        self._snapdirs: dict[str, checkpoints.SnapshotsDir] = {}

        #: --writeback: closes return once the file is in this on-disk queue
        self.writeback: writeback.Writeback | None = None
        if writeback_mode and not read_only:
            self.writeback = writeback.Writeback(
                cache_dir, store.url, mount_id=self.mount_id,
                busy=lambda: self._requests > 0 or time.monotonic() - self._last_access < writeback.QUIET)
            self.cache.dirty_dir = self.writeback.data_dir
            self.cache.dirty_prefix = f"{self.mount_id}-"

    # -- workspaces ------------------------------------------------------------

    async def start(self) -> None:
        """Load the mounted workspace (single mode) or list them (whole store)."""
        if not self.read_only:
            self.cas = await trio.to_thread.run_sync(conditional_create_enforced, self.store, self.mount_id,
                                                     limiter=self.limiter)
            if not self.cas:
                log.warning("%s does not enforce conditional creates (If-None-Match): two mounts that "
                            "commit to one workspace at once can overwrite each other's journal commits; "
                            "mount each workspace only once on this store (docs/SEMANTICS.md, "
                            "store requirements)", self.store.url)
        if self.single is not None:
            check_workspace_name(self.single)
            await self._load(self.single, create=not self.read_only, root_ino=ROOT_INODE)
        else:
            await self.refresh_names()
        if self.writeback is not None:
            await self.writeback.recover(self)  # a crashed mount's queue first

    async def refresh_names(self) -> None:
        names = await trio.to_thread.run_sync(self._list_names, limiter=self.limiter)
        self.known_names = names | set(self.workspaces)

    def _list_names(self) -> set[str]:
        names = set(self.store.list_dirs(f"{META}/")) | set(self.store.list_dirs(""))
        out = set()
        for n in names:
            try:
                check_workspace_name(n)
            except AgentFSError:
                continue
            out.add(n)
        return out

    async def _load(self, name: str, *, create: bool, root_ino: int | None = None) -> Workspace:
        ws = self.workspaces.get(name)
        if ws is not None:
            return ws
        ev = self._loading.get(name)
        if ev is not None:
            await ev.wait()
            return await self._load(name, create=create, root_ino=root_ino)
        self._loading[name] = ev = trio.Event()
        try:
            ws = Workspace(self.store, name, table=self.table, cache=self.cache, limiter=self.limiter,
                           agent=self.agent, mount_id=self.mount_id, read_only=self.read_only,
                           root_ino=root_ino)
            ws.ns.owner = ws
            await ws.load(create=create, verify=True)
            ws.on_change = self._on_change
            ws.fence = functools.partial(self._fence, name)  # locks
            ws.flusher = self.flusher  # closes do not wait for their journal record
            ws.garbage.collector = self.collector  # old keys deleted after the syscall
            ws.writeback = self.writeback  # --writeback queue (None: durable close)
            self.workspaces[name] = ws
            self.known_names.add(name)
            return ws
        finally:
            del self._loading[name]
            ev.set()

    async def _load_existing(self, name: str) -> Workspace:
        """A workspace the store has.  Objects another tool put under a top-level
        prefix without a journal make a workspace: its journal is created and the
        objects are adopted (on a read-only mount it raises NotFound)."""
        return await self._load(name, create=not self.read_only)

    def _ws(self, node: Node) -> Workspace:
        ws = node.ns.owner
        # checkpoints: nodes of .snapshots views are owned by read-only views
        # with the same interface (every mutation raises ReadOnly).
        assert isinstance(ws, (Workspace, checkpoints.View))
        return ws  # type: ignore[return-value]

    def _snapdir(self, ws: Workspace) -> checkpoints.SnapshotsDir:
        d = self._snapdirs.get(ws.name)
        if d is None:
            d = self._snapdirs[ws.name] = checkpoints.SnapshotsDir(ws, self.table)
        d.sync()
        return d

    def node(self, ino: int) -> Node:
        n = self.table.get(ino)
        if n is None:
            raise NotFound("stale inode")
        return n

    def _is_top(self, ino: int) -> bool:
        return self.single is None and ino == ROOT_INODE

    # -- attributes and lookup -------------------------------------------------------

    def root_attr(self) -> Attr:
        t = self.root_mtime_ns
        return Attr(ROOT_INODE, "d", 0o755, 2 + len(self.workspaces), os.getuid(), os.getgid(), 0, t, t, t)

    def getattr(self, ino: int) -> Attr:
        if self._is_top(ino):
            return self.root_attr()
        node = self.node(ino)
        return self._ws(node).attr(node)

    async def lookup(self, parent: int, name: str) -> Attr:
        if self._is_top(parent):
            if name not in self.workspaces:
                try:
                    check_workspace_name(name)
                except AgentFSError:
                    raise NotFound(path=name) from None
                if not await trio.to_thread.run_sync(self._ws_exists, name, limiter=self.limiter):
                    raise NotFound(path=name)
            ws = await self._load_existing(name)
            node = ws.ns.root
        else:
            pnode = self.node(parent)
            owner = pnode.ns.owner
            if isinstance(owner, Workspace) and pnode is owner.ns.root and name == checkpoints.SNAPSHOTS_DIR:
                node = self._snapdir(owner).node  # checkpoints: the virtual .snapshots directory
            else:
                if isinstance(owner, checkpoints.View):
                    await owner.prepare(pnode)
                node = self._ws(pnode).lookup(pnode, name)
                # a checkpoint view's root must show the workspace root's
                # attributes and xattrs as of the checkpoint, not a placeholder.
                view = node.ns.owner
                if isinstance(view, checkpoints.SnapshotView) and node is view.ns.root:
                    await view.prepare(node)
        node.lookups += 1
        return self._ws(node).attr(node)

    def _ws_exists(self, name: str) -> bool:
        return any(True for _ in self.store.list(f"{META}/{name}/")) or any(
            True for _ in self.store.list(f"{name}/"))

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            node = self.table.get(ino)
            if node is None:
                continue
            node.lookups -= n
            self.table.maybe_drop(node)

    # -- directories -------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        if self._is_top(ino):
            await self.refresh_names()
            entries = []
            for name in sorted(self.known_names):
                try:
                    ws = self.workspaces.get(name) or await self._load_existing(name)
                except NotFound:  # e.g. objects under the name on a read-only mount
                    continue
                entries.append((name, ws.ns.root.ino))
        else:
            node = self.node(ino)
            if isinstance(node.ns.owner, checkpoints.View):
                await node.ns.owner.prepare(node)
            entries = [(n, c.ino) for n, c in self._ws(node).listdir(node)]
        fh = next(self._fh)
        self.dirs[fh] = entries
        return fh

    def readdir(self, fh: int, start: int) -> list[tuple[str, Attr, int]]:
        """Entries from index ``start``: (name, attrs, next index)."""
        out = []
        for i, (name, ino) in enumerate(self.dirs[fh][start:], start):
            try:
                out.append((name, self.getattr(ino), i + 1))
            except NotFound:
                continue
        return out

    def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def mkdir(self, parent: int, name: str, mode: int, caller: Caller) -> Attr:
        if self._is_top(parent):
            check_workspace_name(name)
            if name in self.workspaces or await trio.to_thread.run_sync(self._ws_exists, name,
                                                                          limiter=self.limiter):
                raise AlreadyExists(path=name)
            if self.read_only:
                raise ReadOnly("read-only mount")
            ws = await self._load(name, create=True)
            self.root_mtime_ns = time.time_ns()
            node = ws.ns.root
            node.lookups += 1
            return ws.attr(node)
        pnode = self.node(parent)
        ws = self._ws(pnode)
        if isinstance(ws, checkpoints.SnapshotsDir):
            if self.writeback is not None:
                await self.writeback.drain()  # a checkpoint includes queued closes
            node = await ws.mkdir_checkpoint(name, caller)  # mkdir .snapshots/NAME
            view = node.ns.owner  # the view's root as of the checkpoint (see lookup)
            if isinstance(view, checkpoints.SnapshotView):
                await view.prepare(node)
        else:
            node = await ws.mkdir(pnode, name, mode, caller)
        node.lookups += 1
        return ws.attr(node)

    def _top_refuse(self, parent: int) -> None:
        if self._is_top(parent):
            raise NotPermitted("only workspace directories live at the top of the mount")

    async def rmdir(self, parent: int, name: str, caller: Caller) -> None:
        self._top_refuse(parent)
        pnode = self.node(parent)
        if isinstance(pnode.ns.owner, checkpoints.SnapshotsDir):
            await pnode.ns.owner.rmdir_checkpoint(name, caller)  # rmdir .snapshots/NAME
            return
        await self._ws(pnode).rmdir(pnode, name, caller)

    async def unlink(self, parent: int, name: str, caller: Caller) -> None:
        self._top_refuse(parent)
        pnode = self.node(parent)
        await self._ws(pnode).unlink(pnode, name, caller)

    async def symlink(self, parent: int, name: str, target: str, caller: Caller) -> Attr:
        self._top_refuse(parent)
        pnode = self.node(parent)
        ws = self._ws(pnode)
        node = await ws.symlink(pnode, name, target, caller)
        node.lookups += 1
        return ws.attr(node)

    def readlink(self, ino: int) -> str:
        node = self.node(ino)
        return self._ws(node).readlink(node)

    async def rename(self, p_old: int, old: str, p_new: int, new: str, flags: int, caller: Caller) -> None:
        self._top_refuse(p_old)
        self._top_refuse(p_new)
        if flags & ~1:  # only RENAME_NOREPLACE (1); RENAME_EXCHANGE is not supported
            raise InvalidArgument("unsupported rename flags")
        a, b = self.node(p_old), self.node(p_new)
        if isinstance(a.ns.owner, checkpoints.View) or isinstance(b.ns.owner, checkpoints.View):
            raise ReadOnly("checkpoints are read-only")
        ws = self._ws(a)
        if self._ws(b) is not ws:
            raise OSError(18, "cross-workspace rename")  # EXDEV: tools fall back to copy
        await ws.rename(a, old, b, new, caller, noreplace=bool(flags & 1))

    # -- files ---------------------------------------------------------------------------

    async def create(self, parent: int, name: str, mode: int, flags: int, caller: Caller) -> tuple[int, Attr]:
        self._top_refuse(parent)
        pnode = self.node(parent)
        ws = self._ws(pnode)
        node, of = await ws.create(pnode, name, mode, caller)
        node.lookups += 1
        fh = next(self._fh)
        self.handles[fh] = FileHandle(ws, of, True, caller)
        return fh, ws.attr(node)

    async def open(self, ino: int, flags: int, caller: Caller) -> tuple[int, bool]:
        """A file handle, and whether the kernel may keep its page cache."""
        if self._is_top(ino):
            raise IsADirectory()
        node = self.node(ino)
        ws = self._ws(node)
        acc = flags & os.O_ACCMODE
        write = acc in (os.O_WRONLY, os.O_RDWR)
        of = await ws.open(node, write=write, truncate=bool(flags & os.O_TRUNC),
                           append=bool(flags & os.O_APPEND), caller=caller)
        fh = next(self._fh)
        self.handles[fh] = FileHandle(ws, of, write, caller)
        etag = node.entry.etag
        keep = of.fd >= 0 or self._kept_etag.get(ino, "-") == etag
        self._kept_etag[ino] = etag
        return fh, keep

    def _h(self, fh: int) -> FileHandle:
        h = self.handles.get(fh)
        if h is None:
            raise InvalidArgument("bad file handle")
        return h

    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._h(fh)
        return await h.ws.read(h.of, off, size)

    async def write(self, fh: int, off: int, data: bytes) -> int:
        h = self._h(fh)
        return await h.ws.write(h.of, off, data)

    async def flush(self, fh: int) -> None:
        h = self._h(fh)
        if not h.write:
            # closing a read-only descriptor uploads nothing, so it never
            # fails with another writer's upload error (e.g. EIO in a store outage).
            return
        await h.ws.flush(h.of, h.caller)

    async def fsync(self, fh: int) -> None:
        h = self._h(fh)
        await h.ws.fsync(h.of, h.caller)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        self._kept_etag[h.of.node.ino] = h.of.node.entry.etag
        if h.of.dirty and self._background is not None:
            # The last close of a file its flushes did not publish (an empty new
            # or truncated file, see Workspace.flush) uploads it now; the kernel
            # does not wait for a release (close() has returned), and must not
            # have to: an unmount aborts releases still unanswered.
            self._releasing += 1
            self._background.start_soon(self._release, h, True, fh)
        else:
            await self._release(h, False, fh)

    async def _release(self, h: FileHandle, background: bool, fh: int) -> None:
        try:
            with trio.CancelScope(shield=True):
                try:
                    await h.ws.release(h.of, h.caller)
                finally:  # its flock and OFD locks go, after its upload (the bytes go with them)
                    if self.kernel_locks is not None:
                        await self.kernel_locks.release_fh(h.ws.name, h.of.node.ino, fh)
                if self.leases.held:  # locks: closing the file releases its lease (flock rule)
                    others = [o.caller for o in self.handles.values() if o.of is h.of]
                    # a file diverted to its conflict copy was locked under its own path
                    path = h.of.diverted_from or h.ws.ns.path_of(h.of.node)
                    await self.leases.on_close(h.ws.name, path, h.caller, others)
        except Exception:
            if not background:
                raise
            # a background release has no caller to tell; it must not end the nursery
            log.exception("release of %s failed", h.ws.ns.path_of(h.of.node))
        finally:
            if background:
                self._releasing -= 1

    async def _releases_done(self) -> None:
        """Wait until the background releases started so far are done."""
        while self._releasing:
            await trio.sleep(0.005)

    async def setattr(self, ino: int, caller: Caller, *, fh: int | None, mode: int | None,
                      uid: int | None, gid: int | None, size: int | None, mtime_ns: int | None,
                      atime_ns: int | None = None) -> Attr:
        if self._is_top(ino):
            raise NotPermitted("the mount root cannot be changed")
        node = self.node(ino)
        ws = self._ws(node)
        h = self.handles.get(fh) if fh is not None else None
        of = h.of if h is not None else ws.open_files.get(ino)
        await ws.setattr(node, caller, mode=mode, uid=uid, gid=gid, size=size, mtime_ns=mtime_ns,
                         atime_ns=atime_ns, of=of, by_handle=h is not None)
        return ws.attr(node)

    # -- xattrs --------------------------------------------------------------------------

    async def getxattr(self, ino: int, name: str) -> bytes:
        if name == LOCK_XATTR and not self._is_top(ino):
            return await self._lock_xattr(ino, "get", b"", None)  # locks
        if name == writeback.SYNC_XATTR and not self._is_top(ino):
            node = self.node(ino)  # is this file in the store yet? (read-only, not listed)
            if isinstance(node.ns.owner, Workspace):
                return writeback.sync_state(node.ns.owner, node)
        if ino == ROOT_INODE and name.startswith("user.agentfs.mount."):
            if name == CONTROL_PID:
                return str(os.getpid()).encode()
            if name == CONTROL_STATUS:
                dirty = sum(1 for ws in self.workspaces.values() for of in ws.open_files.values() if of.dirty)
                queued = self.writeback.pending if self.writeback is not None else 0
                return (f'{{"mount": "{self.mount_id}", "dirty": {dirty}, "queued": {queued}, '
                        f'"store": "{self.store.url}", "conditional_creates": {str(self.cas).lower()}, '
                        f'"kernel_locks": {str(self.kernel_locks is not None).lower()}}}').encode()
            raise NoAttribute(path=name)
        if self._is_top(ino):
            raise NoAttribute(path=name)
        node = self.node(ino)
        return self._ws(node).getxattr(node, name)

    def listxattr(self, ino: int) -> list[str]:
        if self._is_top(ino):
            return []
        node = self.node(ino)
        return self._ws(node).listxattr(node)

    async def setxattr(self, ino: int, name: str, value: bytes, caller: Caller) -> None:
        if ino == ROOT_INODE and name == CONTROL_SYNC:
            await self.sync_all(caller)
            return
        if ino == ROOT_INODE and name == localmounts.BARRIER:
            await self.barrier(value)
            return
        if ino == ROOT_INODE and name.startswith("user.agentfs.mount."):
            # the other control names are read-only; on a single-workspace
            # mount they must not be stored as ordinary xattrs of its root.
            raise NotPermitted("read-only control attribute", path=name)
        if self._is_top(ino):
            raise NotSupported("the mount root has no attributes")
        if name == LOCK_XATTR:
            await self._lock_xattr(ino, "set", value, caller)  # locks
            return
        node = self.node(ino)
        await self._ws(node).setxattr(node, name, value, caller)

    async def removexattr(self, ino: int, name: str, caller: Caller) -> None:
        if ino == ROOT_INODE and name.startswith("user.agentfs.mount."):
            raise NotPermitted("control attributes cannot be removed", path=name)
        if self._is_top(ino):
            raise NoAttribute(path=name)
        if name == LOCK_XATTR:
            await self._lock_xattr(ino, "remove", b"", caller)  # locks
            return
        node = self.node(ino)
        await self._ws(node).removexattr(node, name, caller)

    # -- background work -------------------------------------------------------------------

    async def sync_all(self, caller: Caller | None = None) -> None:
        caller = caller or Caller.current(self.agent)
        await self._releases_done()
        if self.writeback is not None:
            await self.writeback.drain()  # queued closes, in parallel
        for ws in list(self.workspaces.values()):
            await ws.sync(caller)

    async def barrier(self, value: bytes) -> None:
        """The control attribute :data:`agentfs.localmounts.BARRIER`: commit
        every record this mount acknowledged for workspace ``WS`` (its
        writeback queue included), then apply its journal up to ``SEQ``, so a
        CLI or API call on this machine is ordered after this mount's closes
        and this mount shows the call's result when it returns.  Value
        ``WS[:SEQ]`` (``WS`` empty: every loaded workspace)."""
        name, _, seq = value.decode(errors="replace").partition(":")
        try:
            upto = int(seq) if seq else 0
        except ValueError:
            raise InvalidArgument("barrier value is WORKSPACE[:SEQ]") from None
        targets = [ws for ws in self.workspaces.values() if not name or ws.name == name]
        await self._releases_done()
        for ws in targets:
            if self.writeback is not None:
                await self.writeback.drain(ws)
            await ws.flush_deferred()
            if ws.ns.seq < upto:
                await ws.pull()
        # The kernel drops what the catch-up changed before the caller goes on
        # (bounded: an entry of the mount root cannot be invalidated while this
        # request holds the root).
        await self._invalidations_done()

    def _on_change(self, ch: Changes) -> None:
        for parent, name in ch.entries:
            self._inval.append(("entry", parent, name))
        for ino in ch.inodes | ch.data:
            self._inval.append(("inode", ino, ino not in ch.data))
        for ino in ch.data:
            self._kept_etag.pop(ino, None)
        self._inval_event.set()

    async def invalidator(self) -> None:
        """Tell the kernel about remote changes (outside request handlers)."""
        while True:
            await self._inval_event.wait()
            self._inval_event = trio.Event()
            batch, self._inval = self._inval, []
            self._invalidating = True
            for kind, ino, arg in batch:
                try:
                    if kind == "entry":
                        await trio.to_thread.run_sync(self.notifier.invalidate_entry, ino, arg)
                    else:
                        await trio.to_thread.run_sync(self.notifier.invalidate_inode, ino, arg)
                except OSError as e:
                    log.debug("invalidate %s %s: %s", kind, ino, e)
            self._invalidating = False

    @property
    def idle(self) -> bool:
        """No request from the kernel in flight or for :data:`IDLE_AFTER` seconds."""
        return self._requests == 0 and time.monotonic() - self._last_access > IDLE_AFTER

    def request_done(self) -> None:
        """The FUSE adapter's counterpart of :meth:`accessed`."""
        self._requests -= 1
        self._last_access = time.monotonic()

    async def accessed(self) -> None:
        """Note a request from the kernel (called by the FUSE adapter first).

        The first request after an idle period wakes the journal tail and
        waits (at most :data:`CATCH_UP_WAIT`) for it to catch up, so a mount
        that was idle shows other mounts' changes as soon as it is used again
        although it polled rarely meanwhile.
        """
        was_idle = self.idle
        self._requests += 1
        self._last_access = time.monotonic()
        if not was_idle and self._caught_up is None:
            return
        if self._caught_up is None:
            self._caught_up = trio.Event()
            self._wake_tail.set()
        with trio.move_on_after(CATCH_UP_WAIT):
            await self._caught_up.wait()

    async def tail(self) -> None:
        """Follow every loaded workspace's journal.

        The interval adapts: TAIL_MIN right after changes arrived, growing to
        TAIL_MAX while the mount is in use and to TAIL_IDLE_MAX when idle.
        """
        interval = TAIL_MIN
        while True:
            with trio.move_on_after(interval):
                await self._wake_tail.wait()
            if self._wake_tail.is_set():
                self._wake_tail = trio.Event()
                interval = TAIL_MIN
            waiting, self._caught_up = self._caught_up, None
            got = 0
            try:
                for ws in list(self.workspaces.values()):
                    try:
                        got += await ws.pull()
                    except AgentFSError as e:
                        log.warning("tail of %s: %s", ws.name, e)
            finally:
                if waiting is not None:
                    waiting.set()
            cap = TAIL_IDLE_MAX if self.idle else TAIL_MAX
            interval = TAIL_MIN if got else min(cap, interval * 1.5)

    async def scanner(self) -> None:
        """Adopt external writes periodically (first pass right after mount)."""
        if self.scan_interval <= 0:
            return
        await trio.sleep(1.0)
        while True:
            if self.idle:  # nobody looks: adoption can wait until someone does
                await trio.sleep(1.0)
                continue
            for ws in list(self.workspaces.values()):
                try:
                    await ws.scan()
                except AgentFSError as e:
                    log.warning("scan of %s: %s", ws.name, e)
            if self.single is None:
                try:
                    await self.refresh_names()
                except AgentFSError as e:
                    log.warning("listing workspaces: %s", e)
            await trio.sleep(self.scan_interval)

    async def retrier(self) -> None:
        """Retry uploads of closed files that failed (store outage)."""
        while True:
            await trio.sleep(RETRY_INTERVAL)
            for ws in list(self.workspaces.values()):
                if not ws.read_only and checkpoints.pending_materialisation(ws):
                    try:  # checkpoints: restored/forked files reach their natural keys
                        await checkpoints.materialise(ws)
                    except AgentFSError as e:
                        log.warning("materialising %s: %s", ws.name, e)
                if ws.pending_retries:
                    try:
                        await ws.sync(Caller.current(self.agent))
                    except AgentFSError as e:
                        log.warning("retrying uploads of %s: %s", ws.name, e)

    async def run_background(self, nursery: trio.Nursery) -> None:
        self._background = nursery
        self.cache.start_background(nursery)
        nursery.start_soon(self.retrier)
        nursery.start_soon(self.invalidator)
        nursery.start_soon(self.tail)
        nursery.start_soon(self.scanner)
        # Agent state: TTL pruning and STATE.md.
        nursery.start_soon(lambda: agentstate.background(lambda: list(self.workspaces.values()),
                                                         read_only=self.read_only))

        nursery.start_soon(self.leases.heartbeat)  # locks
        if self.kernel_locks is not None:
            nursery.start_soon(self.kernel_locks.heartbeat)
        nursery.start_soon(openmarks.keep, lambda: [ws.keep_marks for ws in self.workspaces.values()])
        if groupcommit.ENABLED and not self.read_only:
            self.flusher = groupcommit.Flusher()
            for ws in self.workspaces.values():
                ws.flusher = self.flusher
            nursery.start_soon(self.flusher.run, lambda: list(self.workspaces.values()))
        if not self.read_only:
            self.collector = garbage.Collector()
            for ws in self.workspaces.values():
                ws.garbage.collector = self.collector
            nursery.start_soon(self.collector.run, lambda: list(self.workspaces.values()))
        if self.writeback is not None:  # the --writeback uploader
            nursery.start_soon(self.writeback.run)

    async def fsyncdir(self, fh: int) -> None:
        """fsync of a directory makes the entries of earlier closes durable
        in the journal (every workspace's deferred records are committed)."""
        del fh
        await self._releases_done()
        if self.writeback is not None:
            await self.writeback.drain()  # --writeback: queued closes too
        for ws in list(self.workspaces.values()):
            with trio.CancelScope(shield=True):
                await ws.flush_deferred()

    async def _invalidations_done(self) -> None:
        """Wait (at most 1 s) until the kernel was told of every change applied so far."""
        with trio.move_on_after(1.0):
            while self._inval or self._invalidating:
                await trio.sleep(0.005)

    async def close(self) -> None:
        """Flush what is dirty (unmount), give back leases, then drop the cache."""
        try:
            await self.sync_all()
        except AgentFSError as e:
            lost = [ws.ns.path_of(of.node) for ws in self.workspaces.values()
                    for of in ws.open_files.values() if of.dirty]
            log.error("unmount: could not upload %d files (%s): %s", len(lost), e, ", ".join(
                str(p) for p in lost[:20]))
        for ws in self.workspaces.values():  # agent state: last STATE.md
            try:
                await agentstate.flush_state_md(ws, force=True)
            except AgentFSError as e:
                log.warning("unmount: STATE.md of %s not written: %s", ws.name, e)

        try:
            await self.leases.release_all()  # locks: after the last uploads (still fenced)
            if self.kernel_locks is not None:
                await self.kernel_locks.release_all()
        except AgentFSError as e:
            log.warning("unmount: releasing leases: %s", e)
        for ws in self.workspaces.values():  # other mounts may prune what was open here
            await ws.marks.unmark_all()
        for h in list(self.handles.values()):
            if self.writeback is not None and h.of.dirty:
                continue  # a queued working copy stays for the next mount's replay
            h.of.close_local()
        self.cache.close()
        if self.writeback is not None:
            self.writeback.close()  # what is still queued is replayed by the next mount

