"""``agentfs lock`` (flock(1) with leases across mounts) and ``agentfs locks``.

``agentfs lock [-s|-x] [-n] [-w SECONDS] [-E CODE] FILE -- COMMAND...`` takes a
kernel ``flock`` on FILE and, when FILE is on an agentfs mount, a lease in the
store (through the xattr ``user.agentfs.lock``: the mount owns the lease and
renews it while this process lives), runs COMMAND, and releases both.

Exit codes follow util-linux flock(1): the command's own exit code (128+N
when it died of signal N); 1, or the ``-E`` code, when the lock was not
obtained (``-n`` or ``-w`` timeout); 64 bad usage, or FILE not on an agentfs
mount (use flock(1) there); 66 FILE cannot be opened;
69 the command cannot be executed; ``--break`` exits 0 (2 when there is no
such workspace).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Annotated

import typer

from agentfs.config import settings
from agentfs.errors import AgentFSError, InvalidArgument, WouldBlock

__all__ = ["lock_command", "locks_command", "register"]

EX_USAGE = 64
EX_NOINPUT = 66
EX_UNAVAILABLE = 69


def _break(target: str, endpoint_url: str | None, store: str | None) -> None:
    """Clear a lease: through the mount for a mounted file, else in the store (audited either way)."""
    from agentfs.locks import LOCK_XATTR, on_agentfs

    if store is None and os.path.lexists(target) and on_agentfs(target):
        os.setxattr(target, LOCK_XATTR, b"break")
        typer.echo(f"lease on {target} broken")
        return
    from agentfs.api import WorkspaceClient
    from agentfs.cli.target import parse_target
    from agentfs.locks import LeaseStore, break_record

    t = parse_target(target, endpoint_url=endpoint_url, store_url=store)
    if not t.workspace or not t.path:
        raise InvalidArgument("expected a mounted FILE or STORE_URL/WORKSPACE/PATH", path=target)
    client = WorkspaceClient(t.store, t.workspace, agent=settings().agent)
    with client:
        old = LeaseStore(t.store, t.workspace).break_(t.path)
        rec = break_record(t.path, old, client.caller, client.caller.agent)
        client._run(client._w.commit, [rec])
    held = "; ".join(f"{h.agent}@{h.host} pid {h.pid} token {h.token}" for h in old.holders) if old else ""
    typer.echo(f"lease on {t.workspace}/{t.path} broken" + (f" (was held by {held})" if held else " (was free)"))


def _command_of(args: list[str], *, shared: bool, exclusive: bool, conflict_exit_code: int,
                wait: float | None, command: str | None) -> tuple[str, list[str], str | None]:
    """Check ``agentfs lock``'s arguments: (FILE, the COMMAND's argv, the ``-c`` command).

    flock(1)'s forms are accepted: ``FILE -- COMMAND...``, ``FILE COMMAND...``
    and ``FILE -c COMMAND``.  Raises InvalidArgument (exit 64) on bad usage.
    """
    args = list(args)
    if args[1:2] == ["--"]:
        del args[1]
    if not args:
        raise InvalidArgument("expected FILE -- COMMAND...")
    if shared and exclusive:
        raise InvalidArgument("-s and -x exclude each other")
    if not 0 <= conflict_exit_code <= 255:
        raise InvalidArgument("the conflict exit code must be in 0..255")
    if wait is not None and wait < 0:
        raise InvalidArgument("the timeout must not be negative")
    target, cmd = args[0], args[1:]
    if cmd[:1] in (["-c"], ["--command"]) and command is None:  # flock FILE -c COMMAND
        if len(cmd) != 2:
            raise InvalidArgument("-c takes exactly one argument")
        command, cmd = cmd[1], []
    return target, cmd, command


def _run_locked(target: str, cmd: list[str], *, shared: bool, wait: float | None,
                conflict_exit_code: int) -> None:
    """Run ``cmd`` holding the lock on ``target``; always ends in typer.Exit (the command's code).

    Exit codes: ``conflict_exit_code`` when the lock is not obtained, 66 when
    FILE cannot be opened, 69 when the command cannot be executed, else the
    command's own (128+N when it died of signal N).  AgentFSError propagates.
    """
    from agentfs.locks import FileLock

    fl = FileLock(target, shared=shared, wait=wait)
    try:
        fl.acquire()
    except WouldBlock as e:
        typer.echo(f"agentfs: {e}", err=True)
        raise typer.Exit(conflict_exit_code) from None
    except AgentFSError:
        raise  # an OSError too, but not one about opening the file
    except OSError as e:
        typer.echo(f"agentfs: cannot open lock file {target}: {e.strerror}", err=True)
        raise typer.Exit(EX_NOINPUT) from None
    try:
        try:
            proc = subprocess.Popen(cmd)
        except OSError as e:
            typer.echo(f"agentfs: failed to execute {cmd[0]}: {e.strerror}", err=True)
            raise typer.Exit(EX_UNAVAILABLE) from None
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                continue  # the child got the signal too; wait for it
    finally:
        fl.release()
    raise typer.Exit(128 - rc if rc < 0 else rc)


def lock_command(
    args: Annotated[list[str] | None, typer.Argument(help="FILE [--] COMMAND [ARG...]",
                                                      metavar="FILE -- COMMAND...")] = None,
    shared: Annotated[bool, typer.Option("-s", "--shared", help="Shared lock")] = False,
    exclusive: Annotated[bool, typer.Option("-x", "-e", "--exclusive", help="Exclusive lock (default)")] = False,
    nonblock: Annotated[bool, typer.Option("-n", "--nonblock", help="Fail rather than wait")] = False,
    wait: Annotated[float | None, typer.Option("-w", "--wait", "--timeout",
                                               help="Fail after waiting this many seconds")] = None,
    conflict_exit_code: Annotated[int, typer.Option("-E", "--conflict-exit-code",
                                                    help="Exit code when the lock is not obtained")] = 1,
    command: Annotated[str | None, typer.Option("-c", "--command", help="Run this via sh -c")] = None,
    break_: Annotated[bool, typer.Option("--break", help="Clear a stale lease on FILE (audited)")] = False,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Store URL (with --break)")] = None,
) -> None:
    """Run COMMAND holding a lock on FILE, on this mount and across mounts (flock(1) options)."""
    from agentfs.locks import on_agentfs

    target, cmd, command = _command_of(args or [], shared=shared, exclusive=exclusive,
                                       conflict_exit_code=conflict_exit_code, wait=wait,
                                       command=command)
    if break_:
        if cmd or command:
            raise InvalidArgument("--break takes no command")
        _break(target, endpoint_url, store)
        return
    if command is not None:
        if cmd:
            raise InvalidArgument("-c takes the whole command")
        cmd = [os.environ.get("SHELL") or "/bin/sh", "-c", command]
    if not cmd:
        raise InvalidArgument("expected a COMMAND after FILE")
    if not on_agentfs(target):  # checked before the file is opened (or created)
        raise InvalidArgument("not on an agentfs mount (for a local file use flock(1))", path=target)
    _run_locked(target, cmd, shared=shared, wait=0.0 if nonblock else wait,
                conflict_exit_code=conflict_exit_code)


def locks_command(
    target: Annotated[str, typer.Argument(help="STORE_URL/WORKSPACE")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Also list free leases (their last token)")] = False,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Store URL; TARGET is then a workspace")] = None,
) -> None:
    """List the leases of a workspace (who holds what, until when); needs no mount."""
    from agentfs.cli.target import parse_target
    from agentfs.locks import LeaseStore, lease_json

    t = parse_target(target, endpoint_url=endpoint_url, store_url=store)
    if not t.workspace:
        raise InvalidArgument("target names no workspace (expected STORE_URL/WORKSPACE)", path=target)
    now = time.time()
    rows = [lease_json(le, now) for le in LeaseStore(t.store, t.workspace).list(include_free=all_)]
    if t.path:
        rows = [r for r in rows if r["path"] == t.path or r["path"].startswith(t.path.rstrip("/") + "/")]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no leases held")
        return
    for r in rows:
        holders = ", ".join(f"{h['agent']}@{h['host']} pid {h['pid']} (token {h['token']}, "
                            f"expires in {h['expires_in']:.0f}s)" for h in r["holders"]) or "free"
        typer.echo(f"{r['path']}\t{r['mode'] or '-'}\ttoken {r['token']}\t{holders}")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add ``lock`` and ``locks`` to the ``agentfs`` app."""
    # lock passes everything after FILE to COMMAND, options included (flock(1) does)
    app.command("lock", context_settings={"allow_interspersed_args": False,
                                          "ignore_unknown_options": True})(lock_command)
    app.command("locks")(locks_command)
