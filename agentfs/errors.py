"""The agentfs error tree: one class per failure, each owning its errno.

Every error agentfs raises on purpose is an :class:`AgentFSError`, which is an
:class:`OSError` whose ``errno`` is fixed by the class.  The FUSE boundary maps
any ``AgentFSError`` to its errno in one place; anything else is a bug, is
logged with its traceback, and is answered ``EIO`` so the mount keeps running.
The CLI prints ``str(error)`` on one line and exits with :attr:`exit_code`.

Store-level errors (``StoreError`` and subclasses) are raised only by
``agentfs.store``; the rest of the package never sees an fsspec/botocore error.
"""

from __future__ import annotations

import errno as _errno
import logging
import os

__all__ = [
    "AgentFSError",
    "AlreadyExists",
    "BadName",
    "Busy",
    "CheckpointConflict",
    "ConflictError",
    "CorruptRecord",
    "Fenced",
    "InvalidArgument",
    "InvalidState",
    "IsADirectory",
    "LeaseBusy",
    "NameTooLong",
    "NoAttribute",
    "NotADirectory",
    "NotEmpty",
    "NotFound",
    "NotPermitted",
    "NotSupported",
    "PermissionDenied",
    "PreconditionFailed",
    "ReadOnly",
    "ReadOnlyAttribute",
    "Stale",
    "StoreError",
    "StoreUnavailable",
    "TooBig",
    "WouldBlock",
]


class AgentFSError(OSError):
    """Base of every deliberate agentfs error.

    Subclasses set ``errno_code`` (the errno the FUSE layer answers),
    ``log_level`` (how loudly the boundary logs it) and ``exit_code`` (what the
    CLI exits with).
    """

    errno_code: int = _errno.EIO
    log_level: int = logging.DEBUG
    exit_code: int = 1

    def __init__(self, message: str = "", *, path: str | None = None) -> None:
        super().__init__(self.errno_code, message or os.strerror(self.errno_code))
        self.path = path

    def __str__(self) -> str:
        msg = self.strerror or ""
        return f"{msg}: {self.path}" if self.path else msg


class NotFound(AgentFSError):
    errno_code = _errno.ENOENT
    exit_code = 2


class AlreadyExists(AgentFSError):
    errno_code = _errno.EEXIST


class NotADirectory(AgentFSError):
    errno_code = _errno.ENOTDIR


class IsADirectory(AgentFSError):
    errno_code = _errno.EISDIR


class NotEmpty(AgentFSError):
    errno_code = _errno.ENOTEMPTY


class PermissionDenied(AgentFSError):
    errno_code = _errno.EACCES


class NotPermitted(AgentFSError):
    errno_code = _errno.EPERM


class ReadOnly(AgentFSError):
    """A write to a read-only mount or a checkpoint view."""

    errno_code = _errno.EROFS


class WouldBlock(AgentFSError):
    errno_code = _errno.EWOULDBLOCK


class InvalidArgument(AgentFSError):
    errno_code = _errno.EINVAL
    log_level = logging.INFO
    exit_code = 64  # EX_USAGE


class BadName(InvalidArgument):
    """A path component that agentfs cannot store (``/``, NUL, ``.agentfs``...)."""


class NameTooLong(AgentFSError):
    errno_code = _errno.ENAMETOOLONG


class NoAttribute(AgentFSError):
    errno_code = _errno.ENODATA


class TooBig(AgentFSError):
    errno_code = _errno.E2BIG


class NotSupported(AgentFSError):
    errno_code = _errno.EOPNOTSUPP


class Busy(AgentFSError):
    errno_code = _errno.EBUSY


class Stale(AgentFSError):
    """The remote object changed or vanished underneath an open file."""

    errno_code = _errno.ESTALE
    log_level = logging.WARNING


class ConflictError(Stale):
    """A write lost a race: another writer committed a version of the file
    that this writer had not seen.  The bytes are safe in the conflict copy
    ``copy`` (a workspace path); the path keeps the winner.  ``ESTALE`` at
    close/fsync (the caller's idea of the file is outdated: re-open, re-read,
    re-apply); the CLI exits 75 (``EX_TEMPFAIL``: retrying succeeds)."""

    exit_code = 75

    def __init__(self, message: str = "", *, path: str | None = None, copy: str = "") -> None:
        super().__init__(message, path=path)
        self.copy = copy

    def __str__(self) -> str:
        return f"{super().__str__()} (your bytes are kept in {self.copy})" if self.copy else super().__str__()


class CheckpointConflict(ConflictError):
    """A framework checkpoint (e.g. LangGraph's) that another writer wrote first
    under the same id with other content: the first one stays, this writer's
    record is refused (its bytes kept in ``copy`` when the race was decided by
    the store).  ``ESTALE``, CLI exit 75, as for any lost write race."""


class CorruptRecord(AgentFSError):
    """A journal record or state file in the store cannot be parsed."""

    errno_code = _errno.EIO
    log_level = logging.ERROR


class StoreError(AgentFSError):
    """Base of errors raised by an ObjectStore."""

    errno_code = _errno.EIO
    log_level = logging.WARNING


class PreconditionFailed(StoreError):
    """A conditional write (if_absent / if_match) found another version."""

    errno_code = _errno.EEXIST
    log_level = logging.DEBUG


class StoreUnavailable(StoreError):
    """The store could not be reached after retries."""

    errno_code = _errno.EIO
    log_level = logging.WARNING
    exit_code = 69  # EX_UNAVAILABLE


# -- agent state ------------------------------------------------------


class InvalidState(InvalidArgument):
    """A bad value for a typed ``user.agentfs.*`` attribute: unknown name,
    bad JSON, wrong type, oversize, unknown status or a forbidden transition.
    Logged once at WARNING by the FUSE boundary (the caller gets EINVAL)."""

    log_level = logging.WARNING


class ReadOnlyAttribute(NotPermitted):
    """A write to an attribute agentfs maintains itself
    (``user.agentfs.updated_by``/``updated_at``): EPERM."""

    log_level = logging.WARNING
    exit_code = 64

# -- locks -------------------------------------------------------------------


class Fenced(AgentFSError):
    """A write from a process whose lease was taken over by another holder
    (its fencing token is no longer current): the upload is refused and the
    bytes are kept as a conflict copy.  ``EIO`` at close/fsync, as NFS
    answers a write after a lost lock."""

    errno_code = _errno.EIO
    log_level = logging.WARNING

    def __init__(self, message: str = "", *, path: str | None = None, token: int = 0) -> None:
        super().__init__(message, path=path)
        self.token = token


class LeaseBusy(AgentFSError):
    """``setxattr user.agentfs.lock`` on a lease held elsewhere.

    EBUSY rather than EWOULDBLOCK: Linux (seen on 6.18) turns an EAGAIN reply
    to FUSE_SETXATTR into EOPNOTSUPP, indistinguishable from "no lock support".
    ``agentfs.lock()`` and ``agentfs lock`` turn it back into WouldBlock.
    """

    errno_code = _errno.EBUSY
