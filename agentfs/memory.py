"""keep the mount daemon's resident memory close to what it really uses.

The daemon moves file data through large short-lived buffers (8 MiB upload
parts, 4 MiB readahead runs) in many threads.  glibc serves an allocation of
that size with ``mmap`` only until the first such block is freed; then its
*dynamic* mmap threshold rises (up to 32 MiB) and later buffers come from the
per-thread arenas, which keep freed memory: the resident set then grows with
every thread that ever held a buffer (measured: 168 MiB peak on the
benchmark's random-write + seq-large workloads, 121 MiB with a fixed
threshold).  :func:`tune_malloc` fixes the threshold at 1 MiB, so large
buffers always go back to the system when freed.

A user's own ``MALLOC_MMAP_THRESHOLD_`` (glibc tunable) wins; on a non-glibc
system this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["MMAP_THRESHOLD", "tune_malloc"]

log = logging.getLogger(__name__)

#: Allocations at least this large are served by mmap (and unmapped when freed).
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc malloc.h


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold for this process; True if it was set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or "GLIBC_TUNABLES" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD, ok)
    return ok
