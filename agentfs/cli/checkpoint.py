"""``agentfs checkpoint create|list|restore|fork|diff|delete|prune`` and ``agentfs gc``.

Targets are ``STORE_URL/ws`` (see ``target.py``); a checkpoint is named
``STORE_URL/ws@NAME``.  Errors print one line and exit with the error's code
(2: no such workspace or checkpoint, 64: bad argument, 1: other).
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from agentfs.config import settings
from agentfs.errors import InvalidArgument

__all__ = ["app", "gc_command"]

app = typer.Typer(no_args_is_help=True, help="Copy-on-write checkpoints of a workspace.",
                  pretty_exceptions_enable=False, rich_markup_mode=None, add_completion=False)

EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")]
StoreOpt = Annotated[str | None, typer.Option("--store", help="Store URL; TARGET is then ws (or ws@NAME) inside it")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _split_at(target: str) -> tuple[str, str | None]:
    """``STORE/ws@NAME`` -> (``STORE/ws``, ``NAME``)."""
    head, at, name = target.rpartition("@")
    if not at or "/" in name:
        return target, None
    return head, name or None


def _client(target: str, endpoint: str | None, store: str | None):
    from agentfs.api import WorkspaceClient
    from agentfs.cli.target import parse_target

    t = parse_target(target, endpoint_url=endpoint, store_url=store)
    if not t.workspace:
        raise InvalidArgument("target names no workspace (expected STORE_URL/WORKSPACE)", path=target)
    if t.path:
        raise InvalidArgument("checkpoints are of whole workspaces (no path after the workspace)", path=target)
    return WorkspaceClient(t.store, t.workspace, create=False, agent=settings().agent)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@app.command("create")
def create_cmd(target: str, name: Annotated[str | None, typer.Argument()] = None,
               note: Annotated[str, typer.Option("--note", help="Why this checkpoint")] = "",
               as_json: JsonOpt = False, endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Checkpoint a workspace now (one journal commit; no bytes copied)."""
    with _client(target, endpoint_url, store) as c:
        cp = c.checkpoint(name, note=note)
    typer.echo(cp.model_dump_json() if as_json else f"{cp.name} (seq {cp.seq}, {cp.files} files, {cp.bytes} bytes)")


@app.command("list")
def list_cmd(target: str, as_json: JsonOpt = False, endpoint_url: EndpointOpt = None,
             store: StoreOpt = None) -> None:
    """List the live checkpoints of a workspace, oldest first."""
    with _client(target, endpoint_url, store) as c:
        cps = c.checkpoints()
    if as_json:
        typer.echo(json.dumps([cp.model_dump() for cp in cps]))
        return
    if not cps:
        typer.echo("no checkpoints")  # on stdout, like `agentfs locks` / `agentfs state ls`
        return
    for cp in cps:
        typer.echo(f"{cp.name}\tseq {cp.seq}\t{_when(cp.created)}\t{cp.files} files\t{cp.by}\t{cp.note}")


@app.command("delete")
def delete_cmd(target: str, endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Delete checkpoint STORE_URL/ws@NAME (its blobs go at the next gc)."""
    ws, name = _split_at(target)
    if not name:
        raise InvalidArgument("expected STORE_URL/ws@NAME", path=target)
    with _client(ws, endpoint_url, store) as c:
        c.delete_checkpoint(name)


@app.command("restore")
def restore_cmd(target: str, name: str, as_json: JsonOpt = False,
                no_materialize: Annotated[bool, typer.Option("--no-materialize",
                                                             help="Leave copying to the natural keys to a mount")] = False,
                endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Bring a workspace back to checkpoint NAME (undoable: the head is checkpointed first)."""
    with _client(target, endpoint_url, store) as c:
        undo = c.restore(name, materialize=not no_materialize)
    if as_json:
        typer.echo(json.dumps({"restored": name, "undo": undo.name}))
    else:
        typer.echo(f"restored {name}; undo with: agentfs checkpoint restore {target} {undo.name}")


@app.command("fork")
def fork_cmd(source: Annotated[str, typer.Argument(help="STORE_URL/ws@NAME")], new_workspace: str,
             no_materialize: Annotated[bool, typer.Option("--no-materialize",
                                                          help="Leave copying to a mount of the fork")] = False,
             endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Create workspace NEW_WORKSPACE (same store) from a checkpoint."""
    ws, name = _split_at(source)
    if not name:
        raise InvalidArgument("expected STORE_URL/ws@NAME", path=source)
    with _client(ws, endpoint_url, store) as c:
        n = c.fork(name, new_workspace, materialize=not no_materialize)
    typer.echo(f"forked {name} into {new_workspace} ({n} entries)")


@app.command("diff")
def diff_cmd(a: Annotated[str, typer.Argument(help="STORE_URL/ws@A")],
             b: Annotated[str, typer.Argument(help="@B, ws@B or @head")] = "@head",
             as_json: JsonOpt = False, endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Added, removed and changed files and state (xattr) changes between two checkpoints."""
    ws, name_a = _split_at(a)
    _, name_b = _split_at(b)
    if not name_a:
        raise InvalidArgument("expected STORE_URL/ws@NAME (or @head)", path=a)
    with _client(ws, endpoint_url, store) as c:
        if not b.startswith("@") and b.rpartition("@")[0].rstrip("/").rsplit("/", 1)[-1] != c.name:
            raise InvalidArgument("diff compares checkpoints of one workspace", path=b)
        d = c.diff(name_a, name_b or "head")
    typer.echo(d.model_dump_json(indent=1) if as_json else d.markdown().rstrip())


@app.command("prune")
def prune_cmd(target: str,
              keep_last: Annotated[int | None, typer.Option("--keep-last", help="Keep the newest N")] = None,
              keep_within: Annotated[str | None, typer.Option("--keep-within",
                                                              help="Keep those younger than this (30m, 12h, 7d)")] = None,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted")] = False,
              as_json: JsonOpt = False, endpoint_url: EndpointOpt = None, store: StoreOpt = None) -> None:
    """Delete checkpoints outside the retention (kept if any rule keeps it)."""
    from agentfs.checkpoints import parse_duration

    if keep_last is None and keep_within is None:
        raise InvalidArgument("give --keep-last and/or --keep-within")
    if keep_last is not None and keep_last < 0:
        raise InvalidArgument("--keep-last must be >= 0")
    within = parse_duration(keep_within) if keep_within else None
    with _client(target, endpoint_url, store) as c:
        gone = c.prune_checkpoints(keep_last=keep_last, keep_within=within, dry_run=dry_run)
    typer.echo(json.dumps(gone) if as_json else "\n".join(f"deleted {n}" for n in gone) or "nothing to prune")


def gc_command(
    store_url: Annotated[str, typer.Argument(help="Store URL (default: the embedded store)")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be deleted")] = False,
    grace: Annotated[float, typer.Option(help="Keep blobs younger than this many seconds")] = 300.0,
    as_json: JsonOpt = False,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Delete preserved blobs that no checkpoint or fork of any workspace references."""
    from agentfs.check import workspace_names
    from agentfs.checkpoints import gc
    from agentfs.config import default_store_url
    from agentfs.store import open_store

    st = open_store(store_url or default_store_url(), endpoint_url=endpoint_url)
    rep = gc(st, workspace_names(st), dry_run=dry_run, grace=grace)
    if as_json:
        typer.echo(json.dumps(rep.__dict__))
    else:
        typer.echo(f"{rep.blobs} blobs in {rep.workspaces} workspaces: kept {rep.kept}, "
                   f"{'would delete' if dry_run else 'deleted'} {len(rep.deleted)} ({rep.bytes_freed} bytes)")
