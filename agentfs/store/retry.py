"""The one layer that retries store requests: jittered exponential backoff and a deadline.

Every store opened by :func:`agentfs.store.open_store` is wrapped in a
:class:`RetryingStore`.  Backends below it make exactly one attempt per
request (S3: botocore ``max_attempts=1``, s3fs ``retries=1``), so retries never
multiply; the only retry left inside a backend is the S3 resumption of a
response *body* that broke mid-stream, which is not a new request.

Policy (:class:`RetryPolicy`): only :class:`~agentfs.errors.StoreUnavailable`
(5xx, throttling, connection reset, timeout) is retried; every other error is
final at once.  The n-th retry waits ``uniform(0, min(cap, base * 2**n))``
("full jitter"); no attempt starts after ``deadline`` seconds from the first,
and the last error is raised then.  So a total outage turns into
``StoreUnavailable`` (EIO) after at most ``deadline`` plus one request timeout.

Ambiguous failures: a timeout or a reset connection may hide a request that
was carried out.  Retrying a *conditional* write after such a failure can
then fail its own condition (``if_absent``: the object now exists; ``if_match``:
the version changed — to ours).  When a retried conditional ``put``/``put_file``
gets ``PreconditionFailed`` after an earlier transient failure, the object is
read back: if it holds exactly our bytes, the write is reported as done (with
the object's current info).  A retried ``delete(if_match=..)`` that finds the
object gone is done as well (deleting a missing key is not an error anyway).

Environment (tests and soak runs only): ``AGENTFS_RETRY="deadline=5,base=0.05,cap=1"``
overrides the default policy of :func:`open_store`.

Concurrency: as thread-safe as the wrapped store; the jitter RNG is guarded.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, BinaryIO, TypeVar

from agentfs.config import settings
from agentfs.errors import InvalidArgument, NotFound, PreconditionFailed, StoreUnavailable
from agentfs.store.base import ObjectInfo, ObjectStore

__all__ = ["ENV_RETRY", "RetryPolicy", "RetryingStore", "unwrap"]

log = logging.getLogger(__name__)

ENV_RETRY = "AGENTFS_RETRY"

T = TypeVar("T")

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry one store request.

    ``deadline``: seconds after the first attempt after which no new attempt
    starts; ``base``/``cap``: backoff of the first retry and the largest one.
    """

    deadline: float = 30.0
    base: float = 0.05
    cap: float = 2.0

    def __post_init__(self) -> None:
        if self.deadline < 0 or self.base < 0 or self.cap < 0:
            raise InvalidArgument("retry policy values must not be negative")

    @classmethod
    def parse(cls, spec: str) -> RetryPolicy:
        """``"deadline=5,base=0.05,cap=1"`` (any subset); InvalidArgument otherwise."""
        known = {f.name for f in fields(cls)}
        kw: dict[str, float] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, value = item.partition("=")
            if not sep or name.strip() not in known:
                raise InvalidArgument(f"invalid {ENV_RETRY} item {item!r} (known: {sorted(known)})")
            try:
                kw[name.strip()] = float(value)
            except ValueError:
                raise InvalidArgument(f"invalid {ENV_RETRY} value {item!r}") from None
        return cls(**kw)

    @classmethod
    def from_env(cls) -> RetryPolicy:
        spec = settings().retry
        return cls.parse(spec) if spec.strip() else cls()


class RetryingStore(ObjectStore):
    """Wraps an :class:`ObjectStore` and owns the retries of every request.

    Attributes the wrapper does not define (backend tunables such as
    ``multipart_threshold``) are read from and written to the wrapped store.
    """

    _OWN = frozenset({"inner", "policy", "url", "_rng", "_rng_lock", "_sleep", "retries"})

    def __init__(self, inner: ObjectStore, policy: RetryPolicy | None = None, *,
                 seed: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.url = inner.url
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._sleep = sleep
        #: Retries made so far (all requests; for tests and the closing numbers).
        self.retries = 0

    def __repr__(self) -> str:
        return f"RetryingStore({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in RetryingStore._OWN:
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in RetryingStore._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def __delattr__(self, name: str) -> None:
        if name in RetryingStore._OWN:
            object.__delattr__(self, name)
        else:
            delattr(self.inner, name)

    # -- the loop --------------------------------------------------------------

    def _backoff(self, n: int) -> float:
        with self._rng_lock:
            return self._rng.uniform(0, min(self.policy.cap, self.policy.base * (2 ** min(n, 30))))

    def _run(self, what: str, key: str, fn: Callable[[], T],
             on_retry: Callable[[], None] | None = None) -> tuple[T, bool]:
        """Call ``fn`` until it does not raise StoreUnavailable or the deadline passes.

        Returns the result and whether an earlier attempt failed (the result
        may then follow an ambiguous failure).
        """
        start = time.monotonic()
        n = 0
        while True:
            try:
                return fn(), n > 0
            except StoreUnavailable as e:
                delay = self._backoff(n)
                elapsed = time.monotonic() - start
                if elapsed + delay > self.policy.deadline:
                    if n:
                        log.warning("store %s: %s %s failed after %d attempts in %.1fs: %s",
                                    self.url, what, key, n + 1, elapsed, e)
                    raise
                n += 1
                self.retries += 1
                log.debug("store %s: %s %s: %s; retry %d in %.3fs", self.url, what, key, e, n, delay)
                self._sleep(delay)
                if on_retry is not None:
                    on_retry()

    # -- reads -----------------------------------------------------------------

    def get(self, key: str, start: int | None = None, end: int | None = None, *,
            if_match: str | None = None) -> bytes:
        return self._run("get", key, lambda: self.inner.get(key, start, end, if_match=if_match))[0]

    def get_to_file(self, key: str, fileobj: BinaryIO, *, if_match: str | None = None) -> ObjectInfo:
        try:
            pos: int | None = fileobj.tell()
        except (OSError, AttributeError, ValueError):
            pos = None

        def rewind() -> None:
            if pos is None:
                raise StoreUnavailable("download broke and its target cannot be rewound", path=key)
            fileobj.seek(pos)
            fileobj.truncate()

        return self._run("get", key, lambda: self.inner.get_to_file(key, fileobj, if_match=if_match),
                         rewind)[0]

    def head(self, key: str) -> ObjectInfo:
        return self._run("head", key, lambda: self.inner.head(key))[0]

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self.check_prefix(prefix)
        return self._list(prefix, start_after)

    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """A listing that resumes after the last key it yielded when a page fails."""
        last = start_after
        start = time.monotonic()
        n = 0
        while True:
            try:
                for info in self.inner.list(prefix, start_after=last):
                    last = info.key
                    yield info
                return
            except StoreUnavailable as e:
                delay = self._backoff(n)
                if time.monotonic() - start + delay > self.policy.deadline:
                    raise
                n += 1
                self.retries += 1
                log.debug("store %s: list %s broke after %r: %s; retry %d", self.url, prefix, last, e, n)
                self._sleep(delay)

    # builtins.list: in this class body ``list`` names the method above
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        return self._run("list", prefix, lambda: self.inner.list_dirs(prefix))[0]

    # -- writes ----------------------------------------------------------------

    def _settle(self, key: str, matches: Callable[[], bool], err: PreconditionFailed) -> ObjectInfo:
        """After a retried conditional write failed its condition: ours, or a real conflict?"""
        try:
            same = self._run("verify", key, matches)[0]
        except NotFound:
            same = False
        if not same:
            raise err
        log.info("store %s: %s: an earlier attempt had succeeded (same bytes stored)", self.url, key)
        return self.head(key)

    def put(self, key: str, data: bytes, *, if_absent: bool = False,
            if_match: str | None = None) -> ObjectInfo:
        return self._put("put", key, lambda: self.inner.put(key, data, if_absent=if_absent, if_match=if_match),
                         lambda: self.inner.get(key) == bytes(data))

    def put_file(self, key: str, path: str, *, if_absent: bool = False,
                 if_match: str | None = None) -> ObjectInfo:
        return self._put("put", key,
                         lambda: self.inner.put_file(key, path, if_absent=if_absent, if_match=if_match),
                         lambda: self._same_as_file(key, path))

    def _put(self, op: str, key: str, call: Callable[[], ObjectInfo], ours: Callable[[], bool]) -> ObjectInfo:
        """A conditional write, retried; a condition failing after a retried
        attempt may be our own earlier attempt that succeeded (see _settle)."""
        retried = False

        def attempt() -> ObjectInfo:
            nonlocal retried
            try:
                return call()
            except StoreUnavailable:
                retried = True
                raise

        try:
            return self._run(op, key, attempt)[0]
        except PreconditionFailed as e:
            if not retried:
                raise
            return self._settle(key, ours, e)

    def _same_as_file(self, key: str, path: str) -> bool:
        size = os.stat(path).st_size
        if self.inner.head(key).size != size:
            return False
        mine, theirs = hashlib.sha256(), hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                mine.update(chunk)
        for lo in range(0, size, 8 * _CHUNK):
            theirs.update(self.inner.get(key, lo, min(size, lo + 8 * _CHUNK)))
        return mine.digest() == theirs.digest()

    def copy(self, src: str, dst: str, *, if_match: str | None = None,
             size: int | None = None) -> ObjectInfo:
        # idempotent: the destination is replaced unconditionally
        return self._run("copy", dst, lambda: self.inner.copy(src, dst, if_match=if_match, size=size))[0]

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        retried = False

        def attempt() -> None:
            nonlocal retried
            try:
                self.inner.delete(key, if_match=if_match)
            except StoreUnavailable:
                retried = True
                raise

        try:
            self._run("delete", key, attempt)
        except PreconditionFailed:
            if not retried:
                raise
            try:
                self.inner.head(key)
            except NotFound:
                return  # gone: an earlier attempt deleted it
            raise

    def close(self) -> None:
        self.inner.close()

    def request(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """one request outside the interface, retried like the others."""
        return self._run(op, key, lambda: self.inner.request(op, key, fn))[0]


def unwrap(store: ObjectStore) -> ObjectStore:
    """The backend under any wrappers (``inner`` chain)."""
    while True:
        inner = getattr(store, "__dict__", {}).get("inner")
        if not isinstance(inner, ObjectStore):
            return store
        store = inner
