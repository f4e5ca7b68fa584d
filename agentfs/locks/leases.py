"""Leases in the object store: the lease records, fencing tokens and :class:`LeaseStore`.

One object per locked workspace path, ``.agentfs/<ws>/locks/<sha256(path)>.json``
(a :class:`agentfs.models.Lease`), taken with a conditional create and changed
only by compare-and-swap, so two mounts never both win.  Fencing tokens only
grow (the object is never deleted), holders expire unless renewed, and a
blocked exclusive locker that waits registers as a waiter so shared lockers
cannot starve it.  The rules are described in :mod:`agentfs.locks`.

Error contract: a held lease raises :class:`agentfs.errors.WouldBlock`
(``EWOULDBLOCK``); a bad mode :class:`agentfs.errors.InvalidArgument`; an
unparsable lease object :class:`agentfs.errors.CorruptRecord`; a lease that
keeps changing under a compare-and-swap :class:`agentfs.errors.Busy`; store
errors propagate.  Concurrency: :class:`LeaseStore` is thread-safe (all state
is in the store; the remembered versions are guarded by a lock).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import ValidationError

from agentfs.errors import (
    Busy,
    CorruptRecord,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    WouldBlock,
)
from agentfs.identity import Caller
from agentfs.journal import workspace_prefix
from agentfs.models import Lease, LeaseHolder, LeaseWaiter, NoteOp, Record
from agentfs.store.base import ObjectStore

__all__ = [
    "CACHED_WAIT",
    "DEFAULT_TTL",
    "DOORBELL_POLL",
    "LOCK_XATTR",
    "MODES",
    "WAITER_TTL",
    "LeaseMode",
    "LeaseStore",
    "Who",
    "break_record",
    "describe_holder",
    "doorbell_key",
    "lease_json",
    "lease_key",
]

log = logging.getLogger(__name__)

#: The xattr that takes, shows and releases a lease on a mounted file.
LOCK_XATTR = "user.agentfs.lock"
#: Seconds a lease lives without renewal (mount option ``--lease-ttl``).
DEFAULT_TTL = 30.0
#: A lease's mode (as :class:`agentfs.models.LeaseHolder` has it).
LeaseMode = Literal["shared", "exclusive"]
MODES: tuple[LeaseMode, ...] = ("shared", "exclusive")
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


def describe_holder(h: LeaseHolder) -> str:
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
        checked = cast(LeaseMode, mode)  # one of MODES, checked just above

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
                what = (describe_holder(b) if isinstance(b, LeaseHolder)
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
            holder = LeaseHolder(agent=who.agent, host=who.host, mount=who.mount, pid=who.pid, mode=checked,
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
    holders = "; ".join(describe_holder(h) for h in old.holders) if old is not None else ""
    return Record(action="lock-break", op=NoteOp(path=path), agent=caller.agent or agent, pid=caller.pid,
                  uid=caller.uid, detail={"holders": holders or None,
                                          "token": old.token if old is not None else 0})
