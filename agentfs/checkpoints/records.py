"""Checkpoint records and the namespace at a checkpoint: names, keys, the
JSON and Markdown records, rebuilding a state, diffing two states.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

import trio
from pydantic import BaseModel, ValidationError

from agentfs.errors import (
    BadName,
    NotFound,
)
from agentfs.journal import META, Journal
from agentfs.models import (
    Checkpoint,
    Entry,
    State,
    decode_xattr,
)
from agentfs.namespace import InodeTable, Namespace
from agentfs.store.base import ObjectStore

if TYPE_CHECKING:
    pass

__all__ = ['SNAPSHOTS_DIR', 'CheckpointDiff', 'check_checkpoint_name', 'default_name', 'diff_states', 'list_checkpoints', 'read_record', 'snap_key', 'state_at', 'write_record']

log = logging.getLogger(__name__)


#: The virtual directory at the root of every workspace in a mount.
SNAPSHOTS_DIR = ".snapshots"


def check_checkpoint_name(name: str) -> None:
    """A checkpoint name is one path component of letters, digits and ``._-@+``."""
    if not name or len(name) > 200 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+-]*", name):
        raise BadName("invalid checkpoint name (letters, digits, '._-@+', not starting with '.')",
                      path=name)


def default_name(prefix: str = "cp") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.urandom(2).hex()}"


def snap_key(ws: str, name: str, ext: str = "json") -> str:
    return f"{META}/{ws}/snapshots/{name}.{ext}"


def _io(fn: Any, *args: Any, limiter: trio.CapacityLimiter | None = None, **kw: Any) -> Any:
    return trio.to_thread.run_sync(lambda: fn(*args, **kw), limiter=limiter)


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
