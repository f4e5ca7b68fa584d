"""The per-workspace journal in the store: commits, tail, compaction.

Layout (under the store root)::

    .agentfs/<ws>/log/<seq:020d>.json       one Commit, created only if absent
    .agentfs/<ws>/state/<seq:020d>.json.gz  the whole namespace at seq

Appending is a conditional create of the next sequence number, so the store
gives every mount one total order.  A writer that loses the race reads the
winner's commit, applies it and retries at the next number (the caller does
this: see ``Workspace``).  Everything here is synchronous store I/O and runs in
worker threads.

Error contract: a missing commit is ``None`` from :meth:`Journal.fetch`; a
commit that cannot be parsed or is from a newer format raises
:class:`agentfs.errors.CorruptRecord` (never a crash, never overwritten).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import logging

from pydantic import ValidationError

from agentfs.config import settings
from agentfs.errors import CorruptRecord, NotFound, PreconditionFailed
from agentfs.models import Commit, State
from agentfs.store.base import ObjectStore

__all__ = ["COMPACT_EVERY", "META", "Journal", "conditional_create_enforced", "workspace_prefix"]

log = logging.getLogger(__name__)

#: Top-level folder of agentfs's own records in the store.
META = ".agentfs"
#: A state snapshot is written after every this many commits
#: (``AGENTFS_COMPACT_EVERY`` lowers it for crash tests of compaction).
COMPACT_EVERY = settings().compact_every


def workspace_prefix(ws: str) -> str:
    return f"{META}/{ws}/"


def conditional_create_enforced(store: ObjectStore, token: str) -> bool:
    """Does ``store`` refuse a second create of one key (``If-None-Match: *``)?

    The journal's total order rests on it: two mounts that commit the same
    sequence number at once must not both succeed.  AWS S3, MinIO, moto and the
    local store enforce it; ``rclone serve s3`` (v1.75) ignores the header, so
    there concurrent commits of two mounts can overwrite each other.  Two PUTs
    and a DELETE of ``.agentfs/probe/<token>`` (synchronous store I/O).
    """
    key = f"{META}/probe/{token}"
    store.put(key, b"1", if_absent=True)
    try:
        store.put(key, b"2", if_absent=True)
    except PreconditionFailed:
        return True
    finally:
        store.delete(key)
    return False


class Journal:
    """The commit log of workspace ``ws`` in ``store``."""

    def __init__(self, store: ObjectStore, ws: str) -> None:
        self.store = store
        self.ws = ws
        self.prefix = workspace_prefix(ws)

    def log_key(self, seq: int) -> str:
        return f"{self.prefix}log/{seq:020d}.json"

    def state_key(self, seq: int) -> str:
        return f"{self.prefix}state/{seq:020d}.json.gz"

    # -- reading -------------------------------------------------------------

    def _parse_commit(self, key: str, raw: bytes) -> Commit:
        try:
            return Commit.model_validate_json(raw)
        except (ValidationError, ValueError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CorruptRecord(f"unreadable journal record ({first})", path=key) from None

    def fetch(self, seq: int) -> Commit | None:
        """Commit ``seq``, or None if it does not exist (yet)."""
        key = self.log_key(seq)
        try:
            raw = self.store.get(key)
        except NotFound:
            return None
        return self._parse_commit(key, raw)

    def exists(self) -> bool:
        return any(True for _ in self.store.list(self.prefix))

    def latest_state(self) -> State | None:
        """The newest readable state snapshot (a damaged one is skipped)."""
        keys = [o.key for o in self.store.list(f"{self.prefix}state/")]
        for key in reversed(keys):
            try:
                raw = gzip.decompress(self.store.get(key))
                return State.model_validate_json(raw)
            except (OSError, ValidationError, ValueError, EOFError) as e:
                if isinstance(e, NotFound):
                    continue
                log.warning("journal %s: skipping unreadable state %s: %s", self.ws, key,
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None

    def commits_after(self, seq: int, *, workers: int = 16) -> list[Commit]:
        """Every commit after ``seq`` in order, fetched in parallel.

        Stops at the first gap (a number not yet written).
        """
        keys = [o.key for o in self.store.list(f"{self.prefix}log/", start_after=self.log_key(seq))]
        out: list[Commit] = []
        expected = seq + 1
        wanted = []
        for k in keys:
            try:
                n = int(k.rsplit("/", 1)[1].split(".", 1)[0])
            except ValueError:
                log.warning("journal %s: ignoring stray object %s", self.ws, k)
                continue
            if n != expected:
                break
            wanted.append(k)
            expected += 1
        if not wanted:
            return out
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            raws = list(pool.map(self.store.get, wanted))
        for k, raw in zip(wanted, raws, strict=True):
            out.append(self._parse_commit(k, raw))
        return out

    # -- writing -------------------------------------------------------------

    def append(self, commit: Commit) -> bool:
        """Create ``commit`` at its ``seq``; False when that number is taken."""
        body = commit.model_dump_json(exclude_defaults=False).encode()
        try:
            self.store.put(self.log_key(commit.seq), body, if_absent=True)
        except PreconditionFailed:
            return False
        return True

    def write_state(self, state: State) -> None:
        """Write a snapshot (idempotent: same seq, same content)."""
        raw = gzip.compress(state.model_dump_json().encode(), compresslevel=5)
        try:
            self.store.put(self.state_key(state.seq), raw, if_absent=True)
        except PreconditionFailed:
            pass
