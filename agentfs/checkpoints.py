"""Checkpoints: copy-on-write snapshots of a workspace (create, view, restore,
fork, diff, prune, gc).

A checkpoint is ONE journal commit carrying a :class:`CheckpointOp`; it freezes
the namespace at that commit's seq ``N``.  No bytes are copied and nothing is
listed: creation costs one journal PUT plus two small records
(``.agentfs/<ws>/snapshots/<name>.json`` and ``<name>.md``).  The namespace at
``N`` is rebuilt on demand from the nearest ``state/`` snapshot at or below
``N`` plus the commits up to ``N``.

Copy-on-write.  Every file entry carries ``vseq``, the seq at which its current
bytes were committed (``Namespace.apply`` stamps it).  The current version of
a file is referenced by a live checkpoint iff ``vseq <= max(live checkpoint
seqs)`` (it is still current, so it is unchanged since that checkpoint).
Before the workspace overwrites, truncates, deletes or renames away such a
version, :func:`preserve` copies it once to ``.agentfs/<ws>/blobs/<id>``
(server-side copy on S3, a hard link on a local store), skipping the copy
when the blob already exists.  ``<id>`` is the content's sha256 (every
version agentfs writes has one); a version adopted from an external write has
no sha256 and is keyed ``v<sha256(path NUL etag)>`` instead.  With no live
checkpoint, :func:`preserve` returns without any request.

Reading a checkpoint's file: its natural key while the workspace still holds
that version there (pinned with ``if_match``), else its blob.

Restore and fork write entries whose bytes are not yet at their natural key:
``Entry.data_key`` names where they are (a blob, or the source workspace's
key).  :func:`materialise` copies them to their natural keys and commits the
plain entries; mounts resume it in the background, so an interrupted restore
is complete (as seen through the journal) once its commit exists, and not
started before.

Error contract: AgentFSError subclasses (NotFound for an unknown checkpoint,
AlreadyExists for a taken name, BadName for an invalid one, Busy when a
checkpoint still backs an unmaterialised fork, ReadOnly for writes in a view).

Concurrency: the async functions run in the workspace's trio thread; creation
and restore take the namespace lock exclusively, so no upload of this process
is between its data PUT and its commit when the checkpoint is cut.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from pydantic import BaseModel, ValidationError

from agentfs.entryreads import EntryReads
from agentfs.errors import (
    AgentFSError,
    AlreadyExists,
    BadName,
    Busy,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    ReadOnly,
    Stale,
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
    State,
    decode_xattr,
)
from agentfs.namespace import InodeTable, Namespace, Node, join
from agentfs.store.base import ObjectStore

if TYPE_CHECKING:
    from agentfs.workspace import Attr, OpenFile, Workspace

__all__ = [
    "SNAPSHOTS_DIR",
    "CheckpointDiff",
    "SnapshotView",
    "SnapshotsDir",
    "blob_id",
    "blob_key",
    "check_checkpoint_name",
    "create",
    "delete",
    "diff_states",
    "fork",
    "gc",
    "list_checkpoints",
    "materialise",
    "preserve",
    "prune",
    "restore",
    "state_at",
]

log = logging.getLogger(__name__)

#: The virtual directory at the root of every workspace in a mount.
SNAPSHOTS_DIR = ".snapshots"


# -- names and keys ------------------------------------------------------------------


def check_checkpoint_name(name: str) -> None:
    """A checkpoint name is one path component of letters, digits and ``._-@+``."""
    if not name or len(name) > 200 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+-]*", name):
        raise BadName("invalid checkpoint name (letters, digits, '._-@+', not starting with '.')",
                      path=name)


def default_name(prefix: str = "cp") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(2).hex()}"


def snap_key(ws: str, name: str, ext: str = "json") -> str:
    return f"{META}/{ws}/snapshots/{name}.{ext}"


def blob_id(entry: Entry, path: str) -> str:
    """Content id of one file version (see the module docstring)."""
    if entry.sha256:
        return entry.sha256
    return "v" + hashlib.sha256(f"{path}\0{entry.etag}".encode()).hexdigest()


def blob_key(ws: str, bid: str) -> str:
    return f"{META}/{ws}/blobs/{bid}"


def _io(fn: Any, *args: Any, limiter: trio.CapacityLimiter | None = None, **kw: Any) -> Any:
    return trio.to_thread.run_sync(lambda: fn(*args, **kw), limiter=limiter)


# -- copy-on-write --------------------------------------------------------------------


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


# -- the namespace at a checkpoint --------------------------------------------------


def state_at(store: ObjectStore, ws: str, seq: int, *, workers: int = 16) -> State:
    """The committed namespace of ``ws`` at ``seq`` (nearest state + commits)."""
    j = Journal(store, ws)
    base: State | None = None
    for o in reversed(list(store.list(f"{j.prefix}state/"))):
        try:
            n = int(o.key.rsplit("/", 1)[1].split(".", 1)[0])
        except ValueError:
            continue
        if n > seq:
            continue
        try:
            base = State.model_validate_json(gzip.decompress(store.get(o.key)))
            break
        except (OSError, ValidationError, ValueError, EOFError) as e:
            log.warning("checkpoints %s: skipping unreadable state %s: %s", ws, o.key, e)
    ns = Namespace(InodeTable(), Entry(kind="d", mode=0o755))
    if base is not None:
        ns.load_state(base)
    wanted = list(range(ns.seq + 1, seq + 1))
    if wanted:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            commits = list(pool.map(j.fetch, wanted))
        for n, c in zip(wanted, commits, strict=True):
            if c is None:
                raise NotFound(f"journal commit {n} is missing", path=ws)
            ns.seq = c.seq
            for r in c.records:
                ns.apply(r.op, r.time)
    return ns.to_state()


# -- records ----------------------------------------------------------------------------


def _summary_md(cp: Checkpoint) -> str:
    t = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cp.created))
    lines = [f"# Checkpoint `{cp.name}` of workspace `{cp.workspace}`", "",
             f"- created: {t}", f"- by: {cp.by or '-'}", f"- journal seq: {cp.seq}",
             f"- files: {cp.files}, bytes: {cp.bytes}"]
    if cp.forks:
        lines.append(f"- forks: {', '.join(cp.forks)}")
    if cp.note:
        lines += ["", "## Note", "", cp.note]
    lines += ["", "Browse it at `<mount>/" + cp.workspace + "/.snapshots/" + cp.name + "/`; restore with",
              f"`agentfs checkpoint restore STORE_URL/{cp.workspace} {cp.name}`.", ""]
    return "\n".join(lines)


def write_record(store: ObjectStore, cp: Checkpoint) -> None:
    store.put(snap_key(cp.workspace, cp.name), cp.model_dump_json(indent=1).encode())
    store.put(snap_key(cp.workspace, cp.name, "md"), _summary_md(cp).encode())


def read_record(store: ObjectStore, ws: str, name: str) -> Checkpoint | None:
    try:
        return Checkpoint.model_validate_json(store.get(snap_key(ws, name)))
    except NotFound:
        return None
    except (ValidationError, ValueError) as e:
        log.warning("checkpoint record %s/%s unreadable: %s", ws, name, str(e).splitlines()[0])
        return None


def list_checkpoints(store: ObjectStore, ws: str, live: dict[str, int]) -> list[Checkpoint]:
    """The live checkpoints (``live`` = the journal's name -> seq) with their records."""
    out = []
    for name, seq in sorted(live.items(), key=lambda kv: kv[1]):
        rec = read_record(store, ws, name)
        if rec is None or rec.seq != seq:
            rec = Checkpoint(name=name, workspace=ws, seq=seq, created=0.0)
        out.append(rec)
    return out


# -- create / delete --------------------------------------------------------------------


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
    return any(e.data_key and _data_ws(e.data_key) == src_ws for e in state.entries.values())


def _data_ws(data_key: str) -> str:
    """The workspace a data key belongs to."""
    if data_key.startswith(META + "/"):
        return data_key.split("/", 2)[1]
    return data_key.split("/", 1)[0]


# -- reading a version wherever it is ------------------------------------------------------


def _candidates(ws: Workspace, path: str, entry: Entry) -> list[tuple[str, str | None]]:
    """Where the bytes of version ``entry`` (at ``path``) may be, best first:
    (key, etag to pin or None for an immutable blob)."""
    out: list[tuple[str, str | None]] = []
    if entry.data_key:
        out.append((entry.data_key, entry.etag))
        src = _data_ws(entry.data_key)
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
    for key, etag in _candidates(ws, path, entry):
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
    for key, etag in _candidates(ws, path, entry):
        bf = ws.cache.blockfile(key, etag or "blob", entry.size)
        fetch = ws.fetcher(key, etag)
        try:
            await ws.cache.fill(bf, fetch)
            return ws.cache.take(bf)
        except (NotFound, PreconditionFailed, BaseExceptionGroup) as e:
            if not _missing(e):
                raise
    raise Stale("the bytes of this file are gone", path=path)


# -- materialisation (restore, fork) ---------------------------------------------------------


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
            for key, etag in _candidates(ws, path, e):
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


# -- restore ------------------------------------------------------------------------------------


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


# -- fork -------------------------------------------------------------------------------------------


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
            cand = _candidates(src, path, e)[0][0]
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


# -- diff ------------------------------------------------------------------------------------------


class CheckpointDiff(BaseModel):
    """Added/removed/changed paths between two namespaces, and state (xattr) changes."""

    a: str
    b: str
    added: list[str] = []
    removed: list[str] = []
    changed: list[str] = []
    state: list[dict[str, str | None]] = []

    def markdown(self) -> str:
        lines = [f"# Changes from `{self.a}` to `{self.b}`", ""]
        for title, items in (("Added", self.added), ("Removed", self.removed), ("Changed", self.changed)):
            lines.append(f"## {title} ({len(items)})")
            lines += [f"- `{p}`" for p in items] or ["- (none)"]
            lines.append("")
        lines.append(f"## State changes ({len(self.state)})")
        lines += [f"- `{s['path']}` {s['name']}: {s['old']!r} -> {s['new']!r}" for s in self.state] or ["- (none)"]
        return "\n".join(lines) + "\n"


def _xv(v: str | None) -> str | None:
    if v is None:
        return None
    raw = decode_xattr(v)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.hex()


def diff_states(a: State, b: State, label_a: str, label_b: str) -> CheckpointDiff:
    d = CheckpointDiff(a=label_a, b=label_b)
    for p in sorted(set(a.entries) | set(b.entries)):
        ea, eb = a.entries.get(p), b.entries.get(p)
        if ea is None:
            d.added.append(p)
        elif eb is None:
            d.removed.append(p)
        else:
            content = (ea.sha256 != eb.sha256) if ea.sha256 and eb.sha256 else ea.etag != eb.etag
            if p and (ea.kind != eb.kind or content or ea.size != eb.size or ea.mode != eb.mode
                      or ea.target != eb.target):
                d.changed.append(p)
            for k in sorted(set(ea.xattrs) | set(eb.xattrs)):
                if ea.xattrs.get(k) != eb.xattrs.get(k):
                    d.state.append({"path": p, "name": k, "old": _xv(ea.xattrs.get(k)),
                                    "new": _xv(eb.xattrs.get(k))})
        if eb is not None and ea is None:
            for k in sorted(eb.xattrs):
                d.state.append({"path": p, "name": k, "old": None, "new": _xv(eb.xattrs[k])})
    return d


# -- retention ----------------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise InvalidArgument("bad duration (expected e.g. 30m, 12h, 7d)", path=text)
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


async def prune(ws: Workspace, caller: Caller, *, keep_last: int | None, keep_within: float | None,
                dry_run: bool = False) -> list[str]:
    """Delete checkpoints outside the retention (a checkpoint is kept if either
    rule keeps it; with no rule, nothing is deleted).  Returns the names."""
    if keep_last is None and keep_within is None:
        return []
    await ws.pull()
    cps = await ws.io(list_checkpoints, ws.store, ws.name, dict(ws.ns.checkpoints))
    now = time.time()
    keep: set[str] = set()
    if keep_last is not None:
        keep |= {c.name for c in cps[len(cps) - keep_last:]} if keep_last > 0 else set()
    if keep_within is not None:
        keep |= {c.name for c in cps if c.created and now - c.created <= keep_within}
    gone = []
    for c in cps:
        if c.name in keep:
            continue
        if not dry_run:
            try:
                await delete(ws, c.name, caller)
            except Busy as e:
                log.warning("prune: keeping %s: %s", c.name, e)
                continue
        gone.append(c.name)
    return gone


@dataclass
class GcReport:
    workspaces: int = 0
    blobs: int = 0
    kept: int = 0
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def _live_ids(store: ObjectStore, ws: str) -> tuple[set[str], set[str]]:
    """(blob ids that ws's live checkpoints and unmaterialised entries need,
    data keys that ws's unmaterialised entries point at)."""
    j = Journal(store, ws)
    st = j.latest_state()
    base = st.seq if st is not None else 0
    last = base + len(list(store.list(f"{j.prefix}log/", start_after=j.log_key(base))))
    head = state_at(store, ws, last)
    ids: set[str] = set()
    keys: set[str] = set()
    for p, e in head.entries.items():
        if e.kind == "f" and e.data_key:
            keys.add(e.data_key)
            ids.add(blob_id(e, p))
    for seq in sorted(set(head.checkpoints.values())):
        for p, e in state_at(store, ws, seq).entries.items():
            if e.kind == "f" and e.etag is not None:
                ids.add(blob_id(e, p))
                if e.data_key:
                    keys.add(e.data_key)
    return ids, keys


def gc(store: ObjectStore, workspaces: Iterable[str], *, dry_run: bool = False,
       grace: float = 300.0) -> GcReport:
    """Delete every preserved blob that no live checkpoint, unmaterialised
    entry or fork of any of ``workspaces`` (pass them all) references.

    Blobs younger than ``grace`` seconds are kept: a copy-on-write or a new
    checkpoint racing with the scan may be about to rely on them.  Each delete
    is conditional on the version listed.
    """
    rep = GcReport()
    started = time.time()
    names = list(workspaces)
    ids: set[str] = set()
    keys: set[str] = set()
    for n in names:
        i, k = _live_ids(store, n)
        ids |= i  # a fork's fallback is the source's blob with the same id
        keys |= k
        rep.workspaces += 1
    for n in names:
        for o in store.list(f"{META}/{n}/blobs/"):
            rep.blobs += 1
            bid = o.key.rsplit("/", 1)[1]
            if bid in ids or o.key in keys or o.mtime > started - grace:
                rep.kept += 1
                continue
            if not dry_run:
                try:
                    store.delete(o.key, if_match=o.etag)
                except PreconditionFailed:
                    rep.kept += 1
                    continue
            rep.deleted.append(o.key)
            rep.bytes_freed += o.size
    return rep


# -- the read-only views in a mount -------------------------------------------------------------------


def _ro(*_: Any, **__: Any) -> Any:
    raise ReadOnly("checkpoints are read-only")


class _View(EntryReads):
    """What the filesystem layer needs from a node's owner, read-only."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.name = ws.name
        self.open_files: dict[int, OpenFile] = {}

    async def prepare(self, node: Node) -> None:
        """Load what is needed before a lookup/listing below ``node``."""

    def attr(self, node: Node) -> Attr:
        from agentfs.workspace import Attr

        e = node.entry
        size = len((e.target or "").encode()) if e.kind == "l" else e.size
        nlink = 2 + sum(1 for c in (node.children or {}).values() if c.children is not None) \
            if node.children is not None else 1
        return Attr(node.ino, e.kind, e.mode, nlink, e.uid, e.gid, size, e.mtime_ns,
                    max(e.ctime_ns, e.mtime_ns), e.atime_ns if e.atime_ns is not None else e.mtime_ns)

    async def open(self, node: Node, *, write: bool, truncate: bool, append: bool, caller: Caller) -> OpenFile:
        from agentfs.workspace import OpenFile

        if write or truncate:
            raise ReadOnly("checkpoints are read-only")
        if node.entry.kind == "d":
            return OpenFile(node=node)
        if node.entry.kind != "f":
            raise InvalidArgument("not a regular file")
        return OpenFile(node=node, size=node.entry.size, mtime_ns=node.entry.mtime_ns)

    async def flush(self, of: OpenFile, caller: Caller) -> None:
        pass

    fsync = flush
    release = flush

    async def read(self, of: OpenFile, off: int, size: int) -> bytes:
        raise InvalidArgument("not a file")

    write = truncate = setattr = setxattr = removexattr = mkdir = symlink = create = _ro
    unlink = rmdir = rename = _ro


class SnapshotView(_View):
    """``.snapshots/NAME/``: the namespace of one checkpoint, read-only."""

    def __init__(self, ws: Workspace, name: str, seq: int, table: InodeTable, created: float) -> None:
        super().__init__(ws)
        self.cp_name = name
        self.seq = seq
        t = int(created * 1e9)
        self.ns = Namespace(table, Entry(kind="d", mode=0o555, mtime_ns=t, ctime_ns=t))
        self.ns.owner = self
        self.loaded = False
        self._lock = trio.Lock()

    async def prepare(self, node: Node) -> None:
        async with self._lock:
            if self.loaded:
                return
            state = await self.ws.io(state_at, self.ws.store, self.ws.name, self.seq)
            self.ns.load_state(state)
            self.loaded = True

    async def read(self, of: OpenFile, off: int, size: int) -> bytes:
        node = of.node
        if node.entry.kind != "f":
            raise InvalidArgument("not a file")
        path = self.ns.path_of(node) or ""
        return await read_version(self.ws, path, node.entry, off, size)


class SnapshotsDir(_View):
    """``<ws>/.snapshots/``: one directory per live checkpoint; ``mkdir``
    creates a checkpoint, ``rmdir`` deletes one; nothing else is writable."""

    def __init__(self, ws: Workspace, table: InodeTable) -> None:
        super().__init__(ws)
        self.table = table
        root = ws.ns.root.entry
        self.ns = Namespace(table, Entry(kind="d", mode=0o755, uid=root.uid, gid=root.gid,
                                         mtime_ns=root.mtime_ns, ctime_ns=root.ctime_ns))
        self.ns.owner = self
        self.views: dict[str, SnapshotView] = {}

    @property
    def node(self) -> Node:
        return self.ns.root

    def sync(self) -> None:
        """Match the children with the workspace's live checkpoints (no I/O)."""
        live = self.ws.ns.checkpoints
        kids = self.ns.root.children
        assert kids is not None
        for name in list(kids):
            if self.views.get(name) is None or live.get(name) != self.views[name].seq:
                del kids[name]
                self.views.pop(name, None)
        for name, seq in live.items():
            if name not in kids:
                v = SnapshotView(self.ws, name, seq, self.table, time.time())
                self.views[name] = v
                kids[name] = v.ns.root

    async def prepare(self, node: Node) -> None:
        self.sync()

    async def mkdir_checkpoint(self, name: str, caller: Caller) -> Node:
        # wait_fence: other processes writing through other mounts learn of it too
        await create(self.ws, name, caller, note="created by mkdir in .snapshots")
        self.sync()
        return self.lookup(self.ns.root, name)

    async def rmdir_checkpoint(self, name: str, caller: Caller) -> None:
        await delete(self.ws, name, caller)
        self.sync()
