"""Adoption: reconciling the natural keys with the journal.

Files live at their natural keys, where other tools (and crashed writers) can
change them.  Two paths bring such changes into the journal:

- :func:`scan` lists a workspace's keys (at mount, then every
  ``--scan-interval``) and compares them with the namespace: objects nobody
  committed are adopted as ``external-write`` records after
  :data:`ADOPT_GRACE` seconds (at once at mount); leftovers of a crashed
  agentfs operation (tombstoned keys) are deleted; a committed file whose
  object vanished in two scans in a row gets an ``external-delete`` record.
- :func:`refresh_version` runs when a read pinned to the committed version
  finds another version: the journal is caught up first, another mount's
  deferred record is waited for, and only then is the object adopted.

Error contract: store errors propagate (callers log and retry later);
:class:`~agentfs.errors.Stale` when the object vanished or the file was
removed.  Concurrency: runs in the workspace's trio thread; commits go
through :meth:`Workspace.commit`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import trio

from agentfs.config import settings
from agentfs.errors import BadName, NameTooLong, NotFound, Stale
from agentfs.identity import Caller
from agentfs.models import DelOp, Entry, PutOp, Record
from agentfs.names import check_name
from agentfs.namespace import Changes
from agentfs.store.base import ObjectInfo
from agentfs.workspace import groupcommit, intents

if TYPE_CHECKING:
    from agentfs.namespace import Node
    from agentfs.workspace import Workspace

__all__ = ["ADOPT_GRACE", "refresh_version", "scan"]

log = logging.getLogger(__name__)

#: How long an object must exist unknown to the journal before a scan adopts it
#: (an upload whose commit is still on its way must not be adopted twice).
ADOPT_GRACE = settings().adopt_grace


async def scan(ws: Workspace, *, now: float | None = None, changed_now: bool = False) -> int:
    """Reconcile the natural keys with the journal (adoption of external writes).

    Objects nobody committed are adopted after ``ADOPT_GRACE`` seconds as
    external writes; leftovers of a crashed agentfs operation (tombstoned
    keys) are deleted; a committed file whose object vanished twice in a
    row is recorded as externally deleted.  Returns the number of records.
    """
    if ws.read_only:
        return 0
    now = now or time.time()
    prefix = ws.key("")
    # interrupted renames are undone; keys of renames in progress wait
    in_progress = await intents.settle(ws, now, ws.renaming)
    # The versions the journal gave each file before the listing: a file that
    # changed here while we listed is compared with a stale listing, so it is
    # left to the next scan (and a record is dropped if it changed by commit time).
    before = {path: node.entry.etag for path, node in ws.ns.walk() if node.entry.kind == "f"}
    objects = {o.key[len(prefix):]: o for o in await ws.io(lambda: list(ws.store.list(prefix)))}
    # A rename that began while we listed has copies in the listing: every
    # intent still there protects its keys (only protects; settled above).
    in_progress |= {k for _, i in await ws.io(intents.pending, ws.journal) if i is not None
                    for k in i.keys}
    if changed_now:
        # commits made while we listed (a remove after its object
        # was listed) are known before anything is adopted at once.
        await ws.pull()
        await _await_young_records(ws, objects)
    caller = Caller(pid=None, uid=os.getuid(), gid=os.getgid(), agent="external")
    records: list[Record] = []
    leftovers: list[tuple[str, str]] = []
    for path, o in objects.items():
        if not path or path.endswith("/"):
            continue  # directory marker objects from other tools
        try:
            for part in path.split("/"):
                check_name(part)
        except (BadName, NameTooLong):
            log.warning("workspace %s: cannot adopt object with invalid name %r", ws.name, path)
            continue
        node = ws.ns.resolve(path)
        if node is not None and node.entry.kind == "f" and node.entry.etag == o.etag:
            continue
        was = node.entry.etag if node is not None and node.entry.kind == "f" else None
        if was != before.get(path):
            continue  # changed here while we listed
        if node is not None and node.entry.data_key:
            continue  # checkpoints: awaiting materialisation; the key holds garbage
        if node is not None and (node.pending or node.ino in ws.open_files):
            continue
        if o.key in in_progress:
            continue
        if now - o.mtime < ADOPT_GRACE and not changed_now:
            # maybe an upload whose commit is on its way.  At mount
            # (``changed_now``) untracked objects are adopted at once: a
            # close whose deferred commit a crash lost, or a
            # writer that crashed between upload and commit.
            continue
        tomb = ws.ns.tombstones.get(path)
        if node is None and tomb is not None and o.mtime <= tomb + 1:
            leftovers.append((o.key, o.etag))
            continue
        if node is not None and node.entry.kind != "f":
            log.warning("workspace %s: object %s shadows a %s; not adopted", ws.name, path,
                        "directory" if node.is_dir else "symlink")
            continue
        mtime = int(o.mtime * 1e9)
        base = node.entry if node is not None else Entry(kind="f", mode=0o644, uid=os.getuid(), gid=os.getgid())
        entry = base.model_copy(update={"size": o.size, "etag": o.etag, "sha256": None,
                                        "mtime_ns": mtime, "ctime_ns": mtime})
        records.append(ws.record("external-write", PutOp(path=path, entry=entry), caller,
                                   size=o.size, etag=o.etag, was=was))
    seen_missing: set[str] = set()
    for path, node in list(ws.ns.walk()):
        if node.entry.kind == "f" and node.entry.etag is not None and not node.pending and path not in objects \
                and not node.entry.data_key:
            if node.ino in ws.open_files or before.get(path) != node.entry.etag:
                continue
            if path in ws.missing_seen:
                records.append(ws.record("external-delete", DelOp(path=path), caller, was=node.entry.etag))
            else:
                seen_missing.add(path)
    ws.missing_seen = seen_missing
    if records:
        await ws.commit(records)
        log.info("workspace %s: adopted %d external changes", ws.name, len(records))
    if leftovers:
        await ws.delete_keys(leftovers)
        log.info("workspace %s: removed %d leftover objects", ws.name, len(leftovers))
    return len(records)


def _untracked(ws: Workspace, path: str, etag: str) -> bool:
    node = ws.ns.resolve(path)
    return node is None or (node.entry.kind == "f" and node.entry.etag != etag and not node.entry.data_key
                            and not node.pending and node.ino not in ws.open_files)


async def _await_young_records(ws: Workspace, objects: dict[str, ObjectInfo]) -> None:
    """Before adopting at once (at mount): an untracked object younger than
    :data:`~agentfs.workspace.groupcommit.YOUNG` may be a live mount's close whose
    deferred record is on its way; pull the journal a few times (about 1.5 s in
    all) while such objects remain, so the record, not a redundant adoption,
    describes them.  A crashed writer's objects are adopted right after."""
    wall = time.time()
    young = {p for p, o in objects.items()
             if p and not p.endswith("/") and wall - o.mtime < groupcommit.YOUNG and _untracked(ws, p, o.etag)}
    for pause in groupcommit.AWAIT_STEPS:
        if not young:
            return
        await trio.sleep(pause)
        await ws.pull()
        young = {p for p in young if _untracked(ws, p, objects[p].etag)}


async def refresh_version(ws: Workspace, node: Node, key: str) -> None:
    """The object at ``key`` is not the committed version: catch up with the
    journal, and if it still disagrees, adopt what the store holds now (a
    writer that crashed between upload and commit, or another tool)."""
    old = node.entry.etag
    await ws.pull()
    if node.entry.etag != old:
        return
    try:
        info = await ws.io(ws.store.head, key)
    except NotFound:
        raise Stale("the object vanished from the store", path=key) from None
    if info.etag == old:
        return
    if await groupcommit.await_record(ws, node, old, info.mtime):
        return  # another mount's deferred commit arrived
    path = ws.ns.path_of(node)
    if path is None:
        raise Stale("file was removed", path=key)
    mtime = int(info.mtime * 1e9)
    entry = node.entry.model_copy(update={"size": info.size, "etag": info.etag, "sha256": None,
                                          "mtime_ns": mtime, "ctime_ns": mtime})
    log.warning("workspace %s: %s changed in the store without a journal record; adopting it",
                ws.name, path)
    if ws.read_only:
        node.entry = entry
    else:
        caller = Caller(pid=None, uid=os.getuid(), gid=os.getgid(), agent="external")
        await ws.commit([ws.record("external-write", PutOp(path=path, entry=entry), caller,
                                       size=info.size, etag=info.etag, was=old)])
    if ws.on_change is not None:
        ws.on_change(Changes(inodes={node.ino}, data={node.ino}))
