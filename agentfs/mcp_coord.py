"""The coordination tools of ``agentfs mcp``: locks, agent state, checkpoints, the audit log.

Each tool is a thin call of the core's public API (:class:`agentfs.api.WorkspaceClient`,
:mod:`agentfs.locks`, :mod:`agentfs.agentstate`), so it behaves exactly as the
mount and the CLI do:

- ``lock_acquire`` takes the same lease as a mount's ``flock``/``agentfs lock``
  and ``WorkspaceClient.lock`` (they exclude each other across hosts), held
  until ``lock_release`` or the end of the session, renewed meanwhile;
- ``state_set`` writes the typed ``user.agentfs.*`` fields with the same
  validation and lifecycle as ``setfattr`` on a mount (a bad value is a tool
  error saying what is allowed);
- checkpoints are the CLI's: ``checkpoint_restore`` first checkpoints the
  current head and names it, so a restore is undoable.

Error contract: as :mod:`agentfs.mcp_server` (the project's errors become MCP
tool errors ``ERRNO: message``).  Concurrency: tools run in the SDK's worker
threads; the held-lock table is guarded by one lock.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from agentfs.api import WorkspaceClient
from agentfs.errors import InvalidArgument, NoAttribute, NotFound
from agentfs.identity import HOSTNAME
from agentfs.locks import LeaseStore, lease_json
from agentfs.mcp_server import MAX_LOCK_WAIT, clean_path, journal_records, mapped
from agentfs.models import Checkpoint, StateRow

if TYPE_CHECKING:
    from agentfs.mcp_server import WorkspaceTools

__all__ = ["CoordinationTools"]


class LockInfo(BaseModel):
    path: str
    held_by_this_session: bool
    mode: str | None = None
    token: int = Field(default=0, description="the fencing token of this session's hold (0: not held here)")
    holders: list[dict[str, Any]] = Field(default_factory=list)


class LockList(BaseModel):
    locks: list[dict[str, Any]]
    held_by_this_session: list[str]


class StateResult(BaseModel):
    path: str
    state: StateRow | None


class StateRows(BaseModel):
    rows: list[StateRow]


class CheckpointList(BaseModel):
    checkpoints: list[Checkpoint]


class RestoreResult(BaseModel):
    restored: str
    undo: str = Field(description="the automatic checkpoint of the previous head: restore it to undo")


class DiffResult(BaseModel):
    a: str
    b: str
    added: list[str]
    removed: list[str]
    changed: list[str]
    state: list[dict[str, str | None]]
    markdown: str


class CheckpointFile(BaseModel):
    checkpoint: str
    path: str
    content: str
    size: int


class LogRecords(BaseModel):
    records: list[dict[str, Any]]


class CoordinationTools:
    """Locks, state, checkpoints and the log over one client (the caller closes it)."""

    def __init__(self, client: WorkspaceClient, files: WorkspaceTools) -> None:
        self.c = client
        self.files = files
        self._held: dict[str, tuple[contextlib.AbstractContextManager[None], str, int]] = {}
        self._pending: set[str] = set()
        self._mu = threading.Lock()

    def read_tools(self) -> dict[str, tuple[Callable[..., Any]]]:
        return {n: (getattr(self, n),) for n in ("locks_list", "state_get", "state_query", "checkpoint_list",
                                                  "checkpoint_diff", "checkpoint_read_file", "log_query")}

    def write_tools(self) -> dict[str, tuple[Callable[..., Any], bool, bool]]:
        """name -> (function, destructive, idempotent)."""
        return {"lock_acquire": (self.lock_acquire, False, False),
                "lock_release": (self.lock_release, False, False),
                "state_set": (self.state_set, False, True),
                "request_review": (self.request_review, False, True),
                "checkpoint_create": (self.checkpoint_create, False, False),
                "checkpoint_restore": (self.checkpoint_restore, True, False)}

    # -- locks ------------------------------------------------------------------------

    def _lease(self, path: str) -> dict[str, Any] | None:
        lease, _ = LeaseStore(self.c.store, self.c.name).read(path)
        if lease is None:
            return None
        now = time.time()
        lease.holders = [h for h in lease.holders if h.expires > now]
        return lease_json(lease, now)

    @mapped
    def lock_acquire(self, path: str, mode: Literal["exclusive", "shared"] = "exclusive",
                     wait_s: float = Field(0.0, ge=0, le=MAX_LOCK_WAIT,
                                           description="seconds to wait for the lock (0: fail at once)")
                     ) -> LockInfo:
        """Take a lease on a file (flock semantics across mounts, CLI and MCP sessions); held until
        lock_release or the end of this session.  A lock held elsewhere is an EAGAIN (EWOULDBLOCK) error naming the holder."""
        path = clean_path(path)
        self.c.stat(path)  # like flock(1): the file must exist (NotFound otherwise)
        with self._mu:
            if path in self._held or path in self._pending:
                raise InvalidArgument("this session already holds or is taking a lock on it "
                                      "(lock_release first)", path=path)
            self._pending.add(path)  # one acquisition per path at a time, even from parallel calls
        try:
            cm = self.c.lock(path, shared=mode == "shared", wait=wait_s)
            cm.__enter__()  # held across tool calls: exited by lock_release or at session end
            with self._mu:
                self._held[path] = (cm, mode, 0)  # recorded first: a failing read below must not leak it
        finally:
            with self._mu:
                self._pending.discard(path)
        lease = self._lease(path) or {}
        # this process's newest hold is the one just taken (tokens only grow)
        mine = [h for h in lease.get("holders", []) if h["pid"] == os.getpid() and h["host"] == HOSTNAME]
        token = max((h["token"] for h in mine), default=0)
        with self._mu:
            if path in self._held:
                self._held[path] = (cm, mode, token)
        return LockInfo(path=path, held_by_this_session=True, mode=mode, token=token,
                        holders=lease.get("holders", []))

    @mapped
    def lock_release(self, path: str) -> LockInfo:
        """Give back a lock this session took (ENODATA if it holds none on the path)."""
        path = clean_path(path)
        with self._mu:
            held = self._held.pop(path, None)
        if held is None:
            raise NoAttribute("this session holds no lock on the file", path=path)
        held[0].__exit__(None, None, None)
        lease = self._lease(path) or {}
        return LockInfo(path=path, held_by_this_session=False, mode=lease.get("mode"),
                        holders=lease.get("holders", []))

    @mapped
    def locks_list(self, path: str = "") -> LockList:
        """Who holds which lease in the workspace (below ``path``), until when."""
        path = clean_path(path, allow_root=True)
        now = time.time()
        rows = [lease_json(le, now) for le in LeaseStore(self.c.store, self.c.name).list()]
        if path:
            rows = [r for r in rows if r["path"] == path or r["path"].startswith(path + "/")]
        with self._mu:
            mine = sorted(self._held)
        return LockList(locks=rows, held_by_this_session=mine)

    def release_all(self) -> None:
        """Session end: give back every lock this session holds."""
        with self._mu:
            held, self._held = list(self._held.values()), {}
        for cm, _, _ in held:
            cm.__exit__(None, None, None)

    # -- agent state ---------------------------------------------------------------------

    @mapped
    def state_get(self, path: str) -> StateResult:
        """The agent state (status, owner, task, labels, ttl, note, updated_by/at) of a file or directory."""
        path = clean_path(path)
        return StateResult(path=path, state=self.c.state(path))

    @mapped
    def state_set(self, path: str, status: str | None = None, owner: str | None = None,
                  task: str | None = None, labels: list[str] | None = None,
                  ttl: str | None = Field(None, description="a duration: 90s, 30m, 2h, 7d"),
                  note: str | None = None,
                  clear: list[Literal["status", "owner", "task", "labels", "ttl", "note"]] | None = None
                  ) -> StateResult:
        """Set typed agent state on a file (validated as on a mount: a bad value or a forbidden status
        transition is an EINVAL error saying what is allowed); ``clear`` removes fields."""
        path = clean_path(path)
        fields: dict[str, str | list[str] | None] = {
            k: v for k, v in (("status", status), ("owner", owner), ("task", task), ("labels", labels),
                              ("ttl", ttl), ("note", note)) if v is not None}
        for k in clear or []:
            if k in fields:
                raise InvalidArgument(f"{k} is both set and cleared")
            fields[k] = None
        if not fields:
            raise InvalidArgument("nothing to set: give at least one field (or clear)")
        return StateResult(path=path, state=self.c.set_state(path, **fields))

    @mapped
    def request_review(self, path: str, note: str = "") -> StateResult:
        """Hand a file to a human: status ``review`` with a note."""
        path = clean_path(path)
        fields: dict[str, str | list[str] | None] = {"status": "review"}
        if note:
            fields["note"] = note
        return StateResult(path=path, state=self.c.set_state(path, **fields))

    @mapped
    def state_query(self, status: str | None = None, owner: str | None = None, label: str | None = None,
                    under: str = "") -> StateRows:
        """Files with agent state, filtered by status, owner, label and directory (as ``agentfs state ls``)."""
        under = clean_path(under, allow_root=True)
        return StateRows(rows=self.c.state_ls(status=status, owner=owner, label=label, under=under))

    # -- checkpoints ------------------------------------------------------------------------

    @mapped
    def checkpoint_create(self, name: str | None = None, note: str = "") -> Checkpoint:
        """Checkpoint the whole workspace now (copy-on-write: no bytes copied); default name cp-<time>-<hex>."""
        return self.c.checkpoint(name, note=note)

    @mapped
    def checkpoint_list(self) -> CheckpointList:
        """The live checkpoints of the workspace, oldest first."""
        return CheckpointList(checkpoints=self.c.checkpoints())

    @mapped
    def checkpoint_restore(self, name: str) -> RestoreResult:
        """Bring the workspace back to a checkpoint; the previous head is checkpointed first (returned as undo)."""
        undo = self.c.restore(name)
        return RestoreResult(restored=name, undo=undo.name)

    @mapped
    def checkpoint_diff(self, a: str, b: str = "head") -> DiffResult:
        """Files added, removed and changed, and state changes, from checkpoint a to b ("head": now)."""
        d = self.c.diff(a, b)
        return DiffResult(a=d.a, b=d.b, added=d.added, removed=d.removed, changed=d.changed, state=d.state,
                          markdown=d.markdown())

    @mapped
    def checkpoint_read_file(self, name: str, path: str) -> CheckpointFile:
        """A text file as it was at checkpoint ``name`` (bounded by the server's read limit)."""
        path = clean_path(path)
        limit = self.files.s.max_read_bytes
        st = self.c.state_of(name).entries.get(path)
        if st is None:
            raise NotFound(f"not in checkpoint {name}", path=path)
        if st.size > limit:
            from agentfs.errors import TooBig
            raise TooBig(f"file is {st.size} bytes, over the read limit of {limit}", path=path)
        data = self.c.read_checkpoint_bytes(name, path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("not a UTF-8 text file", path=path) from None
        return CheckpointFile(checkpoint=name, path=path, content=text, size=len(data))

    # -- the audit log ------------------------------------------------------------------------

    @mapped
    def log_query(self, path: str = "", agent: str | None = None,
                  since: str | None = Field(None, description="30m, 2h, 1d or an ISO time"),
                  action: list[str] | None = None, limit: int = Field(50, ge=0, le=10000)) -> LogRecords:
        """The audit log: who changed what, when (newest ``limit`` records; path: a file or a directory)."""
        from agentfs.cli.state import log_rows, parse_since  # the audit log's one reader

        path = clean_path(path, allow_root=True)
        since_t = parse_since(since) if since else None
        rows = log_rows(journal_records(self.c), path=path, agent=agent, since=since_t, actions=action)
        rows = rows[-limit:] if limit else rows
        return LogRecords(records=rows)

