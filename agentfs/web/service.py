"""What the review page asks of the core: a thin, synchronous facade over the
Python API (:mod:`agentfs.api`), the audit log (:mod:`agentfs.journal`,
:mod:`agentfs.agentstate`) and checkpoints (:mod:`agentfs.checkpoints`).

Nothing here reads or writes the store by itself: listings come from the
workspace's namespace (``WorkspaceClient.state_of``), contents from
``WorkspaceClient.open``/``read_checkpoint_bytes``, changes go through
``set_state``, ``checkpoint`` and ``restore``, so the page sees and makes
exactly what a mount, the CLI and the Python API see and make.

Error contract: :class:`agentfs.errors.AgentFSError` subclasses, as the API
raises them (``NotFound`` for a missing workspace, path or checkpoint,
``BadName``/``InvalidArgument`` for a bad name or path, ``InvalidState`` for
a status the workspace's lifecycle refuses).

Concurrency: every method is blocking and thread-safe; the web app calls them
from worker threads.  One :class:`agentfs.api.WorkspaceClient` per (workspace,
reviewer) is opened on first use and kept until :meth:`ReviewService.close`,
because the client records its agent name when it is opened.  ``AGENTFS_AGENT``
in the process environment overrides every client's agent (the core's rule),
so a server with logins must run without it (``agentfs serve`` removes it).
"""

from __future__ import annotations

import collections
import difflib
import io
import json
import logging
import posixpath
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentfs import agentstate
from agentfs.api import WorkspaceClient
from agentfs.check import workspace_names
from agentfs.checkpoints import CheckpointDiff
from agentfs.errors import (
    AgentFSError,
    AlreadyExists,
    CorruptRecord,
    InvalidArgument,
    IsADirectory,
    NotFound,
)
from agentfs.journal import Journal
from agentfs.locks import LeaseStore, lease_json
from agentfs.models import Checkpoint, Commit, Entry, MoveOp, State, StateRow, decode_xattr
from agentfs.store import ObjectStore
from agentfs.workspace import check_workspace_name

__all__ = ["LOG_WINDOW", "PAGE_ROWS", "Dashboard", "FileDiff", "ListItem", "ReviewService", "check_path", "error_status"]

log = logging.getLogger(__name__)

#: Bytes of a file shown in a preview or compared in a diff (the rest: download).
PREVIEW_BYTES = 1 << 20
#: Largest checkpoint version previewed (the API reads a checkpoint's file whole).
CHECKPOINT_PREVIEW_BYTES = 8 << 20
#: Files of a checkpoint diff that get a line diff (the others are listed only).
DIFF_FILES = 20
#: Journal commits the history pages read by default (the newest; 0 reads all).
LOG_WINDOW = 1000
#: Rows of a directory listing per page.
PAGE_ROWS = 500
#: The attribute agentfs puts on a conflict copy (JSON naming the file it belongs to).
CONFLICT_XATTR = agentstate.PREFIX + "conflict"
#: Journal actions that change a file's bytes or place (the dashboard's "changed files").
FILE_ACTIONS = frozenset({"create", "write", "rename", "delete", "symlink", "external-write", "external-delete",
                          "conflict", "fenced", "restore", "restore-delete"})
#: Longest path accepted from a request.
MAX_PATH = 4096
_KINDS = {"f": "file", "d": "dir", "l": "symlink"}


def check_path(path: str) -> str:
    """A workspace path from a URL, normalised (no leading/trailing ``/``).

    Raises InvalidArgument for ``.``/``..``/empty components, NUL or an
    oversize path: the page never resolves a path the namespace would not
    hold (and never touches a local file), but refuses such input plainly."""
    p = path.strip("/")
    if len(p) > MAX_PATH or "\0" in p:
        raise InvalidArgument("bad path", path=p[:200])
    if p and any(part in ("", ".", "..") for part in p.split("/")):
        raise InvalidArgument("bad path (empty, '.' or '..' component)", path=p[:200])
    return p


@dataclass(frozen=True)
class ListItem:
    """One row of a directory listing."""

    name: str
    path: str
    kind: str
    size: int
    mtime_ns: int
    state: StateRow | None


@dataclass(frozen=True)
class Dashboard:
    """A workspace at a glance."""

    statuses: list[tuple[str, int]]  # status -> files, most first
    agents: list[tuple[str, int, float]]  # agent, records in the last day, last record's time
    recent: list[dict[str, Any]]  # the newest record of each file changed in the last hour


@dataclass
class FileDiff:
    """A line diff of one text file between two versions (None sides: absent)."""

    path: str
    lines: list[str] = field(default_factory=list)
    note: str = ""  # why there is no line diff (binary, too large)


def _text(data: bytes | None) -> str | None:
    if data is None:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class _JournalCache:
    """The commits of one workspace read so far, by seq.

    Journal objects are immutable once created, so each is fetched once; a
    later request reads only the commits after the newest one held (and older
    ones when it asks for more history).  A damaged object is returned but not
    kept, so it is read again next time.  Thread-safe (one lock)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.commits: dict[int, Commit] = {}
        self.lo = 0  # every seq in [lo, hi] is held (lo > hi: none)
        self.hi = -1
        self._lock = threading.Lock()

    def _read(self, after: int) -> list[Commit | agentstate.Damaged]:
        """Read after ``after`` and keep the commits up to the first damaged one."""
        got = list(agentstate.read_records(self.journal, after=after))
        seq = after
        for c in got:
            if isinstance(c, agentstate.Damaged) or c.seq != seq + 1:
                break
            self.commits[c.seq] = c
            seq = c.seq
        if seq > after:
            self.lo, self.hi = (min(self.lo, after + 1) if self.hi >= self.lo else after + 1), max(self.hi, seq)
        return got[seq - after:]  # the damaged rest: shown, not kept

    def tail(self, window: int, head_seq: Callable[[], int]) -> list[Commit | agentstate.Damaged]:
        """The last ``window`` commits (0: all) in order, damaged ones included."""
        with self._lock:
            if self.hi < self.lo:  # nothing held yet: read only the window
                start = max(0, head_seq() - window) if window > 0 else 0
                rest = self._read(start)
            else:
                rest = self._read(self.hi)
                start = max(0, self.hi - window) if window > 0 else 0
                if start + 1 < self.lo:
                    rest = self._read(start)
            if self.hi < self.lo and not rest and not self.journal.exists():
                raise NotFound("no such workspace", path=self.journal.ws)
            first = max(start + 1, self.lo)
            return [*(self.commits[s] for s in range(first, self.hi + 1)), *rest]


class ReviewService:
    """The review page's view of one store (optionally limited to some workspaces)."""

    def __init__(self, store: ObjectStore, *, workspaces: list[str] | None = None, agent: str = "") -> None:
        self.store = store
        self.allowed = set(workspaces) if workspaces else None
        self.agent = agent
        self._clients: dict[tuple[str, str], WorkspaceClient] = {}
        self._logs: dict[str, _JournalCache] = {}
        self._lock = threading.Lock()

    # -- clients ---------------------------------------------------------------------

    def _check_ws(self, ws: str) -> None:
        check_workspace_name(ws)  # BadName before any key is built from it
        if self.allowed is not None and ws not in self.allowed:
            raise NotFound("no such workspace", path=ws)

    def client(self, ws: str, reviewer: str = "") -> WorkspaceClient:
        """The client of ``ws`` that records ``reviewer`` (default: the server's agent)."""
        self._check_ws(ws)
        agent = reviewer or self.agent
        with self._lock:  # one open per key, even under concurrent first requests
            c = self._clients.get((ws, agent))
            if c is None:
                if not Journal(self.store, ws).exists():
                    raise NotFound("no such workspace", path=ws)
                c = WorkspaceClient(self.store, ws, agent=agent, create=False)
                self._clients[(ws, agent)] = c
            return c

    def close(self) -> None:
        """Close every client (idempotent); the store stays open (the caller's)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            try:
                c.close()
            except Exception:  # closing the rest matters more than this one
                log.warning("closing a workspace client failed", exc_info=True)

    # -- reading ----------------------------------------------------------------------

    def workspaces(self) -> list[str]:
        names = workspace_names(self.store)
        return [n for n in names if self.allowed is None or n in self.allowed]

    def tree(self, ws: str, at: str | None = None) -> State:
        """The namespace at checkpoint ``at`` (None, ``""`` or ``head``: now)."""
        return self.client(ws).state_of(None if at in (None, "", "head") else at)

    def entry(self, ws: str, path: str, at: str | None = None) -> Entry:
        """The entry of ``path`` at the head or a checkpoint (NotFound when absent)."""
        e = self.tree(ws, at).entries.get(check_path(path))
        if e is None:
            raise NotFound(path=path)
        return e

    def lookup(self, ws: str, path: str, at: str | None = None, *, offset: int = 0,
               count: int | None = None, tree: State | None = None) -> tuple[Entry, list[ListItem], int]:
        """The entry of ``path`` and, for a directory, ``count`` entries from
        ``offset`` of what is directly in it (directories first, then by name)
        and how many there are; one read of the namespace (``tree``, when the
        caller has it), rows built for the page only."""
        path = check_path(path)
        tree = tree if tree is not None else self.tree(ws, at)
        top = tree.entries.get(path)
        if top is None:
            raise NotFound(path=path or ws)
        if top.kind != "d":
            return top, [], 0
        prefix = path + "/" if path else ""
        n = len(prefix)
        kids = sorted((e.kind != "d", p[n:], p, e) for p, e in tree.entries.items()
                      if p and p.startswith(prefix) and "/" not in p[n:])
        page = kids[offset:] if count is None else kids[offset:offset + count]
        items = [ListItem(name, p, _KINDS[e.kind], e.size, e.mtime_ns, agentstate.row_of(p, e))
                 for _, name, p, e in page]
        return top, items, len(kids)

    def preview_bytes(self, ws: str, path: str, at: str | None, limit: int = PREVIEW_BYTES) -> bytes | None:
        """The first ``limit`` bytes of a file at the head or at a checkpoint (a
        checkpoint's version is read whole, so None over CHECKPOINT_PREVIEW_BYTES)."""
        if at in (None, "", "head"):
            return self.head_bytes(ws, path, limit)
        if self.entry(ws, path, at).size > CHECKPOINT_PREVIEW_BYTES:
            return None
        return self.version_bytes(ws, path, at)[:limit]

    def head_bytes(self, ws: str, path: str, limit: int = PREVIEW_BYTES) -> bytes:
        """The first ``limit`` bytes of a file at the head."""
        path = check_path(path)
        with self.client(ws).open(path, "rb") as f:
            return f.read(limit)

    def open_file(self, ws: str, path: str) -> io.BufferedIOBase:
        """A reader of the file at the head (the caller closes it)."""
        return self.client(ws).open(check_path(path), "rb")

    def version_bytes(self, ws: str, path: str, at: str | None) -> bytes:
        """The whole file at checkpoint ``at`` (None or ``head``: now)."""
        path = check_path(path)
        c = self.client(ws)
        if at in (None, "", "head"):
            if self.entry(ws, path).kind != "f":
                raise IsADirectory(path=path)
            return c.read_bytes(path)
        return c.read_checkpoint_bytes(at, path)

    def review_queue(self, ws: str, *, status: str | None = "review", owner: str | None = None,
                     label: str | None = None, task: str | None = None) -> list[StateRow]:
        """Files with agent state matching the filters, oldest change first."""
        rows = self.client(ws).state_ls(status=status or None, owner=owner or None, label=label or None)
        rows = [r for r in rows if r.kind == "file" and (not task or r.task == task)]
        return sorted(rows, key=lambda r: (r.updated_at or "", r.path))

    def audit_log(self, ws: str, path: str = "", *, limit: int = 200,
                  window: int = LOG_WINDOW) -> list[dict[str, Any]]:
        """The newest ``limit`` audit records of ``ws`` (or of ``path``'s subtree)
        among its last ``window`` journal commits (0: all), newest first."""
        from agentfs.cli.state import log_rows  # the CLI's flattening: both show the same rows

        self._check_ws(ws)
        with self._lock:
            cache = self._logs.setdefault(ws, _JournalCache(Journal(self.store, ws)))
        commits = cache.tail(window, lambda: self.client(ws).state_of(None).seq)
        rows = log_rows(commits, path=check_path(path))
        for r in rows:
            if r["action"] == "state":
                r["change"] = agentstate.describe_change(r)
        return list(reversed(rows[-limit:] if limit > 0 else rows))

    def changes(self, ws: str, after: int, *, most: int = 1000) -> tuple[int, list[str]]:
        """The journal's tail after seq ``after``: the new last seq and the paths
        its commits touched (a damaged commit touches ``""``: everything).  One
        GET when nothing changed, so a live page can ask every half second."""
        self._check_ws(ws)
        j = Journal(self.store, ws)
        seq = after
        paths: list[str] = []
        while seq < after + most:
            try:
                c = j.fetch(seq + 1)
            except CorruptRecord:
                seq, paths = seq + 1, [*paths, ""]
                continue
            if c is None:
                break
            for r in c.records:
                paths += [r.op.src, r.op.dst] if isinstance(r.op, MoveOp) else [getattr(r.op, "path", "")]
            seq = c.seq
        return seq, paths

    def dashboard(self, ws: str, *, now: float | None = None) -> Dashboard:
        """Status counts (files with state), activity by agent in the last day and
        the files changed in the last hour, from the namespace and the journal's tail."""
        now = time.time() if now is None else now
        rows = self.client(ws).state_ls()
        counts = collections.Counter(r.status or "(no status)" for r in rows if r.kind == "file")
        log_rows = [r for r in self.audit_log(ws, limit=0) if r.get("time") and r["time"] >= now - 86400]
        agents: dict[str, list[float]] = {}
        for r in log_rows:  # newest first
            agents.setdefault(str(r["agent"]), []).append(float(r["time"]))
        recent: dict[str, dict[str, Any]] = {}
        for r in log_rows:
            if r["time"] >= now - 3600 and r["action"] in FILE_ACTIONS:
                recent.setdefault(str(r.get("dst") or r["path"]), r)  # the newest change of each
        return Dashboard(
            statuses=sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
            agents=sorted(((a, len(t), max(t)) for a, t in agents.items()), key=lambda x: -x[2]),
            recent=list(recent.values()))

    @staticmethod
    def conflicts_of(tree: State, path: str) -> list[str]:
        """The conflict copies kept beside ``path`` (their ``user.agentfs.conflict`` names it), by name."""
        out = []
        for p, e in tree.entries.items():
            raw = e.xattrs.get(CONFLICT_XATTR)
            if raw is None:
                continue
            try:
                of = json.loads(decode_xattr(raw)).get("of")
            except (ValueError, AttributeError):
                continue
            if of == path:
                out.append(p)
        return sorted(out)

    def locks(self, ws: str) -> list[dict[str, Any]]:
        """Held leases of ``ws`` (who, what, until when), as ``agentfs locks --json``."""
        self._check_ws(ws)
        now = time.time()
        return [lease_json(le, now) for le in LeaseStore(self.store, ws).list()]

    def lock_of(self, ws: str, path: str) -> dict[str, Any] | None:
        """The live lease on ``path`` (None: nobody holds it)."""
        self._check_ws(ws)
        lease, _ = LeaseStore(self.store, ws).read(check_path(path))
        if lease is None:
            return None
        row = lease_json(lease, time.time())
        return row if any(h["expires_in"] > 0 for h in row["holders"]) else None

    def checkpoints(self, ws: str) -> list[Checkpoint]:
        return self.client(ws).checkpoints()

    def diff(self, ws: str, a: str, b: str = "head") -> CheckpointDiff:
        """What changed from checkpoint ``a`` to ``b`` (``head``: now)."""
        return self.client(ws).diff(a or None, b or "head")

    def file_diffs(self, ws: str, d: CheckpointDiff, a: str, b: str) -> list[FileDiff]:
        """Unified line diffs of the first files a diff names (text files up to the preview size)."""
        trees = (self.tree(ws, a), self.tree(ws, b))
        return [self.file_diff(ws, path, a, b, trees=trees) for path in (d.changed + d.added + d.removed)[:DIFF_FILES]]

    def file_diff(self, ws: str, path: str, a: str, b: str, *, trees: tuple[State, State] | None = None,
                  other: str = "") -> FileDiff:
        """The unified diff of ``path`` from version ``a`` to ``b`` (checkpoint names
        or ``head``), or to file ``other`` at ``b`` (a conflict copy beside it);
        ``trees``: the namespaces at ``a`` and ``b`` when the caller has them."""
        path = check_path(path)
        paths = (path, check_path(other) or path)
        trees = trees or (self.tree(ws, a), self.tree(ws, b))
        entries = [t.entries.get(p) for t, p in zip(trees, paths, strict=True)]  # sizes first: read small files only
        if any(e is not None and e.kind != "f" for e in entries):
            return FileDiff(path, note="not a file")
        if any(e is not None and e.size > PREVIEW_BYTES for e in entries):
            return FileDiff(path, note="too large for a line diff")
        if all(e is None for e in entries) or (other and None in entries):
            raise NotFound(path=other if other and entries[0] is not None else path)
        sides = [None if e is None else self.version_bytes(ws, p, at)  # None: added or removed
                 for e, p, at in zip(entries, paths, (a, b), strict=True)]
        old, new = _text(sides[0]), _text(sides[1])
        if old is None or new is None:
            return FileDiff(path, note="binary")
        lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{paths[0]}@{a or 'head'}",
                                          f"{paths[1]}@{b or 'head'}", lineterm=""))
        return FileDiff(path, lines, "" if lines else "no line changes")

    # -- changing (recorded as the reviewer) ---------------------------------------

    def set_status(self, ws: str, reviewer: str, path: str, status: str, note: str = "") -> StateRow | None:
        """A status transition under the workspace's lifecycle (InvalidState when
        refused, nothing changed), then the reviewer's note if any."""
        path = check_path(path)
        fields: dict[str, str | list[str] | None] = {"status": status}
        if note.strip():
            fields["note"] = note.strip()
        return self.client(ws, reviewer).set_state(path, **fields)

    def resolve_conflict(self, ws: str, reviewer: str, path: str, copy: str, keep: str, name: str = "") -> str:
        """Settle conflict copy ``copy`` of ``path``: ``keep="file"`` removes the copy,
        ``"copy"`` puts the copy's bytes at ``path`` and removes the copy, ``"both"``
        renames the copy to ``name`` beside the file (no longer a conflict copy).
        Each step is an ordinary journaled change by the reviewer; returns the path
        to show next.  InvalidArgument for a ``copy`` that is not one of ``path``'s."""
        path, copy = check_path(path), check_path(copy)
        if copy not in self.conflicts_of(self.tree(ws), path):
            raise InvalidArgument("not a conflict copy of this file", path=copy)
        c = self.client(ws, reviewer)
        if keep == "file":
            c.remove(copy)
            return path
        if keep == "copy":
            with c.open(copy, "rb") as src, c.open(path, "wb") as out:
                shutil.copyfileobj(src, out, 8 << 20)
            c.remove(copy)
            return path
        if keep != "both":
            raise InvalidArgument("keep must be file, copy or both", path=keep[:40])
        if not name.strip() or "/" in name or name.strip() in (".", ".."):
            raise InvalidArgument("keeping both needs a new name for the copy (no '/')", path=name[:200])
        dst = posixpath.join(posixpath.dirname(path), name.strip())
        if c.exists(dst):
            raise AlreadyExists(path=dst)
        c.rename(copy, dst)
        c.removexattr(dst, CONFLICT_XATTR)
        return dst

    def create_checkpoint(self, ws: str, reviewer: str, name: str = "", note: str = "") -> Checkpoint:
        return self.client(ws, reviewer).checkpoint(name.strip() or None, note=note.strip())

    def restore(self, ws: str, reviewer: str, name: str) -> Checkpoint:
        """Roll ``ws`` back to checkpoint ``name``; returns the checkpoint that undoes it."""
        if not name:
            raise InvalidArgument("no checkpoint named")
        return self.client(ws, reviewer).restore(name)


def error_status(e: AgentFSError) -> int:
    """The HTTP status a core error is answered with (4xx for the caller's mistakes)."""
    from agentfs import errors as E

    table: list[tuple[type[AgentFSError], int]] = [
        (E.NotFound, 404), (E.InvalidState, 409), (E.InvalidArgument, 400), (E.NameTooLong, 400),
        (E.AlreadyExists, 409), (E.Busy, 409), (E.Stale, 409), (E.IsADirectory, 400),
        (E.NotADirectory, 400), (E.ReadOnly, 403), (E.PermissionDenied, 403), (E.NotPermitted, 403),
        (E.TooBig, 413), (E.StoreUnavailable, 503),
    ]
    for cls, status in table:
        if isinstance(e, cls):
            return status
    return 500
