"""A tiny in-memory pyfuse3 file system for the binding's lock operations.

Run as ``python -m tests.helpers.lock_ops_fs MOUNTPOINT LOG [--no-locks]``: it serves one
read-only file, ``f``, and (unless ``--no-locks``) implements ``getlk``/``setlk``/
``flock``/``unlock_owner`` with whole-file semantics (any two locks of different
owners conflict unless both are shared), appending one JSON line per call to
LOG: ``{"op": ..., "owner": ..., ...}`` at entry and ``{"op": ..., "outcome": ...}``
when the call ends ("ok", "EAGAIN", "cancelled"). A blocking request that
conflicts waits until the conflicting owner unlocks; ``tests/mount/test_fuse_lock_ops.py``
never unlocks, so such a request ends only when the kernel interrupts it.

Concurrency: everything runs on one trio loop; waiters sleep on a shared
``trio.Event`` that every release replaces.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import sys
from typing import Any, TextIO

import pyfuse3
import trio

__all__ = ["LockingFs", "PlainFs", "main"]

log = logging.getLogger(__name__)

FILE_INODE = 2
FILE_NAME = b"f"
CONTENT = b"lock ops test file\n"
FAILING_START = 666  # setlk of a range starting here raises a non-FUSEError exception


class PlainFs(pyfuse3.Operations):
    """One read-only file ``f`` in the root directory; no lock handlers."""

    def __init__(self, log_file: TextIO) -> None:
        super().__init__()
        self.log_file = log_file
        self.next_fh = 0

    def record(self, **fields: Any) -> None:
        self.log_file.write(json.dumps(fields) + "\n")
        self.log_file.flush()

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            entry.st_mode = stat.S_IFDIR | 0o755
            entry.st_nlink = 2
        else:
            entry.st_mode = stat.S_IFREG | 0o666
            entry.st_nlink = 1
            entry.st_size = len(CONTENT)
        entry.st_uid = os.getuid()
        entry.st_gid = os.getgid()
        # No attribute caching: every stat of the test reaches the file system.
        entry.attr_timeout = 0
        entry.entry_timeout = 0
        return entry

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(FILE_INODE)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE_NAME, self._attrs(FILE_INODE), 1)

    async def open(self, inode: int, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self.next_fh += 1
        # Direct I/O: every read of the test reaches the file system.
        return pyfuse3.FileInfo(fh=self.next_fh, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return CONTENT[off:off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        return None


def _conflicts(held: dict[int, int], owner: int, exclusive: bool) -> bool:
    """Whole-file rule: another owner's lock conflicts unless both are shared."""
    return any(o != owner and (exclusive or mode == fcntl.F_WRLCK) for o, mode in held.items())


class LockingFs(PlainFs):
    """PlainFs with lock handlers; flock and POSIX locks are kept apart."""

    def __init__(self, log_file: TextIO) -> None:
        super().__init__(log_file)
        self.posix: dict[int, pyfuse3.FileLock] = {}  # owner -> its (whole-file) lock
        self.posix_via: dict[int, int] = {}  # owner -> fh its lock was taken through
        self.flocks: dict[int, int] = {}  # owner -> F_RDLCK / F_WRLCK
        self.changed = trio.Event()

    def _released(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _modes(self, op: str) -> dict[int, int]:
        if op == "flock":
            return self.flocks
        return {o: lk.type for o, lk in self.posix.items()}

    async def _wait_free(self, op: str, owner: int, mode: int, wait: bool) -> None:
        """Return once *owner* may take *mode*; EAGAIN at once if not *wait*."""
        try:
            while _conflicts(self._modes(op), owner, mode == fcntl.F_WRLCK):
                if not wait:
                    self.record(op=op, owner=owner, outcome="EAGAIN")
                    raise pyfuse3.FUSEError(errno.EAGAIN)
                await self.changed.wait()
        except trio.Cancelled:
            self.record(op=op, owner=owner, outcome="cancelled")
            raise

    async def flock(self, fh: int, owner: int, op: int, ctx: pyfuse3.RequestContext) -> None:
        self.record(op="flock", owner=owner, flock_op=op, pid=ctx.pid)
        base = op & ~fcntl.LOCK_NB
        if base == fcntl.LOCK_UN:
            self.flocks.pop(owner, None)
            self._released()
            self.record(op="flock", owner=owner, outcome="ok")
            return
        mode = fcntl.F_WRLCK if base == fcntl.LOCK_EX else fcntl.F_RDLCK
        await self._wait_free("flock", owner, mode, not op & fcntl.LOCK_NB)
        self.flocks[owner] = mode
        self.record(op="flock", owner=owner, outcome="ok")

    async def setlk(self, fh: int, owner: int, lock: pyfuse3.FileLock, sleep: bool,
                    ctx: pyfuse3.RequestContext) -> None:
        self.record(op="setlk", owner=owner, type=lock.type, start=lock.start,
                    length=lock.length, pid=lock.pid, sleep=sleep, ctx_pid=ctx.pid)
        if lock.start == FAILING_START:
            raise RuntimeError("a handler bug, on purpose")
        if lock.type == fcntl.F_UNLCK:
            self.posix.pop(owner, None)
            self._released()
            self.record(op="setlk", owner=owner, outcome="ok")
            return
        await self._wait_free("setlk", owner, lock.type, sleep)
        self.posix[owner] = lock
        self.posix_via[owner] = fh
        self.record(op="setlk", owner=owner, outcome="ok")

    async def getlk(self, fh: int, owner: int, lock: pyfuse3.FileLock,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.FileLock:
        self.record(op="getlk", owner=owner, type=lock.type, start=lock.start,
                    length=lock.length, pid=lock.pid)
        for other, held in self.posix.items():
            if other != owner and (lock.type == fcntl.F_WRLCK or held.type == fcntl.F_WRLCK):
                self.record(op="getlk", owner=owner, outcome="ok", answer=[
                    held.type, held.start, held.length, held.pid])
                return held
        self.record(op="getlk", owner=owner, outcome="ok", answer=None)
        return pyfuse3.FileLock(fcntl.F_UNLCK)

    async def release(self, fh: int) -> None:
        # The kernel names no owner for OFD locks at close: whatever POSIX-type lock
        # is still recorded as taken through fh is an OFD lock of this description.
        gone = [o for o, via in self.posix_via.items() if via == fh and o in self.posix]
        for owner in gone:
            del self.posix[owner]
        if gone:
            self.record(op="release", fh=fh, dropped=gone)
            self._released()

    async def unlock_owner(self, fh: int, owner: int) -> None:
        self.record(op="unlock_owner", owner=owner)
        had_posix = self.posix.pop(owner, None) is not None
        had_flock = self.flocks.pop(owner, None) is not None
        if had_posix or had_flock:
            self._released()


def main(argv: list[str]) -> int:
    """Mount the file system at ``argv[0]`` and serve until it is unmounted."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    mountpoint, log_path = argv[0], argv[1]
    with open(log_path, "a") as log_file:
        ops = PlainFs(log_file) if "--no-locks" in argv[2:] else LockingFs(log_file)
        options = set(pyfuse3.default_options)
        options.add("fsname=lockopsfs")
        pyfuse3.init(ops, mountpoint, options)
        try:
            trio.run(pyfuse3.main)
        finally:
            pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
