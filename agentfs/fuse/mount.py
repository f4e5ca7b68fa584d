"""Mount lifecycle: check FUSE, daemonize, run the trio loop, unmount cleanly.

The store (and so any fsspec instance) is created only after the daemonizing
fork: fsspec instances are not fork-safe.  SIGTERM/SIGINT flush every dirty
file and end the loop; ``fusermount3 -u`` ends it too, after which dirty files
are flushed before the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import pyfuse3
import trio

from agentfs import localmounts, memory
from agentfs.config import MountConfig
from agentfs.errors import AgentFSError, InvalidArgument
from agentfs.fuse.operations import FuseNotifier, Operations, has_lock_ops
from agentfs.store import open_store
from agentfs.vfs import FileSystem

__all__ = ["fuse_problem", "run_mount"]

log = logging.getLogger(__name__)


def fuse_problem() -> str | None:
    """A one-line reason why FUSE cannot be used here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "FUSE is not available (/dev/fuse is missing); use the agentfs CLI or Python API instead"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "no permission to use /dev/fuse"
    return None


def _options(cfg: MountConfig, store_url: str) -> set[str]:
    opts = set(pyfuse3.default_options)
    # The source column of /proc/mounts names the store, so a CLI command finds
    # the mounts of its store without asking any other daemon (agentfs/localmounts.py).
    opts |= {f"fsname={localmounts.fsname(store_url)}", "subtype=agentfs", "noatime"}
    if os.getuid() == 0 or cfg.allow_other:
        opts.add("allow_other")
    if cfg.read_only:
        opts.add("ro")
    return opts


async def _serve(cfg: MountConfig, ready_fd: int | None) -> None:
    store = open_store(cfg.store_url, endpoint_url=cfg.endpoint_url)
    fs = FileSystem(store, cache_dir=Path(cfg.cache_dir), workspace=cfg.workspace, agent=cfg.agent,
                    read_only=cfg.read_only, scan_interval=cfg.scan_interval,
                    lease_ttl=cfg.lease_ttl, writeback_mode=cfg.writeback,
                    kernel_locks=cfg.kernel_locks and has_lock_ops())
    await fs.start()
    fs.notifier = FuseNotifier()
    ops = Operations(fs)
    if fs.kernel_locks is None:  # unregistered: the kernel keeps locks to this mount
        ops.flock = ops.getlk = ops.setlk = ops.unlock_owner = None  # type: ignore[assignment,method-assign]
    pyfuse3.init(ops, cfg.mountpoint, _options(cfg, store.url))
    log.info("mounted %s on %s (mount %s, agent %s)", store.url, cfg.mountpoint, fs.mount_id, fs.agent)
    if ready_fd is not None:
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
    try:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                    async for sig in sigs:
                        log.info("signal %d: flushing and unmounting", sig)
                        await fs.sync_all()
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signal)
            await fs.run_background(nursery)
            await pyfuse3.main(min_tasks=4, max_tasks=64)
            nursery.cancel_scope.cancel()
    finally:
        try:
            await fs.close()
        finally:
            # Always detach: after a signal pyfuse3.main returns with the
            # kernel mount still in place (unmounting twice is harmless).
            pyfuse3.close(unmount=True)
            store.close()
            log.info("unmounted %s", cfg.mountpoint)


def _setup_logging(cfg: MountConfig) -> None:
    handler: logging.Handler
    if cfg.log_file:
        handler = logging.FileHandler(cfg.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.log_level.upper())
    for noisy in ("botocore", "s3fs", "fsspec", "urllib3", "aiobotocore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_mount(cfg: MountConfig) -> int:
    """Mount and serve until unmounted.  Returns a process exit code.

    Without ``foreground`` the process forks; the parent returns 0 once the
    mount is live (or 1 with the child's error).
    """
    problem = fuse_problem()
    if problem:
        raise AgentFSError(problem)
    memory.tune_malloc()  # large buffers go back to the system when freed
    mp = Path(cfg.mountpoint)
    if not mp.is_dir():
        raise InvalidArgument("mountpoint is not a directory", path=str(mp))
    Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
    ready_fd: int | None = None
    if not cfg.foreground:
        r, w = os.pipe()
        pid = os.fork()
        if pid > 0:
            os.close(w)
            with os.fdopen(r, "rb") as f:
                msg = f.read().decode(errors="replace").strip()
            if msg == "ok":
                return 0
            print(msg or "agentfs: mount failed (see the log)", file=sys.stderr)
            return 1
        os.close(r)
        os.setsid()
        ready_fd = w
        # The daemon keeps none of the caller's terminal or pipes open.
        if not cfg.log_file:
            cfg = cfg.model_copy(update={"log_file": str(Path(cfg.cache_dir) / "agentfs.log")})
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    _setup_logging(cfg)
    try:
        trio.run(_serve, cfg, ready_fd)
    except (AgentFSError, RuntimeError) as e:
        # pyfuse3.init failures (e.g. mountpoint busy) arrive as RuntimeError.
        if ready_fd is None:
            raise e if isinstance(e, AgentFSError) else AgentFSError(str(e)) from None
        log.error("mount failed: %s", e)  # the daemon's log is the only trace
        os.write(ready_fd, f"agentfs: {e}\n".encode())
        return 1
    return 0
