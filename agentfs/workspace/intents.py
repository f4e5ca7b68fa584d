"""Rename intents: a directory rename killed halfway leaves no ghost files.

A rename copies every file to its new natural key, then commits one ``mv``
record, then deletes the old keys.  A crash after some copies but before the
commit used to leave objects at the new keys that nobody committed; the next
scan adopted them as external writes (a partial copy of the tree appeared).

Now the rename first writes a :class:`~agentfs.models.RenameIntent` at
``.agentfs/<ws>/intent/<id>.json`` naming the new keys, tags its commit with
``detail["intent"] = id`` and removes the intent when done.  :func:`settle`
(run by every scan, so at mount time, periodically and by ``agentfs check
--repair``) handles the intents it finds:

- committed in the journal this workspace applied: the rename happened; the
  intent is removed at once (the old keys and the intent are deleted
  after the syscall returns, so a crash can leave a committed intent behind);
- in progress in this mount, or younger than :data:`GRACE` (``AGENTFS_INTENT_GRACE``,
  default 600 s; a rename of a huge tree on S3 may take long): a rename may be
  in progress: its keys are returned so the scan does not adopt them;
- older: if the journal holds its commit, the rename happened (the old keys
  are tombstoned leftovers the scan removes); if not, every new key without a
  committed entry is deleted (the copies of a rename that never happened).
  Then the intent is removed.

Error contract: store errors propagate (the scan logs and retries later); an
unreadable intent is logged and left for ``agentfs check`` to report.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agentfs.config import settings
from agentfs.errors import NotFound
from agentfs.journal import Journal
from agentfs.models import RenameIntent

if TYPE_CHECKING:
    from agentfs.workspace import Workspace

__all__ = ["GRACE", "begin", "end", "intent_prefix", "pending", "settle"]

log = logging.getLogger(__name__)

#: Seconds after which another mount's unfinished intent is taken as interrupted.
GRACE = settings().intent_grace


def intent_prefix(journal: Journal) -> str:
    return f"{journal.prefix}intent/"


def begin(journal: Journal, *, seq: int, src: str, dst: str, keys: list[str],
          mount: str) -> RenameIntent:
    """Record the intent (synchronous store I/O: run in a worker thread)."""
    intent = RenameIntent(id=uuid.uuid4().hex, mount=mount, seq=seq, src=src, dst=dst, keys=keys)
    journal.store.put(f"{intent_prefix(journal)}{intent.id}.json",
                      intent.model_dump_json().encode(), if_absent=True)
    return intent


def end(journal: Journal, intent: RenameIntent) -> None:
    """Remove the intent once the rename is committed and its old keys deleted."""
    journal.store.delete(f"{intent_prefix(journal)}{intent.id}.json")


def pending(journal: Journal) -> list[tuple[str, RenameIntent | None]]:
    """Every intent object: (key, intent or None when unreadable)."""
    out: list[tuple[str, RenameIntent | None]] = []
    for o in journal.store.list(intent_prefix(journal)):
        try:
            out.append((o.key, RenameIntent.model_validate_json(journal.store.get(o.key))))
        except NotFound:
            continue
        except (ValidationError, ValueError) as e:
            log.warning("journal %s: unreadable rename intent %s: %s", journal.ws, o.key,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            out.append((o.key, None))
    return out


def _committed(journal: Journal, intent: RenameIntent) -> bool:
    return any(r.detail.get("intent") == intent.id
               for c in journal.commits_after(intent.seq) for r in c.records)


async def settle(ws: Workspace, now: float, active: set[str], grace: float = GRACE) -> set[str]:
    """Resolve old intents; return the keys of young ones (not to be adopted).

    ``active``: ids of this mount's renames in progress.  Runs in the
    workspace's trio loop (store I/O in worker threads).
    """
    protect: set[str] = set()
    prefix = ws.key("")
    for key, intent in await ws.io(pending, ws.journal):
        if intent is None:
            continue
        if intent.id in active:
            protect.update(intent.keys)
            continue
        if intent.id in ws.committed_intents:
            # its commit is in the journal we applied (the old keys are
            # deleted after the syscall; a crash can leave the intent behind).
            log.info("workspace %s: rename %s -> %s was committed; intent removed",
                     ws.name, intent.src, intent.dst)
        elif now - intent.time < grace:
            protect.update(intent.keys)
            continue
        elif await ws.io(_committed, ws.journal, intent):
            log.info("workspace %s: rename %s -> %s was committed; intent removed",
                     ws.name, intent.src, intent.dst)
        else:
            removed = 0
            for k in intent.keys:
                if not k.startswith(prefix):
                    continue
                if ws.ns.resolve(k[len(prefix):]) is not None:
                    continue  # committed since (or the documented rename-over-a-file case)
                await ws.io(ws.store.delete, k)
                removed += 1
            log.warning("workspace %s: rename %s -> %s was interrupted before its commit; "
                        "removed %d copies", ws.name, intent.src, intent.dst, removed)
        await ws.io(ws.store.delete, key)
    return protect
