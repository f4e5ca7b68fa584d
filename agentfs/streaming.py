"""streaming upload of a large file while it is written sequentially.

A file written from offset 0 onwards (``cp``, a download, a build artefact, a
log written in one go) is uploaded part by part as its writer goes: each time
the data written passes the end of the next multipart part, that part is read
back from the local working copy and uploaded in the background.  The flush /
fsync / close that makes the file durable then only uploads the tail and
completes the upload, instead of reading and uploading the whole file.

Scope and rules:

- S3 stores only (a backend with the ``mp_*`` multipart steps of
  :class:`agentfs.store.s3.S3Store`); other stores keep the whole-file upload.
- A stream starts when the first write of an empty working copy starts at
  offset 0, and its first part goes up once :data:`START` bytes are written
  (smaller files keep the single PUT).  It stays alive while every write
  lands at or after the part boundary already uploaded and leaves no hole
  (``next_off <= off <= end``).  Anything else — a write or truncate below
  the uploaded prefix, a hole, a rename (another key at completion), a
  failed part — kills it: the upload is aborted and the flush falls back to
  the whole-file upload (:meth:`ObjectStore.put_file`), so a stream can only
  save work, never change what is stored.
- The conditions are the ones of ``put_file`` and are applied on completion
  only: ``If-None-Match: *`` for a new file, ``If-Match`` for an overwrite
  (PreconditionFailed: the caller keeps a conflict copy).  Until completion
  nothing is visible at the key, so a crash (SIGKILL) at any point leaves the
  previous version intact; the parts of an unfinished upload are removed by
  ``agentfs check --repair`` (``list_temporary``).
- Memory: parts are read from the working copy by the uploading thread, at
  most :data:`WORKERS` parts per mount at once (one copy each,
  :func:`agentfs.store.s3.read_part`).  The SHA-256 of the file (its entry's
  ``sha256``) is computed from the same part buffers, in order.

Concurrency: :func:`wrote`, :func:`truncated` and :func:`discard` run in the
filesystem's trio thread and never block (they only submit work to a thread
pool); :func:`finish` is awaited by the flush holding the file's lock.  The
:class:`Stream` object is shared between the trio thread and the pool's
threads under its own lock.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import threading
import time
import weakref
from typing import Any, Protocol

import trio

from agentfs.errors import AgentFSError, PreconditionFailed, StoreError
from agentfs.store.base import MULTIPART_THRESHOLD, ObjectInfo, ObjectStore
from agentfs.store.retry import unwrap

__all__ = ["PART_SIZE", "START", "WORKERS", "Stream", "discard", "finish", "supported",
           "truncated", "wrote"]

log = logging.getLogger(__name__)

#: Size of every part but the last (S3: at least 5 MiB; at most 10,000 parts).
PART_SIZE = 8 << 20
#: Bytes written sequentially before the first part is uploaded (smaller files: one PUT).
START = MULTIPART_THRESHOLD
#: Parts uploaded at once per store (and so held in memory at once).
WORKERS = 4
_MAX_PARTS = 10_000


class _OpenFile(Protocol):
    """What this module uses of :class:`agentfs.workspace.OpenFile`."""

    node: Any
    fd: int
    size: int
    stream: Stream | None


class _Workspace(Protocol):
    """What this module uses of :class:`agentfs.workspace.Workspace`."""

    store: ObjectStore
    ns: Any

    def key(self, path: str) -> str: ...


def supported(store: ObjectStore) -> bool:
    """Whether ``store`` (under its wrappers) can take a streaming upload."""
    return hasattr(unwrap(store), "mp_complete")


_pools: weakref.WeakKeyDictionary[ObjectStore, tuple[int, concurrent.futures.ThreadPoolExecutor]] = \
    weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def _pool(store: ObjectStore) -> concurrent.futures.ThreadPoolExecutor:
    """The part uploaders of one store (re-created in a forked child)."""
    with _pools_lock:
        entry = _pools.get(store)
        if entry is None or entry[0] != os.getpid():
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS,
                                                         thread_name_prefix="agentfs-stream")
            _pools[store] = entry = (os.getpid(), pool)
        return entry[1]


class Stream:
    """One streaming multipart upload of one file to one key.

    Created by :func:`wrote`; its requests go through ``store.request`` so the
    store's retry (and fault-injection) wrappers apply.  ``dead`` streams
    upload nothing more and are aborted.
    """

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store = store
        self.backend: Any = unwrap(store)
        self.key = key
        #: ours (a dup of the working copy's, which may close before we finish),
        #: taken with the first part: most files never get one
        self.fd = -1
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.end = 0  #: end of the data written so far (no holes)
        self.next_off = 0  #: parts cover [0, next_off)
        self.dead = False
        self.why = ""
        self._lock = threading.Lock()
        self._hashed = threading.Condition(self._lock)
        self._hash_next = 1  #: number of the next part to feed to the SHA-256
        self._sha = hashlib.sha256()
        self._created: concurrent.futures.Future[str] | None = None
        self._parts: list[concurrent.futures.Future[dict[str, Any]]] = []
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether any part was submitted (else there is nothing to complete)."""
        return self._created is not None

    # -- trio thread ---------------------------------------------------------------

    def wrote(self, off: int, n: int, fd: int) -> None:
        if self.dead:
            return
        if off < self.next_off or off > self.end:
            self.kill("write below the uploaded prefix" if off < self.next_off else "write leaves a hole")
            return
        self.end = max(self.end, off + n)
        # a part goes up once data past its end exists (a writer may still
        # rewrite the last bytes it wrote; it rarely goes back a whole part)
        while self.end > self.next_off + PART_SIZE and self.end >= START:
            if len(self._parts) >= _MAX_PARTS - 1:
                self.kill("too many parts")
                return
            if self.fd < 0:
                self.fd = os.dup(fd)
                self.pool = _pool(self.store)
            self._submit(self.next_off, PART_SIZE)
            self.next_off += PART_SIZE

    def truncated(self, size: int) -> None:
        if self.dead:
            return
        if size < self.next_off:
            self.kill("truncated below the uploaded prefix")
        elif size < self.end:
            self.end = size
        elif size > self.end:
            self.kill("truncate leaves a hole")

    def kill(self, why: str, *, wait: bool = False) -> None:
        """Stop uploading and abort the upload: in the background, or before
        returning with ``wait`` (from a worker thread)."""
        if self.dead:
            return
        self.dead, self.why = True, why
        log.debug("stream %s: stopped (%s)", self.key, why)
        with self._hashed:
            self._hashed.notify_all()
        if self._created is None or self.pool is None:
            self._close_fd()
        elif wait:
            self._abort()
        else:
            try:
                self.pool.submit(self._abort)
            except RuntimeError:  # the interpreter is shutting down: no new threads
                self._close_fd()

    def _submit(self, off: int, size: int) -> None:
        assert self.pool is not None
        if self._created is None:
            self._created = self.pool.submit(self._request, "put", lambda: self.backend.mp_create(self.key))
        number = len(self._parts) + 1
        self._parts.append(self.pool.submit(self._part, number, off, size))

    # -- pool threads --------------------------------------------------------------

    def _request(self, op: str, fn: Any) -> Any:
        return self.store.request(op, self.key, fn)

    def _part(self, number: int, off: int, size: int) -> dict[str, Any]:
        from agentfs.store.s3 import read_part

        if self.dead:
            raise StoreError(f"stream stopped ({self.why})")
        body = read_part(self.fd, off, size)
        with self._hashed:  # the file's SHA-256 is fed the parts in order
            while self._hash_next != number and not self.dead:
                self._hashed.wait()
            if self.dead:
                raise StoreError(f"stream stopped ({self.why})")
            with body.getbuffer() as view:
                self._sha.update(view)
            self._hash_next += 1
            self._hashed.notify_all()
        assert self._created is not None
        upload_id = self._created.result()
        first = [body]

        def attempt() -> dict[str, Any]:
            # a retried attempt reads the part again (aiohttp closes a sent body)
            b = first.pop() if first else read_part(self.fd, off, size)
            if self.dead:
                raise StoreError(f"stream stopped ({self.why})")
            return dict(self.backend.mp_part(self.key, upload_id, number, b))

        return dict(self._request("put", attempt))

    def _wait_parts(self) -> None:
        for f in self._parts:
            try:
                f.exception()
            except concurrent.futures.CancelledError:
                pass

    def _abort(self) -> None:
        """After the running parts: abort the upload (nothing becomes visible)."""
        try:
            self._wait_parts()
            if self._created is not None:
                try:
                    upload_id = self._created.result()
                except Exception:
                    return  # never created
                self.backend.mp_abort(self.key, upload_id)
        finally:
            self._close_fd()

    def _close_fd(self) -> None:
        with self._lock:
            if not self._closed and self.fd >= 0:
                os.close(self.fd)
            self._closed = True

    def complete(self, size: int, cond: dict[str, Any]) -> tuple[ObjectInfo, str] | None:
        """Upload the tail ``[next_off, size)`` and complete under ``cond``.

        Returns (info, sha256 hex), or None after aborting (the caller uploads
        the whole file instead).  PreconditionFailed (the condition failed)
        propagates after the abort.  Runs in a worker thread.
        """
        try:
            if self.dead or size < self.next_off or self._created is None:
                self.kill("not usable", wait=True)
                return None
            off = self.next_off
            while off < size:  # the tail (at most one part unless writes raced this flush)
                n = min(PART_SIZE, size - off)
                self._submit(off, n)
                off += n
            self.next_off = size
            t0 = time.monotonic()
            backlog = sum(not f.done() for f in self._parts)
            parts = [f.result() for f in self._parts]
            t1 = time.monotonic()
            with self._lock:
                sha = self._sha.hexdigest()
            upload_id = self._created.result()
            calls = 0

            def attempt() -> ObjectInfo:
                nonlocal calls
                calls += 1
                return self.backend.mp_complete(self.key, upload_id, parts, size, **cond)  # type: ignore[no-any-return]

            try:
                info: ObjectInfo = self._request("put", attempt)
            except (PreconditionFailed, StoreError):
                if calls > 1 and self._ours(size, sha):
                    # a completion whose answer was lost, then retried: it did happen
                    log.info("stream %s: an earlier completion had succeeded", self.key)
                    return self.store.head(self.key), sha
                raise
            self.dead, self.why = True, "completed"
            self._close_fd()
            log.debug("stream %s: completed, %d parts, %d bytes; at flush %d parts were not "
                      "up yet (waited %.3fs), completion %.3fs", self.key, len(parts), size,
                      backlog, t1 - t0, time.monotonic() - t1)
            return info, sha
        except PreconditionFailed:
            self.kill("condition failed", wait=True)
            raise
        except (AgentFSError, OSError) as e:
            log.info("stream %s: falling back to a whole-file upload (%s)", self.key, e)
            self.kill(f"failed: {e}", wait=True)
            return None
        except BaseException:
            self.kill("interrupted", wait=True)
            raise

    def _ours(self, size: int, sha: str) -> bool:
        """Whether the object at the key holds exactly our bytes (after an
        ambiguous failure of a completion)."""
        try:
            if self.store.head(self.key).size != size:
                return False
            h = hashlib.sha256()
            for lo in range(0, size, PART_SIZE):
                h.update(self.store.get(self.key, lo, min(size, lo + PART_SIZE)))
            return h.hexdigest() == sha
        except AgentFSError:
            return False


# -- hooks called by agentfs/workspace/ ------------------------------------------


def wrote(ws: _Workspace, of: _OpenFile, off: int, n: int) -> None:
    """After ``n`` bytes were written at ``off`` to ``of``'s working copy in
    workspace ``ws``: start, feed or stop the file's stream (cheap: called for
    every write)."""
    st = of.stream
    if st is None:
        # only a file written from offset 0 into an empty working copy
        if off != 0 or of.size != n or n == 0 or not supported(ws.store):
            return
        path = ws.ns.path_of(of.node)
        if path is None:
            return
        st = of.stream = Stream(ws.store, ws.key(path))
    st.wrote(off, n, of.fd)


def truncated(of: _OpenFile, size: int) -> None:
    """After ``of`` was truncated to ``size``; to 0 forgets the stream (a new one may start)."""
    st = of.stream
    if st is None:
        return
    st.truncated(size)
    if size == 0:
        st.kill("truncated to 0")
        of.stream = None


def discard(of: _OpenFile) -> None:
    """The file is closed or forgotten without a use for its stream: abort it."""
    st, of.stream = of.stream, None
    if st is not None:
        st.kill("discarded")


async def finish(of: _OpenFile, key: str, size: int, cond: dict[str, Any],
                 limiter: trio.CapacityLimiter) -> tuple[ObjectInfo, str] | None:
    """Complete ``of``'s stream as the upload of ``[0, size)`` to ``key`` under
    ``cond``: (info, sha256), or None when there is no usable stream (the
    caller uploads the whole file).  The stream is used up either way."""
    st, of.stream = of.stream, None
    if st is None:
        return None
    if st.dead or st.key != key or not st.started:
        st.kill("not usable" if st.key == key else "renamed")
        return None
    return await trio.to_thread.run_sync(st.complete, size, cond, limiter=limiter)
