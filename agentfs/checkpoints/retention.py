"""Retention: pruning a workspace's checkpoints by count and age, and the
store-wide garbage collection of blobs no checkpoint references.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentfs.checkpoints.ops import delete
from agentfs.checkpoints.records import list_checkpoints, state_at
from agentfs.durations import parse_seconds
from agentfs.errors import (
    Busy,
    InvalidArgument,
    PreconditionFailed,
)
from agentfs.identity import Caller
from agentfs.journal import META, Journal
from agentfs.store.base import ObjectStore
from agentfs.workspace.cow import (
    blob_id,
)

if TYPE_CHECKING:
    from agentfs.workspace import Workspace

__all__ = ['GcReport', 'gc', 'parse_duration', 'prune']

log = logging.getLogger(__name__)


def parse_duration(text: str) -> float:
    """Seconds of a retention window (the grammar of :func:`agentfs.durations.parse_seconds`)."""
    secs = parse_seconds(text)
    if secs is None:
        raise InvalidArgument("bad duration (expected e.g. 30m, 12h, 7d)", path=text)
    return secs


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
