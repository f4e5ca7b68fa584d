"""``agentfs serve`` (also ``agentfs web``): the review web page.

Exit codes as every agentfs command: 64 a refused setting (an address other
than loopback without ``--auth-file``, a bad users file or ``--listen``), 2 an
unknown ``--workspace``, 1 an address that cannot be bound.

Concurrency: the command runs the server in the foreground (one trio loop,
core calls in worker threads) until SIGINT/SIGTERM.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Annotated

import typer

from agentfs.config import default_store_url
from agentfs.config import settings as env_settings

__all__ = ["register", "serve_cmd"]

EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL)")]


def serve_cmd(
    store_url: Annotated[str, typer.Argument(help="Store URL (default: the embedded store)")] = "",
    workspace: Annotated[list[str] | None, typer.Option("--workspace", "-w",
                                                        help="Serve only this workspace (repeatable)")] = None,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to listen on (port 0: any free port)")] =
        "127.0.0.1:8330",
    auth_file: Annotated[str | None, typer.Option("--auth-file", help="Users file (NAME:TOKEN lines): HTTP "
                                                  "Basic login; required beyond 127.0.0.1")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Viewers only: refuse every change")] = False,
    agent: Annotated[str, typer.Option(help="Agent recorded for changes without a login "
                                       "(default: $AGENTFS_AGENT, then the user name)")] = "",
    endpoint_url: EndpointOpt = None,
) -> None:
    """Serve the review web page: browse workspaces, approve, diff, roll back.

    Runs in the foreground until Ctrl-C / SIGTERM; prints the URL when listening.
    """
    from agentfs.web.server import serve
    from agentfs.web.settings import WebSettings, parse_listen

    host, port = parse_listen(listen)
    # The reviewer's name must be what the journal records: a server-wide
    # AGENTFS_AGENT would override every logged-in reviewer's name.
    env_agent = env_settings().agent
    os.environ.pop("AGENTFS_AGENT", None)
    settings = WebSettings(
        store_url=store_url or default_store_url(), endpoint_url=endpoint_url, workspaces=workspace or [],
        host=host, port=port, read_only=read_only,
        auth_file=os.path.abspath(auth_file) if auth_file else None,
        agent=agent or env_agent or getpass.getuser())

    def ready(urls: list[str]) -> None:
        for url in urls:
            typer.echo(f"agentfs: review page at {url}/")
        sys.stdout.flush()

    serve(settings, ready=ready)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and its alias ``web`` to the ``agentfs`` app."""
    app.command("serve")(serve_cmd)
    app.command("web", help="Same as `agentfs serve`.")(serve_cmd)
