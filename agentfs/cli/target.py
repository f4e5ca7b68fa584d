"""Parse ``STORE_URL/ws/path`` arguments of the CLI.

A target names a store, a workspace and a path in it:

- ``ws/path`` (no scheme, relative): the embedded default store;
- ``file:///dir/ws/path`` or ``/dir/ws/path``: the store root is the nearest
  ancestor directory that holds ``.agentfs/``;
- ``s3://bucket/prefix/ws/path``: the store root is the shortest prefix
  holding ``.agentfs/`` (the bucket itself when none does);
- ``memory://name/ws/path``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agentfs import localmounts
from agentfs.config import default_store_url
from agentfs.errors import InvalidArgument
from agentfs.journal import META
from agentfs.store import ObjectStore, open_store

__all__ = ["Target", "parse_target"]


@dataclass
class Target:
    store: ObjectStore
    workspace: str | None
    path: str


def _split_parts(rest: str) -> tuple[str | None, str]:
    parts = [p for p in rest.split("/") if p]
    if not parts:
        return None, ""
    return parts[0], "/".join(parts[1:])


def parse_target(arg: str, *, endpoint_url: str | None = None, store_url: str | None = None) -> Target:
    """Resolve a CLI target; ``store_url`` (``--store``) makes ``arg`` relative to it.

    Local mounts of the store first commit what they acknowledged in the
    target's workspace (every workspace for a store-wide target), so the
    command acts on a state that includes every close that returned before it
    started (:mod:`agentfs.localmounts`)."""
    t = _parse(arg, endpoint_url=endpoint_url, store_url=store_url)
    localmounts.barrier(t.store.url, t.workspace or "")
    return t


def _parse(arg: str, *, endpoint_url: str | None, store_url: str | None) -> Target:
    if store_url:
        ws, path = _split_parts(arg)
        return Target(open_store(store_url, endpoint_url=endpoint_url), ws, path)
    if "://" not in arg and not arg.startswith("/"):
        ws, path = _split_parts(arg)
        return Target(open_store(default_store_url()), ws, path)
    if arg.startswith("/") or arg.startswith("file://"):
        full = arg[len("file://"):] if arg.startswith("file://") else arg
        full = os.path.abspath(full)
        cand = full
        while True:
            if os.path.isdir(os.path.join(cand, META)):
                rel = os.path.relpath(full, cand)
                ws, path = _split_parts("" if rel == "." else rel)
                return Target(open_store(f"file://{cand}"), ws, path)
            parent = os.path.dirname(cand)
            if parent == cand:
                break
            cand = parent
        raise InvalidArgument("no agentfs store found at or above this path", path=full)
    scheme, _, rest = arg.partition("://")
    parts = [p for p in rest.split("/") if p]
    if not parts:
        raise InvalidArgument("target needs a bucket or name", path=arg)
    if scheme == "s3":
        for i in range(1, len(parts) + 1):
            url = f"s3://{'/'.join(parts[:i])}"
            store = open_store(url, endpoint_url=endpoint_url)
            if store.list_dirs(f"{META}/") or i == len(parts):
                if not store.list_dirs(f"{META}/"):
                    store = open_store(f"s3://{parts[0]}", endpoint_url=endpoint_url)
                    i = 1
                ws, path = _split_parts("/".join(parts[i:]))
                return Target(store, ws, path)
    store = open_store(f"{scheme}://{parts[0]}", endpoint_url=endpoint_url)
    ws, path = _split_parts("/".join(parts[1:]))
    return Target(store, ws, path)
