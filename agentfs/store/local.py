"""An object store over a local directory (the embedded default store).

Object ``a/b.txt`` is the file ``<root>/a/b.txt``, byte for byte.  agentfs's own
scratch space is ``<root>/.agentfs-tmp/`` (same filesystem), which listings
never show and keys may not name.

Atomicity and durability:

- every write goes to a fresh temp file in ``.agentfs-tmp/``, is fsynced, and
  is moved into place with ``rename`` (or ``link`` for ``if_absent``); the
  parent directory is fsynced before the call returns, so readers never see
  half a file and an acknowledged write survives a crash;
- ``if_absent`` is ``link(tmp, final)``, which fails with EEXIST atomically;
- every mutation of a key's final path (rename, link, unlink) happens under an
  exclusive ``flock`` on one of :data:`LOCK_STRIPES` lock files chosen by a
  stable hash of the key, so ``if_match`` (check etag, then rename) is atomic
  against other threads *and* other processes using this store;
- each write creates a new inode and stamps a nanosecond mtime, so the etag
  ``f"{ino:x}-{mtime_ns:x}-{size:x}"`` changes on every replace.

``copy`` hard-links when it can (O(1), as the design's copy-on-write asks).
Caveat: a tool that rewrites a store file *in place* (not via rename) changes
every hard link of it; agentfs itself never writes in place.

Error contract: as :mod:`agentfs.store.base`.  A key that clashes with the
directory tree (a file where a directory is needed, or the reverse) raises
StoreError; other OS errors raise StoreError with a one-line message.
It never raises StoreUnavailable.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from agentfs.errors import InvalidArgument, NotFound, PreconditionFailed, StoreError
from agentfs.store.base import ObjectInfo, ObjectStore

__all__ = ["LOCK_STRIPES", "TMP_DIR", "LocalStore"]

log = logging.getLogger(__name__)

#: Name of the scratch directory under the store root.
TMP_DIR = ".agentfs-tmp"
#: Number of lock files key mutations are striped over.
LOCK_STRIPES = 64
#: Temp files older than this (seconds) are leftovers of a dead process.
_STALE_TMP_AGE = 24 * 3600
_CHUNK = 1024 * 1024
#: How often a rename/link is retried when a concurrent delete removed the
#: (empty) parent directory between our mkdir and the rename.
_PARENT_RETRIES = 20


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key=key, size=st.st_size, etag=_etag(st), mtime=st.st_mtime_ns / 1e9)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:  # the directory vanished (concurrent delete): nothing to sync
        log.debug("fsync of directory %s skipped: %s", path, e)
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class LocalStore(ObjectStore):
    """:class:`ObjectStore` over the directory ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        root = os.fspath(root)
        if not os.path.isabs(root):
            raise InvalidArgument("local store root must be an absolute path", path=root)
        try:
            if create:
                os.makedirs(root, exist_ok=True)
            if not os.path.isdir(root):
                raise NotFound("local store root is not a directory", path=root)
            self.root = os.path.realpath(root)
            self._tmp = os.path.join(self.root, TMP_DIR)
            self._locks = os.path.join(self._tmp, "locks")
            os.makedirs(self._locks, exist_ok=True)
        except OSError as e:
            if isinstance(e, StoreError | NotFound):
                raise
            raise StoreError(f"cannot open local store: {e.strerror or e}", path=root) from e
        self.url = f"file://{self.root}"
        self._remove_stale_tmp()

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    # -- paths, locks, temp files ---------------------------------------------

    def _path(self, key: str) -> str:
        self.check_key(key)
        if key == TMP_DIR or key.startswith(TMP_DIR + "/"):
            raise InvalidArgument(f"keys under {TMP_DIR}/ are reserved", path=key)
        return os.path.join(self.root, key)

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """Exclusive lock for mutating ``key``'s final path (threads and processes).

        A fresh open file description per acquisition: flock locks belong to
        the description, so two threads (or a forked child) never share one.
        """
        stripe = zlib.crc32(key.encode("utf-8", "surrogateescape")) % LOCK_STRIPES
        path = os.path.join(self._locks, f"{stripe:02x}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # someone removed .agentfs-tmp: recreate it
            os.makedirs(self._locks, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last fd of the description releases the lock

    def _tmp_name(self) -> str:
        return os.path.join(self._tmp, f"{uuid.uuid4().hex}.tmp")

    def _write_tmp(self, fill: Callable[[BinaryIO], object]) -> tuple[str, os.stat_result]:
        """Create a temp file, let ``fill`` write it, stamp, fsync; return (path, stat)."""
        tmp = self._tmp_name()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            os.makedirs(self._locks, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                fill(f)
            # A fine-grained mtime keeps the etag unique even if an inode number
            # is reused within one coarse kernel clock tick.
            now = time.time_ns()
            os.utime(fd, ns=(now, now))
            os.fsync(fd)
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            self._unlink_quiet(tmp)
            raise
        os.close(fd)
        return tmp, st

    @staticmethod
    def _unlink_quiet(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove temp file %s: %s", path, e)

    def list_temporary(self) -> list[str]:
        """Temp files in ``.agentfs-tmp/`` (left by a process killed mid-write)."""
        try:
            with os.scandir(self._tmp) as it:
                return sorted(f"{TMP_DIR}/{e.name}" for e in it if e.name.endswith(".tmp"))
        except OSError:
            return []

    def remove_temporary(self, older_than: float = 0.0) -> int:
        """Remove temp files of ``.agentfs-tmp/`` older than ``older_than`` seconds.

        The hook of ``agentfs check --repair`` (temp files are not
        keys, so ``delete`` refuses them).  Only safe while no process writes
        to the store, except with an ``older_than`` beyond any upload's time.
        Returns how many were removed.
        """
        return self._remove_stale_tmp(older_than)

    def _remove_stale_tmp(self, age: float = _STALE_TMP_AGE) -> int:
        cutoff = time.time() - age
        removed = 0
        try:
            with os.scandir(self._tmp) as it:
                for e in it:
                    if e.name.endswith(".tmp") and e.is_file(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            if e.stat(follow_symlinks=False).st_mtime <= cutoff:
                                log.info("removing stale temp file %s", e.path)
                                os.unlink(e.path)
                                removed += 1
        except OSError as e:
            log.debug("stale temp scan of %s failed: %s", self._tmp, e)
        return removed

    def _makedirs(self, parent: str) -> None:
        """Create ``parent`` and missing ancestors, fsyncing each new entry's directory."""
        missing: list[str] = []
        d = parent
        while d != self.root and not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if os.path.isdir(d):
                    continue  # a concurrent writer made it
                if os.path.lexists(d):
                    raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", d) from None
                raise FileNotFoundError(errno.ENOENT, "directory vanished", d) from None
            _fsync_dir(os.path.dirname(d))

    def _oserror(self, e: OSError, key: str, what: str) -> StoreError:
        if e.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
            return StoreError(f"{what}: key clashes with the directory tree in {self.url}",
                              path=key)
        return StoreError(f"{what} in {self.url} failed: {e.strerror or e}", path=key)

    def _install(self, tmp: str, key: str, final: str, *, if_absent: bool = False,
                 if_match: str | None = None) -> None:
        """Move the finished temp file ``tmp`` to ``final`` under the key's lock."""
        parent = os.path.dirname(final)
        with self._key_lock(key):
            for attempt in range(_PARENT_RETRIES):
                try:
                    self._makedirs(parent)
                except FileNotFoundError:
                    continue  # a concurrent delete pruned an ancestor: again
                try:
                    if if_absent:
                        os.link(tmp, final)  # atomic create-if-absent
                    else:
                        if if_match is not None:
                            try:
                                cur = os.stat(final, follow_symlinks=False)
                            except (FileNotFoundError, NotADirectoryError):
                                raise PreconditionFailed(
                                    "object does not exist (if_match)", path=key) from None
                            if not stat.S_ISREG(cur.st_mode) or _etag(cur) != if_match:
                                raise PreconditionFailed(
                                    "object is not the expected version", path=key)
                        os.rename(tmp, final)
                    break
                except FileExistsError:
                    if os.path.isdir(final):
                        raise StoreError("key names a directory", path=key) from None
                    raise PreconditionFailed("object already exists", path=key) from None
                except FileNotFoundError:
                    # our parent directory was removed by a concurrent delete
                    log.debug("parent of %s vanished, retry %d", key, attempt)
                    continue
            else:
                raise StoreError("parent directory keeps vanishing", path=key)
        _fsync_dir(parent)

    # -- reads ---------------------------------------------------------------

    def _open(self, key: str) -> tuple[BinaryIO, os.stat_result]:
        path = self._path(key)
        try:
            # O_NOFOLLOW: a symlink is not an object (list() does not show them either)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound("no such object", path=key) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise NotFound("no such object (a symlink)", path=key) from None
            raise self._oserror(e, key, "open") from e
        f = os.fdopen(fd, "rb")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            f.close()
            raise NotFound("no such object", path=key)
        return f, st

    def get(self, key: str, start: int | None = None, end: int | None = None, *,
            if_match: str | None = None) -> bytes:
        if (start is not None and start < 0) or (end is not None and end < 0):
            raise InvalidArgument("negative byte range", path=key)
        f, st = self._open(key)  # the open file pins this version
        with f:
            if if_match is not None and _etag(st) != if_match:
                raise PreconditionFailed("object is not the expected version", path=key)
            lo = start or 0
            hi = st.st_size if end is None else min(end, st.st_size)
            if hi <= lo:
                return b""
            f.seek(lo)
            return f.read(hi - lo)

    def get_to_file(self, key: str, fileobj: BinaryIO, *, if_match: str | None = None) -> ObjectInfo:
        f, st = self._open(key)  # the open file pins this version: writers never write in place
        with f:
            if if_match is not None and _etag(st) != if_match:
                raise PreconditionFailed("object is not the expected version", path=key)
            while chunk := f.read(_CHUNK):
                fileobj.write(chunk)
        return _info(key, st)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound("no such object", path=key) from None
        except OSError as e:
            raise self._oserror(e, key, "stat") from e
        if not stat.S_ISREG(st.st_mode):
            raise NotFound("no such object", path=key)
        return _info(key, st)

    def _entries(self, rel_dir: str) -> list[tuple[str, os.DirEntry[str], bool]]:
        """Entries of directory ``rel_dir`` ("" or ending in "/") in key order.

        Sort key is the name, plus "/" for directories, which makes a
        depth-first walk produce S3's (code-point) key order.
        """
        try:
            with os.scandir(os.path.join(self.root, rel_dir) if rel_dir else self.root) as it:
                raw = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for e in raw:
            if not rel_dir and e.name == TMP_DIR:
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            out.append((rel_dir + e.name + ("/" if is_dir else ""), e, is_dir))
        out.sort(key=lambda t: t[0])
        return out

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        self.check_prefix(prefix)
        start_dir = prefix[: prefix.rfind("/") + 1]
        return self._walk(start_dir, prefix, start_after)

    def _walk(self, rel_dir: str, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        for name, entry, is_dir in self._entries(rel_dir):
            if is_dir:
                # descend only if the subtree can hold a key matching prefix...
                if not (name.startswith(prefix) or prefix.startswith(name)):
                    continue
                # ...and a key > start_after (every key in it starts with `name`)
                if start_after is not None and name <= start_after and \
                        not start_after.startswith(name):
                    continue
                yield from self._walk(name, prefix, start_after)
                continue
            if not name.startswith(prefix) or (start_after is not None and name <= start_after):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:  # deleted while we walk
                continue
            if stat.S_ISREG(st.st_mode):
                yield _info(name, st)

    def _has_file(self, rel_dir: str) -> bool:
        """Whether the subtree ``rel_dir`` holds at least one object (short-circuits)."""
        for name, entry, is_dir in self._entries(rel_dir):
            if is_dir:
                if self._has_file(name):
                    return True
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    return True
        return False

    # builtins.list: in this class body ``list`` names the method above
    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        self.check_prefix(prefix, directory=True)
        # like S3 common prefixes: only "directories" that contain an object
        return [entry.name for name, entry, is_dir in self._entries(prefix)
                if is_dir and self._has_file(name)]

    # -- writes --------------------------------------------------------------

    @staticmethod
    def _check_conditions(key: str, if_absent: bool, if_match: str | None) -> None:
        if if_absent and if_match is not None:
            raise InvalidArgument("if_absent and if_match are exclusive", path=key)

    def put(self, key: str, data: bytes, *, if_absent: bool = False,
            if_match: str | None = None) -> ObjectInfo:
        final = self._path(key)
        self._check_conditions(key, if_absent, if_match)
        return self._store(key, final, lambda f: f.write(data), if_absent, if_match)

    def put_file(self, key: str, path: str, *, if_absent: bool = False,
                 if_match: str | None = None) -> ObjectInfo:
        final = self._path(key)
        self._check_conditions(key, if_absent, if_match)

        def fill(out: BinaryIO) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)

        return self._store(key, final, fill, if_absent, if_match)

    def _store(self, key: str, final: str, fill: Callable[[BinaryIO], object],
               if_absent: bool, if_match: str | None) -> ObjectInfo:
        try:
            tmp, st = self._write_tmp(fill)
        except OSError as e:
            raise self._oserror(e, key, "write") from e
        try:
            self._install(tmp, key, final, if_absent=if_absent, if_match=if_match)
        except StoreError:
            raise
        except OSError as e:
            raise self._oserror(e, key, "write") from e
        finally:
            self._unlink_quiet(tmp)  # after link(), or after a failure
        return _info(key, st)

    def copy(self, src: str, dst: str, *, if_match: str | None = None,
             size: int | None = None) -> ObjectInfo:
        del size  # a stat is as cheap as the hint
        src_path = self._path(src)
        dst_path = self._path(dst)
        tmp = self._tmp_name()
        try:
            try:
                with self._key_lock(src):
                    try:
                        st = os.stat(src_path, follow_symlinks=False)
                    except (FileNotFoundError, NotADirectoryError):
                        raise NotFound("no such object", path=src) from None
                    if not stat.S_ISREG(st.st_mode):
                        raise NotFound("no such object", path=src)
                    if if_match is not None and _etag(st) != if_match:
                        raise PreconditionFailed("source is not the expected version", path=src)
                    try:
                        os.link(src_path, tmp)
                        linked = True
                    except OSError as e:
                        log.debug("hard link %s failed (%s); copying bytes", src, e)
                        linked = False
                        pinned, _ = self._open(src)
                if linked:
                    st = os.stat(tmp)
                else:
                    with pinned:
                        pst = os.fstat(pinned.fileno())
                        if if_match is not None and _etag(pst) != if_match:
                            raise PreconditionFailed("source is not the expected version",
                                                     path=src)

                        def fill(out: BinaryIO) -> None:
                            while chunk := pinned.read(_CHUNK):
                                out.write(chunk)

                        self._unlink_quiet(tmp)
                        tmp, st = self._write_tmp(fill)
                self._install(tmp, dst, dst_path)
            except (StoreError, NotFound):
                raise
            except OSError as e:
                raise self._oserror(e, dst, "copy") from e
        finally:
            self._unlink_quiet(tmp)
        return _info(dst, st)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        parent = os.path.dirname(path)
        with self._key_lock(key):
            try:
                current = _etag(os.stat(path, follow_symlinks=False)) if if_match is not None else None
            except (FileNotFoundError, NotADirectoryError):
                return
            if current is not None and current != if_match:
                raise PreconditionFailed("object is not the expected version", path=key)
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return
            except OSError as e:
                if e.errno == errno.EPERM and os.path.isdir(path):
                    return  # a directory is not an object
                raise self._oserror(e, key, "delete") from e
        try:
            _fsync_dir(parent)
        except OSError as e:
            raise self._oserror(e, key, "delete") from e
        # keep the tree clean: remove now-empty parents (best effort, racy by design:
        # a concurrent put recreates what it needs and retries its rename)
        d = parent
        while d != self.root and d.startswith(self.root + os.sep):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)
