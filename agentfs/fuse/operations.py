"""pyfuse3 request handlers: convert arguments, call the FileSystem, convert results.

No logic lives here.  Every handler is wrapped by :func:`boundary`, the single
place where exceptions become errno: an :class:`AgentFSError` answers its own
errno, an ``OSError`` from local disk its errno, and anything else is logged
with its traceback and answered ``EIO`` so that the mount never dies
(pyfuse3 ends its main loop on any exception other than ``FUSEError``).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from agentfs.errors import AgentFSError, BadName
from agentfs.identity import Caller, agent_of_pid
from agentfs.vfs import FileSystem, Notifier
from agentfs.workspace import Attr

__all__ = ["FuseNotifier", "Operations", "boundary", "has_lock_ops"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Kernel attribute/entry cache lifetime.  Remote changes are pushed out of
#: the kernel cache by invalidation, so this only bounds a missed invalidation.
CACHE_TIMEOUT = 1.0


def has_lock_ops() -> bool:
    """Does this pyfuse3 pass lock requests (the patched binding, scripts/setup.sh)?"""
    return hasattr(pyfuse3, "FileLock")


def _unwrap(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def boundary(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Map every exception of a handler to a FUSEError (the one errno table)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> T:
        fs = args[0].fs
        try:
            await fs.accessed()
            return await fn(*args)
        except pyfuse3.FUSEError:
            raise
        except trio.Cancelled:
            raise
        except BaseException as raw:
            e = _unwrap(raw)
            if isinstance(e, AgentFSError):
                log.log(e.log_level, "%s: %s", fn.__name__, e)
                raise pyfuse3.FUSEError(e.errno_code) from None
            if isinstance(e, OSError) and e.errno:
                log.info("%s: %s", fn.__name__, e)
                raise pyfuse3.FUSEError(e.errno) from None
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            log.error("%s failed unexpectedly", fn.__name__, exc_info=raw)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            fs.request_done()

    return wrapper


def _name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadName("name is not valid UTF-8", path=repr(raw)) from None


def _text(raw: bytes, what: str) -> str:
    """Strict UTF-8 for a symlink target or an xattr name (invalid bytes
    are EINVAL, not surrogates that fail later with EIO)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadName(f"{what} is not valid UTF-8", path=repr(raw)) from None


def _entry(a: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = a.ino
    e.generation = 0
    e.entry_timeout = CACHE_TIMEOUT
    e.attr_timeout = CACHE_TIMEOUT
    e.st_mode = a.st_mode
    e.st_nlink = a.nlink
    e.st_uid = a.uid
    e.st_gid = a.gid
    e.st_rdev = 0
    e.st_size = a.size
    e.st_blksize = 128 * 1024
    e.st_blocks = (a.size + 511) // 512
    e.st_atime_ns = a.atime_ns
    e.st_mtime_ns = a.mtime_ns
    e.st_ctime_ns = a.ctime_ns
    return e


class FuseNotifier(Notifier):
    def invalidate_inode(self, ino: int, attr_only: bool) -> None:
        try:
            pyfuse3.invalidate_inode(ino, attr_only)
        except (FileNotFoundError, OSError):
            pass

    def invalidate_entry(self, parent_ino: int, name: str) -> None:
        try:
            pyfuse3.invalidate_entry(parent_ino, name.encode())
        except (FileNotFoundError, OSError):
            pass


class Operations(pyfuse3.Operations):
    """The pyfuse3 handler table over a :class:`FileSystem`."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: FileSystem) -> None:
        super().__init__()
        self.fs = fs

    def _caller(self, ctx: pyfuse3.RequestContext) -> Caller:
        agent = agent_of_pid(ctx.pid) or self.fs.agent
        return Caller(pid=ctx.pid, uid=ctx.uid, gid=ctx.gid, agent=agent, umask=ctx.umask)

    @boundary
    async def lookup(self, parent_inode, name, ctx):
        n = _name(name)
        if n == ".":
            return _entry(self.fs.getattr(parent_inode))
        return _entry(await self.fs.lookup(parent_inode, n))

    @boundary
    async def forget(self, inode_list):
        self.fs.forget(list(inode_list))

    @boundary
    async def getattr(self, inode, ctx):
        return _entry(self.fs.getattr(inode))

    @boundary
    async def setattr(self, inode, attr, fields, fh, ctx):
        mtime = None
        if fields.update_mtime:
            mtime = attr.st_mtime_ns
        a = await self.fs.setattr(
            inode, self._caller(ctx), fh=fh,
            mode=attr.st_mode & 0o7777 if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            mtime_ns=mtime,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
        )
        return _entry(a)

    @boundary
    async def readlink(self, inode, ctx):
        return os.fsencode(self.fs.readlink(inode))

    @boundary
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    @boundary
    async def mkdir(self, parent_inode, name, mode, ctx):
        return _entry(await self.fs.mkdir(parent_inode, _name(name), mode & ~ctx.umask, self._caller(ctx)))

    @boundary
    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, _name(name), self._caller(ctx))

    @boundary
    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, _name(name), self._caller(ctx))

    @boundary
    async def symlink(self, parent_inode, name, target, ctx):
        return _entry(await self.fs.symlink(parent_inode, _name(name), _text(target, "symlink target"),
                                            self._caller(ctx)))

    @boundary
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.fs.rename(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new),
                             flags, self._caller(ctx))

    @boundary
    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)

    @boundary
    async def open(self, inode, flags, ctx):
        fh, keep = await self.fs.open(inode, flags, self._caller(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @boundary
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, a = await self.fs.create(parent_inode, _name(name), mode & ~ctx.umask, flags, self._caller(ctx))
        return pyfuse3.FileInfo(fh=fh), _entry(a)

    @boundary
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @boundary
    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    @boundary
    async def flush(self, fh):
        await self.fs.flush(fh)

    @boundary
    async def release(self, fh):
        await self.fs.release(fh)

    @boundary
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh)

    @boundary
    async def opendir(self, inode, ctx):
        return await self.fs.opendir(inode)

    @boundary
    async def readdir(self, fh, start_id, token):
        for name, a, nxt in self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name.encode(), _entry(a), nxt):
                break
            # The kernel now holds a reference (readdirplus counts as lookup).
            node = self.fs.table.get(a.ino)
            if node is not None:
                node.lookups += 1

    @boundary
    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    @boundary
    async def fsyncdir(self, fh, datasync):
        await self.fs.fsyncdir(fh)  # commits the deferred records of closes

    @boundary
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = 128 * 1024
        s.f_frsize = 4096
        s.f_blocks = 1 << 38
        s.f_bfree = s.f_bavail = 1 << 37
        s.f_files = 1 << 32
        s.f_ffree = s.f_favail = (1 << 32) - len(self.fs.table.nodes)
        s.f_namemax = 255
        return s

    @boundary
    async def getxattr(self, inode, name, ctx):
        return await self.fs.getxattr(inode, _text(name, "xattr name"))

    @boundary
    async def listxattr(self, inode, ctx):
        return [n.encode() for n in self.fs.listxattr(inode)]

    @boundary
    async def setxattr(self, inode, name, value, ctx):
        await self.fs.setxattr(inode, _text(name, "xattr name"), bytes(value), self._caller(ctx))

    @boundary
    async def removexattr(self, inode, name, ctx):
        await self.fs.removexattr(inode, _text(name, "xattr name"), self._caller(ctx))

    # -- locks: the patched binding's lock operations (see agentfs/locks/kernel.py) --

    @boundary
    async def flock(self, fh, owner, op, ctx):
        await self.fs.flock(fh, owner, op, ctx.pid)

    @boundary
    async def setlk(self, fh, owner, lock, sleep, ctx):
        await self.fs.setlk(fh, owner, lock.type, lock.start, lock.length, lock.pid or ctx.pid, bool(sleep))

    @boundary
    async def getlk(self, fh, owner, lock, ctx):
        type_, start, length, pid = await self.fs.getlk(fh, owner, lock.type, lock.start, lock.length)
        return pyfuse3.FileLock(type_, start, length, pid)

    @boundary
    async def unlock_owner(self, fh, owner):
        await self.fs.unlock_owner(fh, owner)
