"""The client side of locks: ``agentfs lock``, :class:`FileLock` and :func:`lock`.

A :class:`FileLock` is a kernel ``flock`` on the file.  On an agentfs mount
that passes kernel locks to the store (the default, see
:mod:`agentfs.locks.kernel`) that flock alone excludes every other mount; on a
mount without them (``--no-kernel-locks``), and for a directory (the kernel
passes no directory locks to FUSE), the lock also takes the lease through the
:data:`agentfs.locks.leases.LOCK_XATTR` attribute.

Error contract: :class:`agentfs.errors.WouldBlock` when the lock is not
obtained in time; :class:`agentfs.errors.NotSupported` for a path on an
agentfs mount outside any workspace; ``OSError`` from opening the file.
Concurrency: one FileLock is used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

from agentfs.errors import InvalidArgument, NotSupported, WouldBlock
from agentfs.locks.leases import LOCK_XATTR

#: the mount root's status attribute (a JSON object; see agentfs.vfs)
STATUS_XATTR = "user.agentfs.mount.status"

__all__ = ["FileLock", "lock", "mount_of", "on_agentfs"]

log = logging.getLogger(__name__)


def mount_of(path: str) -> str | None:
    """The agentfs FUSE mount point ``path`` lies on (None when not on agentfs)."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mp = left.split()[4].replace("\\040", " ")
                if (real == mp or real.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                    best, fstype = mp, right.split()[0]
    except OSError:
        return None
    return best if fstype == "fuse.agentfs" else None


def on_agentfs(path: str) -> bool:
    """Is ``path`` on an agentfs FUSE mount (so leases apply)?"""
    return mount_of(path) is not None


def kernel_locks_of(mountpoint: str) -> bool:
    """Does the agentfs mount at ``mountpoint`` pass flock/fcntl locks to the store?"""
    try:
        status = json.loads(os.getxattr(mountpoint, STATUS_XATTR))
    except (OSError, ValueError):
        return False
    return bool(status.get("kernel_locks"))


class _Alarm(Exception):
    """Raised by the SIGALRM handler of :func:`_flock_until` to end a blocked flock."""


def _flock_until(fd: int, op: int, deadline: float) -> bool:
    """A blocking flock ended by SIGALRM at ``deadline`` (main thread only).

    Waiting in the kernel, not polling, keeps the locker's place: on an agentfs
    mount it is a registered exclusive waiter (no starvation by shared
    lockers), and the interrupted wait removes its registration at once.
    Returns False when the deadline passed first.
    """
    def ring(signum: int, frame: object) -> None:
        raise _Alarm

    left = deadline - time.monotonic()
    if left <= 0:
        return False
    got = False
    old = signal.signal(signal.SIGALRM, ring)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, left)
            fcntl.flock(fd, op)
            got = True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Alarm:
        pass  # also when it rang just after the lock was granted: ``got`` says which
    finally:
        signal.signal(signal.SIGALRM, old)
    return got


class FileLock:
    """A kernel ``flock`` on ``path``; on an agentfs mount without kernel
    locks across mounts, also a lease in the store through the lock attribute.

    ``wait``: None blocks until acquired, 0 fails at once, otherwise seconds.
    :meth:`acquire` raises WouldBlock when the lock is not obtained in time.
    The lease belongs to this process: the mount renews it while the process
    lives and releases it when it exits.  Not reentrant; one thread at a time.
    """

    def __init__(self, path: str | os.PathLike[str], *, shared: bool = False, wait: float | None = None) -> None:
        self.path = os.fspath(path)
        self.shared = shared
        self.wait = wait
        self.fd = -1
        self.leased = False

    @property
    def mode(self) -> str:
        return "shared" if self.shared else "exclusive"

    def _open(self) -> int:
        # An existing file is opened without O_CREAT: a read-only mount (or a
        # read-only file) still takes a lock on it, as flock(1) does.
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            return os.open(self.path, flags | os.O_CREAT, 0o666)

    def acquire(self) -> None:
        if self.fd >= 0:
            raise InvalidArgument("lock already held", path=self.path)
        deadline = None if self.wait is None else time.monotonic() + self.wait
        fd = self._open()
        mp = mount_of(self.path)
        # The kernel passes no directory locks to FUSE: a directory needs the lease.
        kernel = mp is not None and kernel_locks_of(mp) and not stat.S_ISDIR(os.fstat(fd).st_mode)
        try:
            try:
                self._kernel(fd, deadline, queue=kernel)
            except WouldBlock as e:
                if mp is None:
                    raise
                raise WouldBlock(f"{e.strerror} ({self._holder()})", path=self.path) from None
            if mp is not None and not kernel:
                self._lease(deadline)
        except BaseException:
            os.close(fd)  # releases the kernel lock
            raise
        self.fd = fd

    def _pause(self, deadline: float | None, delay: float) -> float:
        if deadline is not None and time.monotonic() >= deadline:
            # CLI review fixes: "an exclusive"; with wait=0 (-n) the lock is simply held.
            article = "an" if self.mode == "exclusive" else "a"
            why = "lock is held" if self.wait == 0 else f"not free within {self.wait:g}s"
            raise WouldBlock(f"could not get {article} {self.mode} lock: {why}", path=self.path)
        sleep = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(sleep)
        return min(delay * 1.5, 0.5)

    def _kernel(self, fd: int, deadline: float | None, *, queue: bool = False) -> None:
        """The kernel flock; ``queue``: a timed wait waits in the kernel (so, on a
        mount with kernel locks, as a registered waiter) until an alarm ends it."""
        op = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        if deadline is None:
            fcntl.flock(fd, op)
            return
        if queue and self.wait and threading.current_thread() is threading.main_thread():
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if _flock_until(fd, op, deadline):
                return
            self._pause(deadline, 0.0)  # raises WouldBlock: the deadline has passed
        delay = 0.02
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                delay = self._pause(deadline, delay)

    def _lease(self, deadline: float | None) -> None:
        value = self.mode + ("" if self.shared or self.wait == 0 else " wait")
        delay = 0.02
        while True:
            try:
                os.setxattr(self.path, LOCK_XATTR, value.encode())
                self.leased = True
                return
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise NotSupported("no lease here: lock a file or directory inside a workspace",
                                       path=self.path) from None
                if e.errno not in (errno.EBUSY, errno.EWOULDBLOCK, errno.EAGAIN):  # EBUSY: see LeaseBusy
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    holder = self._holder()
                    self._leave()
                    raise WouldBlock(f"{self.mode} lock held elsewhere ({holder})", path=self.path) from None
                try:
                    delay = self._pause(deadline, delay)
                except BaseException:
                    self._leave()
                    raise

    def _leave(self) -> None:
        """Drop this process's waiter registration at once (a locker that gave up
        never blocks the next one); the mount answers ENODATA when there was none."""
        with contextlib.suppress(OSError):
            os.removexattr(self.path, LOCK_XATTR)

    def _holder(self) -> str:
        info = self.info()
        if not info or not info.get("holders"):
            return "held on this mount" if info is None else "an exclusive locker is waiting"
        return ", ".join(f"{h['agent']}@{h['host']} pid {h['pid']} token {h['token']}" for h in info["holders"])

    def info(self) -> dict[str, Any] | None:
        """The lease as the mount shows it (None when free or not on agentfs)."""
        try:
            return json.loads(os.getxattr(self.path, LOCK_XATTR))
        except OSError:
            return None

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if self.leased:
                try:
                    os.removexattr(self.path, LOCK_XATTR)
                except OSError as e:
                    log.warning("releasing the lease on %s: %s", self.path, e.strerror)
        finally:
            self.leased = False
            fd, self.fd = self.fd, -1
            # An explicit unlock, not just the close: on a mount with kernel
            # locks it is settled in the store before it returns, so another
            # mount may take the lock at once (an unlock by close is settled
            # just after the close returns).
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def lock(path: str | os.PathLike[str], shared: bool = False, wait: float | None = None) -> Iterator[FileLock]:
    """``with agentfs.lock("/mnt/ws/task.md"):`` -- flock semantics on one mount
    and across mounts (a lease); raises :class:`agentfs.errors.WouldBlock`
    (``EWOULDBLOCK``) when not acquired within ``wait`` seconds (None: block)."""
    fl = FileLock(path, shared=shared, wait=wait)
    fl.acquire()
    try:
        yield fl
    finally:
        fl.release()
