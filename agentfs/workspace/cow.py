"""Copy-on-write of checkpointed versions, and reading a version wherever it is.

Every file entry carries ``vseq``, the seq at which its current bytes were
committed.  The current version is referenced by a live checkpoint iff
``vseq <= max(live checkpoint seqs)``.  Before the workspace overwrites,
truncates, deletes or renames away such a version, :func:`preserve` copies it
once to ``.agentfs/<ws>/blobs/<id>`` (see :mod:`agentfs.checkpoints`).  With no
live checkpoint, :func:`preserve` returns without any request.

A version's bytes are at its natural key while the workspace still holds it
there (pinned with ``if_match``), else in its blob, or for a restored or
forked entry at its ``data_key``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from agentfs.errors import (
    NotFound,
    PreconditionFailed,
    Stale,
)
from agentfs.journal import META
from agentfs.models import (
    Entry,
)
from agentfs.namespace import Node

if TYPE_CHECKING:
    from agentfs.workspace.base import WorkspaceBase as Workspace

__all__ = ['FENCE', 'blob_id', 'blob_key', 'candidates', 'data_ws', 'fence', 'fetch_version', 'preserve', 'preserve_tree', 'read_version', 'referenced']

log = logging.getLogger(__name__)


def blob_id(entry: Entry, path: str) -> str:
    """Content id of one file version (see the module docstring)."""
    if entry.sha256:
        return entry.sha256
    return "v" + hashlib.sha256(f"{path}\0{entry.etag}".encode()).hexdigest()


def blob_key(ws: str, bid: str) -> str:
    return f"{META}/{ws}/blobs/{bid}"


def referenced(ws: Workspace, entry: Entry) -> bool:
    """Whether the current version ``entry`` is referenced by a live checkpoint."""
    cps = ws.ns.checkpoints
    return bool(cps) and entry.kind == "f" and entry.etag is not None and entry.data_key is None \
        and entry.vseq <= max(cps.values())


#: A writer catches up with the journal before destroying a committed version
#: unless it did so this recently; a creator in another process waits a bit
#: longer than this after its commit (see :func:`create`), so every overwrite
#: that starts after ``checkpoint create`` returns knows the checkpoint.
FENCE = 0.1


async def fence(ws: Workspace) -> None:
    """Catch up with the journal unless done within :data:`FENCE` seconds (one
    GET, usually answering "no new commit").  Any pull (the mount's tail) and
    any commit of this workspace count as catching up (``Workspace.caught_up_at``)."""
    if time.monotonic() - ws.caught_up_at < FENCE or ws.read_only:
        return
    await ws.pull()


async def preserve(ws: Workspace, path: str, entry: Entry) -> None:
    """Keep the bytes of ``path``'s current version if a checkpoint needs them.

    Called before the version at the natural key is destroyed, after
    :func:`fence` (so a checkpoint another process cut is known).  A natural
    key that already holds another version (an external overwrite) cannot be
    preserved: logged.
    """
    await fence(ws)
    if not referenced(ws, entry):
        return
    key = blob_key(ws.name, blob_id(entry, path))
    try:
        await ws.io(ws.store.head, key)
        return
    except NotFound:
        pass
    try:
        await ws.io(ws.store.copy, ws.key(path), key, if_match=entry.etag)
        log.debug("workspace %s: preserved %s as %s", ws.name, path, key)
    except (PreconditionFailed, NotFound):
        log.warning("workspace %s: %s changed outside agentfs; its checkpointed version is lost",
                    ws.name, path)


async def preserve_tree(ws: Workspace, path: str, node: Node) -> None:
    """:func:`preserve` every committed file at and below ``node`` (in parallel)."""
    await fence(ws)
    if not ws.ns.checkpoints:
        return
    items = [(path, node), *ws.ns.walk(node, path)]
    async with trio.open_nursery() as nursery:
        for p, n in items:
            if not n.pending and referenced(ws, n.entry):
                nursery.start_soon(preserve, ws, p, n.entry)


def data_ws(data_key: str) -> str:
    """The workspace a data key belongs to."""
    if data_key.startswith(META + "/"):
        return data_key.split("/", 2)[1]
    return data_key.split("/", 1)[0]


def candidates(ws: Workspace, path: str, entry: Entry) -> list[tuple[str, str | None]]:
    """Where the bytes of version ``entry`` (at ``path``) may be, best first:
    (key, etag to pin or None for an immutable blob)."""
    out: list[tuple[str, str | None]] = []
    if entry.data_key:
        out.append((entry.data_key, entry.etag))
        src = data_ws(entry.data_key)
        if not entry.data_key.startswith(META + "/"):
            rel = entry.data_key.split("/", 1)[1]
            out.append((blob_key(src, blob_id(entry, rel)), None))
        return out
    cur = ws.ns.resolve(path)
    if cur is not None and cur.entry.kind == "f" and cur.entry.etag == entry.etag and not cur.entry.data_key:
        out.append((ws.key(path), entry.etag))
    out.append((blob_key(ws.name, blob_id(entry, path)), None))
    return out


def _missing(e: BaseException) -> bool:
    """Whether an error (possibly a nursery's group) only says "not this version here"."""
    if isinstance(e, BaseExceptionGroup):
        return all(_missing(x) for x in e.exceptions)
    return isinstance(e, (NotFound, PreconditionFailed))


async def read_version(ws: Workspace, path: str, entry: Entry, off: int, size: int) -> bytes:
    """Bytes of one file version (a checkpoint's, or an unmaterialised entry)."""
    if entry.etag is None or off >= entry.size:
        return b""
    for key, etag in candidates(ws, path, entry):
        bf = ws.cache.blockfile(key, etag or "blob", entry.size)
        fetch = ws.fetcher(key, etag)
        try:
            return await ws.cache.read(bf, off, size, fetch)
        except (NotFound, PreconditionFailed, BaseExceptionGroup) as e:
            if not _missing(e):
                raise
    raise Stale("the checkpointed bytes of this file are gone (changed outside agentfs)", path=path)


async def fetch_version(ws: Workspace, path: str, entry: Entry) -> Any:
    """A complete local copy (a cache path) of one version, for modification."""
    for key, etag in candidates(ws, path, entry):
        bf = ws.cache.blockfile(key, etag or "blob", entry.size)
        fetch = ws.fetcher(key, etag)
        try:
            await ws.cache.fill(bf, fetch)
            return ws.cache.take(bf)
        except (NotFound, PreconditionFailed, BaseExceptionGroup) as e:
            if not _missing(e):
                raise
    raise Stale("the bytes of this file are gone", path=path)
