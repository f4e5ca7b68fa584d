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

from agentfs.checkpoints.ops import (
    create,
    delete,
    fork,
    materialise,
    pending_materialisation,
    restore,
    ws_walk_detached,
)
from agentfs.checkpoints.records import (
    SNAPSHOTS_DIR,
    CheckpointDiff,
    check_checkpoint_name,
    default_name,
    diff_states,
    list_checkpoints,
    read_record,
    snap_key,
    state_at,
    write_record,
)
from agentfs.checkpoints.retention import GcReport, gc, parse_duration, prune
from agentfs.checkpoints.views import SnapshotsDir, SnapshotView, View

__all__ = [
    "SNAPSHOTS_DIR",
    "CheckpointDiff",
    "GcReport",
    "SnapshotView",
    "SnapshotsDir",
    "View",
    "check_checkpoint_name",
    "create",
    "default_name",
    "delete",
    "diff_states",
    "fork",
    "gc",
    "list_checkpoints",
    "materialise",
    "parse_duration",
    "pending_materialisation",
    "prune",
    "read_record",
    "restore",
    "snap_key",
    "state_at",
    "write_record",
    "ws_walk_detached",
]
