"""A mount's leases: taken for calling processes through the lock attribute.

:class:`LeaseStores` reaches the :class:`agentfs.locks.leases.LeaseStore` of
each workspace from trio (through worker threads) and rings the doorbells of
mounts that keep leases cached; :class:`LeaseManager` adds the leases a mount
holds for its local processes via the xattr :data:`LOCK_XATTR`.  A held lease
answers ``EBUSY`` there (Linux turns an ``EAGAIN`` reply to ``setxattr`` into
``EOPNOTSUPP``; the client layer turns it back into ``EWOULDBLOCK``).  A lease
is released on ``removexattr``, when the holding process closes its last
handle of the file on this mount (the flock rule; a process that never opened
the file keeps the lease), on exit of the holding process (polled in
``/proc``) and on unmount; :meth:`LeaseManager.heartbeat` renews it.

Error contract: a held lease raises :class:`agentfs.errors.WouldBlock`; a bad
xattr value :class:`agentfs.errors.InvalidArgument`; a release by a process
that holds nothing :class:`agentfs.errors.NoAttribute`; a write whose lease was
taken over :class:`agentfs.errors.Fenced`; store errors propagate.
Concurrency: everything runs in the mount's trio thread; store requests run in
worker threads bounded by the mount's limiter.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from agentfs.errors import AgentFSError, Fenced, InvalidArgument, NoAttribute, WouldBlock
from agentfs.identity import HOSTNAME, Caller
from agentfs.locks.leases import (
    CACHED_WAIT,
    DEFAULT_TTL,
    DOORBELL_POLL,
    LOCK_XATTR,
    MODES,
    LeaseStore,
    Who,
    describe_holder,
    doorbell_key,
    lease_json,
)
from agentfs.locks.procs import alive, lineage, start_time, tgid_of
from agentfs.models import Lease
from agentfs.store.base import ObjectStore

__all__ = ["Held", "LeaseManager", "LeaseStores", "parse_lock_value"]

log = logging.getLogger(__name__)

T = TypeVar("T")


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
                    "; ".join(describe_holder(h) for h in old.holders) if old is not None else "none")
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
