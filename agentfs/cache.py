"""The on-disk cache of one mount: clean block files and dirty working copies.

Local disk is only a cache (the store is the truth): everything here may be
deleted between runs.  Layout under the cache directory::

    blocks/<sha1(key, etag)>   sparse copy of one object version, filled block by block
    dirty/<n>                  working copy of a file being written

Clean block files are evicted least-recently-used when their total exceeds
``max_bytes``; a block file in use by a reader is never evicted.

Concurrency: called only from the filesystem's trio thread; block fetches are
deduplicated (one in flight per block), the store I/O runs in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

__all__ = ["BLOCK_SIZE", "BlockFile", "Cache"]

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
#: Blocks kept in flight ahead of a sequential reader.
#: 32 (was 16), fetched RUN_BLOCKS at a time.
READAHEAD_BLOCKS = 32
#: readahead fetches runs of this many aligned blocks in one ranged GET
#: (4 MiB: a quarter of the requests, and half the client CPU, of 1 MiB GETs).
RUN_BLOCKS = 4
#: Concurrent background run fetches per mount (each is one ranged GET; each
#: holds about two copies of a run in memory while it lands).
READAHEAD_CONCURRENCY = 6


class BlockFile:
    """A sparse local copy of one object version, with the set of blocks present."""

    def __init__(self, path: Path, size: int, *, complete: bool = False) -> None:
        self.path = path
        self.size = size
        self.present: set[int] = set()
        self.inflight: dict[int, trio.Event] = {}
        self.users = 0
        self.last_end = -1
        if complete:  # an existing file holding every byte of the version
            self.fd = os.open(path, os.O_RDWR)
            self.present = set(range(self.nblocks))
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(self.fd, size)

    @property
    def nblocks(self) -> int:
        return (self.size + BLOCK_SIZE - 1) // BLOCK_SIZE

    @property
    def complete(self) -> bool:
        return len(self.present) >= self.nblocks

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


Fetch = Callable[[int, int], Awaitable[bytes]]


class Cache:
    """Clean block files (LRU by bytes) and dirty working copies."""

    def __init__(self, root: Path, max_bytes: int = 2 << 30) -> None:
        self.root = root
        self.max_bytes = max_bytes
        shutil.rmtree(root / "blocks", ignore_errors=True)
        shutil.rmtree(root / "dirty", ignore_errors=True)
        (root / "blocks").mkdir(parents=True, exist_ok=True)
        (root / "dirty").mkdir(parents=True, exist_ok=True)
        self._files: OrderedDict[str, BlockFile] = OrderedDict()
        self._bytes = 0
        self._counter = itertools.count()
        #: --writeback keeps working copies in its crash-safe queue
        #: directory (agentfs/writeback.py), named with the mount's prefix
        self.dirty_dir = root / "dirty"
        self.dirty_prefix = ""
        self._nursery: trio.Nursery | None = None
        self._ra_limit = trio.CapacityLimiter(READAHEAD_CONCURRENCY)

    def start_background(self, nursery: trio.Nursery) -> None:
        """Fetch readahead blocks in ``nursery`` instead of in the reader's
        request: a sequential reader then waits only for the block it needs
        while the next ones stream in (without it, readahead is fetched with
        the needed block and awaited)."""
        self._nursery = nursery

    @staticmethod
    def _name(key: str, etag: str) -> str:
        return hashlib.sha1(f"{key}\0{etag}".encode()).hexdigest()

    def blockfile(self, key: str, etag: str, size: int) -> BlockFile:
        name = self._name(key, etag)
        bf = self._files.get(name)
        if bf is None or bf.size != size or bf.fd < 0:
            if bf is not None and bf.users == 0:
                self._evict_one(name)
            bf = BlockFile(self.root / "blocks" / name, size)
            self._files[name] = bf
        self._files.move_to_end(name)
        return bf

    async def read(self, bf: BlockFile, off: int, size: int, fetch: Fetch) -> bytes:
        """Bytes ``[off, off+size)`` of the object, fetching missing blocks.

        ``fetch(start, end)`` gets a byte range from the store.  A sequential
        reader gets :data:`READAHEAD_BLOCKS` blocks fetched ahead in parallel.
        """
        end = min(off + size, bf.size)
        if off >= end:
            return b""
        first, last = off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        want = list(range(first, last + 1))
        ahead: list[int] = []
        # Sequential if the block before is here (the kernel issues several
        # reads at once, so "starts where the last ended" is not reliable).
        if first == 0 or (first - 1) in bf.present or off == bf.last_end:
            ahead = [b for b in range(last + 1, min(last + 1 + READAHEAD_BLOCKS, bf.nblocks))
                     if b not in bf.present and b not in bf.inflight]
        bf.last_end = end
        if ahead and self._nursery is not None:
            prev = -2
            for b in ahead:  # one task per run (a run starts aligned or after a gap)
                if b % RUN_BLOCKS == 0 or b != prev + 1:
                    self._nursery.start_soon(self._readahead, bf, b, fetch)
                prev = b
        else:
            want += ahead
        bf.users += 1
        try:
            await self._ensure(bf, want, fetch, needed=set(range(first, last + 1)))
            return os.pread(bf.fd, end - off, off)
        finally:
            bf.users -= 1

    async def _readahead(self, bf: BlockFile, b: int, fetch: Fetch) -> None:
        # A failed readahead only leaves the block missing: the reader that
        # needs it fetches it again and gets the error itself.
        bf.users += 1
        try:
            async with self._ra_limit:
                await self._fetch_run(bf, b, fetch)
        except Exception as e:
            log.debug("readahead of block %d failed: %s", b, e)
        finally:
            bf.users -= 1

    async def fill(self, bf: BlockFile, fetch: Fetch) -> None:
        """Fetch every missing block (before a file is modified)."""
        bf.users += 1
        try:
            all_blocks = list(range(bf.nblocks))
            await self._ensure(bf, all_blocks, fetch, needed=set(all_blocks))
        finally:
            bf.users -= 1

    async def _ensure(self, bf: BlockFile, blocks: list[int], fetch: Fetch, needed: set[int]) -> None:
        # Readahead blocks are fetched in the same parallel batch: on a
        # sequential stream the next reads then hit the local copy.
        missing = [b for b in blocks if b not in bf.present]
        if missing:
            async with trio.open_nursery() as nursery:
                for b in missing:
                    nursery.start_soon(self._fetch_block, bf, b, fetch)
        # A needed block whose fetch belonged to another task (a readahead)
        # that failed: fetch it here, so the store's own error reaches the
        # caller (a changed version must surface as PreconditionFailed).
        for b in sorted(needed):
            if b not in bf.present:
                await self._fetch_block(bf, b, fetch)
        if any(b not in bf.present for b in needed):
            raise OSError(5, "block fetch failed")

    async def _fetch_run(self, bf: BlockFile, b: int, fetch: Fetch) -> None:
        """blocks ``b`` up to the end of its aligned run of
        :data:`RUN_BLOCKS` in one ranged GET (stopping at a block present or in
        flight); every block of the run waits on the same fetch."""
        last = min((b // RUN_BLOCKS + 1) * RUN_BLOCKS, bf.nblocks)
        run = []
        for x in range(b, last):
            if x in bf.present or x in bf.inflight:
                break
            run.append(x)
        if len(run) <= 1:
            await self._fetch_block(bf, b, fetch)
            return
        ev = trio.Event()
        for x in run:
            bf.inflight[x] = ev
        try:
            start = run[0] * BLOCK_SIZE
            data = await fetch(start, min((run[-1] + 1) * BLOCK_SIZE, bf.size))
            if bf.fd >= 0:
                os.pwrite(bf.fd, data, start)
                bf.present.update(run)
                self._bytes += len(data)
            del data
        finally:
            for x in run:
                del bf.inflight[x]
            ev.set()
        self._maybe_evict()

    async def _fetch_block(self, bf: BlockFile, b: int, fetch: Fetch) -> None:
        if b in bf.present or b in bf.inflight:
            ev = bf.inflight.get(b)
            if ev is not None:
                await ev.wait()
            return
        ev = bf.inflight[b] = trio.Event()
        try:
            start = b * BLOCK_SIZE
            data = await fetch(start, min(start + BLOCK_SIZE, bf.size))
            if bf.fd >= 0:
                os.pwrite(bf.fd, data, start)
                bf.present.add(b)
                self._bytes += len(data)
        finally:
            del bf.inflight[b]
            ev.set()
        self._maybe_evict()

    def adopt(self, path: Path, key: str, etag: str, size: int) -> None:
        """Make a working copy that now equals version ``etag`` of ``key``
        (just uploaded) the clean cached copy of that version (O(1), a
        rename): reading the file back, or opening it again to append, then
        needs no GET.  A working copy of another size is dropped instead."""
        name = self._name(key, etag)
        try:
            if os.stat(path).st_size != size:
                os.unlink(path)
                return
            old = self._files.get(name)
            if old is not None:
                if old.users > 0:
                    os.unlink(path)
                    return
                self._evict_one(name)
            dst = self.root / "blocks" / name
            os.rename(path, dst)
            bf = BlockFile(dst, size, complete=True)
        except OSError as e:
            log.debug("cache: could not adopt %s: %s", path, e)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        self._files[name] = bf
        self._bytes += len(bf.present) * BLOCK_SIZE
        self._maybe_evict()

    def take(self, bf: BlockFile) -> Path:
        """Remove a complete block file from the clean cache and hand its path
        over as a dirty working copy (O(1), no copy)."""
        dst = self.new_dirty_path()
        if bf.users > 0:
            # A reader is still using it: give the writer a copy instead.
            shutil.copyfile(bf.path, dst)
            return dst
        self._files.pop(bf.path.name, None)
        self._bytes -= len(bf.present) * BLOCK_SIZE
        bf.close()
        os.rename(bf.path, dst)
        return dst

    def new_dirty_path(self) -> Path:
        return self.dirty_dir / f"{self.dirty_prefix}{next(self._counter)}"

    def _evict_one(self, name: str) -> None:
        bf = self._files.pop(name)
        self._bytes -= min(len(bf.present) * BLOCK_SIZE, self._bytes)
        bf.close()
        try:
            os.unlink(bf.path)
        except FileNotFoundError:
            pass

    def _maybe_evict(self) -> None:
        if self._bytes <= self.max_bytes:
            return
        for name in list(self._files):
            if self._bytes <= self.max_bytes:
                break
            if self._files[name].users == 0 and not self._files[name].inflight:
                self._evict_one(name)

    def close(self) -> None:
        for name in list(self._files):
            self._evict_one(name)
