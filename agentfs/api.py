"""The Python API: a workspace without FUSE, for sandboxes that cannot mount.

``open_workspace(url, ws)`` returns a :class:`WorkspaceClient` whose methods
are synchronous and use the same core and journal as a mount, so a mount sees
their changes (and they see a mount's, each call first catches up with the
journal).  A trio loop runs in a private thread; calls are thread-safe.

Error contract: methods raise :class:`agentfs.errors.AgentFSError`
subclasses (``OSError`` with the errno a syscall would give).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agentfs import agentstate, checkpoints, localmounts, openmarks
from agentfs.cache import Cache
from agentfs.errors import (
    AgentFSError,
    AlreadyExists,
    IsADirectory,
    NoAttribute,
    NotFound,
    WouldBlock,
)
from agentfs.identity import Caller
from agentfs.locks import DEFAULT_TTL, LeaseManager
from agentfs.models import Checkpoint, State, StateRow
from agentfs.namespace import InodeTable, Node, split
from agentfs.store import ObjectStore, open_store
from agentfs.workspace import OpenFile, Workspace, check_workspace_name, cow, handover

__all__ = ["FileStat", "WorkspaceClient", "checkpoint", "open_workspace"]


@dataclass(frozen=True)
class FileStat:
    """What :meth:`WorkspaceClient.stat` returns."""

    path: str
    kind: str  # "file", "dir" or "symlink"
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    etag: str | None
    sha256: str | None
    target: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_KINDS = {"f": "file", "d": "dir", "l": "symlink"}


class WorkspaceClient:
    """One workspace of a store, used from ordinary (non-async) Python."""

    def __init__(self, store: ObjectStore, name: str, *, agent: str = "", create: bool = False,
                 lease_ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.name = name
        self.caller = Caller.current(agent)
        # locks: this client's leases (see lock()), renewed by its trio thread
        self._leases = LeaseManager(store, agent=self.caller.agent, mount_id=f"client-{uuid.uuid4().hex[:12]}",
                                    ttl=lease_ttl)
        self._tmp = Path(tempfile.mkdtemp(prefix="agentfs-client-"))
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self.ws: Workspace | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, create), daemon=True,
                                        name=f"agentfs-{name}")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self.close()
            raise self._error

    async def _main(self, create: bool) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        try:
            self.ws = await Workspace.load_new(
                self.store, self.name, create=create, table=InodeTable(), cache=Cache(self._tmp),
                limiter=trio.CapacityLimiter(16), agent=self.caller.agent)
        except BaseException as e:  # handed to the constructor's thread
            self._error = e
            self._ready.set()
            return
        self.ws.fence = functools.partial(self._leases.fence, self.name)  # locks
        ws = self.ws
        self._leases.before_release = lambda _name: handover.settle(ws)  # locks hand over data
        self._leases.after_acquire = lambda _name, path, seq: handover.catch_up(ws, path, seq)
        self._ready.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._leases.heartbeat)
            nursery.start_soon(openmarks.keep, lambda: [self._w.keep_marks])
            await self._stop.wait()
            with trio.CancelScope(shield=True):
                await self._leases.release_all()
                await self._w.marks.unmark_all()
            nursery.cancel_scope.cancel()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the client's trio thread, ordered after what local
        mounts of the store acknowledged, and shown by them when it returns
        (see :mod:`agentfs.localmounts`)."""
        localmounts.barrier(self.store.url, self.name)
        seq = self._w.ns.seq

        async def call() -> Any:
            assert self.ws is not None
            await self.ws.pull()
            return await fn(*args)

        try:
            return trio.from_thread.run(call, trio_token=self._token)
        except BaseExceptionGroup as eg:
            e: BaseException = eg
            while isinstance(e, BaseExceptionGroup):
                e = e.exceptions[0]
            raise e from None
        finally:
            if self._w.ns.seq > seq:
                localmounts.barrier(self.store.url, self.name, self._w.ns.seq)

    @property
    def _w(self) -> Workspace:
        assert self.ws is not None
        return self.ws

    # -- navigation ---------------------------------------------------------

    def _node(self, path: str) -> Node:
        return self._w.resolve(path)

    def _parent(self, path: str) -> tuple[Node, str]:
        parent, name = split(path.strip("/"))
        return self._w.resolve(parent), name

    def stat(self, path: str) -> FileStat:
        async def go() -> FileStat:
            node = self._node(path)
            a = self._w.attr(node)
            e = node.entry
            return FileStat(path.strip("/"), _KINDS[e.kind], a.size, e.mode, e.uid, e.gid, a.mtime_ns,
                            e.etag, e.sha256, e.target)
        return self._run(go)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except NotFound:
            return False
        return True

    def listdir(self, path: str = "") -> list[str]:
        async def go() -> list[str]:
            return [n for n, _ in self._w.listdir(self._node(path))]
        return self._run(go)

    def walk(self, path: str = "") -> Iterator[FileStat]:
        """Every entry below ``path`` (recursive), parents first."""
        async def go() -> list[FileStat]:
            top = self._node(path)
            base = path.strip("/")
            out = []
            for p, n in self._w.ns.walk(top, base):
                a = self._w.attr(n)
                out.append(FileStat(p, _KINDS[n.entry.kind], a.size, n.entry.mode, n.entry.uid,
                                    n.entry.gid, a.mtime_ns, n.entry.etag, n.entry.sha256, n.entry.target))
            return out
        yield from self._run(go)

    # -- content ----------------------------------------------------------------

    async def _open(self, path: str, *, write: bool, truncate: bool, create: bool) -> OpenFile:
        parent, name = self._parent(path)
        try:
            node = self._w.lookup(parent, name)
        except NotFound:
            if not create:
                raise NotFound(path=path) from None
            _, of = await self._w.create(parent, name, 0o644, self.caller)
            return of
        return await self._w.open(node, write=write, truncate=truncate, append=False, caller=self.caller)

    def read_bytes(self, path: str) -> bytes:
        async def go() -> bytes:
            node = self._node(path)
            if node.is_dir:
                raise IsADirectory(path=path)
            chunks = []
            off = 0
            while chunk := await self._w.read(node, off, 8 << 20, follow_changes=True):
                chunks.append(chunk)
                off += len(chunk)
            return b"".join(chunks)
        return self._run(go)

    def write_bytes(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        """Create or replace a file; durable in the store on return.  With
        ``exclusive``, only create it: AlreadyExists if the path exists; if
        another writer creates it meanwhile, the store's conditional create
        decides and this call raises ConflictError (its bytes kept as a
        conflict copy)."""
        async def go() -> None:
            if exclusive:
                parent, name = self._parent(path)
                with contextlib.suppress(NotFound):
                    self._w.lookup(parent, name)
                    raise AlreadyExists(path=path)
            of = await self._open(path, write=True, truncate=True, create=True)
            try:
                await self._w.write(of, 0, data)
                await self._w.publish(of, self.caller)
            finally:
                await self._w.release(of, self.caller)
        self._run(go)

    def upload(self, local: str | os.PathLike[str], path: str,
               progress: Callable[[int], None] | None = None) -> None:
        """Copy a local file in, streaming in 8 MiB pieces."""
        with open(local, "rb") as src, self.open(path, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
                if progress:
                    progress(len(chunk))

    def download(self, path: str, local: str | os.PathLike[str],
                 progress: Callable[[int], None] | None = None) -> None:
        with self.open(path, "rb") as src, open(local, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
                if progress:
                    progress(len(chunk))

    def open(self, path: str, mode: str = "rb") -> io.BufferedIOBase:
        """A binary file object: modes ``rb``, ``wb``, ``ab``, ``r+b``, ``xb``."""
        if "b" not in mode:
            raise ValueError("only binary modes are supported; wrap in io.TextIOWrapper")
        write = any(c in mode for c in "wax+")
        if "x" in mode and self.exists(path):
            raise AlreadyExists(path=path)
        of = self._run(lambda: self._open(path, write=write, truncate="w" in mode,
                                          create=any(c in mode for c in "wax")))
        raw = _RawFile(self, of, append="a" in mode, writable=write, readable="r" in mode or "+" in mode)
        if write and ("r" in mode or "+" in mode):
            return io.BufferedRandom(raw, buffer_size=1 << 20)
        return io.BufferedWriter(raw, buffer_size=1 << 20) if write else io.BufferedReader(raw, 1 << 20)

    # -- namespace ------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755, *, parents: bool = False) -> None:
        async def go() -> None:
            parts = path.strip("/").split("/")
            node = self._w.ns.root
            for i, part in enumerate(parts):
                try:
                    node = self._w.lookup(node, part)
                    if i == len(parts) - 1 and not parents:
                        raise AlreadyExists(path=path)
                except NotFound:
                    if not parents and i < len(parts) - 1:
                        raise
                    node = await self._w.mkdir(node, part, mode, self.caller)
        self._run(go)

    def remove(self, path: str) -> None:
        async def go() -> None:
            parent, name = self._parent(path)
            await self._w.unlink(parent, name, self.caller)
        self._run(go)

    def rmdir(self, path: str) -> None:
        async def go() -> None:
            parent, name = self._parent(path)
            await self._w.rmdir(parent, name, self.caller)
        self._run(go)

    def rmtree(self, path: str) -> None:
        entries = sorted(self.walk(path), key=lambda s: -s.path.count("/"))
        for st in entries:
            (self.rmdir if st.kind == "dir" else self.remove)(st.path)
        if path.strip("/"):
            self.rmdir(path)

    def rename(self, src: str, dst: str) -> None:
        async def go() -> None:
            sp, sn = self._parent(src)
            dp, dn = self._parent(dst)
            await self._w.rename(sp, sn, dp, dn, self.caller)
        self._run(go)

    def symlink(self, target: str, path: str) -> None:
        async def go() -> None:
            parent, name = self._parent(path)
            await self._w.symlink(parent, name, target, self.caller)
        self._run(go)

    def chmod(self, path: str, mode: int) -> None:
        self._run(lambda: self._w.setattr(self._node(path), self.caller, mode=mode))

    # -- xattrs -----------------------------------------------------------------------

    def getxattr(self, path: str, name: str) -> bytes:
        async def go() -> bytes:
            return self._w.getxattr(self._node(path), name)
        return self._run(go)

    def listxattr(self, path: str) -> list[str]:
        async def go() -> list[str]:
            return self._w.listxattr(self._node(path))
        return self._run(go)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        self._run(lambda: self._w.setxattr(self._node(path), name, value, self.caller))

    def removexattr(self, path: str, name: str) -> None:
        self._run(lambda: self._w.removexattr(self._node(path), name, self.caller))

    # -- agent state: see agentstate.py ----------------------------------------

    def state(self, path: str) -> StateRow | None:
        """The agent state of one file or directory (None: it has none)."""
        async def go() -> StateRow | None:
            return agentstate.row_of(path.strip("/"), self._node(path).entry)
        return self._run(go)

    def set_state(self, path: str, **fields: str | list[str] | None) -> StateRow | None:
        """Set typed state: ``status=``, ``owner=``, ``task=``, ``labels=`` (a
        list or a comma list), ``ttl=`` (``"1h"``, seconds), ``note=``; None
        removes a field.  One validated xattr write each, in the order given
        (a bad value raises :class:`agentfs.errors.InvalidState` and leaves
        the fields before it set); STATE.md is rewritten afterwards."""
        for key, value in fields.items():
            name = agentstate.PREFIX + key
            if value is None:
                if name in self.listxattr(path):
                    self.removexattr(path, name)
                continue
            raw = json.dumps(value) if isinstance(value, list) else str(value)
            self.setxattr(path, name, raw.encode())
        self.write_state_md()
        return self.state(path)

    def state_ls(self, *, status: str | None = None, owner: str | None = None, label: str | None = None,
                 under: str = "") -> list[StateRow]:
        """Every file with agent state, filtered (answered from the namespace)."""
        async def go() -> list[StateRow]:
            return agentstate.state_rows(self._w.ns, status=status, owner=owner, label=label, under=under)
        return self._run(go)

    def prune(self, *, dry_run: bool = False) -> list[str]:
        """Remove files and directories whose ttl expired (not open here);
        returns their paths.  STATE.md is rewritten when something went."""
        gone = self._run(lambda: agentstate.prune(self._w, dry_run=dry_run))
        if gone and not dry_run:
            self.write_state_md()
        return gone

    def write_state_md(self) -> None:
        """Rewrite ``.agentfs/<ws>/STATE.md`` now."""
        async def go() -> None:
            self._w.recent.dirty = True
            await agentstate.flush_state_md(self._w, force=True)
        self._run(go)

    # -- checkpoints (agentfs/checkpoints/) ----------------------------------------------

    def checkpoint(self, name: str | None = None, *, note: str = "") -> Checkpoint:
        """Cut a checkpoint now (one journal commit, no bytes copied); returns its record."""
        return self._run(lambda: checkpoints.create(self._w, name, self.caller, note=note))

    def checkpoints(self) -> list[Checkpoint]:
        """The live checkpoints, oldest first."""
        async def go() -> list[Checkpoint]:
            return await self._w.io(checkpoints.list_checkpoints, self.store, self.name,
                                     dict(self._w.ns.checkpoints))
        return self._run(go)

    def delete_checkpoint(self, name: str) -> None:
        self._run(lambda: checkpoints.delete(self._w, name, self.caller))

    def restore(self, name: str, *, materialize: bool = True) -> Checkpoint:
        """Bring the workspace back to checkpoint ``name``; returns the automatic
        checkpoint of the previous head (restore that one to undo)."""
        return self._run(lambda: checkpoints.restore(self._w, name, self.caller, materialize=materialize))

    def materialize(self) -> int:
        """Copy restored/forked files to their natural keys now; returns how many."""
        return self._run(lambda: checkpoints.materialise(self._w, self.caller))

    def state_of(self, name: str | None) -> State:
        """The namespace at checkpoint ``name`` (None or ``"head"``: now)."""
        async def go() -> State:
            if name in (None, "head"):
                return self._w.ns.to_state()
            seq = self._w.ns.checkpoints.get(name)
            if seq is None:
                raise NotFound("no such checkpoint", path=name)
            return await self._w.io(checkpoints.state_at, self.store, self.name, seq)
        return self._run(go)

    def read_checkpoint_bytes(self, name: str, path: str) -> bytes:
        """The bytes ``path`` had at checkpoint ``name`` (from its natural key or its blob)."""
        state = self.state_of(name)
        e = state.entries.get(path.strip("/"))
        if e is None:
            raise NotFound(path=path)
        if e.kind != "f":
            raise IsADirectory(path=path) if e.kind == "d" else NotFound("not a file", path=path)

        async def go() -> bytes:
            chunks, off = [], 0
            while off < e.size:
                chunk = await cow.read_version(self._w, path.strip("/"), e, off, 8 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                off += len(chunk)
            return b"".join(chunks)
        return self._run(go)

    def diff(self, a: str | None, b: str | None = "head") -> checkpoints.CheckpointDiff:
        """What changed from checkpoint ``a`` to ``b`` (``"head"``: the current tree)."""
        return checkpoints.diff_states(self.state_of(a), self.state_of(b), f"{self.name}@{a or 'head'}",
                                       f"{self.name}@{b or 'head'}")

    def fork(self, name: str, new_workspace: str, *, materialize: bool = True) -> int:
        """Create workspace ``new_workspace`` (same store) from checkpoint ``name``;
        returns the number of entries.  Nothing is copied up front; with
        ``materialize`` the files are then copied to their natural keys here (else
        a mount of the new workspace does it in the background)."""
        check_workspace_name(new_workspace)  # before any key is built from it

        async def go() -> int:
            # a fork killed before its commit leaves the new workspace
            # empty; a retry may take it (checkpoints.fork refuses a non-empty one).
            if new_workspace == self._w.name:
                raise AlreadyExists("workspace exists", path=new_workspace)
            new = await Workspace.load_new(self.store, new_workspace, create=True, table=InodeTable(),
                                           cache=Cache(self._tmp / f"fork-{new_workspace}"),
                                           limiter=trio.CapacityLimiter(16), agent=self.caller.agent)
            try:
                return await checkpoints.fork(self._w, name, new, self.caller, materialize=materialize)
            finally:
                new.cache.close()
        return self._run(go)

    def prune_checkpoints(self, *, keep_last: int | None = None, keep_within: float | None = None,
                          dry_run: bool = False) -> list[str]:
        return self._run(lambda: checkpoints.prune(self._w, self.caller, keep_last=keep_last,
                                                   keep_within=keep_within, dry_run=dry_run))

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        if self._stop is not None and self._token is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout=30)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> WorkspaceClient:
        return self

    # -- locks ------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, path: str, *, shared: bool = False, wait: float | None = None) -> Iterator[None]:
        """A lease on ``path`` without a mount (the same leases a mount takes:
        it excludes holders on every mount and client).  ``wait``: None blocks,
        0 fails at once, else seconds; raises WouldBlock (EWOULDBLOCK).  While
        held, this client renews it; writes made through this client after
        another holder took it over fail with Fenced (EIO), bytes kept as a
        conflict copy.  Released on exit of the block and on close()."""
        path = path.strip("/")
        value = ("shared" if shared else "exclusive") + ("" if shared or wait == 0 else " wait")
        deadline = None if wait is None else time.monotonic() + wait
        delay = 0.02
        while True:
            try:
                self._run(lambda: self._leases.acquire(self.name, path, value.encode(), self.caller))
                break
            except WouldBlock:
                if deadline is not None and time.monotonic() >= deadline:
                    with contextlib.suppress(NoAttribute):  # a waiter that gives up leaves at once
                        self._run(lambda: self._leases.release(self.name, path, self.caller))
                    raise
                left = None if deadline is None else deadline - time.monotonic()
                time.sleep(delay if left is None else max(0.0, min(delay, left)))
                delay = min(delay * 1.5, 0.5)
        try:
            yield
        finally:
            try:
                self._run(lambda: self._leases.release(self.name, path, self.caller))
            except NoAttribute:
                pass  # broken meanwhile

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RawFile(io.RawIOBase):
    def __init__(self, client: WorkspaceClient, of: OpenFile, *, append: bool, writable: bool,
                 readable: bool) -> None:
        self._c = client
        self._of = of
        self._pos = of.size if append else 0
        self._append = append
        self._writable = writable
        self._readable = readable

    def readable(self) -> bool:
        return self._readable or not self._writable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence == 2:
            pos += self._c._run(self._size)
        self._pos = pos
        return pos

    async def _size(self) -> int:
        return self._c._w.attr(self._of.node).size

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        async def go() -> bytes:
            return await self._c._w.read(self._of, self._pos, len(b), follow_changes=True)
        data = self._c._run(go)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def write(self, b: Any) -> int:
        data = bytes(b)

        async def go() -> int:
            if self._append:
                self._pos = self._of.size
            return await self._c._w.write(self._of, self._pos, data)
        n = self._c._run(go)
        self._pos += n
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self._c._run(lambda: self._c._w.truncate(self._of, size))
        return size

    def flush(self) -> None:
        if not self.closed and self._writable:
            self._c._run(lambda: self._c._w.flush(self._of, self._c.caller))

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # calls flush
            if self._writable:  # durable on return, an empty file too; raises ConflictError
                self._c._run(lambda: self._c._w.publish(self._of, self._c.caller))
        finally:
            self._c._run(lambda: self._c._w.release(self._of, self._c.caller))


def open_workspace(url: str, workspace: str, *, agent: str = "", create: bool = True,
                   endpoint_url: str | None = None, lease_ttl: float = DEFAULT_TTL) -> WorkspaceClient:
    """Open (by default creating) workspace ``workspace`` of the store at ``url``."""
    store = open_store(url, endpoint_url=endpoint_url)
    try:
        return WorkspaceClient(store, workspace, agent=agent, create=create, lease_ttl=lease_ttl)
    except AgentFSError:
        store.close()
        raise


def checkpoint(url: str, workspace: str, name: str | None = None, *, note: str = "", agent: str = "",
               endpoint_url: str | None = None) -> Checkpoint:
    """Cut a checkpoint of ``workspace`` of the store at ``url`` (see :meth:`WorkspaceClient.checkpoint`)."""
    with open_workspace(url, workspace, agent=agent, create=False, endpoint_url=endpoint_url) as c:
        return c.checkpoint(name, note=note)
