"""Tool-call latency of ``agentfs mcp`` over stdio, beside the same operations
through the Python API in-process (the floor the MCP layer adds to).

    .venv/bin/python benchmarks/mcp_latency.py                      # local file:// store in a temp dir
    .venv/bin/python benchmarks/mcp_latency.py --store s3://bucket  # any store (credentials from the environment)
    .venv/bin/python benchmarks/mcp_latency.py -n 200 --entries 1000 --json out.json

(Not `mcp.py`: a script of that name would shadow the SDK package.)

Workloads (each ``-n`` calls, after 5 warm-up calls): read a 4 KiB text file,
write a 4 KiB text file, list a directory of ``--entries`` files, search the
workspace with a glob.  Prints a Markdown table of p50/p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import agentfs  # noqa: E402
from agentfs.api import WorkspaceClient  # noqa: E402

TEXT = ("agentfs mcp benchmark line\n" * 160)[:4096]


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] * 1000


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[float]:
    for i in range(5):
        await call(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t0)
    return out


def api_timed(n: int, call: Callable[[int], Any]) -> list[float]:
    for i in range(5):
        call(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t0)
    return out


def populate(ws: WorkspaceClient, entries: int) -> None:
    ws.write_bytes("read.md", TEXT.encode())
    ws.mkdir("many", parents=True)
    for i in range(entries):
        ws.write_bytes(f"many/f{i:05d}.txt", b"x")


async def mcp_run(store: str, ws: str, n: int) -> dict[str, list[float]]:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "agentfs", "mcp", "--store", store, ws,
                                                                 "--agent", "bench"],
                                   env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=str(REPO))
    async with Client(params, read_timeout_seconds=120) as c:
        async def call(tool: str, **args: Any) -> None:
            r = await c.call_tool(tool, args)
            if r.is_error:
                raise RuntimeError(f"{tool}: {r.content}")

        return {
            "read 4 KiB": await timed(n, lambda i: call("read_text_file", path="read.md")),
            "write 4 KiB": await timed(n, lambda i: call("write_file", path=f"w/{i % 50}.md", content=TEXT)),
            "list dir": await timed(n, lambda i: call("list_directory", path="many")),
            "search": await timed(n, lambda i: call("search_files", pattern="*.md")),
        }


def api_run(ws: WorkspaceClient, n: int) -> dict[str, list[float]]:
    data = TEXT.encode()
    return {
        "read 4 KiB": api_timed(n, lambda i: ws.read_bytes("read.md")),
        "write 4 KiB": api_timed(n, lambda i: ws.write_bytes(f"w/{i % 50}.md", data)),
        "list dir": api_timed(n, lambda i: [ws.stat(f"many/{x}") for x in ws.listdir("many")]),
        "search": api_timed(n, lambda i: [s.path for s in ws.walk("") if s.path.endswith(".md")]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="store URL (default: a new file:// store in a temp dir)")
    ap.add_argument("-n", type=int, default=100, help="calls per workload (default 100)")
    ap.add_argument("--entries", type=int, default=1000, help="files in the listed directory (default 1000)")
    ap.add_argument("--json", help="also write the raw samples (seconds) here")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="agentfs-mcp-bench-")
    store = a.store or f"file://{tmp}/store"
    wsname = f"bench{uuid.uuid4().hex[:6]}"
    with agentfs.open_workspace(store, wsname, agent="bench") as ws:
        populate(ws, a.entries)
        ws.mkdir("w")
        api = api_run(ws, a.n)
    mcp = anyio.run(mcp_run, store, wsname, a.n)
    print(f"# agentfs mcp tool-call latency ({store.split('://')[0]} store, n={a.n}, "
          f"{a.entries} entries listed)\n")
    print("| workload | MCP p50 ms | MCP p99 ms | API p50 ms | API p99 ms | MCP/API p50 |")
    print("|---|---|---|---|---|---|")
    for k in mcp:
        m50, a50 = pct(mcp[k], 0.5), pct(api[k], 0.5)
        print(f"| {k} | {m50:.2f} | {pct(mcp[k], 0.99):.2f} | {a50:.2f} | {pct(api[k], 0.99):.2f} | "
              f"{m50 / a50:.2f}x |")
    print(f"\nmean MCP read {statistics.mean(mcp['read 4 KiB']) * 1000:.2f} ms")
    if a.json:
        Path(a.json).write_text(json.dumps({"store": store, "mcp": mcp, "api": api}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
