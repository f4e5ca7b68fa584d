"""A fault-injecting ObjectStore wrapper, for tests and soak runs only.

:class:`FaultyStore` sits *under* the :class:`~agentfs.store.retry.RetryingStore`
(which owns retries) and makes the wrapped store misbehave the way an S3
endpoint does:

- transient errors at ``rate`` (a fraction of requests), raised as the store
  layer's transient class :class:`~agentfs.errors.StoreUnavailable` with the
  failure it models in the message: ``500 InternalError``, ``503 SlowDown``
  (throttling), ``connection reset``, ``timeout``.  A fraction ``after`` of
  the resets and timeouts happen *after* the request was carried out (the
  response was lost), the ambiguous case the retry layer must settle;
- latency spikes: with probability ``spike`` a request first sleeps
  ``latency`` seconds;
- a total outage: every request fails while ``outage`` is set, or while the
  file named by ``outage_file`` exists (so a test can switch the outage of a
  mount running in another process).

Every decision comes from one seeded :class:`random.Random`, so a run is
reproducible for a given seed and request order.  :attr:`FaultyStore.stats`
counts requests and injected faults.

Selecting fault mode for a real mount: the environment variable
``AGENTFS_FAULTS`` (read by :func:`agentfs.store.open_store`), e.g.
``AGENTFS_FAULTS="seed=1,rate=0.05,spike=0.01,latency=0.2,after=0.5,outage_file=/tmp/x"``;
``ops=delete+copy`` limits the errors and spikes to those operations.
Unset (the default) means no fault injection at all.

Concurrency: thread-safe (the RNG and counters are guarded by a lock; the
wrapped store's own guarantees apply to the requests themselves).
"""

from __future__ import annotations

import builtins
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, BinaryIO, TypeVar

from agentfs.config import settings
from agentfs.errors import InvalidArgument, StoreUnavailable
from agentfs.store.base import ObjectInfo, ObjectStore

__all__ = ["ENV_FAULTS", "FAULT_KINDS", "FaultConfig", "FaultyStore"]

log = logging.getLogger(__name__)

ENV_FAULTS = "AGENTFS_FAULTS"

#: The transient failures injected, as (kind, message).
FAULT_KINDS: tuple[tuple[str, str], ...] = (
    ("500", "500 InternalError: We encountered an internal error. Please try again."),
    ("503", "503 SlowDown: Please reduce your request rate."),
    ("reset", "store unreachable (ConnectionResetError: connection reset by peer)"),
    ("timeout", "store unreachable (ReadTimeoutError: read timeout)"),
)

T = TypeVar("T")


@dataclass(frozen=True)
class FaultConfig:
    """What to inject; see the module docstring."""

    seed: int = 0
    rate: float = 0.0
    spike: float = 0.0
    latency: float = 0.0
    after: float = 0.5
    outage_file: str = ""
    #: only these operations ("+"-separated, e.g. "delete+copy"); empty: all
    ops: str = ""

    def __post_init__(self) -> None:
        for name in ("rate", "spike", "after"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidArgument(f"{ENV_FAULTS}: {name} must be within [0, 1]")
        if self.latency < 0:
            raise InvalidArgument(f"{ENV_FAULTS}: latency must not be negative")

    @classmethod
    def parse(cls, spec: str) -> FaultConfig:
        """``"seed=1,rate=0.05,..."``; InvalidArgument for an unknown or bad item."""
        types = {f.name: f.type for f in fields(cls)}
        kw: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in types:
                raise InvalidArgument(f"invalid {ENV_FAULTS} item {item!r} (known: {sorted(types)})")
            try:
                kw[name] = (int(value) if name == "seed" else
                            value.strip() if name in ("outage_file", "ops") else float(value))
            except ValueError:
                raise InvalidArgument(f"invalid {ENV_FAULTS} value {item!r}") from None
        return cls(**kw)

    @classmethod
    def from_env(cls) -> FaultConfig | None:
        spec = settings().faults
        return cls.parse(spec) if spec.strip() else None


class FaultyStore(ObjectStore):
    """Wraps an :class:`ObjectStore`; injects faults per :class:`FaultConfig`.

    ``outage`` can be switched at run time (``store.outage = True``).
    """

    def __init__(self, inner: ObjectStore, config: FaultConfig | None = None) -> None:
        self.inner = inner
        self.config = config or FaultConfig()
        self.url = inner.url
        self.outage = False
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        #: Requests seen and faults injected, by kind ("requests", "500", ..., "outage", "spike").
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r}, {self.config!r})"

    _OWN = frozenset({"inner", "config", "url", "outage", "_rng", "_lock", "stats"})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in FaultyStore._OWN:
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in FaultyStore._OWN:
            object.__setattr__(self, name, value)
        else:  # backend tunables
            setattr(self.inner, name, value)

    def __delattr__(self, name: str) -> None:
        if name in FaultyStore._OWN:
            object.__delattr__(self, name)
        else:
            delattr(self.inner, name)

    def _in_outage(self) -> bool:
        return self.outage or bool(self.config.outage_file and os.path.exists(self.config.outage_file))

    def _decide(self) -> tuple[bool, tuple[str, str] | None, bool]:
        """(spike?, fault kind or None, after the request?) for one request."""
        c = self.config
        with self._lock:
            self.stats["requests"] += 1
            spike = c.spike > 0 and self._rng.random() < c.spike
            fault = FAULT_KINDS[self._rng.randrange(len(FAULT_KINDS))] \
                if c.rate > 0 and self._rng.random() < c.rate else None
            after = fault is not None and fault[0] in ("reset", "timeout") and self._rng.random() < c.after
            if spike:
                self.stats["spike"] += 1
            if fault is not None:
                self.stats[fault[0]] += 1
                if after:
                    self.stats["after"] += 1
        return spike, fault, after

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        if self._in_outage():
            with self._lock:
                self.stats["requests"] += 1
                self.stats["outage"] += 1
            raise StoreUnavailable(f"injected fault: {op} failed: store unreachable (outage)",
                                   path=key)
        if self.config.ops and op not in self.config.ops.split("+"):
            with self._lock:
                self.stats["requests"] += 1
            return fn()
        spike, fault, after = self._decide()
        if spike:
            time.sleep(self.config.latency)
        if fault is not None and not after:
            raise StoreUnavailable(f"injected fault: {op} failed: {fault[1]}", path=key)
        result = fn()
        if fault is not None:  # carried out, but the caller never hears of it
            raise StoreUnavailable(f"injected fault: {op} failed after the request: {fault[1]}",
                                   path=key)
        return result

    # -- the interface ---------------------------------------------------------

    def get(self, key: str, start: int | None = None, end: int | None = None, *,
            if_match: str | None = None) -> bytes:
        return self._call("get", key, lambda: self.inner.get(key, start, end, if_match=if_match))

    def get_to_file(self, key: str, fileobj: BinaryIO, *, if_match: str | None = None) -> ObjectInfo:
        return self._call("get", key, lambda: self.inner.get_to_file(key, fileobj, if_match=if_match))

    def head(self, key: str) -> ObjectInfo:
        return self._call("head", key, lambda: self.inner.head(key))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # one fault decision per listing, taken before the first page
        return iter(self._call("list", prefix,
                               lambda: list(self.inner.list(prefix, start_after=start_after))))

    # builtins.list: in this class body ``list`` names the method above
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        return self._call("list", prefix, lambda: self.inner.list_dirs(prefix))

    def put(self, key: str, data: bytes, *, if_absent: bool = False,
            if_match: str | None = None) -> ObjectInfo:
        return self._call("put", key,
                          lambda: self.inner.put(key, data, if_absent=if_absent, if_match=if_match))

    def put_file(self, key: str, path: str, *, if_absent: bool = False,
                 if_match: str | None = None) -> ObjectInfo:
        return self._call("put", key,
                          lambda: self.inner.put_file(key, path, if_absent=if_absent, if_match=if_match))

    def copy(self, src: str, dst: str, *, if_match: str | None = None,
             size: int | None = None) -> ObjectInfo:
        return self._call("copy", dst, lambda: self.inner.copy(src, dst, if_match=if_match, size=size))

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._call("delete", key, lambda: self.inner.delete(key, if_match=if_match))

    def close(self) -> None:
        self.inner.close()

    def request(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """one request outside the interface, faults injected like the others."""
        return self._call(op, key, lambda: self.inner.request(op, key, fn))
