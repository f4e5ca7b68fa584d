#!/usr/bin/env python3
"""Checkpoint creation cost: time and store requests vs files and bytes.

    .venv/bin/python benchmarks/checkpoints.py            # local file:// store, a few minutes
    .venv/bin/python benchmarks/checkpoints.py --quick    # skips the 100,000-file and 1 GiB cases

Workspaces are populated without FUSE, directly in the store, so setup is quick:

- *files* cases (100, 10,000, 100,000 files of 1 KiB): the namespace is written
  as one journal state snapshot (what compaction writes) and the objects are
  written to their natural keys with plain file writes (no fsync);
- *bytes* cases (10 MiB = 10 x 1 MiB, 1 GiB = 16 x 64 MiB): real objects
  written through the store, then one state snapshot with their etags.

Then a client opens the workspace (not timed) and creates checkpoints: the
time of ``checkpoints.create`` (median of --reps, without the 0.15 s
cross-process fence a CLI call waits after its commit) and the number of store
requests one creation makes, counted by a wrapper around the store.
Prints a Markdown table; results are not written anywhere else.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentfs import checkpoints
from agentfs.api import WorkspaceClient
from agentfs.journal import Journal
from agentfs.models import Entry, State
from agentfs.store import open_store

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


class CountingStore:
    """Delegates to a store and counts the calls (one call = one request)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def wrapped(*a: Any, **k: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            r = attr(*a, **k)
            return list(r) if name == "list" else r
        return wrapped


def populate_files(root: Path, ws: str, n: int, size: int = KiB) -> None:
    store = open_store(f"file://{root}")
    body = b"x" * size
    sha = hashlib.sha256(body).hexdigest()
    entries = {"": Entry(kind="d", mode=0o755)}
    per_dir = 1000
    now = time.time_ns()
    for i in range(n):
        d = f"d{i // per_dir:04d}"
        if d not in entries:
            entries[d] = Entry(kind="d", mode=0o755, mtime_ns=now, ctime_ns=now)
            (root / ws / d).mkdir(parents=True, exist_ok=True)
        p = f"{d}/f{i:06d}"
        (root / ws / p).write_bytes(body)
        entries[p] = Entry(kind="f", mode=0o644, size=size, mtime_ns=now, ctime_ns=now,
                           etag=store.head(f"{ws}/{p}").etag, sha256=sha, vseq=1)
    Journal(store, ws).write_state(State(seq=1, entries=entries))


def populate_bytes(root: Path, ws: str, total: int, part: int) -> None:
    store = open_store(f"file://{root}")
    entries = {"": Entry(kind="d", mode=0o755)}
    tmp = root.parent / "src.bin"
    now = time.time_ns()
    for i in range(total // part):
        with open(tmp, "wb") as f:
            f.write(os.urandom(part))
        info = store.put_file(f"{ws}/blob{i:03d}.bin", str(tmp))
        entries[f"blob{i:03d}.bin"] = Entry(kind="f", mode=0o644, size=part, mtime_ns=now, ctime_ns=now,
                                           etag=info.etag, sha256=f"{i:064x}", vseq=1)
    tmp.unlink()
    Journal(store, ws).write_state(State(seq=1, entries=entries))


def measure(root: Path, ws: str, reps: int) -> tuple[float, float, dict[str, int], int]:
    store = CountingStore(open_store(f"file://{root}"))
    c = WorkspaceClient(store, ws, create=False)  # type: ignore[arg-type]
    try:
        times = []
        calls: dict[str, int] = {}
        for i in range(reps):
            store.calls.clear()
            t0 = time.perf_counter()
            c._run(lambda i=i: checkpoints.create(c._w, f"bench-{i}", c.caller, wait_fence=False))
            times.append(time.perf_counter() - t0)
            calls = dict(store.calls)
        # the bytes copied: blobs written by creation (must be none)
        blobs = len(list(store._inner.list(f".agentfs/{ws}/blobs/")))
        return statistics.median(times), max(times), calls, blobs
    finally:
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    cases: list[tuple[str, str, Any]] = [
        ("100 files", "files", 100), ("10,000 files", "files", 10_000),
        ("100,000 files", "files", 100_000),
        ("10 MiB (10 x 1 MiB)", "bytes", (10 * MiB, MiB)), ("1 GiB (16 x 64 MiB)", "bytes", (GiB, 64 * MiB)),
    ]
    if args.quick:
        cases = [c for c in cases if c[0] not in ("100,000 files", "1 GiB (16 x 64 MiB)")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="agentfs-cpbench-") as tmpd:
        for i, (label, kind, arg) in enumerate(cases):
            root = Path(tmpd) / f"store{i}"
            root.mkdir()
            t0 = time.perf_counter()
            if kind == "files":
                populate_files(root, "ws", arg)
            else:
                populate_bytes(root, "ws", *arg)
            setup = time.perf_counter() - t0
            med, worst, calls, blobs = measure(root, "ws", args.reps)
            rows.append((label, setup, med, worst, sum(calls.values()), calls, blobs))
            print(f"{label}: setup {setup:.1f}s, create median {med * 1000:.1f} ms", file=sys.stderr)
    print("| workspace | create, median (ms) | create, max (ms) | store requests per create | by kind "
          "| blobs copied |")
    print("|---|---:|---:|---:|---|---:|")
    for label, _setup, med, worst, n, calls, blobs in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
        print(f"| {label} | {med * 1000:.1f} | {worst * 1000:.1f} | {n} | {kinds} | {blobs} |")


if __name__ == "__main__":
    main()
