#!/usr/bin/env python3
"""The request-latency floor on the harness's S3 server (`rclone serve s3`).

    python benchmarks/floor.py [--n 1000] [--reps 3]

Starts `rclone serve s3` (the one the agentbench harness installs) on a free port of
127.0.0.1 over a scratch directory, makes N sequential 4 KiB PutObject calls with
boto3 (one client, keep-alive), and prints the total time and ms per PUT (median of
``--reps`` rounds).  The issue's small-file target compares agentfs's create of N
files with this: "within 1.25x of N sequential PUTs on the same server".
benchmarks/peers.sh runs it next to the harness.  The server is stopped by its PID
and the scratch directory removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

RCLONE = Path(os.environ.get("AGENTBENCH_DIR", Path(__file__).resolve().parents[2] / "shared" / "bench")) / "_local/venv/bin/rclone"
KEY, SECRET = "benchaccesskey", "benchsecretkey123"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import boto3  # the harness venv and the repo's .venv both have it

    tmp = Path(tempfile.mkdtemp(prefix="agentfs-floor-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "root").mkdir()
    (tmp / "empty.conf").touch()
    with open(tmp / "rclone.log", "wb") as out:
        proc = subprocess.Popen([str(RCLONE), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                                 "--auth-key", f"{KEY},{SECRET}", "--config", str(tmp / "empty.conf"),
                                 "--log-level", "NOTICE", str(tmp / "root")],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=KEY,
                         aws_secret_access_key=SECRET, region_name="us-east-1")
        c.create_bucket(Bucket="floor")
        body = os.urandom(4096)
        totals = []
        for r in range(args.reps):
            t0 = time.perf_counter()
            for i in range(args.n):
                c.put_object(Bucket="floor", Key=f"r{r}/{i:05d}", Body=body)
            totals.append(time.perf_counter() - t0)
        total = statistics.median(totals)
        print(f"floor: {args.n} sequential 4 KiB PutObject on rclone serve s3: {total:.3f} s "
              f"({1000 * total / args.n:.3f} ms each; median of {args.reps}: "
              f"{', '.join(f'{t:.3f}' for t in totals)})")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
