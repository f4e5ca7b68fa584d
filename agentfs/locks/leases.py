"""Locks across mounts: leases in the object store, fencing tokens, heartbeats.

Within one mount, ``flock(2)`` and ``fcntl`` locks are the kernel's (pyfuse3
has no lock handlers, so the kernel keeps them local).  Across mounts this
module keeps **leases** in the store:

- One object per locked workspace path,
  ``.agentfs/<ws>/locks/<sha256(path)>.json`` (a :class:`agentfs.models.Lease`):
  mode, holders (agent, host, mount, pid, token, acquired, expires) and
  exclusive waiters.  Acquired with a conditional create (``put(if_absent)``),
  every change is a compare-and-swap (``head`` → ``get(if_match)`` →
  ``put(if_match)``, retried on a lost race), so two mounts never both win.
- **Fencing tokens only grow**: the lease object is never deleted (a released
  or broken lease keeps the last token with no holders), and every acquisition
  takes ``token + 1``.
- **Expiry**: a holder is live until ``expires``; its mount renews it every
  TTL/3 (heartbeat).  A holder whose mount died or froze is pruned by the next
  acquirer after the TTL; only then can another take the lease.  Expiry uses
  the hosts' wall clocks, so mounts on different hosts need clocks in sync to
  well under the TTL (as every lease system on S3).
- **No starvation**: a blocked exclusive locker that waits registers itself
  as a waiter (renewed while it keeps trying, dropped after a TTL otherwise);
  while a live waiter exists new shared holders are refused, and exclusive
  lockers are served in the order they started waiting.
- **Fencing**: before a mount uploads a file for a process (or a descendant of
  a process) that held a lease on that path, it checks that the lease still
  lists that holder's token.  When another holder took over, the upload is
  refused (:class:`agentfs.errors.Fenced`, ``EIO`` at close/fsync) and the
  bytes are kept as a conflict copy with a ``fenced`` journal record.  Files
  nobody on this mount holds a lease on cost no extra request.

Three layers, each usable alone:

- :class:`LeaseStore`: synchronous leases of one workspace on an ObjectStore
  (used by the CLI without a mount and by tests);
- :class:`LeaseManager`: a mount's leases, taken for calling processes via the
  xattr :data:`LOCK_XATTR` (a held lease answers ``EBUSY`` there: Linux turns
  an ``EAGAIN`` reply to ``setxattr`` into ``EOPNOTSUPP``; the client layer
  turns it back into ``EWOULDBLOCK``), released on ``removexattr``, when the
  holding process closes its last handle of the file on this mount (the flock
  rule; a process that never opened the file keeps the lease), on exit of the
  holding process (polled in ``/proc``) and on unmount, renewed by
  :meth:`LeaseManager.heartbeat`;
- :class:`FileLock` / :func:`lock`: the client side used by ``agentfs lock``
  and ``agentfs.lock()``: a kernel ``flock`` on the file plus, on an agentfs
  mount, the lease through the xattr.

Error contract: a held lease raises :class:`agentfs.errors.WouldBlock`
(``EWOULDBLOCK``); a bad xattr value :class:`agentfs.errors.InvalidArgument`;
an unparsable lease object :class:`agentfs.errors.CorruptRecord`; store
errors propagate.  Concurrency: ``LeaseStore`` is thread-safe (all state is in
the store); ``LeaseManager`` runs in the mount's trio thread.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from pydantic import ValidationError

from agentfs.errors import (
    AgentFSError,
    Busy,
    CorruptRecord,
    Fenced,
    InvalidArgument,
    NoAttribute,
    NotFound,
    PreconditionFailed,
    WouldBlock,
)
from agentfs.identity import HOSTNAME, Caller
from agentfs.journal import workspace_prefix
from agentfs.models import Lease, LeaseHolder, LeaseWaiter, NoteOp, Record
from agentfs.store.base import ObjectStore

__all__ = [
    "CACHED_WAIT",
    "DEFAULT_TTL",
    "DOORBELL_POLL",
    "LOCK_XATTR",
    "WAITER_TTL",
    "LeaseManager",
    "LeaseStore",
    "LeaseStores",
    "Who",
    "doorbell_key",
    "lease_key",
]

log = logging.getLogger(__name__)

#: The xattr that takes, shows and releases a lease on a mounted file.
LOCK_XATTR = "user.agentfs.lock"
#: Seconds a lease lives without renewal (mount option ``--lease-ttl``).
DEFAULT_TTL = 30.0
MODES = ("shared", "exclusive")
#: Compare-and-swap attempts before a lease counts as too contended (EBUSY).
CAS_ATTEMPTS = 50
#: Seconds between polls of a mount's doorbell while it keeps leases cached
#: (agentfs/locks/kernel.py).
DOORBELL_POLL = 0.25
#: How long a locker refused only by leases another mount keeps cached waits
#: for them to be given back before it counts as refused.
CACHED_WAIT = 4 * DOORBELL_POLL + 1.0
#: Seconds a waiter registration lives unless its locker tries again: a
#: locker that gave up, was interrupted or killed stops blocking others
#: within this time even when it could not say so.
WAITER_TTL = 3.0

T = TypeVar("T")


def doorbell_key(ws: str, mount: str) -> str:
    """The object another locker writes to ask ``mount`` for its cached leases of ``ws``."""
    return f"{workspace_prefix(ws)}doorbells/{mount}"


def lease_key(ws: str, path: str) -> str:
    """The object that holds the lease of ``path`` in workspace ``ws``."""
    return f"{workspace_prefix(ws)}locks/{hashlib.sha256(path.encode()).hexdigest()}.json"


@dataclass(frozen=True, slots=True)
class Who:
    """A lease holder's identity: one process of one mount (or CLI client), or,
    with ``kernel``, a mount holding the lease for the flock/fcntl locks of its
    processes (``pid`` then names the process that took it, for display)."""

    agent: str
    host: str
    mount: str
    pid: int | None
    kernel: bool = False

    def owns(self, h: LeaseHolder | LeaseWaiter) -> bool:
        if self.kernel:
            return h.mount == self.mount and h.kernel
        return h.mount == self.mount and h.pid == self.pid and not h.kernel


def _describe(h: LeaseHolder) -> str:
    return f"{h.agent or '?'}@{h.host or '?'} pid {h.pid} ({h.mode}, token {h.token})"


# -- the store layer ---------------------------------------------------------------------


class LeaseStore:
    """The leases of workspace ``ws`` in ``store`` (synchronous, thread-safe)."""

    def __init__(self, store: ObjectStore, ws: str, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ws = ws
        self.clock = clock
        self.prefix = f"{workspace_prefix(ws)}locks/"
        #: the last version of each lease this process read or wrote: a
        #: change tries it first, so an uncontended lock costs one request.
        self._known: dict[str, tuple[str, Lease]] = {}
        self._known_lock = threading.Lock()

    def _parse(self, key: str, raw: bytes) -> Lease:
        try:
            return Lease.model_validate_json(raw)
        except (ValidationError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorruptRecord(f"unreadable lease ({first})", path=key) from None

    def read(self, path: str) -> tuple[Lease | None, str | None]:
        """The lease of ``path`` and its version (``(None, None)`` when none was ever taken).

        Consistent: the bytes are read pinned to the version ``head`` gave.
        """
        key = lease_key(self.ws, path)
        for _ in range(CAS_ATTEMPTS):
            try:
                info = self.store.head(key)
            except NotFound:
                return None, None
            try:
                raw = self.store.get(key, if_match=info.etag)
            except (NotFound, PreconditionFailed):
                continue  # replaced between head and get
            lease = self._parse(key, raw)
            self._remember(path, info.etag, lease)
            return lease, info.etag
        raise Busy("lease keeps changing", path=path)

    def _remember(self, path: str, etag: str | None, lease: Lease | None) -> None:
        with self._known_lock:
            if etag is None or lease is None:
                self._known.pop(path, None)
            else:
                self._known[path] = (etag, lease)

    def _guess(self, path: str) -> tuple[Lease | None, str | None]:
        with self._known_lock:
            etag, lease = self._known.get(path, (None, None))
        return (lease.model_copy(deep=True) if lease is not None else None), etag

    def _update(self, path: str, fn: Callable[[Lease | None, float], tuple[Lease | None, Any]]) -> Any:
        """Compare-and-swap loop: ``fn(lease, now)`` returns (new lease or None
        for no write, result).  A result that is an exception is raised after
        the write (a waiter registration that still answers EWOULDBLOCK).

        The first attempt starts from the version this process saw last: when
        it is still current the change is one conditional put; a decision not
        to write is only taken on a fresh read."""
        key = lease_key(self.ws, path)
        lease, etag = self._guess(path)
        fresh = etag is None
        for attempt in range(CAS_ATTEMPTS):
            if not fresh:
                new, result = fn(lease, self.clock())
                if new is None:  # a refusal is never taken on a remembered version
                    fresh = True
            if fresh:
                lease, etag = self.read(path)
                new, result = fn(lease, self.clock())
            fresh = True
            if new is not None:
                new.updated = self.clock()
                data = new.model_dump_json().encode()
                try:
                    if etag is None:
                        info = self.store.put(key, data, if_absent=True)
                    else:
                        info = self.store.put(key, data, if_match=etag)
                except PreconditionFailed:
                    self._remember(path, None, None)
                    time.sleep(random.uniform(0, 0.01 * attempt))
                    continue
                self._remember(path, info.etag, new)
            if isinstance(result, BaseException):
                raise result
            return result
        raise Busy("lease is too contended", path=path)

    def acquire(self, path: str, mode: str, who: Who, ttl: float, *, wait: bool = False) -> int:
        """Take the lease of ``path`` for ``who``; returns the new fencing token (see :meth:`take`)."""
        return self.take(path, mode, who, ttl, wait=wait)[0]

    def take(self, path: str, mode: str, who: Who, ttl: float, *, wait: bool = False,
             seq: int = 0) -> tuple[int, int]:
        """Take the lease of ``path`` for ``who``: (new fencing token, the
        journal position the last releaser recorded).

        Raises WouldBlock when it is held incompatibly (or, for a shared
        locker, while an exclusive locker waits).  With ``wait`` a blocked
        exclusive locker registers as a waiter for :data:`WAITER_TTL` seconds
        (callers retry, which renews it).  A holder that asks again (or for
        the other mode) gets a new token; conversion is not atomic with
        respect to a waiting exclusive locker, as with flock(2).  ``seq``: as
        for :meth:`release` (a holder that downgrades hands over its writes).
        """
        if mode not in MODES:
            raise InvalidArgument(f"lock mode must be one of {', '.join(MODES)}", path=mode)

        def fn(lease: Lease | None, now: float) -> tuple[Lease | None, Any]:
            lease = lease.model_copy(deep=True) if lease is not None else Lease(path=path)
            live = [h for h in lease.holders if h.expires > now]
            others = [h for h in live if not who.owns(h)]
            waiters = [w for w in lease.waiters if w.expires > now]
            mine = next((w for w in waiters if who.owns(w)), None)
            other_waiters = [w for w in waiters if not who.owns(w)]
            if mode == "exclusive":
                # Exclusive lockers are served in the order they started waiting
                # (ties broken by identity, so two waiters never block each other).
                me = (mine.since, mine.mount, mine.pid or 0) if mine is not None else (now, "\uffff", 0)
                blockers: list[Any] = others + [w for w in other_waiters
                                                if (w.since, w.mount, w.pid or 0) < me]
            else:
                blockers = [h for h in others if h.mode == "exclusive"] + other_waiters
            if blockers:
                b = blockers[0]
                what = (_describe(b) if isinstance(b, LeaseHolder)
                        else f"{b.agent or '?'}@{b.host or '?'} pid {b.pid} (waiting for exclusive)")
                err = WouldBlock(f"lock held by {what}", path=path)
                if not (wait and mode == "exclusive"):
                    return None, err
                expires = now + min(ttl, WAITER_TTL)
                if mine is not None:
                    mine.expires = expires
                else:
                    mine = LeaseWaiter(agent=who.agent, host=who.host, mount=who.mount, pid=who.pid,
                                       kernel=who.kernel, since=now, expires=expires)
                lease.holders = live
                lease.waiters = [*other_waiters, mine]
                return lease, err
            token = lease.token + 1
            holder = LeaseHolder(agent=who.agent, host=who.host, mount=who.mount, pid=who.pid, mode=mode,
                                 kernel=who.kernel, token=token, acquired=now, expires=now + ttl)
            lease.holders = [*others, holder]
            lease.waiters = other_waiters
            lease.token = token
            lease.seq = max(lease.seq, seq)
            return lease, (token, lease.seq)

        result: tuple[int, int] = self._update(path, fn)
        return result

    def mark_cached(self, path: str, token: int, cached: bool, seq: int = 0) -> bool:
        """Mark the holder with ``token`` as kept with no local lock (or not);
        False when it no longer holds.  ``seq`` as for :meth:`release`."""
        def fn(lease: Lease | None, now: float) -> tuple[Lease | None, Any]:
            if lease is None:
                return None, False
            mine = next((h for h in lease.holders if h.token == token), None)
            if mine is None:
                return None, False
            if mine.cached == cached and lease.seq >= seq:
                return None, True
            lease = lease.model_copy(deep=True)
            for h in lease.holders:
                if h.token == token:
                    h.cached = cached
            lease.seq = max(lease.seq, seq)
            return lease, True

        return bool(self._update(path, fn))

    def retag(self, path: str, token: int, who: Who) -> bool:
        """The holder with ``token`` now holds for ``who`` (its agent and pid are
        shown), no longer cached; False when it no longer holds."""
        def fn(lease: Lease | None, now: float) -> tuple[Lease | None, Any]:
            if lease is None or not any(h.token == token for h in lease.holders):
                return None, False
            lease = lease.model_copy(deep=True)
            for h in lease.holders:
                if h.token == token:
                    h.agent, h.pid, h.cached = who.agent, who.pid, False
            return lease, True

        return bool(self._update(path, fn))

    def leave(self, path: str, who: Who) -> bool:
        """Drop ``who``'s waiter registration (a locker that gave up); False if it had none."""
        def fn(lease: Lease | None, now: float) -> tuple[Lease | None, Any]:
            if lease is None or not any(who.owns(w) for w in lease.waiters):
                return None, False
            lease = lease.model_copy(deep=True)
            lease.waiters = [w for w in lease.waiters if not who.owns(w) and w.expires > now]
            return lease, True

        return bool(self._update(path, fn))

    def renew(self, path: str, token: int, ttl: float) -> bool:
        """Extend the holder with ``token``; False when it no longer holds (taken over, broken)."""
        def fn(lease: Lease | None, now: float) -> tuple[Lease | None, Any]:
            if lease is None:
                return None, False
            lease = lease.model_copy(deep=True)
            for h in lease.holders:
                if h.token == token:
                    h.expires = now + ttl
                    return lease, True
            return None, False

        return self._update(path, fn)

    def release(self, path: str, token: int, *, seq: int = 0) -> bool:
        """Drop the holder with ``token`` (the object and its token stay); False if it was gone.

        ``seq``: the releaser's journal position once its writes under the
        lease are committed; the next holder catches up at least to it.
        """
        def fn(lease: Lease | None, now: float) -> tuple[Lease | None, Any]:
            if lease is None or not any(h.token == token for h in lease.holders):
                return None, False
            lease = lease.model_copy(deep=True)
            lease.holders = [h for h in lease.holders if h.token != token and h.expires > now]
            lease.seq = max(lease.seq, seq)
            return lease, True

        return self._update(path, fn)

    def holds(self, path: str, token: int) -> bool:
        """Is the holder with ``token`` still listed (not superseded nor broken)?

        A holder past its expiry that nobody took over still holds: no other
        locker can have written under the lease meanwhile.
        """
        lease, _ = self.read(path)
        return lease is not None and any(h.token == token for h in lease.holders)

    def break_(self, path: str) -> Lease | None:
        """Clear every holder and waiter of ``path``; returns the lease as it was (None if none)."""
        def fn(lease: Lease | None, now: float) -> tuple[Lease | None, Any]:
            if lease is None:
                return None, None
            new = lease.model_copy(deep=True)
            new.holders, new.waiters = [], []
            return new, lease

        return self._update(path, fn)

    def list(self, *, include_free: bool = False) -> list[Lease]:
        """Every lease of the workspace (with live holders only, unless ``include_free``)."""
        now = self.clock()
        out = []
        for info in self.store.list(self.prefix):
            try:
                lease = self._parse(info.key, self.store.get(info.key))
            except NotFound:
                continue
            except CorruptRecord as e:
                log.warning("%s", e)
                continue
            lease.holders = [h for h in lease.holders if h.expires > now and not h.cached]
            if lease.holders or include_free:
                out.append(lease)
        return sorted(out, key=lambda le: le.path)


def lease_json(lease: Lease, now: float | None = None) -> dict[str, Any]:
    """What ``getxattr user.agentfs.lock`` and ``agentfs locks --json`` show."""
    now = time.time() if now is None else now
    return {
        "path": lease.path,
        "mode": lease.mode,
        "token": lease.token,
        "holders": [{"agent": h.agent, "host": h.host, "pid": h.pid, "mount": h.mount, "mode": h.mode,
                     "token": h.token, "acquired": round(h.acquired, 3), "expires": round(h.expires, 3),
                     "expires_in": round(h.expires - now, 3), "kernel": h.kernel}
                    for h in lease.holders if not h.cached],
        "waiters": [{"agent": w.agent, "host": w.host, "pid": w.pid, "since": round(w.since, 3)}
                    for w in lease.waiters if w.expires > now],
    }


def break_record(path: str, old: Lease | None, caller: Caller, agent: str) -> Record:
    """The audit record of an explicit ``lock-break`` (a journal note)."""
    holders = "; ".join(_describe(h) for h in old.holders) if old is not None else ""
    return Record(action="lock-break", op=NoteOp(path=path), agent=caller.agent or agent, pid=caller.pid,
                  uid=caller.uid, detail={"holders": holders or None,
                                          "token": old.token if old is not None else 0})


# -- processes -----------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def tgid_of(pid: int | None) -> int | None:
    """The process (thread group) of a FUSE request's thread id."""
    if pid is None or pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return pid


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot): tells a reused pid apart."""
    f = _stat_fields(pid)
    return int(f[19]) if f is not None and len(f) > 19 else None


def alive(pid: int, started: int | None) -> bool:
    """Is ``pid`` still the same running (not zombie) process?"""
    f = _stat_fields(pid)
    if f is None or not f or f[0] in ("Z", "X"):
        return False
    return started is None or (len(f) > 19 and int(f[19]) == started)


def lineage(pid: int | None) -> set[int]:
    """``pid``'s process and all its ancestors."""
    out: set[int] = set()
    p = tgid_of(pid)
    while p is not None and p > 1 and p not in out and len(out) < 128:
        out.add(p)
        f = _stat_fields(p)
        p = int(f[1]) if f is not None and len(f) > 1 else None
    return out


# -- the mount layer ------------------------------------------------------------------------


@dataclass
class Held:
    """A lease this mount holds for one local process."""

    ws: str
    path: str
    pid: int
    started: int | None
    token: int
    mode: str
    #: Another holder took over (or it was broken): this process's writes are fenced.
    lost: bool = False


def parse_lock_value(value: bytes) -> tuple[str, bool]:
    """``exclusive``/``shared`` optionally followed by ``wait``; ``break``."""
    try:
        words = value.decode("ascii").strip().lower().split()
    except UnicodeDecodeError:
        words = []
    if words == ["break"]:
        return "break", False
    if not words or words[0] not in MODES or any(w != "wait" for w in words[1:]):
        raise InvalidArgument(f"{LOCK_XATTR} takes 'exclusive', 'shared' (optionally followed by "
                              "'wait') or 'break'")
    return words[0], "wait" in words[1:]


class LeaseStores:
    """The :class:`LeaseStore` of each workspace of one store, called from trio
    through worker threads (bounded by ``limiter``)."""

    def __init__(self, store: ObjectStore, limiter: trio.CapacityLimiter | None) -> None:
        self.store = store
        self.limiter = limiter
        self._stores: dict[str, LeaseStore] = {}
        #: (workspace, mount) -> when this process last rang that mount's doorbell
        self._rung: dict[tuple[str, str], float] = {}

    def leases(self, ws: str) -> LeaseStore:
        ls = self._stores.get(ws)
        if ls is None:
            ls = self._stores[ws] = LeaseStore(self.store, ws)
        return ls

    async def _io(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kw), limiter=self.limiter)

    async def ring_cached(self, ws: str, path: str, me: Who) -> bool:
        """Are the holders (other than ``me``) that refused a lock only leases
        a mount keeps cached?  Then ring those mounts' doorbells (they give
        them back within a poll) and say so."""
        lease, _ = await self._io(self.leases(ws).read, path)
        now = time.time()
        live = [h for h in lease.holders if h.expires > now and not me.owns(h)] if lease else []
        if not live or not all(h.cached for h in live):
            return False
        log.debug("lock on %s/%s: refused by cached leases of %s; ringing", ws, path,
                  ", ".join(h.mount for h in live))
        for h in live:
            last = self._rung.get((ws, h.mount), 0.0)
            if time.monotonic() - last > 2 * DOORBELL_POLL:
                self._rung[(ws, h.mount)] = time.monotonic()
                await self._io(self.store.put, doorbell_key(ws, h.mount), me.mount.encode())
        return True


class LeaseManager(LeaseStores):
    """The leases a mount holds for its local processes (one trio thread)."""

    def __init__(self, store: ObjectStore, *, agent: str, mount_id: str, ttl: float = DEFAULT_TTL,
                 limiter: trio.CapacityLimiter | None = None) -> None:
        if ttl <= 0:
            raise InvalidArgument("lease TTL must be positive")
        super().__init__(store, limiter)
        self.agent = agent
        self.mount_id = mount_id
        self.ttl = ttl
        self.held: dict[tuple[str, str, int], Held] = {}
        #: called with the workspace name before a lease is given back, so the
        #: holder's writes are committed first (the next holder must see them);
        #: returns the journal position they are committed to.  Set by the mount.
        self.before_release: Callable[[str], Awaitable[int]] | None = None
        #: called with (workspace, path, the releaser's journal position) once a
        #: lease is taken: the mount catches up before the locker goes on.
        self.after_acquire: Callable[[str, str, int], Awaitable[None]] | None = None

    async def _settle(self, ws: str) -> int:
        if self.before_release is not None:
            return await self.before_release(ws)
        return 0

    def _pid(self, caller: Caller) -> int:
        pid = tgid_of(caller.pid)
        if pid is None:
            raise InvalidArgument("a lease needs a calling process")
        return pid

    async def acquire(self, ws: str, path: str, value: bytes, caller: Caller) -> int:
        """``setxattr user.agentfs.lock``: take the lease for the calling process."""
        mode, wait = parse_lock_value(value)
        if mode == "break":
            raise InvalidArgument("break is handled by break_lock")
        pid = self._pid(caller)
        who = Who(agent=caller.agent or self.agent, host=HOSTNAME, mount=self.mount_id, pid=pid)
        refused_at: float | None = None
        while True:
            try:
                token, seq = await self._io(self.leases(ws).take, path, mode, who, self.ttl, wait=wait)
                break
            except WouldBlock:
                # a lease a mount only keeps cached is given back when asked: wait for it
                refused_at = refused_at or time.monotonic()
                if (time.monotonic() - refused_at > CACHED_WAIT
                        or not await self.ring_cached(ws, path, who)):
                    raise
                await trio.sleep(DOORBELL_POLL / 2)
        self.held[(ws, path, pid)] = Held(ws, path, pid, start_time(pid), token, mode)
        log.info("lease on %s/%s: %s for pid %d (%s), token %d", ws, path, mode, pid, who.agent, token)
        if self.after_acquire is not None:
            await self.after_acquire(ws, path, seq)
        return token

    async def release(self, ws: str, path: str, caller: Caller) -> None:
        """``removexattr user.agentfs.lock``: the calling process lets go (ENODATA if it held nothing)."""
        pid = self._pid(caller)
        if (ws, path, pid) not in self.held:
            who = Who(agent=caller.agent or self.agent, host=HOSTNAME, mount=self.mount_id, pid=pid)
            if await self._io(self.leases(ws).leave, path, who):
                return  # a waiter that gave up
            raise NoAttribute("this process holds no lease on the file", path=path)
        seq = await self._settle(ws)
        h = self.held.pop((ws, path, pid))
        if not await self._io(self.leases(ws).release, path, h.token, seq=seq):
            log.warning("lease on %s/%s (token %d) was already taken over or broken", ws, path, h.token)

    async def on_close(self, ws: str, path: str | None, caller: Caller, still_open: list[Caller]) -> None:
        """A handle of ``path`` opened by ``caller`` was released: if that process
        held the lease and has no other handle of the file open here, release it
        (as closing a file releases its flock).  ``still_open``: the openers of
        the file's remaining handles on this mount."""
        pid = tgid_of(caller.pid)
        if path is None or pid is None:
            return
        h = self.held.get((ws, path, pid))
        if h is None or any(tgid_of(c.pid) == pid for c in still_open):
            return
        seq = 0 if h.lost else await self._settle(ws)
        self.held.pop((ws, path, pid), None)
        if not h.lost:
            log.info("lease on %s/%s: pid %d closed the file; releasing", ws, path, pid)
            await self._io(self.leases(ws).release, path, h.token, seq=seq)

    async def show(self, ws: str, path: str) -> bytes:
        """``getxattr user.agentfs.lock``: the live holders as JSON (ENODATA when free)."""
        lease, _ = await self._io(self.leases(ws).read, path)
        now = time.time()
        if lease is not None:  # a lease a mount only keeps cached is free to show
            lease.holders = [h for h in lease.holders if h.expires > now and not h.cached]
        if lease is None or not lease.holders:
            raise NoAttribute("not locked", path=path)
        return json.dumps(lease_json(lease, now)).encode()

    async def break_lock(self, ws: str, path: str) -> Lease | None:
        """Clear the lease of ``path`` (the caller audits it); local holders become fenced."""
        old = await self._io(self.leases(ws).break_, path)
        for h in self.held.values():
            if h.ws == ws and h.path == path:
                h.lost = True
        log.warning("lease on %s/%s broken (was: %s)", ws, path,
                    "; ".join(_describe(h) for h in old.holders) if old is not None else "none")
        return old

    async def fence(self, ws: str, path: str, caller: Caller) -> None:
        """Raise Fenced when ``caller`` (or an ancestor) held the lease of
        ``path`` and another holder has taken it over.  No request at all for
        a file no local process holds a lease on."""
        if not self.held:
            return
        cands = [h for h in self.held.values() if h.ws == ws and h.path == path]
        if not cands:
            return
        family = lineage(caller.pid)
        for h in cands:
            if h.pid not in family:
                continue
            if not h.lost and not await self._io(self.leases(ws).holds, path, h.token):
                h.lost = True
                log.warning("lease on %s/%s (token %d, pid %d) was taken over by another holder",
                            ws, path, h.token, h.pid)
            if h.lost:
                raise Fenced("the lease of this writer was taken over; write refused", path=path,
                             token=h.token)

    async def tick(self, renew: bool) -> None:
        """One heartbeat: drop leases of exited processes; renew the rest when ``renew``."""
        for key, h in list(self.held.items()):
            if alive(h.pid, h.started):
                continue
            self.held.pop(key, None)
            if h.lost:
                continue
            log.info("lease on %s/%s: holder pid %d exited; releasing", h.ws, h.path, h.pid)
            try:
                seq = await self._settle(h.ws)
                await self._io(self.leases(h.ws).release, h.path, h.token, seq=seq)
            except AgentFSError as e:
                log.warning("releasing lease on %s/%s: %s (it expires after the TTL)", h.ws, h.path, e)
        if not renew:
            return
        for h in list(self.held.values()):
            if h.lost:
                continue
            try:
                ok = await self._io(self.leases(h.ws).renew, h.path, h.token, self.ttl)
            except AgentFSError as e:
                log.warning("renewing lease on %s/%s: %s", h.ws, h.path, e)
                continue
            if not ok:
                h.lost = True
                log.warning("lease on %s/%s (token %d, pid %d) was lost: taken over or broken",
                            h.ws, h.path, h.token, h.pid)

    async def heartbeat(self) -> None:
        """Background task: poll holder processes often, renew every TTL/3."""
        check = min(0.5, self.ttl / 4)
        next_renew = 0.0
        while True:
            await trio.sleep(check)
            if not self.held:
                continue
            now = time.monotonic()
            renew = now >= next_renew
            if renew:
                next_renew = now + self.ttl / 3
            try:
                await self.tick(renew)
            except Exception:  # a bug here must not end the mount's nursery
                log.exception("lease heartbeat failed")

    async def release_all(self) -> None:
        """Unmount: give back every lease still held."""
        held, self.held = list(self.held.values()), {}
        for h in held:
            if h.lost:
                continue
            try:
                seq = await self._settle(h.ws)
                await self._io(self.leases(h.ws).release, h.path, h.token, seq=seq)
            except AgentFSError as e:
                log.warning("releasing lease on %s/%s at unmount: %s", h.ws, h.path, e)
