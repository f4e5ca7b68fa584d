"""Consistency check of a store: journal against objects (``agentfs check``).

For every workspace: every journal record parses and the sequence has no
gap; every committed file's object exists at its natural key with the
committed version; no version of a file was replaced by a writer that never
saw it (a lost write, :func:`lost_writes`).  Objects the journal does not know are reported as
*notices*: leftovers of an interrupted agentfs operation (tombstoned keys),
or external writes awaiting adoption.  ``repair`` deletes leftovers, adopts
external writes and removes temporary objects.

Error contract: store errors propagate; damaged records are reported, never raised.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import trio
from pydantic import BaseModel, Field

from agentfs import checkpoints
from agentfs.cache import Cache
from agentfs.errors import AgentFSError, CorruptRecord, NotFound
from agentfs.journal import META
from agentfs.models import Commit, DelOp, MoveOp, PutOp, Record
from agentfs.namespace import InodeTable
from agentfs.store.base import ObjectStore
from agentfs.store.retry import unwrap
from agentfs.workspace import Workspace, check_workspace_name, cow, intents

__all__ = ["CheckReport", "WorkspaceReport", "check_store", "lost_writes"]

log = logging.getLogger(__name__)


class WorkspaceReport(BaseModel):
    workspace: str
    seq: int = 0
    files: int = 0
    dirs: int = 0
    errors: list[str] = Field(default_factory=list)
    notices: list[str] = Field(default_factory=list)
    repaired: list[str] = Field(default_factory=list)


class CheckReport(BaseModel):
    store: str
    workspaces: list[WorkspaceReport] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    notices: list[str] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.errors and all(not w.errors for w in self.workspaces)


def workspace_names(store: ObjectStore) -> list[str]:
    names = set(store.list_dirs(f"{META}/")) | set(store.list_dirs(""))
    out = []
    for n in sorted(names):
        try:
            check_workspace_name(n)
        except AgentFSError:
            continue
        out.append(n)
    return out


async def _check_ws(store: ObjectStore, name: str, repair: bool, tmp: Path) -> WorkspaceReport:
    rep = WorkspaceReport(workspace=name)
    ws = Workspace(store, name, table=InodeTable(), cache=Cache(tmp / name), limiter=trio.CapacityLimiter(16),
                   agent="agentfs-check", read_only=not repair)
    ws.ns.owner = ws
    try:
        await ws.load(create=False)
    except CorruptRecord as e:
        rep.errors.append(str(e))
        return rep
    except NotFound:
        # Objects another tool put under a prefix that has no journal yet: the
        # next read-write mount (or check --repair) makes it a workspace and
        # adopts them.
        n = sum(1 for _ in store.list(ws.key("")))
        if repair:
            ws.read_only = False
            await ws.load(create=True, verify=True)
            rep.repaired.append(f"made a workspace of {n} objects another tool put under {name}/")
            rep.seq = ws.ns.seq
        else:
            rep.notices.append(f"{n} objects under {name}/ have no journal yet; the next mount adopts them")
        return rep
    except AgentFSError as e:
        rep.errors.append(f"cannot load: {e}")
        return rep
    rep.seq = ws.ns.seq
    prefix = ws.key("")
    objects = {o.key[len(prefix):]: o for o in store.list(prefix)}
    known: set[str] = set()
    for path, node in ws.ns.walk():
        if node.entry.kind == "d":
            rep.dirs += 1
            continue
        if node.entry.kind != "f":
            continue
        rep.files += 1
        known.add(path)
        if node.entry.data_key:
            # checkpoints: restored/forked bytes not yet materialised; they must
            # be where data_key (or its fallback blob) says.
            if not any(_exists(store, k, etag) for k, etag in cow.candidates(ws, path, node.entry)):
                rep.errors.append(f"bytes of {path!r} are missing (data key {node.entry.data_key!r})")
            else:
                rep.notices.append(f"{path!r} awaits materialisation from {node.entry.data_key!r}")
            continue
        o = objects.get(path)
        if o is None:
            rep.errors.append(f"missing object for committed file {path!r}")
        elif o.etag != node.entry.etag:
            rep.notices.append(f"{path!r} changed outside the journal (adopted on the next scan)")
        elif o.size != node.entry.size:
            rep.errors.append(f"size of {path!r} is {o.size}, journal says {node.entry.size}")
    for path in sorted(set(objects) - known):
        if path.endswith("/"):
            continue
        if path in ws.ns.tombstones:
            rep.notices.append(f"leftover object {path!r} of an interrupted operation")
        else:
            rep.notices.append(f"untracked object {path!r} (an external write, adopted on the next scan)")
    for key, intent in await trio.to_thread.run_sync(intents.pending, ws.journal):
        rep.notices.append(f"rename intent {key} ({intent.src!r} -> {intent.dst!r}) not finished"
                           if intent is not None else f"unreadable rename intent {key}")

    _check_checkpoints(store, ws, objects, rep)
    commits = await trio.to_thread.run_sync(ws.journal.commits_after, 0)
    rep.errors.extend(lost_writes(commits))
    if repair:
        n = await ws.scan(now=float("inf"))
        if n:
            rep.repaired.append(f"adopted/removed {n} entries")
        rest = {o.key[len(prefix):] for o in store.list(prefix)} - {p for p, _ in ws.ns.walk()}
        for path in rest:
            if path in ws.ns.tombstones:
                store.delete(prefix + path)
                rep.repaired.append(f"deleted leftover {path!r}")
    return rep


_WRITES = ("create", "write")


def lost_writes(commits: list[Commit]) -> list[str]:
    """Written versions whose bytes were replaced by a writer that never saw them.

    Every ``create``/``write`` record names the version it replaced knowingly
    (``detail.base``).  A version is lost when the next write of its path names
    another base (it was never seen by that writer, so the conditional upload
    that should have refused it did not), unless the same bytes are what
    replaced it or they survive in a conflict copy.  Records without ``base``
    (older journals, adoptions of other tools' writes, restores) are not judged.
    """
    kept = {r.detail.get("sha256") for c in commits for r in c.records if r.action in ("conflict", "fenced")}
    current: dict[str, tuple[int, Record]] = {}  # path -> (seq, last record that set its bytes)
    out: list[str] = []
    for c in commits:
        for r in c.records:
            op = r.op
            if isinstance(op, PutOp) and op.entry.kind == "f":
                cur = current.get(op.path)
                if (cur is not None and r.action in _WRITES and "base" in r.detail
                        and cur[1].action in _WRITES and isinstance(cur[1].op, PutOp)):
                    old = cur[1].op.entry
                    if (r.detail["base"] != old.etag and op.entry.etag != old.etag
                            and op.entry.sha256 != old.sha256 and old.sha256 not in kept):
                        out.append(f"lost write: {op.path!r} as written by {cur[1].agent or '?'} at seq "
                                   f"{cur[0]} (sha256 {(old.sha256 or '?')[:12]}) was replaced at seq {c.seq} "
                                   f"by {r.agent or '?'}, who never saw it; its bytes are nowhere")
                if cur is None or cur[1].op.entry.etag != op.entry.etag:  # type: ignore[union-attr]
                    current[op.path] = (c.seq, r)
            elif isinstance(op, DelOp | MoveOp):
                gone = [op.path] if isinstance(op, DelOp) else [op.src, op.dst]
                for p in list(current):
                    if any(p == g or p.startswith(g + "/") for g in gone):
                        del current[p]
    return out


def _check_checkpoints(store: ObjectStore, ws: Workspace, objects: dict, rep: WorkspaceReport) -> None:
    """Every file of every live checkpoint has its bytes somewhere: at its
    natural key (same version) or in a preserved blob."""
    if not ws.ns.checkpoints:
        return
    blobs = {o.key for o in store.list(f"{META}/{ws.name}/blobs/")}
    for name, seq in sorted(ws.ns.checkpoints.items(), key=lambda kv: kv[1]):
        try:
            state = checkpoints.state_at(store, ws.name, seq)
        except AgentFSError as e:
            rep.errors.append(f"checkpoint {name!r}: cannot rebuild its namespace: {e}")
            continue
        for path, e in state.entries.items():
            if e.kind != "f" or e.etag is None:
                continue
            if e.data_key:
                cands = cow.candidates(ws, path, e)
                if not any(k in blobs or _exists(store, k, etag) for k, etag in cands):
                    rep.errors.append(f"checkpoint {name!r}: bytes of {path!r} are missing")
                continue
            o = objects.get(path)
            if (o is not None and o.etag == e.etag) or cow.blob_key(
                    ws.name, cow.blob_id(e, path)) in blobs:
                continue
            rep.errors.append(f"checkpoint {name!r}: bytes of {path!r} are missing (not preserved)")


def _exists(store: ObjectStore, key: str, etag: str | None) -> bool:
    try:
        info = store.head(key)
    except NotFound:
        return False
    return etag is None or info.etag == etag


def check_store(store: ObjectStore, workspaces: list[str] | None = None, *, repair: bool = False) -> CheckReport:
    """Check (and optionally repair) every workspace of ``store``."""
    report = CheckReport(store=store.url)
    names = workspaces or workspace_names(store)
    tmp = Path(tempfile.mkdtemp(prefix="agentfs-check-"))

    async def main() -> None:
        for name in names:
            report.workspaces.append(await _check_ws(store, name, repair, tmp))

    trio.run(main)
    # temporary state of the backend (local temp files, unfinished
    # S3 multipart uploads); a repair removes it (run it when no mount writes).
    backend = unwrap(store)
    lister = getattr(backend, "list_temporary", None)
    temp = lister() if lister is not None else []
    if temp:
        report.notices.append(f"{len(temp)} temporary objects: {', '.join(temp[:5])}"
                              + (" ..." if len(temp) > 5 else ""))
        if repair:
            report.notices.append(f"removed {backend.remove_temporary()} temporary objects")  # type: ignore[attr-defined]
    return report
