"""The persisted records of the LangGraph saver and where they live in the workspace.

Layout under the saver's directory (default ``.agent/threads``), one folder per
thread and per checkpoint namespace (``main`` for the root graph, ``ns-<name>``
for a subgraph's)::

    <dir>/<thread>/<ns>/<checkpoint_id>.json          CheckpointRecord
    <dir>/<thread>/<ns>/<checkpoint_id>.md            the summary for people
    <dir>/<thread>/<ns>/writes/<checkpoint_id>.<task>.json   WriteRecord (pending writes of one task)
    <dir>/<thread>/<ns>/blobs/<sha256>.bin            a large channel value, stored once

Names that are not plain path components are percent-encoded, so every
thread id and namespace LangGraph accepts maps to one folder and back.

Error contract: :func:`encode_component` raises
:class:`agentfs.errors.InvalidArgument` for an empty or non-string name;
:func:`parse_record` raises :class:`agentfs.errors.CorruptRecord` naming the
file.  Concurrency: pure functions and immutable models; no I/O here.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any, Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentfs.errors import CorruptRecord, InvalidArgument

__all__ = [
    "ROOT_NS_DIR",
    "CheckpointRecord",
    "FilesRef",
    "PendingWrite",
    "StoredValue",
    "WriteRecord",
    "decode_component",
    "encode_component",
    "files_checkpoint_name",
    "files_checkpoint_prefix",
    "ns_dir",
    "ns_of_dir",
    "parse_record",
    "sha256_hex",
]

FORMAT_VERSION = 1
#: The folder of the root graph's checkpoints (a subgraph's is ``ns-<encoded ns>``).
ROOT_NS_DIR = "main"
_NS_PREFIX = "ns-"
_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoredValue(_Model):
    """One serializer output: ``type`` and bytes, inline (base64) or in a blob file."""

    type: str
    data: str | None = None  # base64 of the serialized bytes
    blob: str | None = None  # path of the blob file, relative to the namespace folder

    @classmethod
    def inline(cls, type_: str, raw: bytes) -> StoredValue:
        return cls(type=type_, data=base64.b64encode(raw).decode())

    def raw_inline(self) -> bytes:
        return base64.b64decode(self.data or "")


class FilesRef(_Model):
    """The agentfs checkpoint cut together with a LangGraph checkpoint (``files=True``)."""

    checkpoint: str  # the agentfs checkpoint's name
    workspace: str


class CheckpointRecord(_Model):
    """``<checkpoint_id>.json``: one LangGraph checkpoint, its metadata and the
    agentfs checkpoint of the workspace's files at that step (if any)."""

    v: int = FORMAT_VERSION
    kind: Literal["langgraph-checkpoint"] = "langgraph-checkpoint"
    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None = None
    created: float = Field(default_factory=time.time)
    agent: str = ""
    #: the checkpoint without its channel values (serializer output)
    checkpoint: StoredValue
    channel_values: dict[str, StoredValue] = Field(default_factory=dict)
    #: the metadata (serializer output: what get_tuple returns)
    metadata: StoredValue
    #: the same metadata as plain JSON, for people and tools
    metadata_json: dict[str, Any] = Field(default_factory=dict)
    files: FilesRef | None = None


class PendingWrite(_Model):
    idx: int
    channel: str
    value: StoredValue


class WriteRecord(_Model):
    """``writes/<checkpoint_id>.<task>.json``: the pending writes of one task."""

    v: int = FORMAT_VERSION
    kind: Literal["langgraph-writes"] = "langgraph-writes"
    checkpoint_id: str
    task_id: str
    task_path: str = ""
    writes: list[PendingWrite] = Field(default_factory=list)


def parse_record(model: type[_Model], raw: bytes, path: str) -> Any:
    """Validate a stored record; a damaged one is a :class:`CorruptRecord` naming ``path``."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise CorruptRecord(f"damaged LangGraph record ({e.error_count()} errors)", path=path) from None


def encode_component(value: object, what: str) -> str:
    """A thread id, checkpoint id or task id as one path component (reversible)."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string, got {value!r}")
    if _PLAIN.fullmatch(value) and len(value) <= 200:
        return value
    enc = quote(value, safe="")
    if enc.startswith("."):  # never a hidden name, never "." or ".."
        enc = "%2E" + enc[1:]
    if len(enc) > 240:
        raise InvalidArgument(f"{what} too long ({len(value)} characters)")
    return enc


def decode_component(name: str) -> str:
    return unquote(name)


def ns_dir(checkpoint_ns: str) -> str:
    if not isinstance(checkpoint_ns, str):
        raise InvalidArgument(f"checkpoint_ns must be a string, got {checkpoint_ns!r}")
    return ROOT_NS_DIR if checkpoint_ns == "" else _NS_PREFIX + quote(checkpoint_ns, safe="")


def ns_of_dir(name: str) -> str | None:
    """The namespace a folder holds (None: not a namespace folder)."""
    if name == ROOT_NS_DIR:
        return ""
    if name.startswith(_NS_PREFIX) and len(name) > len(_NS_PREFIX):
        return unquote(name[len(_NS_PREFIX):])
    return None


def sha256_hex(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def files_checkpoint_prefix(thread_id: str) -> str:
    """Every agentfs checkpoint cut for a thread starts with this (``lg-<hash of the thread>-``)."""
    return f"lg-{sha256_hex(thread_id.encode())[:12]}-"


def files_checkpoint_name(thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> str:
    """The agentfs checkpoint cut with a LangGraph checkpoint:
    ``lg-<thread hash>-<namespace hash>-<id>`` (the id kept when it is a valid name)."""
    tail = checkpoint_id if re.fullmatch(r"[A-Za-z0-9._@+-]{1,150}", checkpoint_id) else \
        sha256_hex(checkpoint_id.encode())[:32]
    return f"{files_checkpoint_prefix(thread_id)}{sha256_hex(checkpoint_ns.encode())[:6]}-{tail}"
