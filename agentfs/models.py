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
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointOp",
    "Commit",
    "DelOp",
    "Entry",
    "MoveOp",
    "Op",
    "PutOp",
    "Record",
    "State",
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


class CheckpointOp(_Model):
    """Create (or, with ``delete``, drop) checkpoint ``name``: it freezes the
    namespace at the seq of the commit that carries it (see checkpoints.py)."""

    op: Literal["checkpoint"] = "checkpoint"
    name: str
    note: str = ""
    delete: bool = False


Op = Annotated[PutOp | DelOp | MoveOp | CheckpointOp, Field(discriminator="op")]


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


# -- checkpoints (issue 5) -----------------------------------------------------


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
