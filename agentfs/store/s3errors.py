"""The S3 backend's error translation: s3fs/botocore exceptions to the agentfs error tree.

One table, :func:`map_error`: by exception class, then S3 error code, then
HTTP status.

- missing key (``NoSuchKey``, 404) -> NotFound;
- failed condition (412 ``PreconditionFailed``, 409
  ``ConditionalRequestConflict``) -> PreconditionFailed;
- a byte range past the end (416 ``InvalidRange``) -> :class:`RangeNotSatisfiable`
  (the backend turns it into an empty read);
- connection errors, timeouts, throttling and 5xx -> StoreUnavailable;
- anything else -> StoreError with a one-line message that never contains
  credentials (the caller's ``scrub`` removes them).

Error contract: :func:`map_error` never raises, it returns the error to
raise.  Concurrency: stateless, safe from any thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import botocore.exceptions as bex

from agentfs.errors import (
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
)

try:  # aiobotocore's default HTTP backend
    import aiohttp

    _AIOHTTP_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover - other HTTP backends
    _AIOHTTP_ERRORS = ()

__all__ = ["UNAVAILABLE_ERRORS", "RangeNotSatisfiable", "map_error"]

#: Exceptions meaning "could not talk to the store".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    bex.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError, proxy
    bex.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
    bex.IncompleteReadError,
    ConnectionError,
    TimeoutError,  # socket.timeout, asyncio.TimeoutError, fsspec FSTimeoutError
    asyncio.TimeoutError,
    *_AIOHTTP_ERRORS,
)


class RangeNotSatisfiable(StoreError):
    """416: a byte range starting at or past the end of the object."""


#: S3 error code -> error class.  Consulted before the HTTP status.
_BY_CODE: dict[str, type[StoreError] | type[NotFound]] = {
    "NoSuchKey": NotFound,
    "NotFound": NotFound,
    "PreconditionFailed": PreconditionFailed,
    "ConditionalRequestConflict": PreconditionFailed,
    "InvalidRange": RangeNotSatisfiable,
    # A missing bucket or upload is a configuration/protocol problem, not a missing key.
    "NoSuchBucket": StoreError,
    "NoSuchUpload": StoreError,
    "SlowDown": StoreUnavailable,
    "ServiceUnavailable": StoreUnavailable,
    "InternalError": StoreUnavailable,
    "RequestTimeout": StoreUnavailable,
    "Throttling": StoreUnavailable,
}
#: HTTP status -> error class, when the code is not in :data:`_BY_CODE`.
_BY_STATUS: dict[int, type[StoreError] | type[NotFound]] = {
    404: NotFound,
    412: PreconditionFailed,
    416: RangeNotSatisfiable,
    429: StoreUnavailable,
}


def _client_error(exc: BaseException) -> bex.ClientError | None:
    """The botocore ClientError behind ``exc`` (s3fs re-raises them translated)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 5:
        if isinstance(e, bex.ClientError):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def map_error(exc: BaseException, op: str, where: str,
               scrub: Callable[[str], str] = lambda s: s) -> Exception:
    """Translate any exception from s3fs/botocore into the agentfs error tree.

    The one error table of the S3 backend: by exception class, then S3 error
    code, then HTTP status.  Messages are one line and never contain credentials.
    """
    if isinstance(exc, InvalidArgument | NotFound | StoreError):
        return exc
    ce = _client_error(exc)
    if ce is not None:
        err = ce.response.get("Error", {}) or {}
        code = str(err.get("Code", "") or "")
        status = int(ce.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
        if cls is None:
            cls = StoreUnavailable if status >= 500 else StoreError
        if cls is NotFound:
            return NotFound("no such object", path=where)
        if cls is PreconditionFailed:
            return PreconditionFailed(f"precondition failed ({status} {code})", path=where)
        detail = _one_line(scrub(str(err.get("Message", "") or "")))
        msg = f"S3 {op} failed: {status} {code}" + (f": {detail}" if detail else "")
        return cls(msg, path=where)
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return StoreError(f"S3 {op} failed: no usable AWS credentials found", path=where)
    if isinstance(exc, UNAVAILABLE_ERRORS):
        detail = _one_line(scrub(f"{type(exc).__name__}: {exc}"))
        return StoreUnavailable(f"S3 {op} failed: store unreachable ({detail})", path=where)
    if isinstance(exc, FileNotFoundError):
        return NotFound("no such object", path=where)
    detail = _one_line(scrub(f"{type(exc).__name__}: {exc}"))
    return StoreError(f"S3 {op} failed: {detail}", path=where)
