"""A deterministic, thread-safe, in-process object store.

``MemoryStore("name")`` instances with the same name share one process-global
bucket, so two objects opened on ``memory://name`` in one process see the same
data (as two mounts of one S3 bucket would).  ``MemoryStore()`` without a name
is private.  Nothing survives the process.

Error contract: as :mod:`agentfs.store.base` -- NotFound for a missing key,
PreconditionFailed for a failed ``if_absent``/``if_match`` (store unchanged),
InvalidArgument for a malformed key.  It never raises StoreUnavailable.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from agentfs.errors import InvalidArgument, NotFound, PreconditionFailed
from agentfs.store.base import ObjectInfo, ObjectStore

__all__ = ["MemoryStore"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024

#: Every version written in this process gets the next number (its etag).
_versions = itertools.count(1)


@dataclass(slots=True)
class _Object:
    data: bytes
    etag: str
    mtime: float

    def info(self, key: str) -> ObjectInfo:
        return ObjectInfo(key=key, size=len(self.data), etag=self.etag, mtime=self.mtime)


@dataclass(slots=True)
class _Bucket:
    lock: threading.Lock = field(default_factory=threading.Lock)
    objects: dict[str, _Object] = field(default_factory=dict)


_registry_lock = threading.Lock()
_registry: dict[str, _Bucket] = {}


def _bucket(name: str) -> _Bucket:
    with _registry_lock:
        b = _registry.get(name)
        if b is None:
            b = _registry[name] = _Bucket()
        return b


def _new_version(data: bytes) -> _Object:
    return _Object(data=data, etag=f"{next(_versions):016x}", mtime=time.time())


class MemoryStore(ObjectStore):
    """Dict-backed :class:`ObjectStore`; see the module docstring for sharing rules."""

    def __init__(self, name: str | None = None) -> None:
        if name is None:
            name = f"private-{uuid.uuid4().hex}"
        if not name or "/" in name:
            raise InvalidArgument("memory store name must be non-empty and contain no '/'",
                                  path=name)
        self.name = name
        self.url = f"memory://{name}"
        self._b = _bucket(name)

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    @classmethod
    def discard(cls, name: str) -> None:
        """Forget the shared bucket ``name`` (tests use it to free memory)."""
        with _registry_lock:
            _registry.pop(name, None)

    # -- reads ---------------------------------------------------------------

    def _obj(self, key: str) -> _Object:
        self.check_key(key)
        with self._b.lock:
            obj = self._b.objects.get(key)
        if obj is None:
            raise NotFound("no such object", path=key)
        return obj

    def get(self, key: str, start: int | None = None, end: int | None = None, *,
            if_match: str | None = None) -> bytes:
        if (start is not None and start < 0) or (end is not None and end < 0):
            raise InvalidArgument("negative byte range", path=key)
        obj = self._obj(key)
        if if_match is not None and obj.etag != if_match:
            raise PreconditionFailed("object is not the expected version", path=key)
        return obj.data[start:end]

    def get_to_file(self, key: str, fileobj: BinaryIO, *, if_match: str | None = None) -> ObjectInfo:
        obj = self._obj(key)
        if if_match is not None and obj.etag != if_match:
            raise PreconditionFailed("object is not the expected version", path=key)
        view = memoryview(obj.data)
        for i in range(0, len(view), _CHUNK):
            fileobj.write(view[i:i + _CHUNK])
        return obj.info(key)

    def head(self, key: str) -> ObjectInfo:
        return self._obj(key).info(key)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self.check_prefix(prefix)
        with self._b.lock:
            items = [(k, o) for k, o in self._b.objects.items()
                     if k.startswith(prefix) and (start_after is None or k > start_after)]
        items.sort(key=lambda kv: kv[0])  # code-point order == UTF-8 byte order (S3's)
        for k, o in items:
            yield o.info(k)

    # builtins.list: in this class body ``list`` names the method above
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        self.check_prefix(prefix, directory=True)
        n = len(prefix)
        with self._b.lock:
            names = {k[n:].split("/", 1)[0] for k in self._b.objects
                     if k.startswith(prefix) and "/" in k[n:]}
        return sorted(names)

    # -- writes --------------------------------------------------------------

    def _install(self, key: str, data: bytes, if_absent: bool, if_match: str | None) -> ObjectInfo:
        if if_absent and if_match is not None:
            raise InvalidArgument("if_absent and if_match are exclusive", path=key)
        new = _new_version(data)
        with self._b.lock:
            old = self._b.objects.get(key)
            if if_absent and old is not None:
                raise PreconditionFailed("object already exists", path=key)
            if if_match is not None and (old is None or old.etag != if_match):
                raise PreconditionFailed("object is not the expected version", path=key)
            self._b.objects[key] = new
        return new.info(key)

    def put(self, key: str, data: bytes, *, if_absent: bool = False,
            if_match: str | None = None) -> ObjectInfo:
        self.check_key(key)
        return self._install(key, bytes(data), if_absent, if_match)

    def put_file(self, key: str, path: str, *, if_absent: bool = False,
                 if_match: str | None = None) -> ObjectInfo:
        self.check_key(key)
        chunks: list[bytes] = []
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                chunks.append(chunk)
        return self._install(key, b"".join(chunks), if_absent, if_match)

    def copy(self, src: str, dst: str, *, if_match: str | None = None,
             size: int | None = None) -> ObjectInfo:
        del size
        self.check_key(src)
        self.check_key(dst)
        with self._b.lock:
            obj = self._b.objects.get(src)
            if obj is None:
                raise NotFound("no such object", path=src)
            if if_match is not None and obj.etag != if_match:
                raise PreconditionFailed("source is not the expected version", path=src)
            new = _new_version(obj.data)
            self._b.objects[dst] = new
        return new.info(dst)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self.check_key(key)
        with self._b.lock:
            obj = self._b.objects.get(key)
            if obj is not None and if_match is not None and obj.etag != if_match:
                raise PreconditionFailed("object is not the expected version", path=key)
            self._b.objects.pop(key, None)
