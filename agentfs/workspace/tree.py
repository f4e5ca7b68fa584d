"""The tree of a workspace: metadata operations, each one journal commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import trio

from agentfs import agentstate
from agentfs.errors import (
    AlreadyExists,
    ConflictError,
    Fenced,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotSupported,
    PreconditionFailed,
    Stale,
    TooBig,
)
from agentfs.identity import Caller
from agentfs.models import (
    DelOp,
    MoveOp,
    PutOp,
    encode_xattr,
)
from agentfs.names import check_name
from agentfs.namespace import Node, join
from agentfs.workspace import adoption, cow, groupcommit, intents
from agentfs.workspace.base import WorkspaceBase
from agentfs.workspace.types import (
    MAX_XATTR_NAME,
    MAX_XATTR_VALUE,
    OpenFile,
)

__all__ = ['TreeOps']

log = logging.getLogger(__name__)

class TreeOps(WorkspaceBase):
    """The tree: directories, symlinks, attributes, extended attributes,
    unlink, rmdir, rename, sync and the scan."""

    async def mkdir(self, parent: Node, name: str, mode: int, caller: Caller) -> Node:
        async with self.ns_lock.shared():
            self._check_new(parent, name)
            path = join(self.path_of(parent), name)
            entry = self._new_entry("d", mode, caller)
            await self._commit_meta([self.record("mkdir", PutOp(path=path, entry=entry), caller),
                               *await self._touch_dir(parent, caller)])
            return self.lookup(parent, name)

    async def symlink(self, parent: Node, name: str, target: str, caller: Caller) -> Node:
        async with self.ns_lock.shared():
            self._check_new(parent, name)
            if len(target.encode("utf-8", "surrogateescape")) > 4095:
                raise NameTooLong("symlink target too long")
            path = join(self.path_of(parent), name)
            entry = self._new_entry("l", 0o777, caller, target=target)
            await self._commit_meta([self.record("symlink", PutOp(path=path, entry=entry), caller),
                               *await self._touch_dir(parent, caller)])
            return self.lookup(parent, name)

    async def setattr(self, node: Node, caller: Caller, *, mode: int | None = None,
                      uid: int | None = None, gid: int | None = None, size: int | None = None,
                      mtime_ns: int | None = None, atime_ns: int | None = None,
                      of: OpenFile | None = None, by_handle: bool = False) -> None:
        self.check_writable()
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
            path = self.path_of(node)
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
        self.check_writable()
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
                    await self.upload(of, caller)
                await self._update_entry(node, {"xattrs": change.xattrs, "ctime_ns": time.time_ns()},
                                         change.action, caller, **change.detail)
                return
            xattrs = {**node.entry.xattrs, name: encode_xattr(value)}
            await self._update_entry(node, {"xattrs": xattrs, "ctime_ns": time.time_ns()}, "setxattr",
                                     caller, name=name, size=len(value))

    async def removexattr(self, node: Node, name: str, caller: Caller) -> None:
        self.check_writable()
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
        self.check_writable()
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
            path = self.path_of(node)
            await cow.preserve(self, path, node.entry)  # checkpoints: copy-on-write
            await self.commit([self.record("delete", DelOp(path=path), caller),
                               *await self._touch_dir(parent, caller)])
            if of is not None and self.writeback is not None:
                self.writeback.discard(self, of)  # its queued bytes are garbage now
            if node.entry.kind == "f" and node.entry.etag is not None:
                await self.garbage.add([(self.key(path), node.entry.etag)])

    async def rmdir(self, parent: Node, name: str, caller: Caller) -> None:
        self.check_writable()
        async with self.ns_lock.exclusive():
            node = self.lookup(parent, name)
            if node.children is None:
                raise NotADirectory()
            if node.children:
                raise NotEmpty(path=name)
            path = self.path_of(node)
            await self.commit([self.record("rmdir", DelOp(path=path), caller),
                               *await self._touch_dir(parent, caller)])

    async def delete_keys(self, keys: Iterable[tuple[str, str | None]]) -> None:
        """Delete garbage keys, each only at the version that became garbage:
        a key another writer has rewritten since is kept (its commit follows)."""
        async def one(key: str, etag: str | None) -> None:
            try:
                await self.io(self.store.delete, key, if_match=etag)
            except PreconditionFailed:
                log.info("workspace %s: %s was rewritten meanwhile; not deleted", self.name, key)

        async with trio.open_nursery() as nursery:
            for k, etag in keys:
                nursery.start_soon(one, k, etag)

    # -- rename ---------------------------------------------------------------------

    async def rename(self, old_parent: Node, old_name: str, new_parent: Node, new_name: str,
                     caller: Caller, *, noreplace: bool = False) -> None:
        self.check_writable()
        check_name(new_name)
        if self.writeback is not None and await self.writeback.rename_local(
                self, old_parent, old_name, new_parent, new_name, noreplace=noreplace):
            return  # --writeback: a file not uploaded yet moves locally
        of = self.open_files.get(self.lookup(old_parent, old_name).ino)
        if of is not None and of.dirty:
            # A file never uploaded (or changed since) reaches the store first,
            # so the rename moves committed bytes.
            await self.upload(of, caller)
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
            src_path = self.path_of(src)
            dst_path = join(self.path_of(new_parent), new_name)
            if dst is not None and dst.ino in self.open_files:
                # The replaced file stays readable through its open fds.
                await self._ensure_local(self.open_files[dst.ino])
                self.open_files[dst.ino].unlinked = True
            # checkpoints: copy-on-write of what leaves its natural key
            await cow.preserve_tree(self, src_path, src)
            if dst is not None:
                await cow.preserve(self, dst_path, dst.entry)
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
                    info = await self.io(self.store.copy, old_key, new_key, if_match=n.entry.etag,
                                          size=n.entry.size)
                except PreconditionFailed:
                    raise Stale("the file changed in the store during the rename", path=old_key) from None
                etags[rel] = info.etag

            # an intent names the new keys first, so copies of a rename
            # killed before its commit are removed, not adopted (agentfs/workspace/intents.py)
            intent = await self.io(intents.begin, self.journal, seq=self.ns.seq, src=src_path,
                                    dst=dst_path, mount=self.mount_id,
                                    keys=[self.key(join(dst_path, rel) if rel else dst_path)
                                          for rel, _ in files]) if files else None
            if intent is not None:
                self.renaming.add(intent.id)
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
                    self.renaming.discard(intent.id)
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
            # deleted after the syscall returns (agentfs/workspace/garbage.py); a crash
            # first leaves tombstoned leftovers and a committed intent, which scans settle.
            if intent is not None:
                self.renaming.discard(intent.id)
            await self.garbage.add(old_keys, intent)

    # -- whole-workspace operations ---------------------------------------------------

    async def sync(self, caller: Caller) -> None:
        """Flush every dirty file, including closed ones whose upload failed."""
        try:
            for of in list(self.open_files.values()):
                if of.dirty:
                    try:
                        await self.upload(of, self._retry.get(of.node.ino, caller))
                    except (Fenced, ConflictError):
                        pass  # already kept as a conflict copy; go on with the rest
                if of.handles <= 0 and not of.dirty:
                    self.forget_open(of)
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
        """Reconcile the natural keys with the journal (see :func:`agentfs.workspace.adoption.scan`)."""
        return await adoption.scan(self, now=now, changed_now=changed_now)
