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

Modules of the package, each layer usable alone:

- :mod:`agentfs.locks.leases`, :class:`LeaseStore`: the lease records and the
  synchronous leases of one workspace on an ObjectStore (used by the CLI
  without a mount and by tests);
- :mod:`agentfs.locks.procs`: process liveness and ancestry from ``/proc``
  (who holds a lease, has it exited, whose writes are fenced);
- :mod:`agentfs.locks.mountleases`, :class:`LeaseManager`: a mount's leases,
  taken for calling processes via the xattr :data:`LOCK_XATTR` (a held lease answers ``EBUSY`` there: Linux turns
  an ``EAGAIN`` reply to ``setxattr`` into ``EOPNOTSUPP``; the client layer
  turns it back into ``EWOULDBLOCK``), released on ``removexattr``, when the
  holding process closes its last handle of the file on this mount (the flock
  rule; a process that never opened the file keeps the lease), on exit of the
  holding process (polled in ``/proc``) and on unmount, renewed by
  :meth:`LeaseManager.heartbeat`;
- :mod:`agentfs.locks.kernel`, :class:`KernelLocks`: a mount's ``flock`` and
  ``fcntl`` locks, exact locally and on one lease per file across mounts;
- :mod:`agentfs.locks.client`, :class:`FileLock` / :func:`lock`: the client
  side used by ``agentfs lock`` and ``agentfs.lock()``: a kernel ``flock`` on the file plus, on an agentfs
  mount, the lease through the xattr.

Nothing in this package imports the workspace, the VFS, write-back,
checkpoints or agent state: the mount wires those in through callbacks.

Error contract: a held lease raises :class:`agentfs.errors.WouldBlock`
(``EWOULDBLOCK``); a bad xattr value :class:`agentfs.errors.InvalidArgument`;
an unparsable lease object :class:`agentfs.errors.CorruptRecord`; store
errors propagate.  Concurrency: ``LeaseStore`` is thread-safe (all state is in
the store); ``LeaseManager`` and ``KernelLocks`` run in the mount's trio
thread; one ``FileLock`` is used by one thread at a time.
"""

from __future__ import annotations

from agentfs.locks.client import FileLock, lock, mount_of, on_agentfs
from agentfs.locks.kernel import KernelLocks, Span
from agentfs.locks.leases import (
    CACHED_WAIT,
    DEFAULT_TTL,
    DOORBELL_POLL,
    LOCK_XATTR,
    MODES,
    WAITER_TTL,
    LeaseStore,
    Who,
    break_record,
    describe_holder,
    doorbell_key,
    lease_json,
    lease_key,
)
from agentfs.locks.mountleases import Held, LeaseManager, LeaseStores, parse_lock_value
from agentfs.locks.procs import alive, lineage, start_time, tgid_of

__all__ = [
    "CACHED_WAIT",
    "DEFAULT_TTL",
    "DOORBELL_POLL",
    "LOCK_XATTR",
    "MODES",
    "WAITER_TTL",
    "FileLock",
    "Held",
    "KernelLocks",
    "LeaseManager",
    "LeaseStore",
    "LeaseStores",
    "Span",
    "Who",
    "alive",
    "break_record",
    "describe_holder",
    "doorbell_key",
    "lease_json",
    "lease_key",
    "lineage",
    "lock",
    "mount_of",
    "on_agentfs",
    "parse_lock_value",
    "start_time",
    "tgid_of",
]
