#!/usr/bin/env python3
"""Lock latency: acquire/release of agentfs leases on one mount and across two.

    .venv/bin/python benchmarks/locks.py            # N=50 per measurement
    .venv/bin/python benchmarks/locks.py -n 200

Starts a moto S3 server (subprocess, stopped by PID), makes one bucket and two
``agentfs mount --foreground`` daemons of it (unmounted at the end), then times:

1. kernel ``flock`` LOCK_EX + LOCK_UN on one mount (the local path, for reference);
2. one mount: lease acquire (``setxattr user.agentfs.lock exclusive``) and release
   (``removexattr``), sequentially;
3. two mounts, alternating: acquire on A, release on A, acquire on B, release on B
   (every acquire follows the other mount's release);
4. hand-over: B blocks in ``agentfs.lock()`` while A holds; time from A's release
   returning to B's ``agentfs.lock()`` returning (B polls with backoff 20 ms..0.5 s);
5. ``agentfs.lock()`` as a whole (flock + lease + release) on one mount.

Prints medians, p90 and max in milliseconds.  Store requests per acquire:
HEAD (+GET when the lease object exists) + conditional PUT; per release the same.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import agentfs  # noqa: E402
from agentfs.locks import LOCK_XATTR  # noqa: E402

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_mounted(p: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(p) for line in f)


def unmount(proc: subprocess.Popen, mp: Path) -> None:
    """Unmount ``mp`` and wait for its daemon ``proc`` (killed by PID after 60 s)."""
    if is_mounted(mp):
        subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if is_mounted(mp):
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)


def start_moto(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A moto S3 server on a free port of 127.0.0.1 (the caller stops it by PID) and its URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return moto, endpoint
        except OSError:
            if time.monotonic() > deadline:
                moto.kill()
                moto.wait()
                raise RuntimeError("moto did not start") from None
            time.sleep(0.1)


def stats(samples: list[float]) -> str:
    ms = sorted(x * 1000 for x in samples)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"median {statistics.median(ms):7.2f} ms   p90 {p90:7.2f} ms   max {ms[-1]:7.2f} ms   (n={len(ms)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50, help="samples per measurement")
    args = ap.parse_args()
    n = args.n
    tmp = Path(tempfile.mkdtemp(prefix="agentfs-lockbench-"))
    env = dict(os.environ, **S3_ENV, PYTHONPATH=str(REPO))
    moto, endpoint = start_moto(env)
    env["AWS_ENDPOINT_URL"] = endpoint
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    mounts: list[tuple[subprocess.Popen, Path]] = []
    try:
        import boto3

        bucket = f"locks-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        for tag in ("a", "b"):
            mp = tmp / f"mnt-{tag}"
            mp.mkdir()
            proc = subprocess.Popen([sys.executable, "-m", "agentfs", "mount", "--foreground",
                                     "--log-file", str(tmp / f"{tag}.log"), "--cache-dir", str(tmp / f"cache-{tag}"),
                                     f"s3://{bucket}", str(mp)], env=env, cwd=str(REPO),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            mounts.append((proc, mp))
            while not is_mounted(mp):
                if proc.poll() is not None:
                    raise RuntimeError(f"mount {tag} failed: {(tmp / f'{tag}.log').read_text()[-2000:]}")
                time.sleep(0.05)
        a, b = mounts[0][1], mounts[1][1]
        (a / "ws").mkdir()
        fa = a / "ws" / "task.md"
        fa.write_bytes(b"task\n")
        fb = b / "ws" / "task.md"
        while not fb.exists():
            time.sleep(0.05)

        print(f"agentfs lock latency, moto S3 on 127.0.0.1, {os.cpu_count()} CPUs, n={n}")
        fd = os.open(fa, os.O_RDONLY)
        ks = []
        for _ in range(n):
            t0 = time.perf_counter()
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
            ks.append(time.perf_counter() - t0)
        os.close(fd)
        print(f"kernel flock EX+UN, one mount:        {stats(ks)}")

        acq, rel = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            os.setxattr(fa, LOCK_XATTR, b"exclusive")
            t1 = time.perf_counter()
            os.removexattr(fa, LOCK_XATTR)
            t2 = time.perf_counter()
            acq.append(t1 - t0)
            rel.append(t2 - t1)
        print(f"lease acquire, one mount:             {stats(acq)}")
        print(f"lease release, one mount:             {stats(rel)}")

        acq, rel = [], []
        for i in range(n):
            f = fa if i % 2 == 0 else fb
            t0 = time.perf_counter()
            os.setxattr(f, LOCK_XATTR, b"exclusive")
            t1 = time.perf_counter()
            os.removexattr(f, LOCK_XATTR)
            t2 = time.perf_counter()
            acq.append(t1 - t0)
            rel.append(t2 - t1)
        print(f"lease acquire, alternating A/B:       {stats(acq)}")
        print(f"lease release, alternating A/B:       {stats(rel)}")

        hand = []
        for _ in range(max(5, n // 5)):
            os.setxattr(fa, LOCK_XATTR, b"exclusive")
            released = threading.Event()
            t_rel: list[float] = []
            got: list[float] = []

            def waiter(released: threading.Event = released, got: list[float] = got) -> None:
                # A separate process would be more realistic; a thread of this process
                # is a different FUSE caller (tid) but the same process (tgid), so it
                # goes through mount B where this process holds nothing.
                with agentfs.lock(fb, wait=60):
                    got.append(time.perf_counter())

            th = threading.Thread(target=waiter)
            th.start()
            time.sleep(0.3)  # B is waiting now
            os.removexattr(fa, LOCK_XATTR)
            t_rel.append(time.perf_counter())
            released.set()
            th.join()
            hand.append(got[0] - t_rel[0])
        print(f"hand-over A release -> B acquired:    {stats(hand)}")

        whole = []
        for _ in range(n):
            t0 = time.perf_counter()
            with agentfs.lock(fa, wait=5):
                pass
            whole.append(time.perf_counter() - t0)
        print(f"agentfs.lock() enter+exit, one mount: {stats(whole)}")
        return 0
    finally:
        for proc, mp in mounts:
            unmount(proc, mp)
        moto.kill()
        moto.wait()


if __name__ == "__main__":
    sys.exit(main())
