"""Kernel locks across mounts: ``flock(2)`` and ``fcntl`` locks on leases.

With the binding's lock operations (``third_party/pyfuse3``), the kernel
hands every ``flock``, ``F_SETLK``/``F_SETLKW``/``F_GETLK`` and ``F_OFD_*``
request of a mount to this module instead of keeping the lock to itself.

- **On one mount** the locks are kept here exactly: flock locks per open file
  description, POSIX byte-range locks per process (split and merged by range),
  OFD locks per open file description; conflicts between local owners are
  decided in memory, with no store request.
- **Across mounts** the mount holds one lease per locked file
  (:class:`agentfs.locks.leases.LeaseStore`, the lease ``agentfs lock`` takes, with
  its fencing tokens, heartbeat and TTL): *shared* while its local locks are
  all shared locks (``LOCK_SH``, ``F_RDLCK``), *exclusive* while one is
  exclusive (``LOCK_EX``, ``F_WRLCK``).  So across mounts the unit is the
  whole file: a byte-range write lock excludes every lock on the file held
  on another mount (a conflict reported too often, never one missed), and a
  flock and an fcntl lock on two mounts exclude each other.
- **Cost**: taking a lock the mount's lease already covers costs no request;
  taking the lease costs one conditional put when the lease object is as this
  mount last saw it (see LeaseStore._update).  When the last local lock of a
  file goes, the mount keeps the lease *cached* (marked so in the store, one
  put) instead of giving it back, so the next local lock costs no request.
  Another mount that finds a cached lease rings this mount's *doorbell* (a
  small object, :func:`doorbell_key`); the holding mount polls its doorbell
  while it caches leases (one HEAD per :data:`DOORBELL_POLL`), gives its
  cached leases back and stops caching in that workspace for a TTL.  That is
  how the mount knows no other mount is interested: nobody rang.
- **Handing over data**: before a lease is given back or downgraded, the
  mount uploads the file's unwritten bytes and commits its journal records
  (the release records its journal position in the lease); a mount that
  takes a lease catches up to that position and refreshes its open files of
  the path first (:mod:`agentfs.workspace.handover`).
- **Waiting**: a blocking request waits in its own task (other requests go
  on), polls the lease with backoff, is woken at once by a local unlock,
  and registers as an exclusive waiter in the lease (renewed by each poll,
  expiring after :data:`agentfs.locks.leases.WAITER_TTL`) so shared lockers cannot
  starve it.  A signal cancels the wait (the binding answers ``EINTR``) and
  its registration is removed at once.

Error contract: a refused lock raises :class:`agentfs.errors.WouldBlock`
(``EAGAIN``); a bad request :class:`agentfs.errors.InvalidArgument`; store
errors propagate (the request fails, local state is unchanged).
Concurrency: everything runs in the mount's trio thread; each file's lease
changes are serialised by that file's own lock.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from agentfs.errors import AgentFSError, Fenced, InvalidArgument, NotFound, WouldBlock
from agentfs.identity import HOSTNAME, agent_of_pid
from agentfs.locks.leases import CACHED_WAIT, DOORBELL_POLL, Who, doorbell_key
from agentfs.locks.mountleases import LeaseStores
from agentfs.store.base import ObjectStore

__all__ = ["KernelLocks", "Span"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the end of a lock that runs to the end of the file (and beyond)
EOF = 1 << 63
#: the most leases a mount keeps cached (the oldest is given back)
MAX_CACHED = 64

EXCLUSIVE, SHARED = "exclusive", "shared"


@dataclass(slots=True)
class Span:
    """A lock of one owner: a POSIX/OFD range ``[start, end)`` or a flock (whole file)."""

    owner: int
    fh: int
    start: int
    end: int
    write: bool
    pid: int
    flock: bool = False

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end


@dataclass
class FileLocks:
    """The locks of one file on this mount and the lease that covers them."""

    ws: str | None
    path: str
    spans: list[Span] = field(default_factory=list)
    #: the lease held in the store for this file: None, SHARED or EXCLUSIVE
    mode: str | None = None
    token: int = 0
    #: the lease is held with no local lock (kept for the next local lock)
    cached: bool = False
    #: the store marks this mount's holder as cached (a hint for other mounts)
    hinted: bool = False
    #: the process the store shows as this mount's holder
    holder_pid: int = 0
    #: another holder took the lease over (TTL after a freeze): writes are fenced
    lost: bool = False
    #: set when a local lock goes: wakes local waiters
    changed: trio.Event = field(default_factory=trio.Event)
    mutex: trio.Lock = field(default_factory=trio.Lock)
    waiting: int = 0
    #: the lease is being given back or downgraded: new local locks wait
    relaxing: bool = False
    used: float = field(default_factory=time.monotonic)

    def wanted(self) -> str | None:
        if not self.spans:
            return None
        return EXCLUSIVE if any(s.write for s in self.spans) else SHARED

    def conflict(self, owner: int, start: int, end: int, write: bool, flock: bool) -> Span | None:
        for s in self.spans:
            if s.owner != owner and s.flock == flock and (write or s.write) and s.overlaps(start, end):
                return s
        return None

    def covers(self, write: bool) -> bool:
        if self.relaxing or self.lost:
            return False
        return self.mode == EXCLUSIVE or (self.mode == SHARED and not write)

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def set_range(self, owner: int, fh: int, start: int, end: int, write: bool | None, pid: int) -> None:
        """POSIX semantics: ``[start, end)`` of ``owner`` becomes ``write``/read (None: unlocked)."""
        out: list[Span] = []
        for s in self.spans:
            if s.owner != owner or s.flock or not s.overlaps(start, end):
                out.append(s)
                continue
            if s.start < start:
                out.append(Span(owner, s.fh, s.start, start, s.write, s.pid))
            if s.end > end:
                out.append(Span(owner, s.fh, end, s.end, s.write, s.pid))
        if write is not None:
            out.append(Span(owner, fh, start, end, write, pid))
        self.spans = _merged(out)

    def drop(self, pred: Callable[[Span], bool]) -> bool:
        before = len(self.spans)
        self.spans = [s for s in self.spans if not pred(s)]
        return len(self.spans) != before


def _merged(spans: list[Span]) -> list[Span]:
    """Adjacent or overlapping ranges of one owner and type become one."""
    spans = sorted(spans, key=lambda s: (s.flock, s.owner, s.write, s.start))
    out: list[Span] = []
    for s in spans:
        last = out[-1] if out else None
        if (last is not None and not s.flock and not last.flock and last.owner == s.owner
                and last.write == s.write and s.start <= last.end):
            last.end = max(last.end, s.end)
        else:
            out.append(s)
    return out


class KernelLocks(LeaseStores):
    """The kernel locks of one mount (see the module docstring).

    ``settle(ws, path)`` commits what the mount wrote to ``path`` and returns
    its journal position; ``catch_up(ws, path, seq)`` applies the journal to
    ``seq`` and refreshes open files: both are handed in by the mount.
    """

    def __init__(self, store: ObjectStore, *, agent: str, mount_id: str, ttl: float,
                 limiter: trio.CapacityLimiter | None,
                 settle: Callable[[str, str], Awaitable[int]],
                 catch_up: Callable[[str, str, int], Awaitable[None]]) -> None:
        super().__init__(store, limiter)
        self.ttl = ttl
        #: the mount as a lease holder (owns its holders whatever process took them)
        self.who = Who(agent=agent, host=HOSTNAME, mount=mount_id, pid=None, kernel=True)
        self.mount_id = mount_id
        self._settle = settle
        self._catch_up = catch_up
        self.files: dict[tuple[str | None, int], FileLocks] = {}
        #: workspace -> monotonic time until which this mount does not cache leases
        self._no_cache_until: dict[str, float] = {}
        self._wake = trio.Event()
        #: files whose locks went with a close: their lease is settled in the background
        self._settle_soon: set[tuple[str | None, int]] = set()

    # -- plumbing ------------------------------------------------------------------

    def _who(self, pid: int) -> Who:
        """The lease holder for a lock taken by ``pid``: its agent and pid are shown."""
        return Who(agent=agent_of_pid(pid) or self.who.agent, host=HOSTNAME, mount=self.mount_id,
                   pid=pid or None, kernel=True)

    def _file(self, ws: str | None, ino: int, path: str) -> FileLocks:
        fl = self.files.get((ws, ino))
        if fl is None:
            fl = self.files[(ws, ino)] = FileLocks(ws, path)
        fl.used = time.monotonic()
        return fl

    def _forget_if_unused(self, ws: str | None, ino: int) -> None:
        fl = self.files.get((ws, ino))
        if fl is not None and not fl.spans and fl.mode is None and not fl.waiting:
            del self.files[(ws, ino)]

    # -- the lock operations -------------------------------------------------------------

    async def flock(self, ws: str | None, ino: int, path: str, *, fh: int, owner: int, op: int,
                    pid: int) -> None:
        """``flock(2)``: ``op`` is LOCK_SH/LOCK_EX/LOCK_UN, or-ed with LOCK_NB."""
        kind = op & ~fcntl.LOCK_NB
        if kind == fcntl.LOCK_UN:
            await self._unlock(ws, ino, lambda s: s.flock and s.owner == owner)
            return
        if kind not in (fcntl.LOCK_SH, fcntl.LOCK_EX):
            raise InvalidArgument("flock operation must be LOCK_SH, LOCK_EX or LOCK_UN")
        write = kind == fcntl.LOCK_EX
        fl = self._file(ws, ino, path)

        def take() -> None:
            fl.drop(lambda s: s.flock and s.owner == owner)
            fl.spans.append(Span(owner, fh, 0, EOF, write, pid, flock=True))

        await self._lock(fl, ino, owner, pid, 0, EOF, write, True, not op & fcntl.LOCK_NB, take)

    async def setlk(self, ws: str | None, ino: int, path: str, *, fh: int, owner: int, type_: int,
                    start: int, length: int, pid: int, sleep: bool) -> None:
        """``F_SETLK``/``F_SETLKW`` (and their OFD forms): lock, convert or unlock a range."""
        start, end = _range(start, length)
        if type_ == fcntl.F_UNLCK:
            fl = self.files.get((ws, ino))
            if fl is not None:
                fl.set_range(owner, fh, start, end, None, pid)
                await self._after_unlock(fl, ino)
            return
        if type_ not in (fcntl.F_RDLCK, fcntl.F_WRLCK):
            raise InvalidArgument("lock type must be F_RDLCK, F_WRLCK or F_UNLCK")
        write = type_ == fcntl.F_WRLCK
        fl = self._file(ws, ino, path)
        await self._lock(fl, ino, owner, pid, start, end, write, False, sleep,
                         lambda: fl.set_range(owner, fh, start, end, write, pid))

    async def getlk(self, ws: str | None, ino: int, *, owner: int, type_: int, start: int,
                    length: int) -> tuple[int, int, int, int]:
        """``F_GETLK``: (type, start, length, pid) of a lock that would block, or (F_UNLCK, ...)."""
        s0, end = _range(start, length)
        write = type_ == fcntl.F_WRLCK
        fl = self.files.get((ws, ino))
        if fl is not None:
            c = fl.conflict(owner, s0, end, write, False)
            if c is not None:
                return (fcntl.F_WRLCK if c.write else fcntl.F_RDLCK, c.start,
                        0 if c.end >= EOF else c.end - c.start, c.pid)
            if fl.covers(write):
                return fcntl.F_UNLCK, start, length, 0
        if ws is None:
            return fcntl.F_UNLCK, start, length, 0
        path = fl.path if fl is not None else None
        if path is None:
            return fcntl.F_UNLCK, start, length, 0
        return await self._remote_conflict(ws, path, write, start, length)

    async def _remote_conflict(self, ws: str, path: str, write: bool, start: int,
                               length: int) -> tuple[int, int, int, int]:
        lease, _ = await self._io(self.leases(ws).read, path)
        now = time.time()
        for h in lease.holders if lease is not None else []:
            if h.expires > now and not self.who.owns(h) and (write or h.mode == EXCLUSIVE):
                # a holder on another mount: the whole file, no local pid
                return fcntl.F_WRLCK if h.mode == EXCLUSIVE else fcntl.F_RDLCK, 0, 0, 0
        return fcntl.F_UNLCK, start, length, 0

    async def unlock_owner(self, ws: str | None, ino: int, owner: int) -> None:
        """A descriptor was closed: the owner's POSIX locks on the file go (and
        its flock, when the kernel says the flock's last descriptor went)."""
        if (ws, ino) in self.files:
            self._unlock_soon(ws, ino, lambda s: s.owner == owner)

    async def release_fh(self, ws: str | None, ino: int, fh: int) -> None:
        """The open file description ``fh`` went: its flock and OFD locks go
        (its processes' POSIX locks went with their flushes already)."""
        if (ws, ino) in self.files:
            self._unlock_soon(ws, ino, lambda s: s.fh == fh)

    def _unlock_soon(self, ws: str | None, ino: int, pred: Callable[[Span], bool]) -> None:
        """An unlock by a close: local lockers go on at once; the lease is
        settled by the heartbeat task, so the close's reply waits for no request."""
        fl = self.files.get((ws, ino))
        if fl is not None and fl.drop(pred):
            fl.wake()
            self._settle_soon.add((ws, ino))
            self._wake.set()

    def holders(self, ws: str, ino: int) -> set[int]:
        """The pids holding a lock on a file (for fencing)."""
        fl = self.files.get((ws, ino))
        return {s.pid for s in fl.spans} if fl is not None else set()

    async def fence(self, ws: str, ino: int, pids: set[int]) -> None:
        """Raise Fenced when a file locked here by one of ``pids`` has lost its
        lease to another holder (checked in the store: one read per upload of a
        file this mount holds locks on; none for other files)."""
        fl = self.files.get((ws, ino))
        if fl is None or fl.mode is None or not any(s.pid in pids for s in fl.spans):
            return
        token = fl.token
        if not fl.lost and not await self._io(self.leases(ws).holds, fl.path, token) and fl.token == token:
            fl.lost = True  # (a new token meanwhile is this mount's own change of mode)
            log.warning("lock on %s/%s (token %d) was taken over by another holder", ws, fl.path, token)
        if fl.lost:
            raise Fenced("the lock of this writer was taken over by another mount; write refused",
                         path=fl.path, token=fl.token)

    # -- taking and giving back ---------------------------------------------------------

    async def _lock(self, fl: FileLocks, ino: int, owner: int, pid: int, start: int, end: int,
                    write: bool, flock: bool, sleep: bool, take: Callable[[], None]) -> None:
        delay = 0.02
        cached_since: float | None = None
        fl.waiting += 1
        try:
            while True:
                if fl.conflict(owner, start, end, write, flock) is not None:
                    if not sleep:
                        raise WouldBlock("locked by another process on this mount", path=fl.path)
                    timeout = 1.0
                elif fl.ws is None or fl.covers(write):
                    take()
                    if fl.cached and pid != fl.holder_pid:
                        await self._retag(fl, pid)  # another process: the store shows it
                    fl.cached = False
                    return
                else:
                    try:
                        await self._widen(fl, write, wait=sleep, pid=pid)
                        continue  # re-check: another local owner may have locked meanwhile
                    except _Cached:
                        # another mount only keeps the lease cached: it gives it back
                        # when it hears the doorbell, so even a non-blocking lock waits
                        cached_since = cached_since or time.monotonic()
                        if not sleep and time.monotonic() - cached_since > CACHED_WAIT:
                            raise WouldBlock("locked on another mount", path=fl.path) from None
                    except WouldBlock:
                        if not sleep:
                            raise
                        cached_since = None
                    timeout = delay
                    delay = min(delay * 1.5, 0.5)
                with trio.move_on_after(timeout):
                    await fl.changed.wait()
        except trio.Cancelled:
            log.debug("lock on %s/%s: the waiting process was interrupted", fl.ws, fl.path)
            if fl.ws is not None and write and sleep:
                with trio.move_on_after(2.0, shield=True):
                    await self._leave(fl)
            raise
        finally:
            fl.waiting -= 1
            if fl.ws is not None and fl.mode is not None and fl.wanted() != fl.mode and not fl.cached:
                with trio.CancelScope(shield=True):
                    await self._relax(fl, ino)

    async def _retag(self, fl: FileLocks, pid: int) -> None:
        assert fl.ws is not None
        try:
            if await self._io(self.leases(fl.ws).retag, fl.path, fl.token, self._who(pid)):
                fl.holder_pid, fl.hinted = pid, False
        except AgentFSError as e:
            log.info("lock on %s/%s: holder not updated (%s)", fl.ws, fl.path, e)

    async def _leave(self, fl: FileLocks) -> None:
        assert fl.ws is not None
        try:
            if await self._io(self.leases(fl.ws).leave, fl.path, self.who):
                log.debug("lock on %s/%s: waiter registration removed", fl.ws, fl.path)
        except AgentFSError as e:
            log.info("lock on %s/%s: waiter not removed (%s); it expires by itself", fl.ws, fl.path, e)

    async def _widen(self, fl: FileLocks, write: bool, *, wait: bool, pid: int) -> None:
        """Take (or upgrade) the file's lease so that it covers a lock of this kind.

        Raises WouldBlock when another mount holds it, :class:`_Cached` when the
        other mount only keeps it cached (after ringing that mount's doorbell)."""
        assert fl.ws is not None
        async with fl.mutex:
            if fl.covers(write):
                return
            mode = EXCLUSIVE if write else SHARED
            first = fl.mode is None
            try:
                token, seq = await self._io(self.leases(fl.ws).take, fl.path, mode, self._who(pid),
                                            self.ttl, wait=wait and write)
            except WouldBlock as e:
                if await self.ring_cached(fl.ws, fl.path, self.who):
                    raise _Cached(e.strerror or "", path=fl.path) from None
                raise
            fl.mode, fl.token, fl.lost, fl.hinted, fl.holder_pid = mode, token, False, False, pid
            log.debug("lock on %s/%s: lease %s, token %d", fl.ws, fl.path, mode, token)
            if first:
                await self._catch_up(fl.ws, fl.path, seq)

    async def _after_unlock(self, fl: FileLocks, ino: int) -> None:
        fl.wake()
        if fl.wanted() != fl.mode and not fl.waiting:
            await self._relax(fl, ino)
        self._forget_if_unused(fl.ws, ino)

    async def _unlock(self, ws: str | None, ino: int, pred: Callable[[Span], bool]) -> None:
        fl = self.files.get((ws, ino))
        if fl is not None and fl.drop(pred):
            await self._after_unlock(fl, ino)

    def _caching(self, ws: str) -> bool:
        return time.monotonic() >= self._no_cache_until.get(ws, 0.0)

    async def _relax(self, fl: FileLocks, ino: int, *, may_cache: bool = True) -> None:
        """The local locks need less than the lease: cache it, downgrade it or give it back.

        While this runs, new local locks wait for it (``relaxing``), so no lock
        is granted under a lease that is being given back."""
        if fl.ws is None:
            return
        async with fl.mutex:
            if fl.mode is None or fl.wanted() == fl.mode or fl.cached:
                return
            fl.relaxing = True
            try:
                await self._give_up(fl, may_cache=may_cache and self._caching(fl.ws))
            finally:
                fl.relaxing = False
                fl.wake()
        self._forget_if_unused(fl.ws, ino)

    async def _give_up(self, fl: FileLocks, *, may_cache: bool) -> None:
        assert fl.ws is not None
        ls = self.leases(fl.ws)
        want = fl.wanted()
        # kept for the next local lock: nothing to hand over until it is given back
        if want is None and may_cache and not fl.lost and (
                fl.hinted or await self._io(ls.mark_cached, fl.path, fl.token, True)):
            fl.cached = fl.hinted = True
            fl.used = time.monotonic()
            self._wake.set()
            log.debug("lock on %s/%s: lease kept cached (token %d)", fl.ws, fl.path, fl.token)
            return
        seq = await self._settle(fl.ws, fl.path)
        if fl.lost:
            fl.mode, fl.lost = (None, False) if want is None else (fl.mode, True)
        elif want is None:
            await self._io(ls.release, fl.path, fl.token, seq=seq)
            fl.mode = None
            log.debug("lock on %s/%s: lease given back at seq %d", fl.ws, fl.path, seq)
        else:
            fl.holder_pid = fl.spans[0].pid
            fl.token, _ = await self._io(ls.take, fl.path, SHARED, self._who(fl.holder_pid), self.ttl,
                                         seq=seq)
            fl.mode = SHARED
        fl.hinted = False

    async def _give_back_cached(self, ws: str, *, idle: float = 0.0) -> None:
        """Give back the cached leases of ``ws`` unused for ``idle`` seconds; tell
        the store that the ones in use again are real holds."""
        now = time.monotonic()
        for (w, ino), fl in list(self.files.items()):
            if w != ws or fl.mode is None:
                continue
            if fl.cached and not fl.spans and not fl.waiting and now - fl.used >= idle:
                fl.cached = False
                await self._relax(fl, ino, may_cache=False)
            elif not fl.cached and fl.hinted and not idle:
                await self._io(self.leases(ws).mark_cached, fl.path, fl.token, False)
                fl.hinted = False

    # -- background: renewals and the doorbell ------------------------------------------

    async def heartbeat(self) -> None:
        """Renew every held lease each TTL/3; while leases are cached, answer the
        doorbell and give back those unused for a TTL."""
        next_renew = time.monotonic() + self.ttl / 3
        while True:
            with trio.move_on_after(DOORBELL_POLL):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self._settle_closed()
                await self._answer_doorbells()
                if time.monotonic() >= next_renew:
                    next_renew = time.monotonic() + self.ttl / 3
                    await self._renew()
            except AgentFSError as e:
                log.warning("kernel locks heartbeat: %s", e)
            except Exception:  # a bug here must not end the mount's nursery
                log.exception("kernel locks heartbeat failed")

    async def _settle_closed(self) -> None:
        while self._settle_soon:
            ws, ino = self._settle_soon.pop()
            fl = self.files.get((ws, ino))
            if fl is not None:
                try:
                    with trio.CancelScope(shield=True):
                        await self._after_unlock(fl, ino)
                except AgentFSError:
                    self._settle_soon.add((ws, ino))  # tried again at the next beat
                    raise

    async def _answer_doorbells(self) -> None:
        for ws in {fl.ws for fl in self.files.values() if (fl.cached or fl.hinted) and fl.ws is not None}:
            key = doorbell_key(ws, self.mount_id)
            try:
                await self._io(self.store.head, key)
            except NotFound:
                await self._give_back_cached(ws, idle=self.ttl)
                continue
            log.info("workspace %s: another mount wants a lease this mount keeps; giving them back", ws)
            self._no_cache_until[ws] = time.monotonic() + self.ttl
            await self._give_back_cached(ws)
            await self._io(self.store.delete, key)

    async def _renew(self) -> None:
        for fl in list(self.files.values()):
            if fl.mode is None or fl.lost or fl.ws is None:
                continue
            token = fl.token
            if (not await self._io(self.leases(fl.ws).renew, fl.path, token, self.ttl)
                    and fl.token == token and fl.mode is not None):
                fl.lost = True
                log.warning("lock on %s/%s (token %d) was taken over: its writers are fenced",
                            fl.ws, fl.path, fl.token)

    async def release_all(self) -> None:
        """Unmount: give back every lease (after the mount's last uploads)."""
        self._settle_soon.clear()
        for (ws, ino), fl in list(self.files.items()):
            fl.spans.clear()
            fl.cached = False
            if fl.mode is not None and ws is not None:
                try:
                    await self._relax(fl, ino, may_cache=False)
                except AgentFSError as e:
                    log.warning("unmount: releasing the lease of %s/%s: %s (it expires after the TTL)",
                                ws, fl.path, e)


class _Cached(WouldBlock):
    """Refused by a lease that another mount only keeps cached (it was asked for it)."""


def _range(start: int, length: int) -> tuple[int, int]:
    if start < 0 or length < 0:
        raise InvalidArgument("lock range must not be negative")
    return start, (start + length if length else EOF)


