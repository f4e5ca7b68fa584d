"""Pydantic records for everything agentfs persists.

The journal of a workspace is a sequence of :class:`Commit` objects stored at
``.agentfs/<ws>/log/<seq:020d>.json``; a :class:`State` at
``.agentfs/<ws>/state/<seq:020d>.json.gz`` is the whole namespace at ``seq``.
Each commit holds one or more :class:`Record` (one audited mutation each, with
who/when), and each record carries one operation: ``put`` (create or replace
an entry), ``del`` or ``mv``.  Applying the operations in log order is a pure,
total function (see ``namespace.py``), so every mount converges to the same tree.

Format versions: a record whose ``v`` is newer than :data:`FORMAT_VERSION` is
refused with :class:`agentfs.errors.CorruptRecord` rather than misread.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointOp",
    "Commit",
    "DelOp",
    "Entry",
    "Lease",
    "LeaseHolder",
    "LeaseWaiter",
    "Lifecycle",
    "MoveOp",
    "NoteOp",
    "Op",
    "PutOp",
    "Record",
    "State",
    "StateRow",
    "TTLValue",
    "decode_xattr",
    "encode_xattr",
]

FORMAT_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Versioned(_Model):
    """A top-level record: refuses a format newer than this agentfs."""

    v: int = FORMAT_VERSION

    @field_validator("v")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > FORMAT_VERSION:
            raise ValueError(f"format version {v} is newer than this agentfs ({FORMAT_VERSION})")
        return v


class Entry(_Model):
    """One namespace entry: a file, a directory or a symlink.

    ``etag`` is the store's version token of the data object (files only);
    ``data_key`` is where the bytes are when not at the natural key (reserved
    for checkpoints and forks; ``None`` means the natural key).  xattr values
    are base64 so that binary values survive JSON.
    """

    kind: Literal["f", "d", "l"]
    mode: int = Field(ge=0, le=0o7777)
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    atime_ns: int | None = None  # only when set explicitly (the mount is noatime)
    size: int = Field(default=0, ge=0)
    etag: str | None = None
    sha256: str | None = None
    data_key: str | None = None
    target: str | None = None
    xattrs: dict[str, str] = Field(default_factory=dict)
    #: Checkpoints: the journal seq at which this file's current bytes (etag)
    #: were committed; stamped by ``Namespace.apply``, kept across metadata-only
    #: changes.  0 (old records) means "unknown, assume old" (safe for COW).
    vseq: int = 0


class PutOp(_Model):
    op: Literal["put"] = "put"
    path: str
    entry: Entry


class DelOp(_Model):
    op: Literal["del"] = "del"
    path: str


class MoveOp(_Model):
    """Rename ``src`` to ``dst`` (replacing ``dst``); ``etags`` gives the new
    version of every moved file whose bytes were copied to its new natural key,
    keyed by the file's path relative to ``dst`` (``""`` for a file rename)."""

    op: Literal["mv"] = "mv"
    src: str
    dst: str
    etags: dict[str, str] = Field(default_factory=dict)


class NoteOp(_Model):
    """An audit-only record about ``path`` that changes nothing in the tree
    (lock events such as ``lock-break``; see ``agentfs/locks.py``)."""

    op: Literal["note"] = "note"
    path: str



class CheckpointOp(_Model):
    """Create (or, with ``delete``, drop) checkpoint ``name``: it freezes the
    namespace at the seq of the commit that carries it (see checkpoints.py)."""

    op: Literal["checkpoint"] = "checkpoint"
    name: str
    note: str = ""
    delete: bool = False


Op = Annotated[PutOp | DelOp | MoveOp | NoteOp | CheckpointOp, Field(discriminator="op")]


class Record(_Model):
    """One audited mutation: what, who, when."""

    action: str
    op: Op
    time: float = Field(default_factory=time.time)
    agent: str = ""
    pid: int | None = None
    uid: int | None = None
    detail: dict[str, str | int | float | None] = Field(default_factory=dict)


class Commit(_Versioned):
    """One journal object: records written together (group commit)."""

    v: int = FORMAT_VERSION
    seq: int = Field(ge=1)
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: float = Field(default_factory=time.time)
    mount: str = ""
    host: str = ""
    records: list[Record]


class State(_Versioned):
    """A compacted namespace: every entry by path at ``seq``, plus tombstones
    (natural keys deleted or moved away, with the time) used to tell a crashed
    writer's leftover object from an external write."""

    v: int = FORMAT_VERSION
    seq: int = Field(ge=0)
    entries: dict[str, Entry]
    tombstones: dict[str, float] = Field(default_factory=dict)
    #: Live checkpoints: name -> seq (checkpoints.py).
    checkpoints: dict[str, int] = Field(default_factory=dict)


def encode_xattr(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def decode_xattr(value: str) -> bytes:
    return base64.b64decode(value)


# -- agent state: typed user.agentfs.* values ---------------------------------

#: The default lifecycle of ``user.agentfs.status``.
DEFAULT_TRANSITIONS: dict[str, list[str]] = {
    "draft": ["in_progress", "review", "failed", "archived"],
    "in_progress": ["draft", "review", "failed", "archived"],
    "review": ["in_progress", "approved", "failed", "archived"],
    "approved": ["final", "review", "failed", "archived"],
    "final": ["archived"],
    "failed": ["draft", "in_progress", "archived"],
    "archived": ["draft"],
}

_STATUS_RE = r"^[a-z][a-z0-9_-]{0,31}$"


class Lifecycle(_Model):
    """The statuses of a workspace and the transitions allowed between them.

    Stored as JSON in the xattr ``user.agentfs.lifecycle`` of the workspace
    root (so it is journaled and every mount sees it); absent means the default.
    ``initial`` lists the statuses a file without a status may take (None: any).
    """

    statuses: list[Annotated[str, Field(pattern=_STATUS_RE)]] = Field(min_length=1, max_length=64)
    #: from -> allowed targets; None: any status may follow any other.
    transitions: dict[str, list[str]] | None = None
    initial: list[str] | None = None

    @field_validator("transitions")
    @classmethod
    def _known_names(cls, v: dict[str, list[str]] | None, info: Any) -> dict[str, list[str]] | None:
        known = set(info.data.get("statuses") or [])
        for src, dsts in (v or {}).items():
            bad = [s for s in [src, *dsts] if s not in known]
            if bad:
                raise ValueError(f"transition names unknown status {bad[0]!r}")
        return v

    @field_validator("initial")
    @classmethod
    def _known_initial(cls, v: list[str] | None, info: Any) -> list[str] | None:
        known = set(info.data.get("statuses") or [])
        for s in v or []:
            if s not in known:
                raise ValueError(f"initial names unknown status {s!r}")
        return v

    def allowed(self, old: str | None, new: str) -> bool:
        """May a file go from ``old`` (None: no status yet) to ``new``?"""
        if new not in self.statuses:
            return False
        if old == new:
            return True
        if old is None or old not in self.statuses:
            return self.initial is None or new in self.initial
        return self.transitions is None or new in self.transitions.get(old, [])

    @classmethod
    def default(cls) -> Lifecycle:
        """draft -> in_progress -> review -> approved -> final, plus failed/archived."""
        return cls(statuses=list(DEFAULT_TRANSITIONS),
                   transitions={k: list(v) for k, v in DEFAULT_TRANSITIONS.items()})


class TTLValue(_Model):
    """The stored form of ``user.agentfs.ttl``: the duration and the absolute
    expiry it gave when it was set (seconds since the epoch, and ISO UTC)."""

    seconds: float = Field(gt=0, le=10 * 366 * 86400)
    expires_at: float
    expires: str = ""


class StateRow(_Model):
    """One file or directory with agent state, as ``agentfs state ls`` shows it."""

    path: str
    kind: Literal["file", "dir", "symlink"]
    status: str | None = None
    owner: str | None = None
    task: str | None = None
    labels: list[str] = Field(default_factory=list)
    expires_at: float | None = None
    note: str | None = None
    updated_by: str | None = None
    updated_at: str | None = None

# -- rename intents (crash safety of directory renames) ----------------------------


class RenameIntent(_Versioned):
    """Written before a rename copies objects to their new keys, removed after.

    ``keys`` are the new natural keys the copies create; ``seq`` is the journal
    position when the rename began (its commit, if any, comes after it and
    carries ``detail["intent"] == id``).  See :mod:`agentfs.workspace.intents`.
    """

    v: int = FORMAT_VERSION
    id: str
    mount: str = ""
    time: float = Field(default_factory=time.time)
    seq: int = Field(ge=0)
    src: str
    dst: str
    keys: list[str]


__all__ += ["RenameIntent"]

# -- locks: leases in the store, see agentfs/locks.py ----------------------


class LeaseHolder(_Model):
    """One process holding a lease: who, where, until when, with which token."""

    agent: str = ""
    host: str = ""
    mount: str = ""
    pid: int | None = None
    #: held by a mount for its processes' flock/fcntl locks (agentfs/locks/kernel.py)
    kernel: bool = False
    mode: Literal["shared", "exclusive"]
    token: int = Field(ge=1)
    acquired: float
    expires: float
    #: kept by its mount after the last local unlock (a hint: that mount
    #: gives it back when another mount rings its doorbell, agentfs/locks/kernel.py)
    cached: bool = False


class LeaseWaiter(_Model):
    """A blocked exclusive locker: while it is live, new shared holders are
    refused (no starvation of exclusive lockers by a stream of shared ones)."""

    agent: str = ""
    host: str = ""
    mount: str = ""
    pid: int | None = None
    kernel: bool = False
    since: float
    expires: float


class Lease(_Versioned):
    """The lease object of one workspace path, ``.agentfs/<ws>/locks/<sha256(path)>.json``.

    The object is never deleted: a released lease keeps ``token``, the last
    fencing token handed out, so tokens only grow across release and re-acquire.
    """

    v: int = FORMAT_VERSION
    path: str
    token: int = Field(default=0, ge=0)
    holders: list[LeaseHolder] = Field(default_factory=list)
    waiters: list[LeaseWaiter] = Field(default_factory=list)
    updated: float = Field(default_factory=time.time)
    #: the journal position the last releaser had committed its writes to:
    #: the next holder's mount catches up at least to it (locks hand over data)
    seq: int = Field(default=0, ge=0)

    @property
    def mode(self) -> str | None:
        """``exclusive``/``shared`` while held, None when free."""
        return self.holders[0].mode if self.holders else None

# -- checkpoints -----------------------------------------------------


class Checkpoint(_Versioned):
    """The record ``.agentfs/<ws>/snapshots/<name>.json`` of one checkpoint.

    The journal is authoritative (a ``CheckpointOp`` commit at ``seq``); this
    record adds who/when/note for listings and sits next to a ``<name>.md``
    summary for humans.  ``forks`` names workspaces forked from it.
    """

    v: int = FORMAT_VERSION
    name: str
    workspace: str
    seq: int = Field(ge=1)
    created: float = Field(default_factory=time.time)
    by: str = ""
    note: str = ""
    files: int = 0
    bytes: int = 0
    forks: list[str] = Field(default_factory=list)

# -- writeback: the crash-safe on-disk upload queue, see agentfs/writeback.py --


class QueuedWrite(_Versioned):
    """One closed file waiting for its upload in ``--writeback`` mode.

    Stored as ``<queue dir>/<id>.json`` next to ``<id>.data`` (a hard link to
    the file's working copy, so it always holds the latest closed bytes).
    ``entry`` is the file's entry as the writer left it (mode, owner, mtime,
    xattrs); ``base_etag`` the store version the bytes derive from (None for a
    new file), so a replay after a crash keeps the conflict rules.
    """

    id: str
    workspace: str
    path: str
    base_etag: str | None = None
    #: the working copy's file name in ``<queue dir>/data/``
    data: str
    entry: Entry
    agent: str = ""
    pid: int | None = None
    uid: int = 0
    gid: int = 0
    mount: str = ""
    queued: float = Field(default_factory=time.time)


class QueuedMeta(_Versioned):
    """Metadata records (mkdir, symlink, chmod/utimens) of one deferred group
    commit in ``--writeback`` mode, as queued (``<queue dir>/m<time>-<n>.json``)
    until the commit is written; replayed after a crash where they still fit."""

    id: str
    workspace: str
    records: list[Record]


__all__ += ["QueuedMeta", "QueuedWrite"]
