"""CLI of agent state and the audit log: ``agentfs state ls/get/set/lifecycle``,
``agentfs log`` and ``agentfs prune``.

Reading commands (``log``, ``state ls``, ``state get``, ``state lifecycle``
without ``--set``) replay the journal in the store and never write, so they
work without a mount and while one runs.  Changing commands go through the
same core as a mount (validation, journal records, STATE.md).

Exit codes as every agentfs command: 2 no such workspace/path, 64 a bad
argument or value (e.g. a forbidden status transition), 1 otherwise.  A
damaged journal record is reported on stderr (``agentfs: damaged journal
record ...``) and skipped; it never crashes the reader.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from agentfs import agentstate
from agentfs.config import settings
from agentfs.errors import InvalidArgument, NotFound
from agentfs.journal import Journal
from agentfs.models import CheckpointOp, Commit, Lifecycle, MoveOp, StateRow

__all__ = ["log_cmd", "parse_since", "prune_cmd", "register", "state_app"]

#: Tables keep their width when piped (rich would assume 80 columns).
out = Console(width=None if sys.stdout.isatty() else 240)
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Store URL; TARGET is then ws/path inside it")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]

state_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Agent state (user.agentfs.* attributes): query and change it.")

#: Bookkeeping records hidden by ``agentfs log`` unless ``--all``.
QUIET_ACTIONS = frozenset({"touch-dir"})


def _target(target: str, endpoint_url: str | None, store: str | None, *, need_path: bool = False):
    from agentfs.cli.target import parse_target

    t = parse_target(target, endpoint_url=endpoint_url, store_url=store)
    if not t.workspace:
        raise InvalidArgument("target names no workspace (expected STORE_URL/WORKSPACE[/PATH])", path=target)
    if need_path and not t.path:
        raise InvalidArgument("target names no file (expected STORE_URL/WORKSPACE/PATH)", path=target)
    return t


def _warn_damaged(damaged: list[agentstate.Damaged]) -> None:
    for d in damaged:
        typer.echo(f"agentfs: damaged journal record {d.key} (seq {d.seq}): {d.reason}", err=True)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``30m``, ``2h``, ``1d``) or an
    ISO date/time (``2026-11-24``, ``2026-11-24T06:00``; UTC unless it has an offset)."""
    now = time.time() if now is None else now
    s = text.strip()
    if re.fullmatch(r"(\d+(?:\.\d+)?[smhdw])+|\d+(?:\.\d+)?", s):
        try:
            return now - agentstate.parse_duration(s)
        except InvalidArgument:
            pass
    try:
        when = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument("bad --since (use 30m, 2h, 1d or an ISO time like 2026-11-24T06:00)",
                              path=text) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


# -- agentfs log --------------------------------------------------------------------------------


def _under(p: str, prefix: str) -> bool:
    return not prefix or p == prefix or p.startswith(prefix + "/")


def _details(action: str, detail: dict[str, Any]) -> str:
    if action == "state":
        return agentstate.describe_change(detail)
    parts = []
    for k, v in detail.items():
        if v is None:
            continue
        if k in ("sha256", "etag") and isinstance(v, str):
            v = v[:12]
        parts.append(f"{k}={v}")
    return " ".join(parts)


def log_rows(commits: list[Commit | agentstate.Damaged], *, path: str = "", agent: str | None = None,
             since: float | None = None, actions: list[str] | None = None,
             show_all: bool = False) -> list[dict[str, Any]]:
    """Flatten journal objects to one row per record, filtered.  A damaged
    object becomes a row with ``action: "damaged"`` (kept whatever the filters)."""
    rows: list[dict[str, Any]] = []
    for c in commits:
        if isinstance(c, agentstate.Damaged):
            rows.append({"seq": c.seq, "time": None, "agent": None, "action": "damaged", "path": c.key,
                         "error": c.reason})
            continue
        for r in c.records:
            if r.action in QUIET_ACTIONS and not show_all and r.action not in (actions or []):
                continue
            if agent is not None and r.agent != agent:
                continue
            if since is not None and r.time < since:
                continue
            if actions and r.action not in actions:
                continue
            if isinstance(r.op, MoveOp):
                if path and not (_under(r.op.src, path) or _under(r.op.dst, path)):
                    continue
                p, extra = f"{r.op.src} -> {r.op.dst}", {"src": r.op.src, "dst": r.op.dst}
            elif isinstance(r.op, CheckpointOp):
                if path:
                    continue
                p, extra = f"@{r.op.name}", {"checkpoint": r.op.name}
            else:
                if path and not _under(r.op.path, path):
                    continue
                p, extra = r.op.path, {}
            rows.append({"seq": c.seq, "time": r.time, "iso_time": _iso(r.time), "agent": r.agent,
                         "pid": r.pid, "uid": r.uid, "mount": c.mount, "host": c.host, "action": r.action,
                         "path": p, **extra, **dict(r.detail.items())})
    return rows


def log_cmd(
    target: Annotated[str, typer.Argument(help="STORE_URL/WORKSPACE[/PATH]")],
    agent: Annotated[str | None, typer.Option("--agent", help="Only records by this agent")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only records since: 30m, 2h, 1d, or ISO time")] = None,
    action: Annotated[list[str] | None, typer.Option("--action", help="Only this action (repeatable): "
                                                     "create, write, rename, delete, mkdir, state, ...")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many records, the newest (0: all)")] = 50,
    show_all: Annotated[bool, typer.Option("--all", help="Include bookkeeping records (touch-dir)")] = False,
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """Show the audit log of a workspace: who changed what, when (PATH: a file or a directory's subtree)."""
    t = _target(target, endpoint_url, store)
    since_t = parse_since(since) if since else None
    j = Journal(t.store, t.workspace)
    commits = list(agentstate.read_records(j))
    if not commits and not j.exists():
        raise NotFound("no such workspace", path=t.workspace)
    rows = log_rows(commits, path=t.path, agent=agent, since=since_t, actions=action, show_all=show_all)
    _warn_damaged([c for c in commits if isinstance(c, agentstate.Damaged)])
    if limit > 0:
        rows = rows[-limit:]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(box=None)
    for col in ("seq", "time (UTC)", "agent", "pid", "action"):
        table.add_column(col, no_wrap=True)
    for col in ("path", "details"):
        table.add_column(col, overflow="fold")
    for r in rows:
        if r["action"] == "damaged":
            table.add_row(str(r["seq"]), "", "", "", "DAMAGED", r["path"], r["error"])
            continue
        extra = {k: v for k, v in r.items() if k not in ("seq", "time", "iso_time", "agent", "pid", "uid", "mount",
                                                         "host", "action", "path", "src", "dst")}
        details = _details(r["action"], extra)
        if r["agent"] == agentstate.TTL_AGENT:
            details = "ttl expired"
        table.add_row(str(r["seq"]), r["iso_time"].replace("T", " ").rstrip("Z"), str(r["agent"]),
                      "" if r["pid"] is None else str(r["pid"]), r["action"], r["path"], details)
    out.print(table)


# -- agentfs state ------------------------------------------------------------------------------


def _rows_table(rows: list[StateRow]) -> Table:
    table = Table(box=None)
    for col in ("path", "status", "owner", "task", "labels", "ttl", "updated by", "updated at", "note"):
        table.add_column(col, overflow="fold", no_wrap=col in ("status", "ttl", "updated at"))
    for r in rows:
        note = (r.note or "").splitlines()[0][:40] if r.note else ""
        table.add_row(r.path + ("/" if r.kind == "dir" else ""), r.status or "", r.owner or "", r.task or "",
                      ",".join(r.labels), agentstate.format_ttl(r), r.updated_by or "",
                      (r.updated_at or "").replace("T", " ").rstrip("Z"), note)
    return table


@state_app.command("ls")
def state_ls(
    target: Annotated[str, typer.Argument(help="STORE_URL/WORKSPACE[/DIR]")],
    status: Annotated[str | None, typer.Option("--status", help="Only this status")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Only files owned by this agent")] = None,
    label: Annotated[str | None, typer.Option("--label", help="Only files with this label")] = None,
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """List files with agent state (answered from the journal, no mount needed)."""
    t = _target(target, endpoint_url, store)
    ns, damaged, _ = agentstate.replay(t.store, t.workspace)
    _warn_damaged(damaged)
    rows = agentstate.state_rows(ns, status=status, owner=owner, label=label, under=t.path)
    if as_json:
        typer.echo(json.dumps([r.model_dump() for r in rows]))
        return
    if not rows:
        typer.echo("no files with agent state" + (" match" if status or owner or label else ""))
        return
    out.print(_rows_table(rows))


@state_app.command("get")
def state_get(
    target: Annotated[str, typer.Argument(help="STORE_URL/WORKSPACE/PATH")],
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """Show the agent state of one file or directory."""
    t = _target(target, endpoint_url, store, need_path=True)
    ns, damaged, _ = agentstate.replay(t.store, t.workspace)
    _warn_damaged(damaged)
    node = ns.resolve(t.path.strip("/"))
    if node is None:
        raise NotFound("no such file", path=t.path)
    row = agentstate.row_of(t.path.strip("/"), node.entry)
    if as_json:
        typer.echo(json.dumps(row.model_dump() if row else None))
        return
    if row is None:
        typer.echo("no agent state")
        return
    for k, v in row.model_dump().items():
        if k == "expires_at" and v is not None:
            v = f"{_iso(v)} ({agentstate.format_ttl(row)})"
        if v not in (None, [], ""):
            typer.echo(f"{k}: {', '.join(v) if isinstance(v, list) else v}")


@state_app.command("set")
def state_set(
    target: Annotated[str, typer.Argument(help="STORE_URL/WORKSPACE/PATH")],
    fields: Annotated[list[str], typer.Argument(help="FIELD=VALUE ... (status, owner, task, labels, ttl, note); "
                                                "FIELD= removes it", metavar="FIELD=VALUE...")],
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """Set agent state on a file, validated like a setxattr through a mount."""
    from agentfs.api import WorkspaceClient

    t = _target(target, endpoint_url, store, need_path=True)
    values: dict[str, str | None] = {}
    for f in fields:
        key, eq, value = f.partition("=")
        if not eq or not key:
            raise InvalidArgument("expected FIELD=VALUE", path=f)
        if key not in agentstate.ATTRS or not agentstate.ATTRS[key].stamped or key == "lifecycle":
            raise InvalidArgument("unknown field (status, owner, task, labels, ttl, note)", path=key)
        values[key] = value or None
    with WorkspaceClient(t.store, t.workspace, agent=settings().agent) as client:
        row = client.set_state(t.path, **values)
    if as_json:
        typer.echo(json.dumps(row.model_dump() if row else None))
    elif row is not None:
        out.print(_rows_table([row]))


@state_app.command("lifecycle")
def state_lifecycle(
    target: Annotated[str, typer.Argument(help="STORE_URL/WORKSPACE")],
    set_: Annotated[str | None, typer.Option("--set", help="New lifecycle: JSON, or @FILE with JSON")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Back to the default lifecycle")] = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """Show (or set) the workspace's status lifecycle, as JSON."""
    from agentfs.api import WorkspaceClient

    t = _target(target, endpoint_url, store)
    name = agentstate.PREFIX + "lifecycle"
    if set_ is None and not reset:
        ns, damaged, _ = agentstate.replay(t.store, t.workspace)
        _warn_damaged(damaged)
        typer.echo(agentstate.lifecycle_of(ns.root.entry).model_dump_json(indent=2, exclude_none=True))
        return
    with WorkspaceClient(t.store, t.workspace, agent=settings().agent) as client:
        if reset:
            if name in client.listxattr(""):
                client.removexattr("", name)
            lc = Lifecycle.default()
        else:
            assert set_ is not None
            raw = open(set_[1:], "rb").read() if set_.startswith("@") else set_.encode()
            client.setxattr("", name, raw)
            lc = Lifecycle.model_validate_json(client.getxattr("", name))
    typer.echo(lc.model_dump_json(indent=2, exclude_none=True))


# -- agentfs prune ------------------------------------------------------------------------------


def prune_cmd(
    target: Annotated[str, typer.Argument(help="STORE_URL/WORKSPACE")],
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only list what would be removed")] = False,
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
    store: StoreOpt = None,
) -> None:
    """Remove files and directories whose user.agentfs.ttl expired (offline; a mount does it by itself)."""
    from agentfs.api import WorkspaceClient

    t = _target(target, endpoint_url, store)
    with WorkspaceClient(t.store, t.workspace, agent=settings().agent) as client:
        gone = client.prune(dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(gone))
        return
    for p in gone:
        typer.echo(("would remove " if dry_run else "removed ") + p)
    if not gone:
        typer.echo("nothing expired")


def register(app: typer.Typer) -> None:
    """Add these commands to the ``agentfs`` app."""
    app.add_typer(state_app, name="state")
    app.command("log")(log_cmd)
    app.command("prune")(prune_cmd)
