"""MCP sessions for tests: a spawned ``agentfs mcp`` over stdio or an in-process server, and checks of tool results.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

import agentfs
from agentfs.check import check_store
from agentfs.mcp_server import McpApp, McpSettings
from agentfs.store import open_store

__all__ = ["REPO", "app_bytes", "assert_clean", "err", "inproc", "ok", "run", "stdio_session"]


REPO = Path(__file__).resolve().parents[2]


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """Call ``tool``; assert it succeeded and return its structured result."""
    r = await client.call_tool(tool, args)
    assert not r.is_error, (tool, r.content)
    assert r.structured_content is not None
    return r.structured_content


async def err(client: Client, tool: str, *, one_line: bool = True, **args: Any) -> str:
    """The error of a failing tool call: never a traceback; one line unless it is
    the SDK's own report of arguments that fail the tool's input schema."""
    r = await client.call_tool(tool, args)
    assert r.is_error, (tool, r.structured_content)
    text = r.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text and (not one_line or "\n" not in text), text
    return text


def assert_clean(url: str) -> None:
    """Assert ``agentfs check`` of the store at ``url`` finds nothing."""
    store = open_store(url)
    try:
        rep = check_store(store)
    finally:
        store.close()
    assert rep.clean, rep.model_dump_json(indent=2)


@asynccontextmanager
async def stdio_session(url: str, ws: str, *args: str) -> AsyncIterator[Client]:
    """A spawned ``agentfs mcp`` (ended when the session closes its stdin)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("AGENTFS_AGENT", None)
    params = StdioServerParameters(command=sys.executable, args=["-m", "agentfs", "mcp", "--store", url, ws, *args],
                                   env=env, cwd=str(REPO))
    async with Client(params, read_timeout_seconds=60) as client:
        yield client


def run(fn: Callable[[], Any]) -> None:
    """Run an async test body under anyio."""
    anyio.run(fn)


@asynccontextmanager
async def inproc(url: str, ws: str = "ws", **settings: Any) -> AsyncIterator[tuple[Client, McpApp]]:
    """An MCP client connected to an in-process server of workspace ``ws``."""
    app = McpApp(agentfs.open_workspace(url, ws, agent="bot"), McpSettings(**settings))
    try:
        async with Client(app.server) as c:
            yield c, app
    finally:
        app.close()


def app_bytes(url: str, path: str) -> bytes:
    """The bytes of ``path`` in workspace ``ws``, read through the Python API."""
    with agentfs.open_workspace(url, "ws", create=False) as ws:
        return ws.read_bytes(path)
