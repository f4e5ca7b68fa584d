"""The ``agentfs`` command.

Every command has ``--help``; every listing has ``--json``.  Errors print one
line (``agentfs: <message>``) and exit with the error's documented code:
1 generic, 2 not found (also a missing local file), 64 bad usage/argument,
69 store unavailable, 70 unexpected internal error; ``check`` exits 1 when it finds inconsistencies.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agentfs.cli import state as _state_cli
from agentfs.config import MountConfig, default_store_path, default_store_url, settings
from agentfs.errors import AgentFSError, AlreadyExists, InvalidArgument, IsADirectory, NotFound

__all__ = ["app", "main"]

log = logging.getLogger(__name__)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="agentfs: file-state and checkpoint-state for AI agents, over object storage.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Store URL; TARGET is then ws/path inside it")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _client(target: str, endpoint: str | None, store: str | None, *, create: bool = False):
    from agentfs.api import WorkspaceClient
    from agentfs.cli.target import parse_target

    t = parse_target(target, endpoint_url=endpoint, store_url=store)
    if not t.workspace:
        raise InvalidArgument("target names no workspace (expected STORE_URL/WORKSPACE[/PATH])", path=target)
    return WorkspaceClient(t.store, t.workspace, create=create, agent=settings().agent), t.path


def _version(value: bool) -> None:
    if value:
        from agentfs import __version__

        typer.echo(f"agentfs {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit")] = False,
) -> None:
    """agentfs: file-state and checkpoint-state for AI agents, over object storage."""


# -- mounting ---------------------------------------------------------------------


@app.command()
def mount(
    args: Annotated[list[str], typer.Argument(help="[STORE_URL] MOUNTPOINT", metavar="[STORE_URL] MOUNTPOINT")],
    workspace: Annotated[str | None, typer.Option("--workspace", "-w", help="Mount only this workspace")] = None,
    foreground: Annotated[bool, typer.Option("--foreground", "-f", help="Do not daemonize")] = False,
    agent: Annotated[str, typer.Option(help="Agent name recorded for changes (default: $AGENTFS_AGENT, uid)")] = "",
    cache_dir: Annotated[str | None, typer.Option(help="Local cache directory")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Mount read-only")] = False,
    endpoint_url: EndpointOpt = None,
    allow_other: Annotated[bool, typer.Option(help="Let other users access the mount")] = False,
    scan_interval: Annotated[float, typer.Option(help="Seconds between scans for external writes (0: off)")] = 60.0,
    log_file: Annotated[str | None, typer.Option(help="Log file (default: stderr)")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    lease_ttl: Annotated[float, typer.Option(help="Seconds a lock lease lives without renewal")] = 30.0,
    writeback: Annotated[bool, typer.Option(
        "--writeback", envvar="AGENTFS_WRITEBACK", help="close() returns once the file is in a crash-safe local queue; "
                            "uploads follow in the background (fsync and unmount wait for them)")] = False,
    kernel_locks: Annotated[bool, typer.Option(
        "--kernel-locks/--no-kernel-locks",
        help="flock/fcntl locks exclude holders on every mount of the store (default); "
             "--no-kernel-locks keeps them to this mount")] = True,
) -> None:
    """Mount a store (every top-level directory is a workspace) or one workspace.

    STORE_URL: s3://bucket[/prefix], file:///path, memory://name; default: the
    embedded local store (see `agentfs where`).
    """
    from agentfs.fuse.mount import run_mount

    if len(args) == 1:
        store_url, mountpoint = default_store_url(), args[0]
    elif len(args) == 2:
        store_url, mountpoint = args
    else:
        raise InvalidArgument("expected [STORE_URL] MOUNTPOINT")
    cfg = MountConfig(
        store_url=store_url, mountpoint=os.path.abspath(mountpoint), workspace=workspace,
        foreground=foreground, agent=agent or settings().agent,
        read_only=read_only, endpoint_url=endpoint_url, allow_other=allow_other,
        scan_interval=scan_interval, log_file=os.path.abspath(log_file) if log_file else None,
        log_level=log_level, lease_ttl=lease_ttl, writeback=writeback, kernel_locks=kernel_locks, **({"cache_dir": os.path.abspath(cache_dir)} if cache_dir else {}),
    )
    raise typer.Exit(run_mount(cfg))


def _mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f)


@app.command()
def umount(
    mountpoint: str,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the daemon to finish")] = 120.0,
) -> None:
    """Flush pending uploads, unmount, and wait for the mount daemon to exit."""
    from agentfs.vfs import CONTROL_PID, CONTROL_SYNC

    if not _mounted(mountpoint):
        raise InvalidArgument("not mounted", path=mountpoint)
    pid = None
    try:
        pid = int(os.getxattr(mountpoint, CONTROL_PID))
        os.setxattr(mountpoint, CONTROL_SYNC, b"1")
    except OSError as e:
        log.debug("control channel: %s", e)
    r = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if r.returncode != 0:
        raise AgentFSError((r.stderr.strip() or "fusermount3 failed").splitlines()[-1])
    deadline = time.monotonic() + timeout
    while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.05)


@app.command()
def where() -> None:
    """Print the directory of the embedded default store."""
    typer.echo(str(default_store_path()))


# -- files ----------------------------------------------------------------------------


@app.command("ls")
def ls_cmd(
    target: str,
    long: Annotated[bool, typer.Option("-l", help="Long listing")] = False,
    recursive: Annotated[bool, typer.Option("-R", "--recursive", help="List subdirectories too")] = False,
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """List a directory of a workspace (or the workspaces of a store)."""
    from agentfs.check import workspace_names
    from agentfs.cli.target import parse_target

    t = parse_target(target, endpoint_url=endpoint_url, store_url=store)
    if not t.workspace:
        names = workspace_names(t.store)
        typer.echo(json.dumps(names) if as_json else "\n".join(names))
        return
    client, path = _client(target, endpoint_url, store)
    with client:
        st = client.stat(path)
        if st.kind == "dir":
            entries = list(client.walk(path)) if recursive else [client.stat(f"{path}/{n}" if path else n)
                                                                 for n in client.listdir(path)]
        else:
            entries = [st]
    if as_json:
        typer.echo(json.dumps([e.as_dict() for e in entries]))
        return
    if not long:
        for e in entries:
            if st.kind != "dir":  # a file target prints its own path, like ls(1) given a file
                name = e.path
            else:
                name = e.path[len(path):].lstrip("/") if path and e.path.startswith(path) else e.path
            typer.echo(name + ("/" if e.kind == "dir" else ""))
        return
    table = Table(box=None, show_header=True)
    for col in ("mode", "size", "modified", "name"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for e in entries:
        kind = {"dir": "d", "symlink": "l"}.get(e.kind, "-")
        name = e.path + (f" -> {e.target}" if e.target else "")
        table.add_row(f"{kind}{e.mode:04o}", str(e.size),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.mtime_ns / 1e9)), name)
    out.print(table)


@app.command()
def cat(target: str, endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Write a file's bytes to stdout."""
    client, path = _client(target, endpoint_url, store)
    if not path.strip("/"):  # the workspace root, as for any directory (after _client: NotFound first)
        client.close()
        raise IsADirectory(path=target)
    with client, client.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def _transfer(total: int, label: str, run) -> None:
    """Run ``run(progress_callback_or_None)``, with a progress bar for a large
    transfer on a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if total < (8 << 20) or not sys.stderr.isatty():
        run(None)
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=Console(stderr=True), transient=True) as p:
        task = p.add_task(label, total=total)
        run(lambda n: p.advance(task, n))


@app.command()
def put(local: str, target: str, endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Upload a local file (use - for stdin); durable in the store on return."""
    if local != "-" and not os.path.exists(local):  # before _client: no workspace is created
        raise NotFound(path=local)
    client, path = _client(target, endpoint_url, store, create=True)
    with client:
        if not path or (client.exists(path) and client.stat(path).kind == "dir"):
            path = f"{path}/{Path(local).name}".strip("/")
        parent = path.rpartition("/")[0]
        if parent and not client.exists(parent):
            client.mkdir(parent, parents=True)  # like `aws s3 cp`: parents are implied
        if local == "-":
            client.write_bytes(path, sys.stdin.buffer.read())
            return
        _transfer(os.path.getsize(local), f"put {path}",
                  lambda progress: client.upload(local, path, progress=progress))


@app.command()
def get(target: str, local: str, endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Download a file to a local path (a directory keeps the name)."""
    client, path = _client(target, endpoint_url, store)
    with client:
        dst = Path(local)
        if dst.is_dir():
            dst = dst / Path(path).name
        _transfer(client.stat(path).size, f"get {path}",
                  lambda progress: client.download(path, dst, progress=progress))


@app.command()
def rm(
    target: str,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Remove directories and their contents")] = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """Remove a file (or, with -r, a directory tree)."""
    client, path = _client(target, endpoint_url, store)
    with client:
        if client.stat(path).kind == "dir":
            if not recursive:
                raise IsADirectory("is a directory (use -r)", path=path)
            client.rmtree(path)
        else:
            client.remove(path)


@app.command()
def mkdir(
    target: str,
    parents: Annotated[bool, typer.Option("-p", "--parents", help="Create missing parents; no error if it exists")] = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """Create a directory (or a workspace, when TARGET names only a workspace)."""
    try:
        client, path = _client(target, endpoint_url, store)
    except NotFound:  # no such workspace yet: create it
        client, path = _client(target, endpoint_url, store, create=True)
    else:
        if not path.strip("/") and not parents:  # an existing workspace is EEXIST like a directory
            client.close()
            raise AlreadyExists(path=target)
    with client:
        if path:
            client.mkdir(path, parents=parents)


@app.command()
def mv(src: str, dst: str, endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Rename within one workspace: DST is written like SRC (STORE/ws/a STORE/ws/b, or ws/a ws/b).

    After a full SRC (a URL or an absolute path) a relative DST is a path
    inside SRC's workspace (agentfs mv s3://bkt/ws/a old/a).
    """
    from agentfs.cli.target import parse_target

    def full(arg: str) -> bool:
        return "://" in arg or arg.startswith("/")

    client, path = _client(src, endpoint_url, store)
    with client:
        if store or full(dst) or not full(src):
            t = parse_target(dst, endpoint_url=endpoint_url, store_url=store)
            if t.workspace != client.name or t.store.url != client.store.url:
                raise InvalidArgument(f"mv works within one workspace: DST must be {client.name}/PATH "
                                      "(written like SRC)", path=dst)
            dst = t.path
        dst = dst.strip("/")
        if not dst:
            raise InvalidArgument("DST names no path inside the workspace")
        client.rename(path, dst)


# -- administration -----------------------------------------------------------------------


@app.command()
def workspaces(store_url: Annotated[str, typer.Argument()] = "", as_json: JsonOpt = False,
               endpoint_url: EndpointOpt = None) -> None:
    """List the workspaces of a store."""
    from agentfs.check import workspace_names
    from agentfs.store import open_store

    names = workspace_names(open_store(store_url or default_store_url(), endpoint_url=endpoint_url))
    typer.echo(json.dumps(names) if as_json else "\n".join(names))


@app.command()
def check(
    store_url: Annotated[str, typer.Argument(help="Store URL (default: the embedded store)")] = "",
    workspace: Annotated[list[str] | None, typer.Option("--workspace", "-w", help="Check only this workspace (repeatable)")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Remove leftovers, adopt external writes")] = False,
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Check that the journal and the objects of a store agree (exit 1 if not)."""
    from agentfs.check import check_store
    from agentfs.store import open_store

    rep = check_store(open_store(store_url or default_store_url(), endpoint_url=endpoint_url),
                      workspace or None, repair=repair)
    if as_json:
        typer.echo(rep.model_dump_json(indent=2))
    else:
        for w in rep.workspaces:
            status = "ok" if not w.errors else f"{len(w.errors)} errors"
            typer.echo(f"{w.workspace}: seq {w.seq}, {w.files} files, {w.dirs} dirs: {status}")
            for line in w.errors:
                typer.echo(f"  error: {line}")
            for line in w.notices:
                typer.echo(f"  notice: {line}")
            for line in w.repaired:
                typer.echo(f"  repaired: {line}")
        for line in rep.errors:
            typer.echo(f"error: {line}")
        for line in rep.notices:
            typer.echo(f"notice: {line}")
        typer.echo("consistent" if rep.clean else "INCONSISTENT")
    raise typer.Exit(0 if rep.clean else 1)


# Agent state and the audit log: state ls/get/set/lifecycle, log, prune.
_state_cli.register(app)


# locks: `agentfs lock`, `agentfs locks`
from agentfs.cli.locks import register as _register_locks  # noqa: E402

_register_locks(app)


# checkpoints (agentfs/cli/checkpoint.py)
from agentfs.cli import checkpoint as _checkpoint  # noqa: E402

app.add_typer(_checkpoint.app, name="checkpoint")
app.command("gc")(_checkpoint.gc_command)


# the MCP server (agentfs/cli/mcp.py, agentfs/mcp_server.py)
from agentfs.cli.mcp import register as _register_mcp  # noqa: E402

_register_mcp(app)


# the review web page: `agentfs serve` (agentfs/cli/web.py, agentfs/web/)
from agentfs.cli.web import register as _register_web  # noqa: E402

_register_web(app)


def main() -> None:
    """Entry point: run the app, turning errors into one line and an exit code."""
    logging.basicConfig(level=settings().log,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "s3fs", "fsspec", "urllib3", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        # without standalone mode click *returns* the code of a
        # typer.Exit instead of raising it; it used to be dropped (exit 0).
        rc = app(standalone_mode=False)
    except AgentFSError as e:
        typer.echo(f"agentfs: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        typer.echo(f"agentfs: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), err=True)
        sys.exit(2 if e.errno == errno.ENOENT else 1)  # a missing local file is "not found" too
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("agentfs: aborted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors and the unexpected
        # typer vendors its own click, so recognise its exceptions by shape.
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(64 if code == 2 else code or 1)
        typer.echo(f"agentfs: internal error: {type(e).__name__}: {e}", err=True)
        log.debug("internal error", exc_info=True)
        sys.exit(70)
    sys.exit(rc if isinstance(rc, int) else 0)
