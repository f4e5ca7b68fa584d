"""``agentfs mcp [STORE_URL/]WORKSPACE``: serve a workspace over MCP (stdio).

The server (:mod:`agentfs.mcp_server`) speaks MCP on stdin/stdout, so nothing
else may write to stdout: logs go to stderr (``--log-level``).  Exit codes as
every agentfs command: 2 no such workspace, 64 a bad argument, 69 the store is
unavailable; 0 when the client closed the session.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from agentfs.config import settings as env_settings
from agentfs.errors import InvalidArgument

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``mcp`` to the ``agentfs`` app."""

    @app.command("mcp")
    def mcp_cmd(
        target: Annotated[str, typer.Argument(help="[STORE_URL/]WORKSPACE (ws alone: the embedded store)")],
        agent: Annotated[str, typer.Option(help="Agent name recorded for changes (default: $AGENTFS_AGENT, "
                                                "then the MCP client's name)")] = "",
        read_only: Annotated[bool, typer.Option("--read-only", help="Serve only the reading tools")] = False,
        create: Annotated[bool, typer.Option("--create", help="Create the workspace if it does not exist")] = False,
        max_read_bytes: Annotated[int, typer.Option(help="Largest read one tool call returns (bytes)")] = 1 << 20,
        lease_ttl: Annotated[float, typer.Option(help="Seconds a lock lease lives without renewal")] = 30.0,
        log_level: Annotated[str, typer.Option(help="debug, info, warning (default), error; to stderr")] = "warning",
        endpoint_url: Annotated[str | None, typer.Option("--endpoint-url",
                                                         help="S3 endpoint (default: $AWS_ENDPOINT_URL)")] = None,
        store: Annotated[str | None, typer.Option("--store", help="Store URL; TARGET is then a workspace")] = None,
    ) -> None:
        """Serve one workspace over the Model Context Protocol on stdin/stdout (for Claude Code, Cursor, ...)."""
        from agentfs.api import WorkspaceClient
        from agentfs.cli.target import parse_target
        from agentfs.mcp_server import McpSettings, serve_stdio

        level = getattr(logging, log_level.upper(), None)
        if not isinstance(level, int):
            raise InvalidArgument("bad --log-level (debug, info, warning, error)", path=log_level)
        logging.getLogger().setLevel(level)
        if max_read_bytes < 1:
            raise InvalidArgument("--max-read-bytes must be positive")
        named = agent or env_settings().agent
        settings = McpSettings(read_only=read_only, max_read_bytes=max_read_bytes, agent_from_client=not named)
        t = parse_target(target, endpoint_url=endpoint_url, store_url=store)
        if not t.workspace or t.path:
            raise InvalidArgument("expected [STORE_URL/]WORKSPACE (a workspace, not a path in it)", path=target)
        # the identity of every change this session makes (Caller reads the environment first);
        # without one, the client's clientInfo.name replaces "mcp" at its first request
        os.environ["AGENTFS_AGENT"] = named or "mcp"
        client = WorkspaceClient(t.store, t.workspace, create=create and not read_only, lease_ttl=lease_ttl)
        serve_stdio(client, settings)
