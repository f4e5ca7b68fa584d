"""readahead fetches aligned runs of blocks, one ranged request each.

Core test of :class:`agentfs.cache.Cache` (no FUSE): the fetch function reads
from an in-memory object and records every range asked for.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import trio

from agentfs.cache import BLOCK_SIZE, RUN_BLOCKS, Cache

MiB = 1 << 20


def _read_all(tmp_path: Path, data: bytes, io: int, pace: float = 0.0) -> tuple[bytes, list[tuple[int, int]]]:
    ranges: list[tuple[int, int]] = []

    async def fetch(start: int, end: int) -> bytes:
        ranges.append((start, end))
        await trio.sleep(0.001)  # a request takes time: readers overtake readahead
        return data[start:end]

    async def main() -> bytes:
        cache = Cache(tmp_path / "cache")
        out = bytearray()
        async with trio.open_nursery() as nursery:
            cache.start_background(nursery)
            bf = cache.blockfile("ws/f", "etag1", len(data))
            off = 0
            while off < len(data):
                chunk = await cache.read(bf, off, io, fetch)
                assert chunk, off
                out += chunk
                off += len(chunk)
                if pace:
                    await trio.sleep(pace)  # the reader consumes what it read
            nursery.cancel_scope.cancel()
        cache.close()
        return bytes(out)

    return trio.run(main), ranges


def test_sequential_cold_read_fetches_runs(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(40 * MiB + 123)
    # A reader that takes 2 ms per 128 KiB (about the store's pace here): on a
    # loaded machine an unpaced reader overtakes the readahead and fetches single
    # blocks itself, which is right but not what this test counts.
    got, ranges = _read_all(tmp_path, data, 128 * 1024, pace=0.002)
    assert got == data
    fetched = sorted(ranges)
    # every byte fetched once, no overlap
    assert sum(e - s for s, e in fetched) == len(data)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(fetched))
    nblocks = -(-len(data) // BLOCK_SIZE)
    assert len(ranges) <= nblocks // RUN_BLOCKS + 4, f"{len(ranges)} requests for {nblocks} blocks"
    assert max(e - s for s, e in ranges) == RUN_BLOCKS * BLOCK_SIZE


def test_random_reads_fetch_single_blocks(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(16 * MiB)
    ranges: list[tuple[int, int]] = []

    async def fetch(start: int, end: int) -> bytes:
        ranges.append((start, end))
        return data[start:end]

    async def main() -> None:
        cache = Cache(tmp_path / "cache")
        async with trio.open_nursery() as nursery:
            cache.start_background(nursery)
            bf = cache.blockfile("ws/g", "e", len(data))
            for off in (9 * MiB + 5, 3 * MiB, 14 * MiB + 77):
                assert await cache.read(bf, off, 4096, fetch) == data[off:off + 4096]
            nursery.cancel_scope.cancel()
        cache.close()

    trio.run(main)
    # a random reader gets its block only (no readahead run behind it)
    assert sorted(ranges) == [(3 * MiB, 4 * MiB), (9 * MiB, 10 * MiB), (14 * MiB, 15 * MiB)]
