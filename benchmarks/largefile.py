"""Large-file benchmark: one agentfs mount on `rclone serve s3` (or moto).

Phases (seconds, and the mount daemon's peak RSS per phase from VmHWM):

- ``write+fsync``: SIZE MiB in 1 MiB writes from offset 0, then fsync, then close;
- ``read (warm)``: read back after dropping the kernel page cache (the mount's own
  cache stays, as in ../shared/bench);
- ``read (cold)``: a fresh mount with an empty cache reads the file.

Run as root (FUSE, drop_caches, clear_refs), with a Python that has boto3, e.g.::

    $AGENTBENCH_DIR/_local/venv/bin/python benchmarks/largefile.py --size 256 --reps 3

``--server moto`` uses moto_server instead of rclone; ``--spy DIR`` records a py-spy
profile of the mount daemon per rep (needs py-spy in the agentfs venv).
Nothing here is asserted; figures go to docs/PERFORMANCE.md and closing notes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
BENCH_BIN = Path(os.environ.get("AGENTBENCH_DIR", Path(__file__).resolve().parents[2] / "shared" / "bench")) / "_local/venv/bin"
KEY, SECRET = "benchaccesskey", "benchsecretkey"
LOG_LEVEL = "info"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(port)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def reset_hwm(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process so far."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


SERVER_PID = 0


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3")


class Mount:
    def __init__(self, endpoint: str, bucket: str, work: Path, name: str, agentfs: str,
                 spy: Path | None) -> None:
        self.mnt = work / f"mnt-{name}"
        self.mnt.mkdir()
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ENDPOINT_URL_S3=endpoint,
                   AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                   AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
        self.log = open(work / f"agentfs-{name}.log", "ab")
        self.proc = subprocess.Popen(
            [agentfs, "mount", "--foreground", "--log-level", LOG_LEVEL, "--cache-dir", str(work / f"cache-{name}"),
             f"s3://{bucket}", str(self.mnt)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        t0 = time.monotonic()
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() - t0 > 60:
                raise RuntimeError(f"mount failed, see {work}/agentfs-{name}.log")
            time.sleep(0.05)
        self.spy: subprocess.Popen[bytes] | None = None
        if spy is not None:
            pyspy = str(Path(agentfs).parent / "py-spy")
            self.spy = subprocess.Popen(
                [pyspy, "record", "-p", str(self.proc.pid), "-o", str(spy), "-f", "speedscope",
                 "--threads", "--gil", "-r", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)

    def close(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.spy.wait(30)
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            stop(self.proc)
        self.log.close()


def one_rep(endpoint: str, bucket: str, work: Path, size_mib: int, agentfs: str,
            spy: Path | None, rep: int) -> dict[str, float]:
    out: dict[str, float] = {}
    a = Mount(endpoint, bucket, work, f"a{rep}", agentfs, spy / f"write-{rep}.json" if spy else None)
    pid = a.proc.pid
    ws = a.mnt / f"ws{rep}"
    ws.mkdir()
    p = ws / "large.bin"
    io = 1 << 20
    buf = bytearray(os.urandom(io))
    try:
        reset_hwm(pid)
        c0, s0, w0 = cpu_s(pid), cpu_s(SERVER_PID), time.process_time()
        t0 = time.perf_counter()
        with open(p, "wb", buffering=0) as f:
            for i in range(size_mib):
                buf[0:8] = i.to_bytes(8, "little")
                f.write(buf)
            out["write"] = time.perf_counter() - t0
            os.fsync(f.fileno())
            out["write+fsync"] = time.perf_counter() - t0
        out["write+fsync+close"] = time.perf_counter() - t0
        out["cpu write: mount"] = cpu_s(pid) - c0
        out["cpu write: server"] = cpu_s(SERVER_PID) - s0
        out["cpu write: writer"] = time.process_time() - w0
        out["rss write"] = hwm_mib(pid)
        drop_caches()
        reset_hwm(pid)
        rbuf = bytearray(io)
        t0 = time.perf_counter()
        total = 0
        with open(p, "rb", buffering=0) as f:
            while k := f.readinto(rbuf):
                total += k
        out["read (warm)"] = time.perf_counter() - t0
        out["rss read warm"] = hwm_mib(pid)
        assert total == size_mib * io, total
    finally:
        a.close()
    b = Mount(endpoint, bucket, work, f"b{rep}", agentfs, spy / f"read-{rep}.json" if spy else None)
    try:
        drop_caches()
        reset_hwm(b.proc.pid)
        c0, s0 = cpu_s(b.proc.pid), cpu_s(SERVER_PID)
        t0 = time.perf_counter()
        total = 0
        ok = True
        with open(b.mnt / f"ws{rep}" / "large.bin", "rb", buffering=0) as f:
            i = 0
            while k := f.readinto(rbuf):
                ok &= int.from_bytes(rbuf[0:8], "little") == i
                total += k
                i += 1
        out["read (cold)"] = time.perf_counter() - t0
        out["rss read cold"] = hwm_mib(b.proc.pid)
        out["cpu cold read: mount"] = cpu_s(b.proc.pid) - c0
        out["cpu cold read: server"] = cpu_s(SERVER_PID) - s0
        assert ok and total == size_mib * io, (ok, total)
    finally:
        b.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="MiB")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--server", choices=("rclone", "moto"), default="rclone")
    ap.add_argument("--agentfs", default=str(HERE / ".venv/bin/agentfs"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--spy", type=Path, default=None, help="directory for py-spy profiles")
    args = ap.parse_args()
    global LOG_LEVEL, SERVER_PID
    LOG_LEVEL = args.log_level
    import boto3

    work = Path(tempfile.mkdtemp(prefix="agentfs-largefile-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if args.server == "rclone":
        conf = work / "rclone.conf"
        conf.touch()
        (work / "s3root").mkdir()
        cmd = [str(BENCH_BIN / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
               "--auth-key", f"{KEY},{SECRET}", "--config", str(conf), "--log-level", "NOTICE",
               str(work / "s3root")]
    else:
        cmd = [str(BENCH_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    SERVER_PID = server.pid
    if args.spy:
        args.spy.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, float]] = []
    try:
        wait_port(port)
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY,
                     aws_secret_access_key=SECRET, region_name="us-east-1").create_bucket(Bucket="bench")
        for rep in range(args.reps):
            r = one_rep(endpoint, "bench", work, args.size, args.agentfs, args.spy, rep)
            print(f"rep {rep}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)
            results.append(r)
    finally:
        stop(server)
    print(f"\n{args.size} MiB on {args.server}, medians of {len(results)}:")
    for k in results[0]:
        unit = "MiB" if k.startswith("rss") else "s"
        print(f"  {k:24s} {statistics.median(r[k] for r in results):8.3f} {unit}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
