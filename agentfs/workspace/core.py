"""Workspace: every file operation on one workspace, with or without FUSE.

A workspace is a tree of files at natural keys ``<ws>/<path>`` plus a journal
under ``.agentfs/<ws>/``.  This class owns the rules:

- **Durability**: a file's bytes are uploaded, then its entry is committed to
  the journal; ``flush``/``fsync``/``release`` return only after both.
- **Optimistic concurrency**: uploads are conditional on the version the
  writer started from (``if_match``) or on absence (``if_absent``).  A loser
  keeps its bytes as a conflict copy next to the file; nothing is dropped.
- **Renames** copy bytes to the new natural keys first, then commit the
  rename in one journal record (atomic as seen through the mount), then delete
  the old keys.  A crash in between leaves a tombstoned leftover that the next
  scan removes, never a half-renamed tree.
- **New files** are local ("pending") until their first flush: other mounts see
  them on close (close-to-open consistency).

Beside it: :mod:`agentfs.workspace.adoption` (the scan that reconciles natural keys with
the journal, and adopting a version a reader found), :mod:`agentfs.workspace.garbage`
(deleting old keys after the syscall), :mod:`agentfs.workspace.groupcommit` (closes that
do not wait for their record), :mod:`agentfs.names` (valid names).

Error contract: methods raise :class:`agentfs.errors.AgentFSError` subclasses
(each carries its errno) and store errors from ``agentfs.store``.

Concurrency: all methods run in one trio thread.  Store I/O runs in worker
threads under a capacity limiter.  Renames and deletes take the namespace lock
exclusively; uploads and other mutations take it shared, so a rename never
interleaves with an upload of a file it moves.
"""


from __future__ import annotations

from agentfs.workspace.files import FileOps
from agentfs.workspace.tree import TreeOps

__all__ = ["Workspace"]


class Workspace(FileOps, TreeOps):
    """One workspace of a store.  Create with :meth:`load_new`."""
