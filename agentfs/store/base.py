"""The ObjectStore interface: the one seam between agentfs and storage.

Every backend (memory, local directory, S3 through s3fs) implements this small,
synchronous, thread-safe interface.  Async callers run it in worker threads
(``trio.to_thread.run_sync``).  Keys are ``/``-separated strings relative to
the store root, never starting with ``/``.

Error contract (every backend, checked by ``tests/test_store_conformance.py``):

- a missing key raises :class:`agentfs.errors.NotFound`;
- a failed condition (``if_absent`` on an existing key, ``if_match`` on a
  different or missing version) raises :class:`agentfs.errors.PreconditionFailed`,
  and the store is unchanged;
- an unreachable store raises :class:`agentfs.errors.StoreUnavailable` after
  the backend's own bounded retries; nothing else retries.

Conditional writes are atomic: of two concurrent ``put(k, .., if_absent=True)``
exactly one succeeds; of two ``put(k, .., if_match=e)`` at most one succeeds.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from agentfs.errors import InvalidArgument

__all__ = ["MULTIPART_THRESHOLD", "ObjectInfo", "ObjectStore"]

#: Files at least this large are uploaded in parts by ``put_file``.
MULTIPART_THRESHOLD = 16 * 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store says about one object.

    ``etag`` is an opaque version token: it changes whenever the bytes are
    replaced (S3 ETag; on a local store a token derived from inode and mtime).
    ``mtime`` is seconds since the epoch.
    """

    key: str
    size: int
    etag: str
    mtime: float


class ObjectStore(abc.ABC):
    """Synchronous, thread-safe object storage.

    ``url`` is the canonical URL of the store root (used in messages only,
    never containing credentials).
    """

    url: str = ""

    @abc.abstractmethod
    def get(self, key: str, start: int | None = None, end: int | None = None, *,
            if_match: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (whole object when both are None).

        A range past the end returns the bytes that exist (possibly ``b""``).
        With ``if_match`` raises PreconditionFailed unless the object is that
        version (reads pinned to the version the journal committed).
        """

    @abc.abstractmethod
    def get_to_file(self, key: str, fileobj, *, if_match: str | None = None) -> ObjectInfo:
        """Stream the whole object into a writable binary file object.

        Never holds the whole object in memory.  With ``if_match`` raises
        PreconditionFailed when the object is not that version.
        """

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size, etag and mtime of ``key``."""

    @abc.abstractmethod
    def put(
        self,
        key: str,
        data: bytes,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """Store ``data`` at ``key`` atomically (readers see old or new, never half).

        ``if_absent``: only create (S3 ``If-None-Match: *``).
        ``if_match``: only replace this exact version (S3 ``If-Match``).
        """

    @abc.abstractmethod
    def put_file(
        self,
        key: str,
        path: str,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """Upload a local file, streaming (multipart at or above MULTIPART_THRESHOLD).

        Same conditions and atomicity as :meth:`put`; never reads the whole
        file into memory.
        """

    @abc.abstractmethod
    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, recursively, in key order.

        ``start_after`` skips keys ``<=`` it (S3 ``StartAfter``).
        """

    @abc.abstractmethod
    # builtins.list: in this class body ``list`` names the method above
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Names of the immediate "sub-directories" under ``prefix`` (which ends in ``/``
        or is empty), i.e. S3 common prefixes with ``Delimiter='/'``, without the
        trailing slash."""

    @abc.abstractmethod
    def copy(self, src: str, dst: str, *, if_match: str | None = None,
             size: int | None = None) -> ObjectInfo:
        """Server-side copy (a hard link or file copy on a local store).

        ``if_match`` guards the *source* version.  The destination is replaced
        unconditionally.  ``size``: the size of version ``if_match`` when the
        caller knows it (a backend may then skip reading the source's metadata).
        """

    @abc.abstractmethod
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove ``key``; deleting a missing key is not an error.

        With ``if_match`` only that version is removed: another version raises
        PreconditionFailed and stays (a newer write is never deleted by a
        delete that meant an older one).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the store is unusable afterwards."""

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """make one request outside this interface (``fn``, e.g. an S3
        multipart step of :mod:`agentfs.streaming`) under the policies of the
        wrappers above the backend: :class:`~agentfs.store.retry.RetryingStore`
        retries it, :class:`~agentfs.store.faults.FaultyStore` injects faults.
        ``fn`` must be safe to repeat.  A backend just calls it."""
        del op, key
        return fn()

    # -- helpers shared by every backend (not part of the abstract interface) --

    @staticmethod
    def check_key(key: str) -> str:
        """Return ``key`` if it is a valid object key, else raise InvalidArgument.

        A key is a non-empty ``/``-separated relative path: no leading or
        trailing ``/``, no empty, ``.`` or ``..`` component, no NUL.  Every
        backend enforces the same rule so that a key valid on one store is
        valid on all of them (a local directory cannot hold ``a//b``).
        """
        if not isinstance(key, str) or not key:
            raise InvalidArgument("empty object key")
        if "\0" in key:
            raise InvalidArgument("object key contains NUL", path=repr(key))
        if key.startswith("/") or key.endswith("/"):
            raise InvalidArgument("object key must not start or end with '/'", path=key)
        for part in key.split("/"):
            if part in ("", ".", ".."):
                raise InvalidArgument("object key has an empty, '.' or '..' component", path=key)
        return key

    @staticmethod
    def check_prefix(prefix: str, *, directory: bool = False) -> str:
        """Return ``prefix`` if it is a valid listing prefix, else raise InvalidArgument.

        A prefix is ``""`` or the beginning of a valid key (it may end in ``/``
        or in the middle of a name).  With ``directory`` (for ``list_dirs``) a
        non-empty prefix must end in ``/``.
        """
        if not isinstance(prefix, str):
            raise InvalidArgument("listing prefix must be a string")
        if not prefix:
            return prefix
        if directory and not prefix.endswith("/"):
            raise InvalidArgument("directory prefix must be empty or end in '/'", path=prefix)
        if "\0" in prefix or prefix.startswith("/"):
            raise InvalidArgument("invalid listing prefix", path=repr(prefix))
        parts = prefix.split("/")
        # the last part may be a partial name (or "" when prefix ends in "/")
        for part in parts[:-1]:
            if part in ("", ".", ".."):
                raise InvalidArgument("listing prefix has an empty, '.' or '..' component",
                                      path=prefix)
        return prefix
