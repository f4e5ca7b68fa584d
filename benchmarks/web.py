"""Review page timings on a local store: the listing of a large directory and
the preview of a large CSV (the first part of it).

    .venv/bin/python benchmarks/web.py [--files 10000] [--csv-mib 200] [--reps 5] [--keep DIR]

Builds a ``file://`` store in a temporary directory (FILES small files in one
directory of workspace ``bench``, written through the Python API, plus one
CSV of CSV_MIB MiB), then times GET requests through httpx's ASGI transport
under trio against the app of ``agentfs serve`` (the same app and core a
browser reaches; no network in between).  Prints one Markdown table of the
median and max wall time per page.  Each file costs one journal commit to
build, so 10,000 files take a minute or two to set up.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import trio

import agentfs
from agentfs.store import open_store
from agentfs.web import ReviewService, WebSettings, create_app


def build(url: str, files: int, csv_mib: int) -> None:
    with agentfs.open_workspace(url, "bench", agent="bench") as c:
        c.mkdir("many")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # the client is thread-safe
            list(pool.map(lambda i: c.write_bytes(f"many/f{i:05d}.txt", b"x" * 100), range(files)))
        row = b"2026-12-02,agent-7,0.123456,ok,some text in a column\n"
        block = row * ((1 << 20) // len(row) + 1)
        with c.open("big.csv", "wb") as f:
            f.write(b"day,agent,score,status,note\n")
            for _ in range(csv_mib):
                f.write(block[: 1 << 20])


async def measure(app: object, paths: list[str], reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=120) as h:
        for p in paths:
            (await h.get(p)).raise_for_status()  # warm: clients opened, journal read
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                r = await h.get(p)
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
            out[p] = times
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--csv-mib", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", metavar="DIR", help="build the store in DIR and keep it; reuse it when it exists")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentfs-web-bench-") as tmp:
        root = Path(a.keep) if a.keep else Path(tmp)
        url = f"file://{root / 'store'}"
        t0 = time.perf_counter()
        if not (root / "store").exists():
            build(url, a.files, a.csv_mib)
        setup = time.perf_counter() - t0
        store = open_store(url)
        service = ReviewService(store, agent="bench")
        try:
            app = create_app(service, WebSettings(store_url=url))
            res = trio.run(measure, app, ["/w/bench/files/many", "/w/bench/files/big.csv",
                                          "/w/bench/files/"], a.reps)
        finally:
            service.close()
            store.close()
    print(f"setup: {a.files} files + {a.csv_mib} MiB CSV in {setup:.1f} s; {a.reps} timed requests each\n")
    print("| page | median ms | max ms |\n|---|---|---|")
    for p, times in res.items():
        print(f"| `GET {p}` | {statistics.median(times) * 1000:.0f} | {max(times) * 1000:.0f} |")


if __name__ == "__main__":
    main()
