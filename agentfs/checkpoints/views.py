"""Read-only views of checkpoints in a mount: ``.snapshots/`` and each
checkpoint's tree (writes answer EROFS).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from agentfs.checkpoints.ops import create, delete
from agentfs.checkpoints.records import state_at
from agentfs.entryreads import EntryReads
from agentfs.errors import (
    InvalidArgument,
    ReadOnly,
)
from agentfs.identity import Caller
from agentfs.models import (
    Entry,
)
from agentfs.namespace import InodeTable, Namespace, Node
from agentfs.workspace.cow import (
    read_version,
)

if TYPE_CHECKING:
    from agentfs.workspace import Attr, OpenFile, Workspace

__all__ = ['SnapshotView', 'SnapshotsDir', 'View']

log = logging.getLogger(__name__)


def _ro(*_: Any, **__: Any) -> Any:
    raise ReadOnly("checkpoints are read-only")


class View(EntryReads):
    """What the filesystem layer needs from a node's owner, read-only."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.name = ws.name
        self.open_files: dict[int, OpenFile] = {}

    async def prepare(self, node: Node) -> None:
        """Load what is needed before a lookup/listing below ``node``."""

    def attr(self, node: Node) -> Attr:
        from agentfs.workspace import Attr

        e = node.entry
        size = len((e.target or "").encode()) if e.kind == "l" else e.size
        nlink = 2 + sum(1 for c in (node.children or {}).values() if c.children is not None) \
            if node.children is not None else 1
        return Attr(node.ino, e.kind, e.mode, nlink, e.uid, e.gid, size, e.mtime_ns,
                    max(e.ctime_ns, e.mtime_ns), e.atime_ns if e.atime_ns is not None else e.mtime_ns)

    async def open(self, node: Node, *, write: bool, truncate: bool, append: bool, caller: Caller) -> OpenFile:
        from agentfs.workspace import OpenFile

        if write or truncate:
            raise ReadOnly("checkpoints are read-only")
        if node.entry.kind == "d":
            return OpenFile(node=node)
        if node.entry.kind != "f":
            raise InvalidArgument("not a regular file")
        return OpenFile(node=node, size=node.entry.size, mtime_ns=node.entry.mtime_ns)

    async def flush(self, of: OpenFile, caller: Caller) -> None:
        pass

    fsync = flush
    release = flush

    async def read(self, of: OpenFile, off: int, size: int) -> bytes:
        raise InvalidArgument("not a file")

    write = truncate = setattr = setxattr = removexattr = mkdir = symlink = create = _ro
    unlink = rmdir = rename = _ro


class SnapshotView(View):
    """``.snapshots/NAME/``: the namespace of one checkpoint, read-only."""

    def __init__(self, ws: Workspace, name: str, seq: int, table: InodeTable, created: float) -> None:
        super().__init__(ws)
        self.cp_name = name
        self.seq = seq
        t = int(created * 1e9)
        self.ns = Namespace(table, Entry(kind="d", mode=0o555, mtime_ns=t, ctime_ns=t))
        self.ns.owner = self
        self.loaded = False
        self._lock = trio.Lock()

    async def prepare(self, node: Node) -> None:
        async with self._lock:
            if self.loaded:
                return
            state = await self.ws.io(state_at, self.ws.store, self.ws.name, self.seq)
            self.ns.load_state(state)
            self.loaded = True

    async def read(self, of: OpenFile, off: int, size: int) -> bytes:
        node = of.node
        if node.entry.kind != "f":
            raise InvalidArgument("not a file")
        path = self.ns.path_of(node) or ""
        return await read_version(self.ws, path, node.entry, off, size)


class SnapshotsDir(View):
    """``<ws>/.snapshots/``: one directory per live checkpoint; ``mkdir``
    creates a checkpoint, ``rmdir`` deletes one; nothing else is writable."""

    def __init__(self, ws: Workspace, table: InodeTable) -> None:
        super().__init__(ws)
        self.table = table
        root = ws.ns.root.entry
        self.ns = Namespace(table, Entry(kind="d", mode=0o755, uid=root.uid, gid=root.gid,
                                         mtime_ns=root.mtime_ns, ctime_ns=root.ctime_ns))
        self.ns.owner = self
        self.views: dict[str, SnapshotView] = {}

    @property
    def node(self) -> Node:
        return self.ns.root

    def sync(self) -> None:
        """Match the children with the workspace's live checkpoints (no I/O)."""
        live = self.ws.ns.checkpoints
        kids = self.ns.root.children
        assert kids is not None
        for name in list(kids):
            if self.views.get(name) is None or live.get(name) != self.views[name].seq:
                del kids[name]
                self.views.pop(name, None)
        for name, seq in live.items():
            if name not in kids:
                v = SnapshotView(self.ws, name, seq, self.table, time.time())
                self.views[name] = v
                kids[name] = v.ns.root

    async def prepare(self, node: Node) -> None:
        self.sync()

    async def mkdir_checkpoint(self, name: str, caller: Caller) -> Node:
        # wait_fence: other processes writing through other mounts learn of it too
        await create(self.ws, name, caller, note="created by mkdir in .snapshots")
        self.sync()
        return self.lookup(self.ns.root, name)

    async def rmdir_checkpoint(self, name: str, caller: Caller) -> None:
        await delete(self.ws, name, caller)
        self.sync()
