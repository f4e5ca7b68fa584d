"""An object store on S3 (or any S3-compatible service) through s3fs.

This module and :mod:`agentfs.store.s3errors` (the error translation) are
the only ones that import s3fs, aiobotocore or botocore.

Configuration: ``S3Store(bucket, prefix, endpoint_url=...)``; without
``endpoint_url`` the environment's ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` is honoured.  Credentials and region come from the
standard AWS chain (environment, profile, instance role); they never appear in
:attr:`url` or in error messages.

Retries: owned by :class:`agentfs.store.retry.RetryingStore` (which
:func:`agentfs.store.open_store` puts over every backend).  botocore is set
to ``max_attempts=1`` by default (a direct user may raise it) with bounded
connect/read timeouts, and s3fs's own retry loop is turned down to a single
attempt, so retries never multiply.  The only retry here is the resumption of
a response *body* that broke mid-stream (not a new request): it resumes at
the same offset pinned to the same ETag.

Fork safety: the ``S3FileSystem`` is created lazily on first use, and again in
a forked child, because fsspec's event loop does not survive ``fork``.

Error contract (one table, :func:`agentfs.store.s3errors.map_error`, by
exception class, then S3 error code, then HTTP status):

- missing key (``NoSuchKey``, 404) -> NotFound;
- failed condition (412 ``PreconditionFailed``, 409
  ``ConditionalRequestConflict``) -> PreconditionFailed; a conditional write
  on a missing key (404) -> PreconditionFailed as well;
- connection errors, timeouts, throttling and 5xx (after botocore's retries)
  -> StoreUnavailable;
- anything else -> StoreError with a one-line message.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import email.utils
import io
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import fsspec.asyn
import s3fs

from agentfs.errors import (
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
)
from agentfs.store.base import MULTIPART_THRESHOLD, ObjectInfo, ObjectStore
from agentfs.store.s3errors import RangeNotSatisfiable, map_error

__all__ = ["S3Store", "read_part"]

log = logging.getLogger(__name__)

#: Default size of one uploaded part (S3 allows 5 MiB .. 5 GiB, at most 10,000 parts).
#: 8 MiB (was 16): the server's cost is the same, and at most
#: ``max_parallel_parts`` parts are in memory at once.
PART_SIZE = 8 * 1024 * 1024
#: S3's limit for a single CopyObject; larger objects are copied in parts.
COPY_THRESHOLD = 5 * 1024**3
COPY_PART_SIZE = 512 * 1024**2
MAX_PARTS = 10_000
_CHUNK = 1024 * 1024
#: ranged GETs up to this size are read in one round trip (see _get_range).
_ONE_HOP = 16 * 1024 * 1024
#: Attempts to read one response body (a broken stream is resumed, pinned to its ETag).
_BODY_ATTEMPTS = 3

def read_part(fd: int, off: int, size: int) -> io.BytesIO:
    """Bytes ``[off, off+size)`` of an open file as an upload body, read straight
    into the body's own buffer (one copy in memory per part).

    A ``bytes`` body costs two: botocore wraps it in a BytesIO that shares it,
    and aiohttp's ``getbuffer()`` on that BytesIO unshares (copies) it.
    Raises StoreError if the file is shorter than ``off + size``.
    """
    body = io.BytesIO()
    if size > 0:
        body.seek(size - 1)
        body.write(b"\0")  # one allocation of exactly `size` bytes, owned by the BytesIO
        with body.getbuffer() as view:
            got = 0
            while got < size:
                n = os.preadv(fd, [view[got:]], off + got)
                if n <= 0:
                    break
                got += n
        if got != size:
            raise StoreError(f"upload source shrank while being read ({got} of {size} bytes)")
        body.seek(0)
    return body


def _loopback(endpoint_url: str | None) -> bool:
    """Whether an endpoint is on this host's loopback interface."""
    if not endpoint_url:
        return False
    host = (urllib.parse.urlsplit(endpoint_url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _etag(resp: dict[str, Any]) -> str:
    return str(resp.get("ETag", "")).strip('"')


def _resp_time(resp: dict[str, Any]) -> float:
    """Server time of a response (its Date header), else local time."""
    try:
        date = resp["ResponseMetadata"]["HTTPHeaders"]["date"]
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


class S3Store(ObjectStore):
    """:class:`ObjectStore` on ``s3://bucket/prefix``.

    Tunables (instance attributes, lowered by tests): ``multipart_threshold``,
    ``part_size``, ``max_parallel_parts`` (also the bound on parts held in
    memory), ``copy_threshold``, ``copy_part_size``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        max_attempts: int = 1,  # RetryingStore owns retries
        connect_timeout: float = 5,
        read_timeout: float = 30,
    ) -> None:
        if not bucket or "/" in bucket:
            raise InvalidArgument("invalid S3 bucket name", path=bucket)
        prefix = prefix.strip("/")
        if prefix:
            self.check_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.endpoint_url = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                             or os.environ.get("AWS_ENDPOINT_URL") or None)
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.multipart_threshold = MULTIPART_THRESHOLD
        self.part_size = PART_SIZE
        self.max_parallel_parts = 4
        self.copy_threshold = COPY_THRESHOLD
        self.copy_part_size = COPY_PART_SIZE
        self._fs: s3fs.S3FileSystem | None = None
        self._fs_pid = 0
        self._fs_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    # -- plumbing --------------------------------------------------------------

    def _get_fs(self) -> s3fs.S3FileSystem:
        pid = os.getpid()
        fs = self._fs
        if fs is not None and self._fs_pid == pid:
            return fs
        if self._fs_pid != pid:
            self._fs_lock = threading.Lock()  # a lock held at fork time would never be released
        with self._fs_lock:
            if self._fs is None or self._fs_pid != pid:
                config: dict[str, Any] = {
                    "retries": {"total_max_attempts": self.max_attempts, "mode": "standard"},
                    "connect_timeout": self.connect_timeout,
                    "read_timeout": self.read_timeout,
                }
                if self.endpoint_url:
                    # S3-compatible services often reject botocore's default
                    # CRC checksum headers; send them only where required.
                    config["request_checksum_calculation"] = "when_required"
                    config["response_checksum_validation"] = "when_required"
                if _loopback(self.endpoint_url):
                    # over plain HTTP botocore signs a SHA-256 of every
                    # body (a second pass over each uploaded byte).  On the
                    # loopback interface nobody can alter a request in transit.
                    config["s3"] = {"payload_signing_enabled": False}
                fs = s3fs.S3FileSystem(
                    endpoint_url=self.endpoint_url,
                    skip_instance_cache=True,
                    use_listings_cache=False,
                    config_kwargs=config,
                )
                fs.retries = 1  # botocore owns retries
                self._fs, self._fs_pid = fs, pid
                log.debug("S3 client for %s created (endpoint %s)", self.url,
                          self.endpoint_url or "default")
            return self._fs

    def _scrub(self, text: str) -> str:
        """Remove anything credential-like we know of from an error message."""
        for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            secret = os.environ.get(name)
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _error(self, exc: BaseException, op: str, key: str) -> Exception:
        return map_error(exc, op, self._where(key), self._scrub)

    def _call(self, method: str, key: str, **kwargs: Any) -> dict[str, Any]:
        """One S3 API call (botocore retries inside); errors mapped."""
        try:
            return self._get_fs().call_s3(method, Bucket=self.bucket, **kwargs)
        except Exception as e:
            raise self._error(e, method, key) from e

    @staticmethod
    def _range(start: int, end: int | None) -> dict[str, str]:
        if start == 0 and end is None:
            return {}
        return {"Range": f"bytes={start}-" + ("" if end is None else str(end - 1))}

    def _info(self, key: str, resp: dict[str, Any], size: int) -> ObjectInfo:
        lm = resp.get("LastModified")
        mtime = lm.timestamp() if lm is not None else _resp_time(resp)
        return ObjectInfo(key=key, size=size, etag=_etag(resp), mtime=mtime)

    # -- reads -----------------------------------------------------------------

    def _stream(self, key: str, start: int, end: int | None, if_match: str | None,
                sink: Callable[[bytes], object]) -> dict[str, Any]:
        """GET ``[start, end)`` of ``key`` into ``sink`` chunk by chunk.

        Returns the first response.  A body that breaks mid-stream is resumed
        at the current offset, pinned to the ETag of the first response.
        """
        k = self.prefix + key
        fs = self._get_fs()
        pos = start
        pin = if_match
        first: dict[str, Any] | None = None
        for attempt in range(_BODY_ATTEMPTS):
            if end is not None and pos >= end:
                break
            kw: dict[str, Any] = self._range(pos, end)
            if pin is not None:
                kw["IfMatch"] = pin
            try:
                resp = self._call("get_object", key, Key=k, **kw)
            except PreconditionFailed:
                if first is not None and if_match is None:
                    raise StoreUnavailable("object changed while its download was resumed",
                                           path=self._where(key)) from None
                raise
            if first is None:
                first = resp
                pin = _etag(resp) or pin
            body = resp["Body"]
            try:
                while True:
                    try:
                        chunk = fsspec.asyn.sync(fs.loop, body.read, _CHUNK)
                    except Exception as e:
                        err = self._error(e, "get_object", key)
                        if not isinstance(err, StoreUnavailable) or attempt == _BODY_ATTEMPTS - 1:
                            raise err from e
                        log.info("S3 download of %s broke at byte %d (%s); resuming",
                                 key, pos, err)
                        break
                    if not chunk:
                        return first
                    sink(chunk)  # errors of the sink (local disk) are the caller's
                    pos += len(chunk)
            finally:
                body.close()
        assert first is not None
        return first

    def get(self, key: str, start: int | None = None, end: int | None = None, *,
            if_match: str | None = None) -> bytes:
        self.check_key(key)
        if (start is not None and start < 0) or (end is not None and end < 0):
            raise InvalidArgument("negative byte range", path=key)
        lo = start or 0
        if end is not None and end <= lo:
            self.head(key)  # still NotFound for a missing key
            return b""
        if end is not None and end - lo <= _ONE_HOP:
            return self._get_range(key, lo, end, if_match)
        parts: list[bytes] = []
        try:
            self._stream(key, lo, end, if_match, parts.append)
        except RangeNotSatisfiable:
            return b""  # range starts at or past the end of an existing object
        return b"".join(parts)

    def _get_range(self, key: str, lo: int, end: int, if_match: str | None) -> bytes:
        """a bounded range (a cache block) in one round trip to the S3
        client's event loop: request and body together, instead of a thread hop
        per body chunk.  A body that breaks is StoreUnavailable (the retry
        layer repeats the whole range, pinned to ``if_match`` if given)."""
        fs = self._get_fs()
        kw: dict[str, Any] = self._range(lo, end)
        if if_match is not None:
            kw["IfMatch"] = if_match

        async def go() -> bytes:
            resp = await fs._call_s3("get_object", Bucket=self.bucket, Key=self.prefix + key, **kw)
            body = resp["Body"]
            try:
                return bytes(await body.read())
            finally:
                body.close()

        try:
            return fsspec.asyn.sync(fs.loop, go)  # type: ignore[no-any-return]
        except RangeNotSatisfiable:
            return b""
        except Exception as e:
            err = self._error(e, "get_object", key)
            if isinstance(err, RangeNotSatisfiable):
                return b""  # range starts at or past the end of an existing object
            raise err from e

    def get_to_file(self, key: str, fileobj: BinaryIO, *, if_match: str | None = None) -> ObjectInfo:
        self.check_key(key)
        size = 0

        def sink(chunk: bytes) -> None:
            nonlocal size
            fileobj.write(chunk)
            size += len(chunk)

        try:
            resp = self._stream(key, 0, None, if_match, sink)
        except RangeNotSatisfiable:  # pragma: no cover - no Range header is sent
            raise StoreError("unexpected 416 on a whole-object GET", path=key) from None
        return self._info(key, resp, size)

    def head(self, key: str) -> ObjectInfo:
        self.check_key(key)
        resp = self._call("head_object", key, Key=self.prefix + key)
        return self._info(key, resp, int(resp.get("ContentLength", 0)))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self.check_prefix(prefix)
        kw: dict[str, Any] = {"Prefix": self.prefix + prefix}
        if start_after:
            kw["StartAfter"] = self.prefix + start_after
        return self._list(prefix, kw)

    def _list(self, prefix: str, kw: dict[str, Any]) -> Iterator[ObjectInfo]:
        n = len(self.prefix)
        while True:
            resp = self._call("list_objects_v2", prefix, **kw)
            for o in resp.get("Contents", ()):
                key = o["Key"][n:]
                try:
                    self.check_key(key)
                except InvalidArgument:
                    # e.g. "dir/" folder markers made by consoles: not representable
                    log.debug("skipping unrepresentable key %r in %s", o["Key"], self.url)
                    continue
                yield ObjectInfo(key=key, size=int(o.get("Size", 0)), etag=_etag(o),
                                 mtime=o["LastModified"].timestamp())
            if not resp.get("IsTruncated"):
                return
            kw = {**kw, "ContinuationToken": resp["NextContinuationToken"]}

    # builtins.list: in this class body ``list`` names the method above
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        self.check_prefix(prefix, directory=True)
        full = self.prefix + prefix
        kw: dict[str, Any] = {"Prefix": full, "Delimiter": "/"}
        out: list[str] = []
        while True:
            resp = self._call("list_objects_v2", prefix, **kw)
            for cp in resp.get("CommonPrefixes", ()):
                name = cp["Prefix"][len(full):].rstrip("/")
                if name and name not in (".", ".."):
                    out.append(name)
            if not resp.get("IsTruncated"):
                return out
            kw["ContinuationToken"] = resp["NextContinuationToken"]

    # -- writes ----------------------------------------------------------------

    @staticmethod
    def _conditions(key: str, if_absent: bool, if_match: str | None) -> dict[str, str]:
        if if_absent and if_match is not None:
            raise InvalidArgument("if_absent and if_match are exclusive", path=key)
        if if_absent:
            return {"IfNoneMatch": "*"}
        if if_match is not None:
            return {"IfMatch": if_match}
        return {}

    def _conditional(self, method: str, key: str, cond: dict[str, str],
                     **kwargs: Any) -> dict[str, Any]:
        """A write call; a conditional write on a missing key is PreconditionFailed."""
        try:
            return self._call(method, key, **cond, **kwargs)
        except NotFound:
            if "IfMatch" in cond:
                raise PreconditionFailed("object does not exist (if_match)",
                                         path=self._where(key)) from None
            raise

    def put(self, key: str, data: bytes, *, if_absent: bool = False,
            if_match: str | None = None) -> ObjectInfo:
        self.check_key(key)
        cond = self._conditions(key, if_absent, if_match)
        data = bytes(data)
        resp = self._conditional("put_object", key, cond, Key=self.prefix + key, Body=data)
        return ObjectInfo(key=key, size=len(data), etag=_etag(resp), mtime=_resp_time(resp))

    def put_file(self, key: str, path: str, *, if_absent: bool = False,
                 if_match: str | None = None) -> ObjectInfo:
        self.check_key(key)
        cond = self._conditions(key, if_absent, if_match)
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise StoreError(f"cannot read upload source: {e.strerror or e}", path=path) from e
        if size < self.multipart_threshold:
            fd = os.open(path, os.O_RDONLY)
            try:
                body = read_part(fd, 0, size)  # bounded by multipart_threshold
            finally:
                os.close(fd)
            resp = self._conditional("put_object", key, cond, Key=self.prefix + key, Body=body)
            return ObjectInfo(key=key, size=size, etag=_etag(resp), mtime=_resp_time(resp))
        return self._put_multipart(key, path, size, cond, if_absent, if_match)

    def _precheck(self, key: str, if_absent: bool, if_match: str | None) -> None:
        """Fail a conditional multipart upload before sending any bytes.

        Only an optimisation: the condition is enforced atomically on completion.
        """
        if not if_absent and if_match is None:
            return
        try:
            cur: ObjectInfo | None = self.head(key)
        except NotFound:
            cur = None
        if if_absent and cur is not None:
            raise PreconditionFailed("object already exists", path=self._where(key))
        if if_match is not None and (cur is None or cur.etag != if_match):
            raise PreconditionFailed("object is not the expected version", path=self._where(key))

    # -- multipart steps (put_file, and agentfs/streaming.py) ---------

    def mp_create(self, key: str) -> str:
        """Start a multipart upload of ``key``; returns its upload id.  Nothing
        is visible at ``key`` until :meth:`mp_complete`."""
        self.check_key(key)
        return str(self._call("create_multipart_upload", key, Key=self.prefix + key)["UploadId"])

    def mp_part(self, key: str, upload_id: str, number: int, body: BinaryIO) -> dict[str, Any]:
        """Upload part ``number`` (1-based) from ``body`` (see :func:`read_part`);
        returns the part's entry for :meth:`mp_complete`.  Repeating it is harmless."""
        return self._upload_part(key, upload_id, number, body)

    def _upload_part(self, key: str, upload_id: str, number: int, body: BinaryIO) -> dict[str, Any]:
        resp = self._call("upload_part", key, Key=self.prefix + key, UploadId=upload_id,
                          PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def mp_complete(self, key: str, upload_id: str, parts: builtins.list[dict[str, Any]],
                    total: int, *, if_absent: bool = False,
                    if_match: str | None = None) -> ObjectInfo:
        """Make the uploaded parts the object at ``key``, atomically and under
        the condition (PreconditionFailed otherwise; the upload then still
        exists: abort it).  Returns the object's info as later reads see it."""
        cond = self._conditions(key, if_absent, if_match)
        resp = self._conditional("complete_multipart_upload", key, cond,
                                 Key=self.prefix + key, UploadId=upload_id,
                                 MultipartUpload={"Parts": parts})
        etag = _etag(resp)
        # Some S3 servers (rclone serve s3) answer the completion with a
        # multipart-style ETag but report the object under another one: the
        # version we record must be the one later If-Match conditions compare.
        info = self.head(key)
        if info.etag != etag:
            if info.size != total:
                raise PreconditionFailed("object was replaced right after its upload",
                                         path=self._where(key))
            log.debug("%s: completion ETag %s, object ETag %s", self._where(key), etag, info.etag)
        return ObjectInfo(key=key, size=total, etag=info.etag, mtime=info.mtime)

    def mp_abort(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload (its parts are dropped); never raises."""
        self._abort(key, upload_id)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._call("abort_multipart_upload", key, Key=self.prefix + key, UploadId=upload_id)
        except Exception as e:
            log.warning("could not abort multipart upload %s of %s: %s",
                        upload_id, self._where(key), e)

    def _put_multipart(self, key: str, path: str, size: int, cond: dict[str, str],
                       if_absent: bool, if_match: str | None) -> ObjectInfo:
        self._precheck(key, if_absent, if_match)
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        width = max(1, self.max_parallel_parts)
        upload_id = self.mp_create(key)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=width,
                                                     thread_name_prefix="agentfs-s3-part")
        fd = -1
        try:
            fd = os.open(path, os.O_RDONLY)

            def part(number: int, off: int) -> dict[str, Any]:
                # read in the worker: at most `width` parts in memory, one copy each
                body = read_part(fd, off, min(part_size, size - off))
                return self._upload_part(key, upload_id, number, body)

            futures = [pool.submit(part, i + 1, off)
                       for i, off in enumerate(range(0, size, part_size))]
            parts = [f.result() for f in futures]
            info = self.mp_complete(key, upload_id, parts, size, if_absent=if_absent,
                                    if_match=if_match)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            self._abort(key, upload_id)
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        pool.shutdown(wait=True)
        log.debug("uploaded %s in %d parts (%d bytes)", self._where(key), len(parts), size)
        return info

    def copy(self, src: str, dst: str, *, if_match: str | None = None,
             size: int | None = None) -> ObjectInfo:
        self.check_key(src)
        self.check_key(dst)
        if if_match is not None and size is not None and src != dst and size <= self.copy_threshold:
            # The caller knows the version: CopySourceIfMatch checks it, no HEAD first.
            return self._copy_single(src, dst, ObjectInfo(key=src, size=size, etag=if_match, mtime=0.0),
                                     if_match)
        if src == dst:  # S3 refuses a plain self-copy; the result is the object itself
            info = self.head(src)
            if if_match is not None and info.etag != if_match:
                raise PreconditionFailed("source is not the expected version",
                                         path=self._where(src))
            return info
        for attempt in range(3):
            info = self.head(src)
            if if_match is not None and info.etag != if_match:
                raise PreconditionFailed("source is not the expected version",
                                         path=self._where(src))
            try:
                if info.size > self.copy_threshold:
                    return self._copy_multipart(src, dst, info)
                return self._copy_single(src, dst, info, if_match)
            except PreconditionFailed:
                if if_match is not None or attempt == 2:
                    raise
                log.debug("source %s changed during copy; retrying", src)
        raise AssertionError("unreachable")  # pragma: no cover

    def _copy_single(self, src: str, dst: str, info: ObjectInfo,
                     if_match: str | None) -> ObjectInfo:
        kw: dict[str, Any] = {}
        if if_match is not None:
            kw["CopySourceIfMatch"] = if_match
        resp = self._call("copy_object", src, Key=self.prefix + dst,
                          CopySource={"Bucket": self.bucket, "Key": self.prefix + src}, **kw)
        result = resp.get("CopyObjectResult", {})
        etag = _etag(result)
        if etag and etag == info.etag:
            mtime = result["LastModified"].timestamp() if "LastModified" in result \
                else _resp_time(resp)
            return ObjectInfo(key=dst, size=info.size, etag=etag, mtime=mtime)
        return self.head(dst)  # the source changed since our head: ask for the size

    def _copy_multipart(self, src: str, dst: str, info: ObjectInfo) -> ObjectInfo:
        part_size = max(self.copy_part_size, -(-info.size // MAX_PARTS))
        upload_id = self._call("create_multipart_upload", dst,
                               Key=self.prefix + dst)["UploadId"]
        source = {"Bucket": self.bucket, "Key": self.prefix + src}

        def part(number: int, lo: int) -> dict[str, Any]:
            hi = min(lo + part_size, info.size) - 1
            resp = self._call("upload_part_copy", src, Key=self.prefix + dst,
                              UploadId=upload_id, PartNumber=number, CopySource=source,
                              CopySourceRange=f"bytes={lo}-{hi}",
                              CopySourceIfMatch=info.etag)  # every part from one version
            return {"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]}

        try:
            with concurrent.futures.ThreadPoolExecutor(
                    max_workers=max(1, self.max_parallel_parts),
                    thread_name_prefix="agentfs-s3-copy") as pool:
                futures = [pool.submit(part, i + 1, lo)
                           for i, lo in enumerate(range(0, info.size, part_size))]
                parts = [f.result() for f in futures]
            resp = self._call("complete_multipart_upload", dst, Key=self.prefix + dst,
                              UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            self._abort(dst, upload_id)
            raise
        return ObjectInfo(key=dst, size=info.size, etag=_etag(resp), mtime=_resp_time(resp))

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self.check_key(key)
        kw = {"IfMatch": if_match} if if_match is not None else {}
        try:
            self._call("delete_object", key, Key=self.prefix + key, **kw)
        except NotFound:
            pass

    # -- temporary state (unfinished multipart uploads) ----------------

    def _uploads(self) -> builtins.list[tuple[str, str, float]]:
        """(key, upload id, initiated) of every unfinished multipart upload under the prefix."""
        out: list[tuple[str, str, float]] = []
        kw: dict[str, Any] = {"Prefix": self.prefix} if self.prefix else {}
        while True:
            resp = self._call("list_multipart_uploads", "", **kw)
            for u in resp.get("Uploads", ()):
                out.append((u["Key"][len(self.prefix):], u["UploadId"], u["Initiated"].timestamp()))
            if not resp.get("IsTruncated"):
                return out
            kw = {**kw, "KeyMarker": resp["NextKeyMarker"], "UploadIdMarker": resp["NextUploadIdMarker"]}

    def list_temporary(self) -> builtins.list[str]:
        """Unfinished multipart uploads (left by a process killed mid-upload)."""
        return [f"upload:{k}" for k, _, _ in self._uploads()]

    def remove_temporary(self, older_than: float = 0.0) -> int:
        """Abort unfinished multipart uploads started more than ``older_than`` seconds ago.

        The hook of ``agentfs check --repair``; only safe while no process
        uploads to the store, unless ``older_than`` exceeds any upload's time.
        """
        cutoff = time.time() - older_than
        n = 0
        for key, upload_id, initiated in self._uploads():
            if initiated <= cutoff:
                self._abort(key, upload_id)
                n += 1
        return n

    def close(self) -> None:
        """Drop the S3 client (its session is closed by s3fs's finalizer)."""
        self._fs = None
