#!/usr/bin/env python3
"""LangGraph saver latency per super-step: ``put`` + ``get_tuple``.

    .venv/bin/python benchmarks/lgsaver.py [--steps 40]

One super-step = ``put`` of a checkpoint (three channels, one a 2 KiB message
list) and ``get_tuple`` of the thread's latest, as a LangGraph loop does when it
resumes.  Measured (median ms per step) for:

- ``AgentFSSaver`` on a local ``file://`` store, without and with ``files=True``
  (then each step also cuts an agentfs checkpoint, including the 0.15 s
  cross-process fence that ``WorkspaceClient.checkpoint`` waits);
- ``AgentFSSaver`` on moto's S3 server (started here on 127.0.0.1, stopped by its PID);
- ``langgraph-checkpoint-sqlite`` on local disk, when it is installed;
- the floor: two sequential PUTs of the record's size on the same store
  (``ObjectStore.put``: the durable write of state plus index).

Prints a Markdown table; nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint

from agentfs.langgraph import AgentFSSaver
from agentfs.store import open_store


def one_step(saver: BaseCheckpointSaver[Any], config: Any, i: int) -> tuple[Any, float]:
    """One super-step: put a checkpoint, then get_tuple the thread's latest; (config, seconds)."""
    cp = empty_checkpoint()
    cp["channel_values"] = {"messages": [{"type": "ai", "content": "x" * 200}] * 10, "step": i,
                            "notes": f"step {i}"}
    versions = {k: saver.get_next_version(None, None) for k in cp["channel_values"]}
    cp["channel_versions"] = versions
    t = time.perf_counter()
    config = saver.put(config, cp, {"source": "loop", "step": i, "parents": {}}, versions)
    assert saver.get_tuple({"configurable": {"thread_id": config["configurable"]["thread_id"]}})
    return config, time.perf_counter() - t


def measure(saver: BaseCheckpointSaver[Any], url: str | None, n: int) -> tuple[float, float]:
    """Median ms per step and of the floor, interleaved (so load on the machine hits both)."""
    config: Any = {"configurable": {"thread_id": f"bench-{time.time_ns()}", "checkpoint_ns": ""}}
    store = open_store(url) if url else None
    times, floors = [], []
    try:
        for i in range(n):
            config, dt = one_step(saver, config, i)
            times.append(dt)
            if store is not None:
                t = time.perf_counter()
                store.put(f"floor/{i}-a", b"x" * 3000)  # a record's size
                store.put(f"floor/{i}-b", b"y" * 300)  # an index entry
                floors.append(time.perf_counter() - t)
    finally:
        if store is not None:
            store.close()
    return statistics.median(times) * 1000, statistics.median(floors) * 1000 if floors else float("nan")


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(env, AWS_ENDPOINT_URL=endpoint)
    import boto3  # type: ignore[import-untyped]

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    return proc, "s3://bench/lg"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    n = args.steps
    rows: list[tuple[str, float, float]] = []
    tmp = Path(tempfile.mkdtemp(prefix="agentfs-lgbench-"))
    local = f"file://{tmp}/store"

    def agentfs_row(name: str, url: str, **kw: Any) -> None:
        with AgentFSSaver.open(url, "bench", **kw) as saver:
            rows.append((name, *measure(saver, url, n)))

    agentfs_row("AgentFSSaver, local store", local)
    agentfs_row("AgentFSSaver, local store, files=True", local, files=True)
    proc, s3 = start_moto()
    try:
        agentfs_row("AgentFSSaver, moto S3", s3)
        agentfs_row("AgentFSSaver, moto S3, files=True", s3, files=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    sqlite: Callable[..., Any] | None
    try:
        from langgraph.checkpoint.sqlite import SqliteSaver
        sqlite = SqliteSaver.from_conn_string
    except ImportError:
        sqlite = None
    if sqlite is not None:
        with sqlite(str(tmp / "lg.sqlite")) as saver:
            rows.append(("SqliteSaver, local disk", *measure(saver, None, n)))
    print(f"| saver | put + get_tuple per step (ms, median of {n}) | two sequential PUTs (ms) | ratio |")
    print("|---|---|---|---|")
    for name, ms, fl in rows:
        ratio = f"{ms / fl:.1f}x" if fl == fl else "-"
        print(f"| {name} | {ms:.1f} | {'-' if fl != fl else f'{fl:.1f}'} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
