"""Object stores: the one seam between agentfs and storage.

``open_store(url)`` turns a store URL into an :class:`ObjectStore`:

- ``memory://NAME``      process-global in-memory store (shared by NAME);
- ``file:///abs/path``   a local directory (created if missing); a plain
                         absolute path means the same;
- ``s3://bucket[/prefix]`` S3 or an S3-compatible service (``endpoint_url`` or
                         the environment's ``AWS_ENDPOINT_URL``).

Every store ``open_store`` returns is wrapped in a
:class:`~agentfs.store.retry.RetryingStore`, the one layer that retries
(backends make one attempt per request).  With ``AGENTFS_FAULTS`` set (tests
and soak runs only) a :class:`~agentfs.store.faults.FaultyStore` is placed
between the two.

This package is the only one that imports fsspec/s3fs/botocore, and only
:mod:`agentfs.store.s3` does, lazily: importing :mod:`agentfs.store` stays cheap.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from agentfs.errors import InvalidArgument
from agentfs.store.base import MULTIPART_THRESHOLD, ObjectInfo, ObjectStore
from agentfs.store.local import LocalStore
from agentfs.store.memory import MemoryStore

if TYPE_CHECKING:
    from agentfs.store.s3 import S3Store

__all__ = [
    "MULTIPART_THRESHOLD",
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "open_backend",
    "open_store",
]

log = logging.getLogger(__name__)

_USAGE = "expected memory://NAME, file:///ABS/PATH, /ABS/PATH or s3://BUCKET[/PREFIX]"


def __getattr__(name: str) -> Any:
    if name == "S3Store":  # lazy: s3fs/botocore are slow to import
        from agentfs.store.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _redact(url: str) -> str:
    """``url`` safe to print: anything before an ``@`` in the authority removed."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('/', 1)[0].rsplit('@', 1)[1]}" + (
            "/" + rest.split("/", 1)[1] if "/" in rest else "")
    return url


def open_store(url: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """Open the store named by ``url``, wrapped for retries (and faults, if
    ``AGENTFS_FAULTS`` asks for them): see :func:`open_backend` for the forms."""
    from agentfs.store.faults import FaultConfig, FaultyStore
    from agentfs.store.retry import RetryingStore, RetryPolicy

    store = open_backend(url, endpoint_url=endpoint_url)
    faults = FaultConfig.from_env()
    if faults is not None:
        log.warning("store %s: fault injection on (%s)", store.url, faults)
        store = FaultyStore(store, faults)
    return RetryingStore(store, RetryPolicy.from_env())


def open_backend(url: str, *, endpoint_url: str | None = None) -> ObjectStore:
    """Open the store named by ``url`` (see the module docstring for the forms).

    URLs are taken literally, not percent-decoded, so that ``open_store(s.url)``
    always reopens ``s`` (``file:///tmp/a b#c`` is the directory ``/tmp/a b#c``).
    Raises InvalidArgument (one line, no credentials) for a URL it cannot
    parse and StoreError if a local root cannot be created.  ``endpoint_url``
    only applies to ``s3://`` URLs.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f"empty store URL: {_USAGE}")
    url = url.strip()
    if url.startswith("/"):
        return LocalStore(os.path.normpath(url))
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise InvalidArgument(f"invalid store URL {_redact(url)!r}: {_USAGE}")
    authority = rest.split("/", 1)[0]
    if scheme.lower() in ("s3", "s3a") and ("@" in rest or ":" in authority):
        # a secret may contain "/", so "s3://KEY:SE/CRET@bucket" has its
        # "@" past the first "/": refuse without echoing any of it.
        raise InvalidArgument(
            f"{scheme}:// store URL must not carry credentials or a ':' in the bucket name; "
            "use the standard AWS credential chain")
    if "@" in authority:
        raise InvalidArgument(
            f"store URL {_redact(url)!r} must not carry credentials; "
            "use the standard AWS credential chain")
    if scheme == "memory":
        name = rest.rstrip("/")
        if not name or "/" in name:
            raise InvalidArgument(f"invalid memory store URL {url!r}: expected memory://NAME")
        return MemoryStore(name)
    if scheme == "file":
        path = rest[len("localhost"):] if rest.startswith("localhost/") else rest
        if not path.startswith("/"):
            raise InvalidArgument(f"file store URL {url!r} must name an absolute path "
                                  "(file:///ABS/PATH)")
        return LocalStore(os.path.normpath(path))
    if scheme in ("s3", "s3a"):
        bucket, _, prefix = rest.partition("/")
        if not bucket or any(c in bucket for c in "?#% "):
            raise InvalidArgument(f"invalid S3 store URL {url!r}: expected s3://BUCKET[/PREFIX]")
        from agentfs.store.s3 import S3Store

        return S3Store(bucket, prefix.strip("/"), endpoint_url=endpoint_url)
    raise InvalidArgument(f"unsupported store URL {_redact(url)!r}: {_USAGE}")
