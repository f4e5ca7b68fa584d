#!/usr/bin/env python3
"""flock/unflock pairs per second on one mount: kernel-local locks vs locks across mounts.

    .venv/bin/python benchmarks/flock.py              # 2000 pairs per measurement
    .venv/bin/python benchmarks/flock.py -n 500 --latency-ms 20

For each store -- a local ``file://`` store and moto S3 on 127.0.0.1, the latter
also with every store request held ``--latency-ms`` (``AGENTFS_FAULTS``
``spike=1``: a model of a real object store's round trip) -- it mounts the store
twice with ``--no-kernel-locks`` (the kernel keeps flock to the mount: the old
behaviour) and twice with kernel locks (the default), and times in one run:

1. ``flock(LOCK_EX)`` + ``flock(LOCK_UN)`` pairs on one descriptor of one mount,
   nobody else interested (the lease is taken once and then kept cached);
2. the same with one open+lock+unlock+close per pair (a lock file per command);
3. with kernel locks, pairs alternating between the two mounts (every lock is a
   hand-over: the other mount must give the lease back first).

Prints pairs per second and the ratio to the ``--no-kernel-locks`` mount of the
same store.  Daemons are unmounted and moto stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from locks import S3_ENV, is_mounted, start_moto, unmount  # noqa: E402


class Mounts:
    """The daemons of one benchmark run (unmounted and waited for by PID)."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def mount(self, url: str, *args: str, env: dict[str, str] | None = None) -> Path:
        tag = f"m{len(self.procs)}"
        mp = self.tmp / tag
        mp.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "agentfs", "mount", "--foreground", "--log-file",
                                 str(self.tmp / f"{tag}.log"), "--cache-dir", str(self.tmp / f"cache-{tag}"),
                                 *args, url, str(mp)], env=env or self.env, cwd=str(REPO),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append((proc, mp))
        while not is_mounted(mp):
            if proc.poll() is not None:
                raise RuntimeError(f"mount failed: {(self.tmp / f'{tag}.log').read_text()[-2000:]}")
            time.sleep(0.05)
        return mp

    def close(self) -> None:
        for proc, mp in self.procs:
            unmount(proc, mp)


def pairs_per_s(paths: list[Path], n: int, *, reopen: bool) -> float:
    fds = {p: os.open(p, os.O_RDONLY) for p in paths}
    t0 = time.perf_counter()
    for i in range(n):
        p = paths[i % len(paths)]
        fd = os.open(p, os.O_RDONLY) if reopen else fds[p]
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
        if reopen:
            os.close(fd)
    took = time.perf_counter() - t0
    for fd in fds.values():
        os.close(fd)
    return n / took


def prepare(a: Path, b: Path) -> tuple[Path, Path]:
    ws = f"bench{uuid.uuid4().hex[:6]}"
    (a / ws).mkdir()
    (a / ws / "lock").write_bytes(b"")
    deadline = time.monotonic() + 30
    while not (b / ws / "lock").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the lock file did not reach the second mount")
        time.sleep(0.05)
    return a / ws / "lock", b / ws / "lock"


def run_store(ms: Mounts, name: str, url: str, n: int, env: dict[str, str]) -> None:
    la, _ = prepare(ms.mount(url, "--no-kernel-locks", env=env), ms.mount(url, "--no-kernel-locks", env=env))
    ka, kb = prepare(ms.mount(url, env=env), ms.mount(url, env=env))
    pairs_per_s([la], 50, reopen=False)  # warm up
    pairs_per_s([ka], 50, reopen=False)
    base = pairs_per_s([la], n, reopen=False)
    mine = pairs_per_s([ka], n, reopen=False)
    base_o = pairs_per_s([la], n, reopen=True)
    mine_o = pairs_per_s([ka], n, reopen=True)
    alt = pairs_per_s([ka, kb], max(20, n // 50), reopen=False)
    print(f"| {name} | one fd | {base:9.0f} | {mine:9.0f} | {mine / base:5.2f} |")
    print(f"| {name} | open+lock+close | {base_o:9.0f} | {mine_o:9.0f} | {mine_o / base_o:5.2f} |")
    # without kernel locks two mounts do not exclude each other: no baseline to compare
    print(f"| {name} | alternating two mounts | - | {alt:9.1f} | - |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="pairs per measurement")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="modelled store round trip (0: off)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="agentfs-flockbench-"))
    env = dict(os.environ, **S3_ENV, PYTHONPATH=str(REPO))
    moto, endpoint = start_moto(env)
    env["AWS_ENDPOINT_URL"] = endpoint
    ms = Mounts(tmp, env)
    try:
        import boto3

        print(f"flock EX+UN pairs per second, one run, {os.cpu_count()} CPUs, n={args.n}\n")
        print("| store | pattern | --no-kernel-locks | kernel locks | ratio |")
        print("|---|---|---:|---:|---:|")
        run_store(ms, "file://", (tmp / "store").as_uri(), args.n, env)
        for lat in ([0.0, args.latency_ms] if args.latency_ms else [0.0]):
            bucket = f"flock-{uuid.uuid4().hex[:8]}"
            os.environ.update(S3_ENV)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            e = dict(env)
            if lat:
                e["AGENTFS_FAULTS"] = f"seed=1,spike=1,latency={lat / 1000}"
            run_store(ms, f"moto S3{f' +{lat:g} ms' if lat else ''}", f"s3://{bucket}", args.n, e)
        return 0
    finally:
        ms.close()
        moto.kill()
        moto.wait()


if __name__ == "__main__":
    sys.exit(main())
