"""The records of a workspace's open state: node attributes, open files, the
namespace lock, queued commits; and the limits of names and attributes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat as stat_mod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from agentfs import streaming
from agentfs.models import (
    Record,
)
from agentfs.namespace import Node

__all__ = ['MAX_XATTR_NAME', 'MAX_XATTR_VALUE', 'RETRY', 'SMALL_FILE', 'Attr', 'OpenFile', 'Pending', 'RWLock']

log = logging.getLogger(__name__)

MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 * 1024
#: Files up to this size are uploaded from memory in one request.
SMALL_FILE = 8 << 20
#: returned by a pinned read whose object moved meanwhile: read again
RETRY = object()


@dataclass(slots=True)
class Attr:
    """Attributes of one node as the kernel sees them."""

    ino: int
    kind: str
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int

    @property
    def st_mode(self) -> int:
        fmt = {"f": stat_mod.S_IFREG, "d": stat_mod.S_IFDIR, "l": stat_mod.S_IFLNK}[self.kind]
        return fmt | self.mode


@dataclass(eq=False)
class OpenFile:
    """The open state of one file node in this mount (shared by its handles).

    ``fd`` is the local working copy once the file is written (or unlinked
    while open); ``base_etag`` is the store version that copy derives from
    (None for a file that has never been uploaded).
    """

    node: Node
    handles: int = 0
    fd: int = -1
    local: Path | None = None
    size: int = 0
    mtime_ns: int = 0
    dirty: bool = False
    gen: int = 0
    base_etag: str | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)
    #: Removed by this mount (unlink or rename over it) while open.
    unlinked: bool = False
    #: Where the file was last seen, to keep its bytes if another mount removes it.
    last_path: str | None = None
    #: the upload of a file being written sequentially (agentfs/streaming.py)
    stream: streaming.Stream | None = None
    #: The file is empty by a truncation or its creation and nothing was
    #: written since: a descriptor's close does not publish it on its own (a
    #: shell ``>`` closes a duplicate descriptor before the first write); the
    #: last close (release), fsync or the next write's upload does.
    only_trunc: bool = False
    #: The path this open file was written for before its upload lost a race
    #: (or was fenced): its bytes, and all it is written from now on, belong to
    #: the conflict copy ``node`` now is; every flush/fsync reports the loss.
    diverted_from: str | None = None
    #: (etag uploaded, version it replaced) of an upload whose commit failed.
    orphan: tuple[str, str | None] | None = None
    #: Paths with a TTL (the file, directories above it) marked open for other
    #: mounts' pruners (agentfs/openmarks.py); unmarked at the last close.
    marked: list[str] = field(default_factory=list)

    def close_local(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.local is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.local)
            self.local = None


class RWLock:
    """A trio shared/exclusive lock; waiting exclusive lockers block new shared ones."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._cond = trio.Condition()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            while self._writer or self._writers_waiting:
                await self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1  # bookkeeping first: a cancelled holder must not leak it
            with trio.CancelScope(shield=True):
                async with self._cond:
                    self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    await self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            self._writer = False
            with trio.CancelScope(shield=True):
                async with self._cond:
                    self._cond.notify_all()


@dataclass
class Pending:
    records: list[Record]
    done: bool = False
    error: BaseException | None = None
    #: queued by a close that does not wait (agentfs/workspace/groupcommit.py)
    deferred: bool = False


