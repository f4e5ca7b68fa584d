#!/usr/bin/env python3
"""Quick agent-workload benchmark: local disk vs agentfs on file:// and on moto S3.

Self-contained (stdlib + boto3/moto from the venv); run as root for cold reads:

    .venv/bin/python benchmarks/quick.py --quick       # smoke run, < 2 minutes
    .venv/bin/python benchmarks/quick.py --reps 3      # the full run

It starts a moto S3 server (subprocess) and, for every repetition and target, a fresh
store (directory / bucket) and a fresh `python -m agentfs mount --foreground` daemon;
everything it starts is stopped by PID and every mount it makes is unmounted at the end.
Every workload checks what it reads back; a wrong result is reported as FAIL, not timed.
Results: a Markdown table on stdout and in benchmarks/results/quick-DATE.md, every raw
sample in the .json next to it.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
S3_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_SECURITY_TOKEN")

TARGETS = ["local", "agentfs-file", "agentfs-s3"]
LABELS = {"local": "local", "agentfs-file": "agentfs file://", "agentfs-s3": "agentfs s3 (moto)"}

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}

_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# -- processes and mounts ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def stop_pid(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process by its PID, SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def drop_caches(path: Path) -> bool:
    """Flush the filesystem holding `path`, then drop page/dentry/inode caches."""
    subprocess.run(["sync", "-f", str(path)], capture_output=True, timeout=300)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


REQ_RE = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*" (\d{3})')


class Moto:
    """`python -m moto.server` on 127.0.0.1; werkzeug logs one line per request."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "moto.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as logf:      # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start:\n"
                                       + self.log_path.read_text(errors="replace")[-2000:]) from None
                time.sleep(0.1)
        import boto3
        from botocore.config import Config
        self.client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def env(self) -> dict[str, str]:
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def version(self) -> str:
        from importlib.metadata import version
        return f"moto {version('moto')}"

    def new_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def empty_bucket(self, name: str) -> None:
        """Delete every object (keeps moto's memory flat between repetitions)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=name)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=name, Delete={"Objects": keys[i:i + 1000]})

    # request counting: byte offsets into the log
    def mark(self) -> int:
        return self.log_path.stat().st_size

    def requests_since(self, mark: int, bucket: str | None = None) -> list[tuple[str, str, str]]:
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        out = []
        for m in REQ_RE.finditer(text):
            method, path, status = m.groups()
            if path.startswith("/moto-api"):
                continue
            if bucket and not (path == f"/{bucket}" or path.startswith((f"/{bucket}/", f"/{bucket}?"))):
                continue
            out.append((method, path, status))
        return out

    def wait_no_writes(self, mark: int, bucket: str, idle: float, max_s: float) -> float:
        """Wait until the server has seen no mutating request (PUT/POST/DELETE) on
        `bucket` for `idle` seconds (at most max_s); returns seconds waited.
        (agentfs polls its journal with a GET about once a second, so plain
        quiet never comes.)"""
        t0 = time.monotonic()
        last_n, last_change = -1, t0
        while time.monotonic() - t0 < max_s:
            n = sum(1 for m, _, _ in self.requests_since(mark, bucket) if m in ("PUT", "POST", "DELETE"))
            now = time.monotonic()
            if n != last_n:
                last_n, last_change = n, now
            elif now - last_change >= idle:
                break
            time.sleep(0.2)
        return time.monotonic() - t0

    def stop(self) -> None:
        stop_pid(self.proc)


class AgentfsMount:
    """One `python -m agentfs mount --foreground` daemon, started and stopped by PID."""

    registry: list[AgentfsMount] = []

    def __init__(self, store_url: str, mountpoint: Path, workdir: Path, tag: str,
                 env: dict[str, str] | None = None, timeout: float = 60):
        self.store_url, self.path = store_url, mountpoint
        self.log = workdir / f"agentfs-{tag}.log"
        self.err = workdir / f"agentfs-{tag}.stderr"
        self.cache = workdir / f"cache-{tag}"
        mountpoint.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        for k in S3_CLEARED:
            full_env.pop(k, None)
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "agentfs", "mount", "--foreground", "--log-file", str(self.log),
               "--cache-dir", str(self.cache), store_url, str(mountpoint)]
        t0 = time.perf_counter()
        with open(self.err, "wb") as errf:           # the child keeps its own copy
            self.proc = subprocess.Popen(cmd, env=full_env, cwd=str(REPO),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=errf, start_new_session=True)
        self.registry.append(self)
        self.killed = False
        deadline = time.monotonic() + timeout
        while not is_mounted(mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentfs mount exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            if time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(f"mount did not appear within {timeout}s:\n" + self.log_tail())
            time.sleep(0.02)
        self.ready_s = time.perf_counter() - t0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return not self.killed and self.proc.poll() is None and is_mounted(self.path)

    def peak_rss_mib(self) -> float:
        return sum(status_kib(p, "VmHWM") for p in proc_tree(self.pid)) / 1024

    def log_tail(self, n: int = 40) -> str:
        parts = []
        for p in (self.log, self.err):
            with contextlib.suppress(OSError):
                lines = p.read_text(errors="replace").splitlines()[-n:]
                if lines:
                    parts.append(f"--- {p.name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts) or "(daemon logs are empty)"

    def error_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return [ln for ln in self.log.read_text(errors="replace").splitlines()
                    if " ERROR " in ln or "Traceback" in ln]
        return []

    def kill(self) -> None:
        """SIGKILL the daemon (by PID): blocked FUSE calls then fail with ENOTCONN."""
        self.killed = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def unmount(self, timeout: float = 300) -> float | None:
        """fusermount3 -u and wait for the daemon to exit (it flushes first);
        fallback: -uz and SIGTERM/SIGKILL by PID.  Returns seconds for a clean exit."""
        t0 = time.perf_counter()
        clean = True
        if is_mounted(self.path):
            for _ in range(10):
                r = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
                if r.returncode == 0 or not is_mounted(self.path):
                    break
                time.sleep(0.5)
            if is_mounted(self.path):
                clean = False
                subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
                stop_pid(self.proc)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            clean = False
            say(f"daemon {self.pid} did not exit {timeout}s after unmount; stopping it by PID")
            stop_pid(self.proc)
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
        if self in self.registry:
            self.registry.remove(self)
        return time.perf_counter() - t0 if clean and self.proc.returncode == 0 else None


class Watchdog:
    """Kills the daemon if a workload runs longer than `seconds` (a hang)."""

    def __init__(self, seconds: float, mount: AgentfsMount | None, what: str):
        self.fired = False
        self.mount, self.what, self.seconds = mount, what, seconds
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        say(f"TIMEOUT: {self.what} ran over {self.seconds}s; killing daemon "
            f"{self.mount.pid if self.mount else '-'}")
        if self.mount:
            self.mount.kill()

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


# -- workloads ------------------------------------------------------------------------

class CheckFailed(Exception):
    pass


class Skipped(Exception):
    pass


class Ctx:
    """Where a workload runs: times phases, checks results, drops caches."""

    def __init__(self, root: Path, state: dict, params: argparse.Namespace, drop: bool = True,
                 on_start=None, on_end=None):
        self.root, self.state, self.p = root, state, params
        self.phases: dict[str, float] = {}
        self.verified: set[str] = set()
        self._drop = drop
        self.notes: list[str] = []
        self.on_start, self.on_end = on_start, on_end

    def dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir()
        return d

    @contextlib.contextmanager
    def phase(self, name: str):
        # Untimed: write back dirty pages of the local filesystem (scratch: stores,
        # caches, the local target) so that earlier phases' writeback does not land
        # in this phase's clock.
        subprocess.run(["sync", "-f", str(self.p.scratch)], capture_output=True, timeout=300)
        if self.on_start:
            self.on_start(name)
        t0 = time.perf_counter()
        yield
        self.phases[name] = time.perf_counter() - t0
        if self.on_end:
            self.on_end(name)

    def drop(self, path: Path) -> None:
        if self._drop and not drop_caches(path):
            self._drop = False
            self.notes.append("could not drop caches (not root?): reads are warm")

    def check(self, ok: bool, msg: str) -> None:
        if not ok:
            raise CheckFailed(msg)

    def ok(self, *phases: str) -> None:
        """These phases' results have been verified (kept even if a later phase fails)."""
        self.verified.update(phases)

    def sh(self, cmd: str | list[str], cwd: Path, timeout: float = 600) -> str:
        r = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, **GIT_ENV), timeout=timeout,
                           shell=isinstance(cmd, str), capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd!r} exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace')[-400:]}")
        return r.stdout.decode(errors="replace")


def payload(i: int, size: int) -> bytes:
    return (f"{i:08d}\n".encode() * (size // 9 + 1))[:size]


def small_tree(base: Path, n_files: int, n_dirs: int) -> tuple[list[Path], list[Path]]:
    """n_dirs directories nested one inside the other, files spread round-robin."""
    dirs, d = [], base
    for i in range(n_dirs):
        d = d / f"d{i}"
        dirs.append(d)
    return dirs, [dirs[i % n_dirs] / f"f{i:05d}.txt" for i in range(n_files)]


def wl_small_files(ctx: Ctx) -> None:
    n, size = ctx.p.n_files, 4096
    base = ctx.dir("small")
    dirs, files = small_tree(base, n, 10)
    data = [payload(i, size) for i in range(n)]
    with ctx.phase("small-files create"):
        for d in dirs:
            os.mkdir(d)
        for path, b in zip(files, data, strict=True):
            with open(path, "wb") as f:
                f.write(b)
    ctx.drop(base)
    bad = 0
    with ctx.phase("small-files read (cold)"):
        for path, b in zip(files, data, strict=True):
            with open(path, "rb") as f:
                bad += f.read() != b
    ctx.check(bad == 0, f"{bad}/{n} small files read back wrong")
    ctx.state["small_tree"] = (base, n + len(dirs))


def wl_metadata(ctx: Ctx) -> None:
    if "small_tree" not in ctx.state:
        raise Skipped("needs the small-files tree (small-files failed)")
    tree, expected = ctx.state["small_tree"]
    ctx.drop(tree)
    n = 0
    with ctx.phase("metadata walk+stat"):
        for dp, dns, fns in os.walk(tree):
            for name in dns + fns:
                os.stat(os.path.join(dp, name))
                n += 1
    ctx.check(n == expected, f"walk saw {n} entries, expected {expected}")


def wl_append_log(ctx: Ctx) -> None:
    p = ctx.dir("log") / "agent.jsonl"
    lines = [json.dumps({"step": i, "role": "tool", "content": "ok " * 20}) + "\n"
             for i in range(ctx.p.n_lines)]
    with ctx.phase("append-log"):
        for line in lines:
            with open(p, "a") as f:
                f.write(line)
    ctx.drop(p.parent)
    got = p.read_text().splitlines(keepends=True)
    ctx.check(got == lines, f"log has {len(got)} lines, expected {len(lines)}"
                            + (" (content differs)" if len(got) == len(lines) else ""))


def wl_rename_dir(ctx: Ctx) -> None:
    n, size = 100, 4096
    base = ctx.dir("ren")
    src, dst = base / "before", base / "after"
    src.mkdir()
    for i in range(n):
        (src / f"f{i:04d}.txt").write_bytes(payload(i, size))
    with ctx.phase("rename-dir (100 files)"):
        os.rename(src, dst)
    ctx.check(not src.exists(), "old name still exists after rename")
    names = sorted(os.listdir(dst))
    ctx.check(names == [f"f{i:04d}.txt" for i in range(n)], f"{len(names)}/{n} files under the new name")
    bad = sum((dst / f"f{i:04d}.txt").read_bytes() != payload(i, size) for i in range(n))
    ctx.check(bad == 0, f"{bad} files wrong after rename")


def wl_random_write(ctx: Ctx) -> None:
    file_mib, n_writes, block = ctx.p.rand_mib, 1000, 4096
    p = ctx.dir("rand") / "data.bin"
    chunk = bytes(1 << 20)
    with open(p, "wb") as f:                    # untimed setup: a file of zeros
        for _ in range(file_mib):
            f.write(chunk)
        os.fsync(f.fileno())
    n_blocks = (file_mib << 20) // block
    rng = random.Random(1)
    offsets = [b * block for b in rng.sample(range(n_blocks), min(n_writes, n_blocks))]
    blocks = {off: rng.randbytes(block) for off in offsets}
    with ctx.phase("random-write (1000x4K pwrite+fsync)"):
        fd = os.open(p, os.O_RDWR)
        try:
            for off in offsets:
                os.pwrite(fd, blocks[off], off)
            os.fsync(fd)
        finally:
            os.close(fd)
    ctx.drop(p.parent)
    fd = os.open(p, os.O_RDONLY)
    try:
        ctx.check(os.fstat(fd).st_size == file_mib << 20, "file size changed")
        bad = sum(os.pread(fd, block, off) != data for off, data in blocks.items())
        zero = bytes(block)
        untouched = [b * block for b in range(0, n_blocks, 97) if b * block not in blocks]
        bad_zero = sum(os.pread(fd, block, off) != zero for off in untouched)
    finally:
        os.close(fd)
    ctx.check(bad == 0 and bad_zero == 0,
              f"{bad} written blocks and {bad_zero} untouched blocks read back wrong")


def wl_seq(ctx: Ctx) -> None:
    io_size = 1 << 20
    n = ctx.p.seq_mib
    p = ctx.dir("seq") / "large.bin"
    buf = bytearray(os.urandom(io_size))

    def stamp(i: int) -> bytes:
        return i.to_bytes(8, "little") * 2

    with ctx.phase("seq write+fsync"), open(p, "wb", buffering=0) as f:
        for i in range(n):
            buf[0:16] = stamp(i)
            f.write(buf)
        os.fsync(f.fileno())
    ctx.drop(p.parent)
    rbuf = bytearray(io_size)
    total, bad = 0, 0
    with ctx.phase("seq read (cold)"), open(p, "rb", buffering=0) as f:
        while True:
            k = f.readinto(rbuf)
            if not k:
                break
            if total % io_size == 0 and k >= 16:
                bad += rbuf[0:16] != stamp(total // io_size)
            total += k
    ctx.check(total == n * io_size, f"read {total} bytes, wrote {n * io_size}")
    ctx.check(bad == 0, f"{bad} blocks have the wrong stamp")
    fd = os.open(p, os.O_RDONLY)
    try:
        for i in sorted(random.Random(2).sample(range(n), min(n, 16))):
            buf[0:16] = stamp(i)
            ctx.check(os.pread(fd, io_size, i * io_size) == buf, f"block {i} reads back wrong")
    finally:
        os.close(fd)


def make_tarball(path: Path, n_files: int, seed: int = 7) -> dict[str, str]:
    """A source-tree-like .tar.gz of n_files text files (random words) in nested
    directories; returns {relative path: sha256}."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
             for _ in range(2000)]
    dirs = ["proj"] + [f"proj/pkg{i}" for i in range(8)] + [f"proj/pkg{i}/sub{j}"
                                                           for i in range(8) for j in range(2)]
    manifest = {}
    with tarfile.open(path, "w:gz") as tar:
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(ti)
        for i in range(n_files):
            d = dirs[i % len(dirs)]
            name = f"{d}/mod_{i:04d}.py" if i % 5 else f"{d}/notes_{i:04d}.md"
            lines, size = [], rng.choice([300, 800, 2000, 4000, 9000, 20000])
            while sum(map(len, lines)) < size:
                k = rng.randint(3, 12)
                lines.append("    " * rng.randint(0, 3) + " ".join(rng.choices(words, k=k)) + "\n")
            if i % 3 == 0:
                lines.insert(0, "import os\n")
            data = "".join(lines).encode()
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(ti, io.BytesIO(data))
            manifest[name] = hashlib.sha256(data).hexdigest()
    return manifest


def tree_manifest(root: Path) -> dict[str, str]:
    out = {}
    for dp, dns, fns in os.walk(root):
        if ".git" in dns:
            dns.remove(".git")
        for fn in fns:
            p = Path(dp) / fn
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def wl_source_tree(ctx: Ctx) -> None:
    archive, manifest = ctx.state["tarball"]
    d = ctx.dir("src")
    with ctx.phase("untar (~200 files)"):
        ctx.sh(["tar", "xzf", str(archive), "-C", str(d)], d)
    got = tree_manifest(d)
    ctx.check(got == manifest, f"untar: {len(got)} files, {len(manifest)} in the archive, "
                               f"{sum(got.get(k) != v for k, v in manifest.items())} differ")
    ctx.ok("untar (~200 files)")
    with ctx.phase("git init+add+commit"):
        ctx.sh("git init -q -b main . && git add -A && git commit -q -m import", d)
    out = ctx.sh(["git", "status", "--porcelain"], d)
    ctx.check(out.strip() == "", f"git status not clean after commit: {out[:200]!r}")
    n = len(ctx.sh(["git", "ls-files", "-z"], d).split("\0")) - 1
    ctx.check(n == len(manifest), f"git ls-files lists {n}, expected {len(manifest)}")
    ctx.sh(["git", "fsck", "--no-progress", "--no-dangling"], d)


WORKLOADS = [
    ("small-files", wl_small_files, ["small-files create", "small-files read (cold)"]),
    ("metadata", wl_metadata, ["metadata walk+stat"]),
    ("append-log", wl_append_log, ["append-log"]),
    ("rename-dir", wl_rename_dir, ["rename-dir (100 files)"]),
    ("random-write", wl_random_write, ["random-write (1000x4K pwrite+fsync)"]),
    ("seq", wl_seq, ["seq write+fsync", "seq read (cold)"]),
    ("source-tree", wl_source_tree, ["untar (~200 files)", "git init+add+commit"]),
]
PHASES = [ph for _, _, phs in WORKLOADS for ph in phs]


def run_workloads(root: Path, params, state: dict, mount: AgentfsMount | None, label: str,
                  on_start=None, on_end=None, remount=None,
                  only: list[str] | None = None) -> tuple[dict, dict, list[str]]:
    """Runs every workload in its own top-level directory of root (on agentfs: a
    workspace).  Returns ({phase: seconds}, {phase: error}, notes).  If the daemon
    dies, `remount()` gives a fresh (root, mount) for the remaining workloads."""
    times, errors, notes = {}, {}, []
    for wl_name, fn, phases in WORKLOADS:
        if only is not None and wl_name not in only:
            continue
        if mount is not None and not mount.alive():
            if remount is None:
                for ph in phases:
                    errors[ph] = "daemon not running"
                continue
            root, mount = remount()
        ctx = Ctx(root / wl_name, state, params, drop=not params.no_drop, on_start=on_start,
                  on_end=on_end)
        err = None
        with Watchdog(params.timeout, mount, f"{label} {wl_name}") as wd:
            try:
                (root / wl_name).mkdir()
                fn(ctx)
                ctx.ok(*ctx.phases)
            except Skipped as e:
                err = f"skipped: {e}"
            except CheckFailed as e:
                err = f"FAIL (wrong result): {e}"
            except Exception as e:
                err = f"FAIL ({type(e).__name__}): {e}"
                if not isinstance(e, OSError | subprocess.SubprocessError | RuntimeError):
                    err += "\n" + traceback.format_exc()
        if wd.fired:
            err = f"FAIL (hang: no result after {params.timeout}s; daemon killed): {err}"
        notes.extend(n for n in ctx.notes if n not in notes)
        for ph in phases:
            if ph in ctx.verified and ph in ctx.phases:
                times[ph] = ctx.phases[ph]
            else:
                errors[ph] = err or "FAIL: phase did not run"
        if err:
            msg = f"{label} {wl_name}: {err.splitlines()[0]}"
            if mount is not None:
                alive = mount.alive()
                msg += f"\n  daemon pid {mount.pid} {'alive' if alive else 'NOT RUNNING'}"
                msg += "\n" + mount.log_tail(30)
                for ph in phases:
                    if ph in errors:
                        errors[ph] += f"\n[daemon {'alive' if alive else 'dead'}; log tail]\n" \
                                      + mount.log_tail(30)
            say(msg)
    return times, errors, notes


# -- the run --------------------------------------------------------------------------

class Run:
    def __init__(self, params: argparse.Namespace, scratch: Path):
        self.p, self.scratch = params, scratch
        self.moto: Moto | None = None
        self.samples: list[dict] = []          # one per (target, rep, phase)
        self.rss: dict[str, list[float]] = {t: [] for t in TARGETS}
        self.ready: dict[str, list[float]] = {t: [] for t in TARGETS}
        self.unmount_s: dict[str, list[float | None]] = {t: [] for t in TARGETS}
        self.daemon_errors: dict[str, list[str]] = {t: [] for t in TARGETS}
        self.notes: list[str] = []
        self.floor: dict = {}
        self.visibility: dict = {}
        self.requests: dict = {}
        self.state: dict = {}
        self._n = 0

    def fresh_store(self, target: str) -> tuple[str, dict, str]:
        """(store url, env, cleanup handle) of a new, empty store."""
        self._n += 1
        if target == "agentfs-file":
            d = self.scratch / f"store-{self._n}"
            d.mkdir()
            return f"file://{d}", {}, str(d)
        bucket = self.moto.new_bucket(f"bench-{self._n:03d}")
        return f"s3://{bucket}", self.moto.env(), bucket

    def drop_store(self, target: str, handle: str) -> None:
        if self.p.keep:
            return
        if target == "agentfs-file":
            shutil.rmtree(handle, ignore_errors=True)
        else:
            try:
                self.moto.empty_bucket(handle)
            except Exception as e:
                say(f"could not empty bucket {handle}: {e}")

    def mount(self, target: str, tag: str) -> tuple[AgentfsMount, str]:
        url, env, handle = self.fresh_store(target)
        m = AgentfsMount(url, self.scratch / f"mnt-{tag}", self.scratch, tag, env)
        return m, handle

    def one_rep(self, target: str, rep: int) -> None:
        label = f"[rep {rep + 1}/{self.p.reps}] {LABELS[target]}"
        say(f"{label}: start")
        state = {"tarball": self.state["tarball"]}
        mounts: list[tuple[AgentfsMount, str]] = []
        counts: dict[str, int] = {}
        hooks: dict = {}
        if target == "agentfs-s3":
            # requests seen by moto while each timed phase ran (cheap: log offsets;
            # parsed after the phase's clock stopped)
            marks: dict[str, int] = {}

            def on_start(ph: str) -> None:
                marks[ph] = self.moto.mark()

            def on_end(ph: str) -> None:
                counts[ph] = len(self.moto.requests_since(marks[ph], mounts[-1][1]))

            hooks = {"on_start": on_start, "on_end": on_end}
        try:
            if target == "local":
                root = self.scratch / f"local-{rep}"
                root.mkdir()
                times, errors, notes = run_workloads(root, self.p, state, None, label)
                if not self.p.keep:
                    shutil.rmtree(root, ignore_errors=True)
            else:
                tag = f"{target}-r{rep}"
                mounts.append(self.mount(target, tag))
                self.ready[target].append(mounts[-1][0].ready_s)

                def remount():
                    k = len(mounts)
                    say(f"{label}: daemon died; remounting a fresh store for the remaining workloads")
                    mounts.append(self.mount(target, f"{tag}-{k}"))
                    return mounts[-1][0].path, mounts[-1][0]

                times, errors, notes = run_workloads(mounts[0][0].path, self.p, state, mounts[0][0],
                                                     label, remount=remount, **hooks)
        finally:
            for m, handle in mounts:
                if m.proc.poll() is None:
                    self.rss[target].append(m.peak_rss_mib())
                errs = m.error_lines()
                if errs:
                    self.daemon_errors[target].extend(errs[:20])
                self.unmount_s[target].append(m.unmount())
                if m.proc.returncode not in (0, None) and not m.killed:
                    self.notes.append(f"{label}: daemon exited with {m.proc.returncode}")
                self.drop_store(target, handle)
        for n in notes:
            if n not in self.notes:
                self.notes.append(n)
        for ph in PHASES:
            self.samples.append({"target": target, "rep": rep, "phase": ph,
                                 "seconds": times.get(ph), "error": errors.get(ph),
                                 "s3_requests": counts.get(ph)})
        ok = sum(ph in times for ph in PHASES)
        say(f"{label}: done, {ok}/{len(PHASES)} phases ok")

    # -- extras -----------------------------------------------------------------------

    def put_floor(self) -> None:
        n = self.p.floor_n
        bucket = self.moto.new_bucket("floor")
        body = os.urandom(4096)
        c = self.moto.client
        c.put_object(Bucket=bucket, Key="warmup", Body=body)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            t1 = time.perf_counter()
            c.put_object(Bucket=bucket, Key=f"floor/{i:05d}", Body=body)
            lat.append(time.perf_counter() - t1)
        total = time.perf_counter() - t0
        keys = sum(page.get("KeyCount", 0) for page in
                   c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="floor/"))
        got = c.get_object(Bucket=bucket, Key=f"floor/{n - 1:05d}")["Body"].read()
        ok = keys == n and got == body
        self.floor = {"n": n, "total_s": total, "per_put_ms": 1000 * statistics.median(lat),
                      "mean_ms": 1000 * total / n, "p99_ms": 1000 * sorted(lat)[int(0.99 * (n - 1))],
                      "ok": ok, "samples_s": lat}
        say(f"floor: {n} PutObject in {total:.2f}s ({1000 * total / n:.2f} ms each){'' if ok else ' FAIL'}")
        # the read side: 1 MiB ranged GETs of an object as large as the seq file
        mib = self.p.seq_mib
        chunk = os.urandom(1 << 20)
        c.put_object(Bucket=bucket, Key="big", Body=chunk * mib)
        offs = sorted(random.Random(3).sample(range(mib), min(mib, 16)))
        glat, gok = [], True
        for o in offs:
            t1 = time.perf_counter()
            got = c.get_object(Bucket=bucket, Key="big",
                               Range=f"bytes={o << 20}-{((o + 1) << 20) - 1}")["Body"].read()
            glat.append(time.perf_counter() - t1)
            gok = gok and got == chunk
        t1 = time.perf_counter()
        whole = c.get_object(Bucket=bucket, Key="big")["Body"].read()
        whole_s = time.perf_counter() - t1
        gok = gok and len(whole) == mib << 20
        self.floor["ranged_get"] = {"object_mib": mib, "n": len(offs), "range_mib": 1,
                                    "median_ms": 1000 * statistics.median(glat),
                                    "whole_get_s": whole_s, "ok": gok, "samples_s": glat}
        self.moto.empty_bucket(bucket)
        say(f"floor: 1 MiB ranged GET of a {mib} MiB object {1000 * statistics.median(glat):.1f} ms; "
            f"whole GET {whole_s:.2f}s")

    def cross_mount(self, target: str) -> None:
        cap, trials, poll = self.p.vis_cap, self.p.vis_trials, 0.02
        url, env, handle = self.fresh_store(target)
        a = b = None
        res: dict = {"new file": [], "overwrite": [], "workspace": None, "error": None}
        try:
            a = AgentfsMount(url, self.scratch / f"mnt-vis-{target}-a", self.scratch,
                             f"vis-{target}-a", env)
            b = AgentfsMount(url, self.scratch / f"mnt-vis-{target}-b", self.scratch,
                             f"vis-{target}-b", env)

            def wait_for(check) -> float | None:
                t0 = time.perf_counter()
                while True:
                    with contextlib.suppress(OSError):
                        if check():
                            return time.perf_counter() - t0
                    if time.perf_counter() - t0 > cap:
                        return None
                    time.sleep(poll)

            def content_is(path: Path, data: bytes):
                def check() -> bool:
                    with open(path, "rb") as f:
                        return f.read() == data
                return check

            with Watchdog(cap * (2 * trials + 1) + 120, a, f"cross-mount {target}"):
                (a.path / "vis").mkdir()
                res["workspace"] = wait_for(lambda: (b.path / "vis").is_dir())
                if res["workspace"] is None:
                    raise RuntimeError(f"workspace made on A not visible on B after {cap}s")
                for t in range(trials):
                    nonce = os.urandom(6).hex()
                    name = f"t{t}.txt"
                    v1 = f"v1 {nonce}\n".encode()
                    with open(a.path / "vis" / name, "wb") as f:
                        f.write(v1)
                    res["new file"].append(wait_for(content_is(b.path / "vis" / name, v1)))
                    v2 = f"version two, longer {nonce}\n".encode()
                    with open(a.path / "vis" / name, "wb") as f:
                        f.write(v2)
                    res["overwrite"].append(wait_for(content_is(b.path / "vis" / name, v2)))
        except Exception as e:
            res["error"] = f"{type(e).__name__}: {e}"
            for m in (a, b):
                if m:
                    res["error"] += "\n" + m.log_tail(20)
            say(f"cross-mount {target}: {res['error']}")
        finally:
            for m in (b, a):
                if m:
                    errs = m.error_lines()
                    if errs:
                        self.daemon_errors[target].extend(errs[:20])
                    m.unmount()
            self.drop_store(target, handle)
        self.visibility[target] = res
        say(f"cross-mount {target}: new file {res['new file']}, overwrite {res['overwrite']}")

    def count_requests(self) -> None:
        """Untimed extra pass on s3 (--count all: every workload; small: small-files
        only): requests counted from moto's log (one werkzeug line per request), during
        the phase and until no PUT/POST/DELETE has come for --settle seconds (deferred
        uploads)."""
        url, env, bucket = self.fresh_store("agentfs-s3")
        counts: dict[str, dict] = {}
        marks: dict[str, int] = {}

        def on_start(ph: str) -> None:
            marks[ph] = self.moto.mark()

        def on_end(ph: str) -> None:
            during = self.moto.requests_since(marks[ph], bucket)
            waited = self.moto.wait_no_writes(marks[ph], bucket, self.p.settle, 120)
            after = self.moto.requests_since(marks[ph], bucket)
            by_method: dict[str, int] = {}
            for meth, _, _ in after:
                by_method[meth] = by_method.get(meth, 0) + 1
            counts[ph] = {"during": len(during), "with_settle": len(after),
                          "by_method": by_method, "settle_wait_s": round(waited, 2)}

        m = None
        try:
            m = AgentfsMount(url, self.scratch / "mnt-count", self.scratch, "count", env)
            idle0 = self.moto.mark()
            time.sleep(3)
            idle = len(self.moto.requests_since(idle0, bucket)) / 3
            state = {"tarball": self.state["tarball"]}
            only = None if self.p.count == "all" else ["small-files"]
            _, errors, _ = run_workloads(m.path, self.p, state, m, "[count] agentfs s3",
                                         on_start=on_start, on_end=on_end, only=only)
        finally:
            if m:
                m.unmount()
            self.drop_store("agentfs-s3", bucket)
        self.requests = {"phases": counts, "idle_requests_per_s": idle,
                         "errors": {k: v.splitlines()[0] for k, v in errors.items()},
                         "settle_s": self.p.settle}
        c = counts.get("small-files create")
        if c:
            say(f"requests: small-files create {c['during']} during, {c['with_settle']} with settle")


# -- report ---------------------------------------------------------------------------

def fmt_s(x: float) -> str:
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.3f}"
    if x >= 0.001:
        return f"{x:.4f}"
    return f"{x:.6f}"


def medians(run: Run) -> dict[tuple[str, str], tuple[float | None, int, int]]:
    out = {}
    for t in TARGETS:
        for ph in PHASES:
            ss = [s for s in run.samples if s["target"] == t and s["phase"] == ph]
            ok = [s["seconds"] for s in ss if s["seconds"] is not None]
            fails = len(ss) - len(ok)
            out[t, ph] = (statistics.median(ok) if ok and not fails else None, fails, len(ss))
    return out


def report_header(run: Run, wall_s: float, started: str) -> list[str]:
    """The title and the run's parameters."""
    p = run.p
    L: list[str] = []
    L.append(f"# agentfs quick benchmark — {started}{' (smoke run: --quick)' if p.quick else ''}")
    L.append("")
    L.append(f"Host: {platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
             f"Python {platform.python_version()}; S3 = {run.moto.version() if run.moto else '?'} "
             f"on 127.0.0.1; agentfs from {REPO} (git {git_rev()}).  Wall time {wall_s:.0f} s.")
    L.append(f"Medians of {p.reps} rep(s), seconds, ratio to local in parentheses; every rep uses a "
             f"fresh store and a fresh mount; each workload runs in its own top-level directory "
             f"(on agentfs: a workspace).  Sizes: {p.n_files} small files x 4 KiB in 10 nested dirs; "
             f"append-log {p.n_lines} lines; random-write 1000 x 4 KiB into a {p.rand_mib} MiB file; "
             f"seq {p.seq_mib} MiB in 1 MiB writes; tarball {p.tar_files} files.  "
             f"Cold reads: {'after sync -f + echo 3 > drop_caches' if not p.no_drop else 'caches NOT dropped'}.")
    L.append("")
    return L


def report_table(run: Run, med: dict[tuple[str, str], tuple[float | None, int, int]]) -> list[str]:
    """The table of medians per workload and target, with mount and unmount times."""
    L: list[str] = []
    L.append("| workload | " + " | ".join(LABELS[t] for t in TARGETS) + " |")
    L.append("|---|" + "---:|" * len(TARGETS))
    for ph in PHASES:
        base = med["local", ph][0]
        cells = []
        for t in TARGETS:
            v, fails, n = med[t, ph]
            if v is None:
                cells.append(f"FAIL ({fails}/{n})" if n else "—")
            elif t == "local" or not base:
                cells.append(fmt_s(v))
            else:
                cells.append(f"{fmt_s(v)} ({v / base:.1f}x)")
        L.append(f"| {ph} | " + " | ".join(cells) + " |")
    row = ["mount ready"] + ["—"] + [fmt_s(statistics.median(run.ready[t])) if run.ready[t] else "—"
                                     for t in TARGETS[1:]]
    L.append("| " + " | ".join(row) + " |")
    row = ["unmount (flush + exit)", "—"]
    for t in TARGETS[1:]:
        xs = run.unmount_s[t]
        ok = [x for x in xs if x is not None]
        row.append("—" if not xs else fmt_s(statistics.median(ok)) if len(ok) == len(xs)
                   else f"FAIL ({len(xs) - len(ok)}/{len(xs)})")
    L.append("| " + " | ".join(row) + " |")
    L.append("")
    return L


def report_failures(run: Run) -> list[str]:
    """One entry per distinct failure (target, phase, first line), with its traceback."""
    L: list[str] = []
    fails = [s for s in run.samples if s["error"]]
    if fails:
        L.append("## Failures")
        L.append("")
        seen = set()
        for s in fails:
            key = (s["target"], s["phase"], s["error"].splitlines()[0])
            if key in seen:
                continue
            seen.add(key)
            L.append(f"- **{LABELS[s['target']]} / {s['phase']}** (rep {s['rep'] + 1}): "
                     f"{s['error'].splitlines()[0]}")
            rest = s["error"].splitlines()[1:]
            if rest:
                L.append("")
                L.append("  ```")
                L.extend("  " + ln for ln in rest[-40:])
                L.append("  ```")
        L.append("")
    return L


def report_floor(run: Run, med: dict[tuple[str, str], tuple[float | None, int, int]]) -> list[str]:
    """The S3 request-latency floor measured without FUSE, and agentfs against it."""
    p = run.p
    L: list[str] = []
    f = run.floor
    if f:
        L.append("## S3 request-latency floor (same moto server, no FUSE)")
        L.append("")
        L.append(f"{f['n']} sequential 4 KiB PutObject with boto3: {f['total_s']:.2f} s total, "
                 f"{f['mean_ms']:.2f} ms mean, {f['per_put_ms']:.2f} ms median, {f['p99_ms']:.2f} ms p99"
                 f"{'' if f['ok'] else ' — FAIL: objects did not read back'}.")
        v = med["agentfs-s3", "small-files create"][0]
        if v:
            per = 1000 * v / (p.n_files + 10)
            L.append(f"agentfs s3 small-files create: {per:.2f} ms per file or dir "
                     f"= {per / f['mean_ms']:.1f}x one PutObject.")
        g = f.get("ranged_get")
        if g:
            L.append("")
            L.append(f"Read side: {g['n']} GETs of 1 MiB ranges of a {g['object_mib']} MiB object: "
                     f"{g['median_ms']:.1f} ms median each; one GET of the whole object: "
                     f"{g['whole_get_s']:.2f} s{'' if g['ok'] else ' — FAIL: wrong bytes'}.  "
                     f"(moto's cost per ranged GET grows with the object's size.)")
            v = med["agentfs-s3", "seq read (cold)"][0]
            nget = [s["s3_requests"] for s in run.samples if s["target"] == "agentfs-s3"
                    and s["phase"] == "seq read (cold)" and s.get("s3_requests")]
            if v and nget:
                k = statistics.median(nget)
                L.append(f"agentfs s3 seq read (cold): {k:.0f} requests, "
                         f"{1000 * v / k:.1f} ms per request, "
                         f"{(g['object_mib'] << 20) / k / 1024:.0f} KiB per request on average.")
        L.append("")
    return L


def report_requests(run: Run) -> list[str]:
    """S3 requests per phase, counted from moto's log."""
    p = run.p
    L: list[str] = []
    timed = {}
    for ph in PHASES:
        xs = [s["s3_requests"] for s in run.samples if s["target"] == "agentfs-s3"
              and s["phase"] == ph and s["seconds"] is not None and s.get("s3_requests") is not None]
        if xs:
            timed[ph] = int(statistics.median(xs))
    r = run.requests
    if timed or r:
        L.append("## S3 requests per phase (agentfs on moto)")
        L.append("")
        L.append("Counted from moto's log: werkzeug prints one line per request; only lines for the "
                 "bucket under test are counted.  *timed* = while the phase ran in the timed reps "
                 "(median); *pass* = the same in a separate untimed pass; *+settle* = in that pass "
                 "from the phase's start until no PUT/POST/DELETE came for "
                 f"{p.settle:g} s after it (catches deferred uploads; includes background "
                 "journal polling"
                 + (f", {r['idle_requests_per_s']:.1f} requests/s when idle" if r else "") + ").")
        L.append("")
        L.append("| phase | timed | pass | +settle | by method (+settle) |")
        L.append("|---|---:|---:|---:|---|")
        for ph in PHASES:
            c = (r or {}).get("phases", {}).get(ph)
            cells = [str(timed.get(ph, "—"))]
            if c:
                bm = ", ".join(f"{k} {v}" for k, v in sorted(c["by_method"].items()))
                cells += [str(c["during"]), str(c["with_settle"]), bm]
            elif r and ph in r["errors"]:
                cells += ["FAIL", "FAIL", r["errors"][ph]]
            else:
                cells += ["—", "—", ""]
            L.append(f"| {ph} | " + " | ".join(cells) + " |")
        c = (r or {}).get("phases", {}).get("small-files create")
        n = c["with_settle"] if c else timed.get("small-files create")
        if n:
            L.append("")
            L.append(f"small-files create: {n / (p.n_files + 10):.2f} requests per file or dir "
                     f"({p.n_files} files + 10 dirs).")
        L.append("")
    return L


def med_vis(xs: list) -> str:
    """A visibility cell: the median delay, or how many trials never saw the change."""
    if not xs:
        return "FAIL"
    seen = [x for x in xs if x is not None]
    if len(seen) == len(xs):
        return f"{statistics.median(seen):.3f} s"
    return f"> cap ({len(xs) - len(seen)}/{len(xs)} not seen)"


def report_visibility(run: Run) -> list[str]:
    """How long a change on one mount takes to be seen on another."""
    p = run.p
    L: list[str] = []
    if run.visibility:
        L.append("## Cross-mount visibility (two agentfs mounts of one store)")
        L.append("")
        L.append(f"Create+close a file on mount A, poll on mount B every 20 ms until its content "
                 f"appears; then overwrite on A and poll until B reads the new content.  Median of "
                 f"{p.vis_trials} trials; capped at {p.vis_cap:g} s ('> cap' = not seen).")
        L.append("")
        L.append("| store | new workspace | new file | overwrite |")
        L.append("|---|---:|---:|---:|")
        for t in TARGETS[1:]:
            v = run.visibility.get(t)
            if not v:
                continue
            if v["error"] and not v["new file"]:
                L.append(f"| {LABELS[t]} | FAIL: {v['error'].splitlines()[0]} | | |")
                continue
            ws = v["workspace"]
            L.append(f"| {LABELS[t]} | {'> cap' if ws is None else f'{ws:.3f} s'} | "
                     f"{med_vis(v['new file'])} | {med_vis(v['overwrite'])} |")
        if any(v.get("error") for v in run.visibility.values()):
            L.append("")
            L.extend(f"- {LABELS[t]}: {v['error'].splitlines()[0]}"
                     for t, v in run.visibility.items() if v.get("error"))
        L.append("")
    return L


def report_rss(run: Run) -> list[str]:
    """The agentfs daemon's peak resident memory per target."""
    L: list[str] = []
    if any(run.rss.values()):
        L.append("## Peak RSS of the agentfs daemon (VmHWM at the end of each rep, max over reps)")
        L.append("")
        for t in TARGETS[1:]:
            xs = run.rss[t]
            if xs:
                L.append(f"- {LABELS[t]}: {max(xs):.0f} MiB "
                         f"(per rep: {', '.join(f'{x:.0f}' for x in xs)})")
        L.append("")
    return L


def report_notes(run: Run) -> list[str]:
    """Notes of the run and the ERROR lines the daemons logged."""
    L: list[str] = []
    if any(run.daemon_errors.values()) or run.notes:
        L.append("## Notes")
        L.append("")
        for n in run.notes:
            L.append(f"- {n}")
        for t, errs in run.daemon_errors.items():
            if errs:
                L.append(f"- {LABELS[t]} daemon logged {len(errs)} ERROR/Traceback line(s), first: "
                         f"`{errs[0][:300]}`")
        L.append("")
    return L


def report(run: Run, wall_s: float, started: str) -> str:
    """The Markdown report of a run: the medians table, then each optional section."""
    med = medians(run)
    sections = [report_header(run, wall_s, started), report_table(run, med), report_failures(run),
                report_floor(run, med), report_requests(run), report_visibility(run),
                report_rss(run), report_notes(run)]
    return "\n".join(line for section in sections for line in section)


def git_rev() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                       text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "agentfs"],
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "?") + ("+dirty agentfs/" if dirty else "")


# -- main -----------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: reps 1, seq 32 MiB, 200 small files, fewer trials")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (median); default 3")
    ap.add_argument("--seq-mib", type=int, default=None, help="sequential file size; default 256")
    ap.add_argument("--n-files", type=int, default=None, help="small files; default 1000")
    ap.add_argument("--n-lines", type=int, default=1000, help="append-log lines")
    ap.add_argument("--rand-mib", type=int, default=None, help="random-write file size; default 64")
    ap.add_argument("--tar-files", type=int, default=200, help="files in the generated tarball")
    ap.add_argument("--floor-n", type=int, default=None, help="PutObject calls for the floor; 1000")
    ap.add_argument("--vis-trials", type=int, default=None, help="cross-mount trials; default 5")
    ap.add_argument("--vis-cap", type=float, default=None, help="cross-mount cap, s; default 30")
    ap.add_argument("--settle", type=float, default=None,
                    help="request counting: quiet (no PUT/POST/DELETE) seconds; default 3")
    ap.add_argument("--timeout", type=float, default=None,
                    help="per-workload limit, s; on expiry the daemon is killed (default 600)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS))
    ap.add_argument("--count", choices=["all", "small", "none"], default=None,
                    help="extra untimed request-counting pass with settle: every workload, "
                         "small-files only, or none (default: all; --quick: small)")
    ap.add_argument("--no-visibility", action="store_true", help="skip the cross-mount test")
    ap.add_argument("--no-drop", action="store_true", help="do not drop caches before reads")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (logs, stores)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p = ap.parse_args(argv)
    q = p.quick
    defaults = {"reps": (1, 3), "seq_mib": (32, 256), "n_files": (200, 1000), "rand_mib": (16, 64),
                "floor_n": (200, 1000), "vis_trials": (3, 5), "vis_cap": (10.0, 30.0),
                "settle": (2.0, 3.0), "timeout": (90.0, 600.0), "count": ("small", "all")}
    for k, (quick_v, full_v) in defaults.items():
        if getattr(p, k) is None:
            setattr(p, k, quick_v if q else full_v)
    p.targets = [t.strip() for t in p.targets.split(",") if t.strip()]
    bad = [t for t in p.targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown target(s) {bad}; choose from {TARGETS}")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parse_args(argv)
    if not shutil.which("fusermount3") or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        print("quick.py: needs /dev/fuse and fusermount3", file=sys.stderr)
        return 2
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-smoke" if p.quick else "")
    scratch = Path(tempfile.mkdtemp(prefix="agentfs-quick-"))
    say(f"scratch {scratch}; reps {p.reps}, seq {p.seq_mib} MiB, {p.n_files} small files")
    p.scratch = scratch
    run = Run(p, scratch)
    wall0 = time.perf_counter()
    rc = 0
    try:
        archive = scratch / "src.tar.gz"
        run.state["tarball"] = (archive, make_tarball(archive, p.tar_files))
        if any(t == "agentfs-s3" for t in p.targets):
            run.moto = Moto(scratch)
            say(f"moto at {run.moto.endpoint} (pid {run.moto.proc.pid})")
            run.put_floor()
        targets = [t for t in TARGETS if t in p.targets]
        for rep in range(p.reps):
            k = rep % len(targets)
            for t in targets[k:] + targets[:k]:       # rotate the order across reps
                run.one_rep(t, rep)
        if not p.no_visibility:
            for t in targets:
                if t != "local":
                    run.cross_mount(t)
        if run.moto and p.count != "none":
            run.count_requests()
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        rc = 130
    except Exception:
        say("run aborted:\n" + traceback.format_exc())
        run.notes.append("run aborted: " + traceback.format_exc().strip().splitlines()[-1])
        rc = 1
    finally:
        for m in list(AgentfsMount.registry):
            say(f"cleanup: unmounting {m.path} (pid {m.pid})")
            m.unmount(timeout=60)
        if run.moto:
            run.moto.stop()
        wall = time.perf_counter() - wall0
    md = report(run, wall, started)
    print(md)
    p.out.mkdir(parents=True, exist_ok=True)
    md_path = p.out / f"quick-{stamp}.md"
    md_path.write_text(md + "\n")
    raw = {"started": started, "wall_s": wall, "params": {k: (str(v) if isinstance(v, Path) else v)
                                                        for k, v in vars(p).items()},
           "samples": run.samples, "rss_mib": run.rss, "mount_ready_s": run.ready,
           "unmount_s": run.unmount_s, "floor": run.floor, "visibility": run.visibility,
           "requests": run.requests, "notes": run.notes, "daemon_errors": run.daemon_errors}
    (p.out / f"quick-{stamp}.json").write_text(json.dumps(raw, indent=1) + "\n")
    say(f"wrote {md_path} and {md_path.with_suffix('.json').name}; wall {wall:.0f}s")
    with open("/proc/self/mounts") as f:
        live = [ln.split()[1] for ln in f if ln.split()[1].startswith(str(scratch))]
    if p.keep or live:
        say(f"kept scratch {scratch}" + (f" (still mounted: {live})" if live else ""))
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    if rc == 0 and any(s["error"] and not s["error"].startswith("skipped") for s in run.samples):
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
