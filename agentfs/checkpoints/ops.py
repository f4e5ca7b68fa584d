"""Creating, deleting, restoring and forking checkpoints, and materialising
entries whose bytes live elsewhere.

Concurrency: creation and restore take the namespace lock exclusively, so no
upload of this process is between its data PUT and its commit when the
checkpoint is cut.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import trio

from agentfs.checkpoints.records import (
    check_checkpoint_name,
    default_name,
    read_record,
    snap_key,
    state_at,
    write_record,
)
from agentfs.errors import (
    AgentFSError,
    AlreadyExists,
    Busy,
    NotFound,
    PreconditionFailed,
)
from agentfs.identity import Caller
from agentfs.journal import META, Journal
from agentfs.models import (
    Checkpoint,
    CheckpointOp,
    DelOp,
    Entry,
    PutOp,
    Record,
)
from agentfs.namespace import Node, join
from agentfs.store.base import ObjectStore
from agentfs.workspace.cow import (
    FENCE,
    blob_id,
    blob_key,
    candidates,
    data_ws,
    preserve_tree,
)

if TYPE_CHECKING:
    from agentfs.workspace import Workspace

__all__ = ['create', 'delete', 'fork', 'materialise', 'pending_materialisation', 'restore', 'ws_walk_detached']

log = logging.getLogger(__name__)


async def create(ws: Workspace, name: str | None, caller: Caller, *, note: str = "",
                 prefix: str = "cp", wait_fence: bool = True) -> Checkpoint:
    """Cut a checkpoint of ``ws`` now (one journal commit); returns its record.

    Tree-atomic: the namespace lock is held exclusively, so every upload of
    this process is either committed before it or starts after it.  Other
    processes learn of it at their next :func:`fence`; with ``wait_fence``
    this returns only after that window (``1.5 * FENCE``) has passed, so
    every overwrite that starts later preserves what the checkpoint needs.
    """
    ws.check_writable()
    # only None picks a default; an empty name ("$UNSET" in a script) is refused
    name = default_name(prefix) if name is None else name
    check_checkpoint_name(name)
    async with ws.ns_lock.exclusive():
        await ws.pull()
        if name in ws.ns.checkpoints:
            raise AlreadyExists("checkpoint exists", path=name)
        await ws.commit([ws.record("checkpoint", CheckpointOp(name=name, note=note), caller, name=name)])
        seq = ws.ns.checkpoints.get(name)
        mine = ws.ns.seq
        files = size = 0
        for _, n in ws.ns.walk():
            if n.entry.kind == "f" and not n.pending:
                files += 1
                size += n.entry.size
    if seq is None or seq > mine:
        raise AlreadyExists("checkpoint name taken by another mount meanwhile", path=name)
    cp = Checkpoint(name=name, workspace=ws.name, seq=seq, by=caller.agent or ws.agent, note=note,
                    files=files, bytes=size)
    await ws.io(write_record, ws.store, cp)
    log.info("workspace %s: checkpoint %s at seq %d", ws.name, name, seq)
    if wait_fence:
        await trio.sleep(1.5 * FENCE)
    return cp


async def delete(ws: Workspace, name: str, caller: Caller) -> None:
    """Drop checkpoint ``name`` (its blobs become collectable by gc)."""
    ws.check_writable()
    await ws.pull()
    if name not in ws.ns.checkpoints:
        raise NotFound("no such checkpoint", path=name)
    rec = await ws.io(read_record, ws.store, ws.name, name)
    if rec is not None:
        for f in rec.forks:
            if await ws.io(_fork_pending, ws.store, f, ws.name):
                raise Busy(f"workspace {f!r} forked from it is not materialised yet", path=name)
    await ws.commit([ws.record("checkpoint-delete", CheckpointOp(name=name, delete=True), caller, name=name)])
    for ext in ("json", "md"):
        await ws.io(ws.store.delete, snap_key(ws.name, name, ext))


def _fork_pending(store: ObjectStore, fork_ws: str, src_ws: str) -> bool:
    """Whether workspace ``fork_ws`` still has entries whose bytes are in ``src_ws``."""
    j = Journal(store, fork_ws)
    seq = 0
    st = j.latest_state()
    if st is not None:
        seq = st.seq
    last = seq + len([o for o in store.list(f"{j.prefix}log/", start_after=j.log_key(seq))])
    if last == 0:
        return False
    state = state_at(store, fork_ws, last)
    return any(e.data_key and data_ws(e.data_key) == src_ws for e in state.entries.values())


async def materialise(ws: Workspace, caller: Caller | None = None, *, limit: int = 10_000) -> int:
    """Copy every entry whose bytes live elsewhere (``data_key``) to its natural
    key and commit the plain entries.  Idempotent; returns how many files.

    The namespace lock is held exclusively (no upload of this process races
    the copies); an entry that changed meanwhile is left alone.
    """
    if ws.read_only:
        return 0
    caller = caller or Caller(pid=None, uid=os.getuid(), gid=os.getgid(), agent="agentfs-materialise")
    todo = [(p, n) for p, n in ws.ns.walk() if n.entry.kind == "f" and n.entry.data_key][:limit]
    if not todo:
        return 0
    async with ws.ns_lock.exclusive():
        done: dict[str, tuple[Entry, str]] = {}

        async def one(path: str, node: Node) -> None:
            e = node.entry
            await ws.garbage.claim(ws.key(path))  # a pending delete of the key runs first
            for key, etag in candidates(ws, path, e):
                try:
                    info = await ws.io(ws.store.copy, key, ws.key(path), if_match=etag)
                except (NotFound, PreconditionFailed):
                    continue
                except AgentFSError as err:  # store trouble: retried on the next round
                    log.warning("workspace %s: materialising %s: %s", ws.name, path, err)
                    return
                if info.size != e.size:
                    continue
                done[path] = (e, info.etag)
                return
            log.warning("workspace %s: cannot materialise %s: its bytes are gone", ws.name, path)

        async with trio.open_nursery() as nursery:
            for p, n in todo:
                if n.ino not in ws.open_files:
                    nursery.start_soon(one, p, n)
        await ws.pull()
        records: list[Record] = []
        for path, (old, etag) in done.items():
            node = ws.ns.resolve(path)
            if node is None or node.entry != old:
                continue  # changed meanwhile: the copy is garbage, the scan or next write replaces it
            entry = old.model_copy(update={"etag": etag, "data_key": None})
            records.append(ws.record("materialise", PutOp(path=path, entry=entry), caller))
        if records:
            await ws.commit(records)
        log.info("workspace %s: materialised %d files", ws.name, len(records))
        return len(records)


def pending_materialisation(ws: Workspace) -> bool:
    """Whether some entry awaits :func:`materialise` (walks the tree once per journal position)."""
    if getattr(ws, "_cp_clean_seq", None) == ws.ns.seq:
        return False
    pending = any(n.entry.data_key for _, n in ws.ns.walk() if n.entry.kind == "f")
    if not pending:
        ws.cp_clean_seq = ws.ns.seq  # type: ignore[attr-defined]
    return pending


def _same(a: Entry, b: Entry) -> bool:
    return a.model_dump(exclude={"vseq"}) == b.model_dump(exclude={"vseq"})


async def restore(ws: Workspace, name: str, caller: Caller, *, materialize: bool = True) -> Checkpoint:
    """Bring ``ws`` back to checkpoint ``name``; returns the automatic
    checkpoint of the head taken first (restore it to undo).

    One journal commit switches the namespace (every mount sees the restore at
    once, or not at all); files whose bytes are not at their natural key point
    at their blob (``data_key``) until :func:`materialise` copies them.
    """
    ws.check_writable()
    await ws.pull()
    seq = ws.ns.checkpoints.get(name)
    if seq is None:
        raise NotFound("no such checkpoint", path=name)
    target = await ws.io(state_at, ws.store, ws.name, seq)
    undo = await create(ws, None, caller, note=f"automatic, before restoring {name}", prefix="pre-restore")
    async with ws.ns_lock.exclusive():
        await ws.pull()
        current = {p: n for p, n in ws.ns.walk() if not n.pending}
        # 1. where is every restored file's bytes?  (fail before changing anything)
        puts: list[tuple[str, Entry]] = []
        need: list[tuple[str, Entry]] = []
        for path in sorted(target.entries, key=lambda p: (p.count("/"), p)):
            e = target.entries[path]
            cur = current.get(path)
            if cur is not None and _same(cur.entry, e):
                continue
            if e.kind == "f" and e.etag is not None and not e.data_key and not (
                    cur is not None and cur.entry.kind == "f" and cur.entry.etag == e.etag
                    and not cur.entry.data_key):
                need.append((path, e))
            else:
                puts.append((path, e))
        located: dict[str, Entry] = {}

        async def locate(path: str, e: Entry) -> None:
            key = blob_key(ws.name, blob_id(e, path))
            try:
                info = await ws.io(ws.store.head, key)
            except NotFound:
                raise NotFound("a file of the checkpoint has no preserved copy (changed outside agentfs)",
                               path=path) from None
            located[path] = e.model_copy(update={"data_key": key, "etag": info.etag})

        async with trio.open_nursery() as nursery:
            for path, e in need:
                nursery.start_soon(locate, path, e)
        puts += [(p, located[p]) for p, _ in need]
        puts.sort(key=lambda pe: (pe[0].count("/"), pe[0]))
        # 2. preserve what the restore displaces (the head checkpoint references it)
        dels = [p for p in current if p not in target.entries and (p.rpartition("/")[0] in target.entries)]
        displaced = [p for p, _ in puts if p in current] + dels
        for p in displaced:
            await preserve_tree(ws, p, current[p])
        # 3. one commit
        records = [ws.record("restore-delete", DelOp(path=p), caller, checkpoint=name) for p in dels]
        records += [ws.record("restore", PutOp(path=p, entry=e), caller, checkpoint=name) for p, e in puts]
        if "" in target.entries and not _same(ws.ns.root.entry, target.entries[""]):
            records.append(ws.record("restore", PutOp(path="", entry=target.entries[""]), caller,
                                     checkpoint=name))
        if records:
            await ws.commit(records)
        # 4. the natural keys of removed files are garbage (preserved above)
        garbage: list[tuple[str, str | None]] = []
        for p in dels:
            for sub, n in [(p, current[p]), *ws_walk_detached(current[p], p)]:
                if n.entry.kind == "f" and n.entry.etag is not None and not n.entry.data_key:
                    garbage.append((ws.key(sub), n.entry.etag))
        for p, e in puts:
            cur = current.get(p)
            if cur is not None and cur.entry.kind != e.kind:  # replaced by another kind: its files go
                for sub, n in [(p, cur), *ws_walk_detached(cur, p)]:
                    if n.entry.kind == "f" and n.entry.etag is not None and not n.entry.data_key:
                        garbage.append((ws.key(sub), n.entry.etag))
    if garbage:
        await ws.delete_keys(garbage)
    log.info("workspace %s: restored checkpoint %s (%d changes); undo with %s", ws.name, name,
             len(records), undo.name)
    if materialize:
        await materialise(ws, caller)
    return undo


def ws_walk_detached(node: Node, prefix: str) -> list[tuple[str, Node]]:
    out = []
    stack = [(prefix, node)]
    while stack:
        base, n = stack.pop()
        for nm, c in (n.children or {}).items():
            p = join(base, nm)
            out.append((p, c))
            if c.children:
                stack.append((p, c))
    return out


async def fork(src: Workspace, name: str, new: Workspace, caller: Caller, *,
               materialize: bool = True) -> int:
    """Make the new (empty) workspace ``new`` hold checkpoint ``name`` of ``src``.

    One commit in ``new``: every file points at the source's bytes
    (``data_key``: the source's natural key if it still holds that version,
    else the source's blob), so nothing is copied up front; then (unless
    ``materialize`` is False) :func:`materialise` copies them into ``new``'s
    natural keys.  The source checkpoint records the fork and cannot be
    deleted until the fork is materialised.  Returns the number of entries.
    """
    await src.pull()
    seq = src.ns.checkpoints.get(name)
    if seq is None:
        raise NotFound("no such checkpoint", path=name)
    if new.ns.seq > 1 or len(new.ns.root.children or {}) > 0:
        raise AlreadyExists("the fork's workspace already exists", path=new.name)
    rec = await src.io(read_record, src.store, src.name, name) or Checkpoint(
        name=name, workspace=src.name, seq=seq)
    if new.name not in rec.forks:
        rec.forks.append(new.name)
        await src.io(write_record, src.store, rec)
    target = await src.io(state_at, src.store, src.name, seq)
    records: list[Record] = []
    for path in sorted(target.entries, key=lambda p: (p.count("/"), p)):
        e = target.entries[path]
        if not path:
            continue
        if e.kind == "f" and e.etag is not None and not e.data_key:
            cand = candidates(src, path, e)[0][0]
            upd: dict[str, Any] = {"data_key": cand}
            if cand.startswith(META + "/"):
                upd["etag"] = (await src.io(src.store.head, cand)).etag
            e = e.model_copy(update=upd)
        records.append(new.record("fork", PutOp(path=path, entry=e), caller, source=f"{src.name}@{name}"))
    if records:
        await new.commit(records)
    if materialize:
        await materialise(new, caller)
    return len(records)
