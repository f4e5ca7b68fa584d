"""Reads of the tree that every view answers the same way.

The live workspace (:class:`agentfs.workspace.Workspace`) and the read-only
checkpoint views (:mod:`agentfs.checkpoints`) both answer ``lookup``,
``listdir``, ``readlink``, ``getxattr`` and ``listxattr`` from the nodes
alone; this mixin is that one answer.

Error contract: :class:`~agentfs.errors.NotADirectory` (``ENOTDIR``),
:class:`~agentfs.errors.NotFound` (``ENOENT``),
:class:`~agentfs.errors.InvalidArgument` (``EINVAL``) for ``readlink`` of a
non-symlink, :class:`~agentfs.errors.NoAttribute` (``ENODATA``) for a missing
attribute.  No I/O; safe from the trio thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentfs.errors import InvalidArgument, NoAttribute, NotADirectory, NotFound
from agentfs.models import decode_xattr

if TYPE_CHECKING:
    from agentfs.namespace import Node

__all__ = ["EntryReads"]


class EntryReads:
    """``lookup``/``listdir``/``readlink``/``getxattr``/``listxattr`` from the nodes."""

    def lookup(self, parent: Node, name: str) -> Node:
        if parent.children is None:
            raise NotADirectory()
        node = parent.children.get(name)
        if node is None:
            raise NotFound(path=name)
        return node

    def listdir(self, node: Node) -> list[tuple[str, Node]]:
        if node.children is None:
            raise NotADirectory()
        return sorted(node.children.items())

    def readlink(self, node: Node) -> str:
        if node.entry.kind != "l":
            raise InvalidArgument("not a symlink")
        return node.entry.target or ""

    def getxattr(self, node: Node, name: str) -> bytes:
        v = node.entry.xattrs.get(name)
        if v is None:
            raise NoAttribute(path=name)
        return decode_xattr(v)

    def listxattr(self, node: Node) -> list[str]:
        return sorted(node.entry.xattrs)
