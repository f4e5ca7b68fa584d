"""The in-memory tree of one workspace, built from a state and journal ops.

Pure: no I/O, no clocks except the times carried by the records.  Applying an
operation is *total* (it never raises): a ``put`` under a missing parent
creates the parent, a ``del`` or ``mv`` of a missing path does nothing.  Every
mount therefore reaches the same tree from the same log, whatever races
produced it.  Validation with errno happens before a commit, in ``workspace``.

Nodes keep their inode numbers across renames and in-place updates; a node
removed from the tree stays in the :class:`InodeTable` while the kernel still
holds a lookup on it or a handle is open (open-but-unlinked files).

Concurrency: called only from the filesystem's trio thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from agentfs.models import CheckpointOp, DelOp, Entry, MoveOp, Op, PutOp, State

__all__ = ["Changes", "InodeTable", "Namespace", "Node", "join", "split"]

log = logging.getLogger(__name__)

ROOT_INODE = 1
TOMBSTONE_TTL = 7 * 24 * 3600.0


def split(path: str) -> tuple[str, str]:
    """``"a/b/c"`` -> ``("a/b", "c")``; ``"c"`` -> ``("", "c")``."""
    head, _, tail = path.rpartition("/")
    return head, tail


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class Node:
    """One inode: an entry at a place in the tree (or detached)."""

    __slots__ = ("children", "entry", "ino", "lookups", "name", "ns", "opens", "parent", "pending",
                 "told_size")

    def __init__(self, ns: Namespace, ino: int, name: str, parent: Node | None, entry: Entry):
        self.ns = ns
        self.ino = ino
        self.name = name
        self.parent = parent
        self.entry = entry
        self.children: dict[str, Node] | None = {} if entry.kind == "d" else None
        self.pending = False  # created locally, not yet committed
        self.lookups = 0  # kernel references (FUSE lookup count)
        self.opens = 0  # open handles in this mount
        self.told_size = -1  # the size last reported to the kernel (-1: none)

    @property
    def is_dir(self) -> bool:
        return self.entry.kind == "d"

    @property
    def attached(self) -> bool:
        n: Node | None = self
        while n is not None:
            if n is n.ns.root:
                return True
            n = n.parent
        return False

    def __repr__(self) -> str:
        return f"<Node {self.ino} {self.name!r} {self.entry.kind}>"


class InodeTable:
    """Inode numbers shared by every workspace of one mount."""

    def __init__(self, first: int = ROOT_INODE + 1) -> None:
        self._next = first
        self.nodes: dict[int, Node] = {}

    def alloc(self) -> int:
        ino = self._next
        self._next += 1
        return ino

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def maybe_drop(self, node: Node) -> None:
        """Forget a node nobody can reach any more."""
        if node.lookups <= 0 and node.opens <= 0 and not node.attached:
            self.nodes.pop(node.ino, None)


@dataclass
class Changes:
    """What an applied op changed, for kernel cache invalidation."""

    entries: list[tuple[int, str]] = field(default_factory=list)  # (parent ino, name)
    inodes: set[int] = field(default_factory=set)
    data: set[int] = field(default_factory=set)  # inodes whose bytes changed

    def merge(self, other: Changes) -> None:
        self.entries.extend(other.entries)
        self.inodes |= other.inodes
        self.data |= other.data


class Namespace:
    """The tree of one workspace at journal position :attr:`seq`."""

    def __init__(self, table: InodeTable, root_entry: Entry, *, root_ino: int | None = None) -> None:
        self.table = table
        self.seq = 0
        self.tombstones: dict[str, float] = {}
        #: Live checkpoints (name -> seq), from CheckpointOp records.
        self.checkpoints: dict[str, int] = {}
        #: The object that owns this tree (its Workspace), for inode routing.
        self.owner: object = None
        self.root = Node(self, root_ino if root_ino is not None else table.alloc(), "", None, root_entry)
        table.nodes[self.root.ino] = self.root

    # -- reading -----------------------------------------------------------

    def resolve(self, path: str) -> Node | None:
        node = self.root
        if not path:
            return node
        for part in path.split("/"):
            if node.children is None:
                return None
            nxt = node.children.get(part)
            if nxt is None:
                return None
            node = nxt
        return node

    def path_of(self, node: Node) -> str | None:
        """The node's workspace-relative path, or None when it is detached."""
        parts: list[str] = []
        n: Node | None = node
        while n is not None and n is not self.root:
            parts.append(n.name)
            n = n.parent
        if n is None:
            return None
        return "/".join(reversed(parts))

    def walk(self, node: Node | None = None, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """Every (path, node) below ``node`` (default: root, excluded), parents first."""
        start = node or self.root
        stack = [(prefix, start)]
        while stack:
            base, n = stack.pop()
            for name, child in (n.children or {}).items():
                p = join(base, name)
                yield p, child
                if child.children:
                    stack.append((p, child))

    def to_state(self, now: float | None = None) -> State:
        """The committed tree (pending local nodes excluded)."""
        cutoff = (now or time.time()) - TOMBSTONE_TTL
        entries = {"": self.root.entry}
        for path, node in self.walk():
            if not node.pending:
                entries[path] = node.entry
        tomb = {k: t for k, t in self.tombstones.items() if t >= cutoff}
        return State(seq=self.seq, entries=entries, tombstones=tomb, checkpoints=dict(self.checkpoints))

    def load_state(self, state: State) -> None:
        """Replace the tree with ``state`` (only on a fresh namespace)."""
        self.root.entry = state.entries.get("", self.root.entry)
        for path in sorted(state.entries, key=lambda p: (p.count("/"), p)):
            if path:
                self._put(path, state.entries[path], Changes(), state.entries[path].mtime_ns / 1e9,
                          stamp=False)
        self.tombstones = dict(state.tombstones)
        self.checkpoints = dict(state.checkpoints)
        self.seq = state.seq

    # -- local, uncommitted --------------------------------------------------

    def add_pending(self, parent: Node, name: str, entry: Entry) -> Node:
        """A node created by this mount and not yet committed (a new file)."""
        assert parent.children is not None
        node = Node(self, self.table.alloc(), name, parent, entry)
        node.pending = True
        parent.children[name] = node
        self.table.nodes[node.ino] = node
        return node

    def detach(self, node: Node) -> None:
        """Remove a node from the tree (a pending node, or before a commit)."""
        p = node.parent
        if p is not None and p.children is not None and p.children.get(node.name) is node:
            del p.children[node.name]
        node.parent = None
        self._drop_subtree(node)

    # -- applying the journal ------------------------------------------------

    def apply(self, op: Op, when: float) -> Changes:
        """Apply one journal operation; never raises on a well-formed op.

        The caller sets :attr:`seq` to the seq of the commit being applied
        first: new file versions are stamped with it (``Entry.vseq``) and a
        checkpoint freezes the tree at it.
        """
        ch = Changes()
        if isinstance(op, CheckpointOp):
            if op.delete:
                self.checkpoints.pop(op.name, None)
            else:
                self.checkpoints.setdefault(op.name, self.seq)  # first one wins a name race
            return ch
        if isinstance(op, PutOp):
            self._put(op.path, op.entry, ch, when)
            self.tombstones.pop(op.path, None)
        elif isinstance(op, DelOp):
            node = self.resolve(op.path)
            if node is not None and node is not self.root:
                self._tombstone(op.path, node, when)
                self._unlink(node, ch)
        elif isinstance(op, MoveOp):
            self._move(op, when, ch)
        return ch

    def _ensure_dir(self, path: str, ch: Changes, when: float) -> Node:
        node = self.root
        if not path:
            return node
        for part in path.split("/"):
            assert node.children is not None
            nxt = node.children.get(part)
            if nxt is None or nxt.children is None:
                if nxt is not None:
                    self._unlink(nxt, ch)
                # Times come from the record, so every mount builds the same tree.
                t = int(when * 1e9)
                entry = Entry(kind="d", mode=0o755, mtime_ns=t, ctime_ns=t)
                nxt = Node(self, self.table.alloc(), part, node, entry)
                node.children[part] = nxt
                self.table.nodes[nxt.ino] = nxt
                ch.entries.append((node.ino, part))
            node = nxt
        return node

    def _put(self, path: str, entry: Entry, ch: Changes, when: float = 0.0, *, stamp: bool = True) -> Node:
        if stamp and entry.kind == "f":
            # Checkpoints: vseq is when these bytes were committed; a metadata
            # change (same etag) keeps it, new bytes get this commit's seq.
            cur = self.resolve(path)
            same = cur is not None and cur.entry.kind == "f" and cur.entry.etag == entry.etag \
                and cur.entry.data_key == entry.data_key
            # a negative vseq marks a version applied locally ahead of
            # its deferred commit (agentfs/workspace/groupcommit.py): stamp it now.
            same = same and cur is not None and cur.entry.vseq >= 0
            vseq = cur.entry.vseq if same and cur is not None else self.seq
            if entry.vseq != vseq:
                entry = entry.model_copy(update={"vseq": vseq})
        if not path:
            self.root.entry = entry
            ch.inodes.add(self.root.ino)
            return self.root
        parent_path, name = split(path)
        parent = self._ensure_dir(parent_path, ch, when)
        assert parent.children is not None
        node = parent.children.get(name)
        if node is not None and (node.entry.kind == entry.kind):
            if entry.etag != node.entry.etag or entry.size != node.entry.size:
                ch.data.add(node.ino)
            node.entry = entry
            node.pending = False
            ch.inodes.add(node.ino)
            return node
        if node is not None:
            self._unlink(node, ch)
        node = Node(self, self.table.alloc(), name, parent, entry)
        parent.children[name] = node
        self.table.nodes[node.ino] = node
        ch.entries.append((parent.ino, name))
        ch.inodes.add(parent.ino)
        return node

    def _unlink(self, node: Node, ch: Changes) -> None:
        parent = node.parent
        if parent is not None and parent.children is not None:
            if parent.children.get(node.name) is node:
                del parent.children[node.name]
            ch.entries.append((parent.ino, node.name))
            ch.inodes.add(parent.ino)
        node.parent = None
        ch.inodes.add(node.ino)
        self._drop_subtree(node)

    def _drop_subtree(self, node: Node) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            self.table.maybe_drop(n)
            if n.children:
                stack.extend(n.children.values())

    def _tombstone(self, path: str, node: Node, when: float) -> None:
        if node.entry.kind == "f" and node.entry.etag is not None:
            self.tombstones[path] = when
        for sub, child in self.walk(node, path):
            if child.entry.kind == "f" and child.entry.etag is not None:
                self.tombstones[sub] = when

    def _move(self, op: MoveOp, when: float, ch: Changes) -> None:
        src = self.resolve(op.src)
        if src is None or src is self.root or op.src == op.dst:
            return
        if op.dst == op.src or op.dst.startswith(op.src + "/") or op.src.startswith(op.dst + "/"):
            # Into itself, or over one of its own ancestors (never valid locally;
            # a race between mounts could produce it): the same no-op everywhere.
            log.warning("journal: ignoring move of %r onto %r", op.src, op.dst)
            return
        self._tombstone(op.src, src, when)
        dst_parent_path, dst_name = split(op.dst)
        dst_parent = self._ensure_dir(dst_parent_path, ch, when)
        assert dst_parent.children is not None
        old = dst_parent.children.get(dst_name)
        if old is not None and old is not src:
            if "" not in op.etags:
                # Nothing was copied over the replaced file's key: it is garbage now.
                self._tombstone(op.dst, old, when)
            self._unlink(old, ch)
        if src.parent is not None and src.parent.children is not None:
            del src.parent.children[src.name]
            ch.entries.append((src.parent.ino, src.name))
            ch.inodes.add(src.parent.ino)
        src.parent = dst_parent
        src.name = dst_name
        dst_parent.children[dst_name] = src
        ch.entries.append((dst_parent.ino, dst_name))
        ch.inodes.add(dst_parent.ino)
        moved = [("", src), *((p, n) for p, n in self.walk(src))]
        for rel, n in moved:
            etag = op.etags.get(rel)
            if etag is not None and n.entry.kind == "f":
                # This key was rewritten by the rename's copy: it is live again.
                self.tombstones.pop(join(op.dst, rel) if rel else op.dst, None)
                n.entry = n.entry.model_copy(update={"etag": etag, "vseq": self.seq, "data_key": None})
                ch.inodes.add(n.ino)
