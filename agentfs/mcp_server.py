"""``agentfs mcp``: a Model Context Protocol server over one workspace.

Agents that cannot mount (hosted assistants, gVisor or Lambda sandboxes, IDE
agents) reach files through MCP.  This adapter serves one workspace of a store
over MCP's stdio transport, built on the official ``mcp`` SDK
(``mcp.server.MCPServer``): file tools (read, write, edit, list, move, search,
info), locks (the same leases a mount's ``flock``/``agentfs lock`` takes),
typed agent state, checkpoints and the audit log.  It holds no file semantics
of its own: every tool is one or a few calls of :class:`agentfs.api.WorkspaceClient`,
the core the Python API uses, so a mount sees an MCP write within about a
second and every change is a journal record attributed to the server's agent.

Error contract: a tool that fails returns an MCP tool error (``isError:
true``) whose one line is ``ERRNO: message`` from the project's error tree
(``ENOENT: No such file or directory: notes/x.md``); the server never dies on
a bad request and never sends a traceback (an unexpected exception is logged
with its traceback on stderr and reported as ``Error executing tool NAME``).

Concurrency: the SDK runs these synchronous tools in worker threads; the
``WorkspaceClient`` is thread-safe (its calls run in its own trio thread).
One server process serves one client session (stdio); its leases belong to
that process and are released when the session ends (or expire after the
lease TTL if the process is killed).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import errno
import fnmatch
import functools
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from typing import Any, Literal, ParamSpec, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from agentfs.api import FileStat, WorkspaceClient
from agentfs.errors import (
    AgentFSError,
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    NotFound,
    Stale,
    TooBig,
)

__all__ = ["DEFAULT_MAX_READ", "McpApp", "McpSettings", "WorkspaceTools", "clean_path", "mapped", "serve_stdio",
           "tool_error", "version_of"]

log = logging.getLogger(__name__)

#: Default bound of one read (bytes): large files never reach a model's context by accident.
DEFAULT_MAX_READ = 1 << 20
#: The longest a lock_acquire may wait (seconds); a tool call should not hang a session.
MAX_LOCK_WAIT = 300.0

P = ParamSpec("P")
R = TypeVar("R")


class McpSettings(BaseModel):
    """Options of one ``agentfs mcp`` server."""

    read_only: bool = False
    max_read_bytes: int = Field(default=DEFAULT_MAX_READ, ge=1)
    #: attribute changes to the MCP client's ``clientInfo.name`` (when no agent was given)
    agent_from_client: bool = False


# -- results (structured output of the tools) -----------------------------------------


class FileContent(BaseModel):
    path: str
    content: str
    size: int = Field(description="size of the whole file in bytes")
    truncated: bool = Field(description="true when only part of the file is returned")
    version: str | None = Field(description="the file's version; pass it as if_version to a write")


class MediaContent(BaseModel):
    path: str
    mime_type: str
    data: str = Field(description="the bytes, base64")
    size: int
    version: str | None


class WriteResult(BaseModel):
    path: str
    size: int
    version: str | None
    diff: str | None = Field(default=None, description="edit_file: the unified diff of the change")


class DirEntry(BaseModel):
    name: str
    kind: Literal["file", "dir", "symlink"]
    size: int


class Listing(BaseModel):
    path: str
    entries: list[DirEntry]


class FileInfo(BaseModel):
    path: str
    kind: Literal["file", "dir", "symlink"]
    size: int
    mode: str
    modified: str
    version: str | None
    sha256: str | None
    target: str | None


class Tree(BaseModel):
    name: str
    kind: Literal["file", "dir", "symlink"]
    children: list[Tree] | None = None


class FileError(BaseModel):
    path: str
    error: str


class MultiRead(BaseModel):
    files: list[FileContent | FileError]


class Matches(BaseModel):
    paths: list[str]


class Edit(BaseModel):
    """One exact replacement for ``edit_file``."""

    oldText: str = Field(min_length=1)  # the reference server's argument names
    newText: str


def journal_records(client: WorkspaceClient) -> list[Any]:
    """Every journal object of the client's workspace, for the audit log (damaged ones included)."""
    from agentfs import agentstate
    from agentfs.journal import Journal
    return list(agentstate.read_records(Journal(client.store, client.name)))


def version_of(st: FileStat) -> str | None:
    """The version a client passes back as ``if_version``: the store's etag."""
    return st.etag or st.sha256


# -- errors and paths ---------------------------------------------------------------------


def tool_error(e: OSError) -> ToolError:
    """One line for the client: the errno's name and the project's message."""
    code = errno.errorcode.get(e.errno or errno.EIO, "EIO")
    text = str(e) if isinstance(e, AgentFSError) else (e.strerror or str(e))
    return ToolError(f"{code}: {text}")


def mapped(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the project's errors (and any OSError) raised by a tool into MCP tool errors."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            level = e.log_level if isinstance(e, AgentFSError) else logging.INFO
            log.log(level, "tool %s: %s", fn.__name__, e)
            raise tool_error(e) from None
    return wrapper


def clean_path(path: str, *, allow_root: bool = False) -> str:
    """A workspace-relative path, refusing traversal: an absolute path, ``.`` or
    ``..`` components (raises :class:`InvalidArgument`)."""
    if path.startswith("/") or "\\" in path or "\0" in path:
        raise InvalidArgument("paths are relative to the workspace (no leading /, no \\ or NUL)", path=path)
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidArgument("'.' and '..' are not allowed in paths", path=path)
    out = "/".join(parts)
    if not out and not allow_root:
        raise InvalidArgument("a path inside the workspace is needed")
    return out


# -- the server ---------------------------------------------------------------------------------

_READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def _changes(destructive: bool, idempotent: bool) -> ToolAnnotations:
    return ToolAnnotations(read_only_hint=False, destructive_hint=destructive, idempotent_hint=idempotent,
                           open_world_hint=False)


class WorkspaceTools:
    """The file tools over one :class:`WorkspaceClient` (which the caller owns and closes).

    Each method is one MCP tool: it raises :class:`ToolError` (through
    :func:`mapped`) for every project error.  Stateless apart from the client, so
    concurrent calls from the SDK's worker threads are as safe as the client's."""

    def __init__(self, client: WorkspaceClient, settings: McpSettings) -> None:
        self.c = client
        self.s = settings

    # -- reading ---------------------------------------------------------------------

    def _file(self, path: str) -> FileStat:
        st = self.c.stat(path)
        if st.kind == "dir":
            raise IsADirectory(path=path)
        return st

    def _read_bounded(self, path: str, st: FileStat, max_bytes: int | None,
                      head: int | None, tail: int | None) -> tuple[bytes, bool]:
        limit = self.s.max_read_bytes if max_bytes is None else min(max_bytes, self.s.max_read_bytes)
        if head is not None and tail is not None:
            raise InvalidArgument("give head or tail, not both")
        if head is None and tail is None and max_bytes is None and st.size > limit:
            raise TooBig(f"file is {st.size} bytes, over the read limit of {limit}: "
                         "pass head, tail or max_bytes", path=path)
        if head is None and tail is None and st.size <= limit:
            return self.c.read_bytes(path), False  # one call for the common case
        with self.c.open(path, "rb") as f:
            if tail is not None:
                return _tail_lines(f, st.size, tail, limit)
            data = f.read(limit + 1)
        cut = len(data) > limit
        data = data[:limit]
        if head is not None:
            lines = data.splitlines(keepends=True)
            cut = cut or len(lines) > head
            data = b"".join(lines[:head])
        return data, cut

    @mapped
    def read_text_file(self, path: str, head: int | None = Field(None, ge=0, description="only the first N lines"),
                       tail: int | None = Field(None, ge=0, description="only the last N lines"),
                       max_bytes: int | None = Field(None, ge=1, description="read at most this many bytes")
                       ) -> FileContent:
        """Read a UTF-8 text file of the workspace, with its version (reads are bounded by the server's limit)."""
        path = clean_path(path)
        st = self._file(path)
        data, cut = self._read_bounded(path, st, max_bytes, head, tail)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if not cut:
                raise InvalidArgument("not a UTF-8 text file (use read_media_file)", path=path) from None
            text = data.decode("utf-8", "ignore")  # a cut through a multi-byte character
        return FileContent(path=path, content=text, size=st.size, truncated=cut, version=version_of(st))

    @mapped
    def read_media_file(self, path: str) -> MediaContent:
        """Read any file as base64 with its MIME type (bounded by the server's read limit)."""
        path = clean_path(path)
        st = self._file(path)
        if st.size > self.s.max_read_bytes:
            raise TooBig(f"file is {st.size} bytes, over the read limit of {self.s.max_read_bytes}", path=path)
        data = self.c.read_bytes(path)
        mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return MediaContent(path=path, mime_type=mime, data=base64.b64encode(data).decode(), size=len(data),
                            version=version_of(st))

    @mapped
    def list_directory(self, path: str = "") -> Listing:
        """List a directory of the workspace ("" is the workspace root): name, kind and size of each entry."""
        path = clean_path(path, allow_root=True)
        st = self.c.stat(path)
        if st.kind != "dir":
            raise InvalidArgument("not a directory", path=path)
        # one walk of the in-memory namespace, not one stat call per entry
        entries = sorted((e for e in self.c.walk(path) if e.path.rpartition("/")[0] == path), key=lambda e: e.path)
        return Listing(path=path, entries=[DirEntry(name=e.path.rpartition("/")[2], kind=e.kind,  # type: ignore[arg-type]
                                                    size=e.size) for e in entries])

    @mapped
    def list_directory_with_sizes(self, path: str = "", sortBy: Literal["name", "size"] = "name"  # the reference name
                                  ) -> Listing:
        """List a directory with sizes, sorted by name or by size (largest first)."""
        listing = self.list_directory(path)
        if sortBy == "size":
            listing.entries.sort(key=lambda e: -e.size)
        return listing

    @mapped
    def directory_tree(self, path: str = "") -> Tree:
        """The tree below a directory as nested entries (name, kind, children)."""
        path = clean_path(path, allow_root=True)
        if self.c.stat(path).kind != "dir":
            raise InvalidArgument("not a directory", path=path)
        root = Tree(name=path.rpartition("/")[2], kind="dir", children=[])
        nodes = {path: root}
        for st in self.c.walk(path):  # parents first
            node = Tree(name=st.path.rpartition("/")[2], kind=st.kind,  # type: ignore[arg-type]
                        children=[] if st.kind == "dir" else None)
            nodes[st.path] = node
            parent = nodes[st.path.rpartition("/")[0]]
            assert parent.children is not None
            parent.children.append(node)
        return root

    @mapped
    def read_multiple_files(self, paths: list[str]) -> MultiRead:
        """Read several text files at once; a file that fails carries its error instead of failing the call."""
        out: list[FileContent | FileError] = []
        for p in paths:
            try:
                out.append(self.read_text_file(p, head=None, tail=None, max_bytes=None))
            except ToolError as e:
                out.append(FileError(path=p, error=str(e)))
        return MultiRead(files=out)

    @mapped
    def search_files(self, pattern: str, path: str = "",
                     excludePatterns: list[str] | None = None) -> Matches:  # the reference server's name
        """Paths below ``path`` whose workspace path or name matches the glob ``pattern`` (``**/*.md``, ``*.csv``);
        ``excludePatterns`` drop matching paths and the trees of matching directories."""
        path = clean_path(path, allow_root=True)
        excludes = excludePatterns or []
        out: list[str] = []
        skipped: list[str] = []
        for st in self.c.walk(path):  # parents first: an excluded directory's subtree is skipped
            name = st.path.rpartition("/")[2]
            if any(st.path.startswith(d + "/") for d in skipped):
                continue
            if any(fnmatch.fnmatch(st.path, x) or fnmatch.fnmatch(name, x) for x in excludes):
                if st.kind == "dir":
                    skipped.append(st.path)
                continue
            if fnmatch.fnmatch(st.path, pattern) or fnmatch.fnmatch(name, pattern):
                out.append(st.path)
        return Matches(paths=sorted(out))

    @mapped
    def get_file_info(self, path: str) -> FileInfo:
        """Kind, size, mode, modification time and version of a file or directory."""
        path = clean_path(path, allow_root=True)
        st = self.c.stat(path)
        modified = dt.datetime.fromtimestamp(st.mtime_ns / 1e9, dt.UTC).isoformat().replace("+00:00", "Z")
        return FileInfo(path=path, kind=st.kind, size=st.size, mode=f"{st.mode & 0o7777:04o}",  # type: ignore[arg-type]
                        modified=modified, version=version_of(st), sha256=st.sha256, target=st.target)

    # -- writing ----------------------------------------------------------------------

    def _stale(self, path: str, expected: str, current: str | None) -> Stale:
        who = self._last_change(path)
        return Stale(f"the file changed since version {expected} (now {current}{who}); nothing written: "
                     "read it again and re-apply", path=path)

    def _last_change(self, path: str) -> str:
        """`, last changed by AGENT at TIME` from the journal (empty when unknown)."""
        from agentfs.cli.state import log_rows  # the audit log's one reader
        rows = log_rows(journal_records(self.c), path=path)
        rows = [r for r in rows if r.get("agent") is not None]
        return f", last changed by {rows[-1]['agent']} at {rows[-1]['iso_time']}" if rows else ""

    def replace(self, path: str, data: bytes, if_version: str | None,
                 edit: Callable[[bytes], bytes] | None = None) -> FileStat:
        """Write ``data`` (or ``edit(current bytes)``) to ``path`` through one handle.

        The handle is opened before the version check, so its upload is
        conditional on a version no newer than the one checked: a writer that
        commits in between makes this write lose the race (ConflictError, its
        bytes kept as a conflict copy), never a silent lost update."""
        exists = self.c.exists(path)
        if not exists:
            if if_version is not None or edit is not None:
                raise NotFound(path=path)
            parent = path.rpartition("/")[0]
            if parent and not self.c.exists(parent):
                raise NotFound("no such directory", path=parent)
            self.c.write_bytes(path, data)
            return self.c.stat(path)
        with self.c.open(path, "r+b") as f:
            st = self._file(path)
            if if_version is not None and version_of(st) != if_version:
                raise self._stale(path, if_version, version_of(st))
            if edit is not None:
                data = edit(f.read())
            f.seek(0)
            f.truncate(0)
            f.write(data)
        return self.c.stat(path)

    @mapped
    def write_file(self, path: str, content: str,
                   if_version: str | None = Field(None, description="write only if the file is still at this "
                                                  "version (from a read)")) -> WriteResult:
        """Create or replace a file with UTF-8 text; durable in the store when the tool returns."""
        path = clean_path(path)
        st = self.replace(path, content.encode(), if_version)
        return WriteResult(path=path, size=st.size, version=version_of(st))

    @mapped
    def edit_file(self, path: str, edits: list[Edit], dryRun: bool = False,
                  if_version: str | None = None) -> WriteResult:
        """Apply exact oldText -> newText replacements to the current version atomically; dryRun returns the diff only."""
        import difflib

        path = clean_path(path)
        result: dict[str, str] = {}

        def apply(raw: bytes) -> bytes:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument("not a UTF-8 text file", path=path) from None
            new = text
            for e in edits:
                if e.oldText not in new:
                    raise InvalidArgument(f"oldText not found: {e.oldText[:80]!r}", path=path)
                new = new.replace(e.oldText, e.newText, 1)
            result["diff"] = "".join(difflib.unified_diff(text.splitlines(keepends=True),
                                                           new.splitlines(keepends=True), path, path))
            return new.encode()

        if dryRun:
            st = self._file(path)
            if if_version is not None and version_of(st) != if_version:
                raise self._stale(path, if_version, version_of(st))
            apply(self.c.read_bytes(path))
            return WriteResult(path=path, size=st.size, version=version_of(st), diff=result["diff"])
        st = self.replace(path, b"", if_version, edit=apply)
        return WriteResult(path=path, size=st.size, version=version_of(st), diff=result["diff"])

    @mapped
    def create_directory(self, path: str) -> Listing:
        """Create a directory and its missing parents (no error if it exists)."""
        path = clean_path(path)
        self.c.mkdir(path, parents=True)
        return self.list_directory(path)

    @mapped
    def move_file(self, source: str, destination: str) -> FileInfo:
        """Rename a file or directory within the workspace (atomic; fails if the destination exists)."""
        src, dst = clean_path(source), clean_path(destination)
        if self.c.exists(dst):  # the reference server's rule: a move never replaces
            raise AlreadyExists(path=dst)
        self.c.rename(src, dst)
        return self.get_file_info(dst)

    def read_resource(self, path: str) -> str:
        """The resource ``agentfs://WORKSPACE/PATH``: a UTF-8 text file, bounded by the
        read limit (the SDK gives a template one MIME type, so binary files are
        refused with a pointer to ``read_media_file``).  Errors are the SDK's
        ``ResourceError`` (``ResourceNotFoundError`` for a missing file), which the
        client gets as a protocol error carrying the project's message."""
        from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

        try:
            path = clean_path(path)
            st = self._file(path)
            if st.size > self.s.max_read_bytes:
                raise TooBig(f"file is {st.size} bytes, over the read limit of {self.s.max_read_bytes}",
                             path=path)
            data = self.c.read_bytes(path)
        except NotFound as e:
            raise ResourceNotFoundError(str(tool_error(e))) from None
        except OSError as e:
            raise ResourceError(str(tool_error(e))) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ResourceError(f"EINVAL: not a UTF-8 text file (use the read_media_file tool): {path}") from None

    # locks, state, checkpoints and the log: agentfs.mcp_coord.CoordinationTools


def _tail_lines(f: Any, size: int, n: int, limit: int) -> tuple[bytes, bool]:
    """The last ``n`` lines of an open file, reading backwards at most ``limit`` bytes."""
    block, buf, pos = 64 << 10, b"", size
    while pos > 0 and buf.count(b"\n") <= n and len(buf) < limit:
        step = min(block, pos, limit - len(buf))
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
    lines = buf.splitlines(keepends=True)
    cut = pos > 0 or len(lines) > n
    if pos > 0 and lines:
        lines = lines[1:]  # the first one is partial
    return b"".join(lines[-n:] if n else []), cut


READ_TOOLS = ("read_text_file", "read_media_file", "read_multiple_files", "list_directory",
              "list_directory_with_sizes", "directory_tree", "search_files", "get_file_info")
WRITE_TOOLS = {"write_file": (True, False), "edit_file": (True, False), "create_directory": (False, True),
               "move_file": (True, False)}


class McpApp:
    """An MCP server over one workspace and the session state it holds (locks).

    ``server`` is the SDK's :class:`MCPServer` (run it, or hand it to
    ``mcp.Client`` in-process); :meth:`close` gives back this session's locks
    and closes the client."""

    def __init__(self, client: WorkspaceClient, settings: McpSettings | None = None) -> None:
        from agentfs import __version__
        from agentfs.mcp_coord import CoordinationTools

        self.client = client
        self.settings = settings or McpSettings()
        self._name_pending = self.settings.agent_from_client
        self.server: MCPServer = MCPServer(
            "agentfs", version=__version__, log_level="WARNING",
            middleware=[self._name_the_agent] if self.settings.agent_from_client else [],
            instructions=(f"Files of the agentfs workspace '{client.name}'. Paths are relative to the "
                          "workspace. Reads return a version; pass it as if_version to write_file/edit_file "
                          "to refuse lost updates. lock_acquire takes a lease other agents and mounts respect."))
        self.files = WorkspaceTools(client, self.settings)
        self.coord = CoordinationTools(client, self.files)
        for name in READ_TOOLS:
            self.server.add_tool(getattr(self.files, name), annotations=_READ)
        self.server.resource(f"agentfs://{client.name}/{{+path}}", name="file",
                             description=f"A text file of workspace {client.name}", mime_type="text/plain"
                             )(self.files.read_resource)
        for name, (fn,) in self.coord.read_tools().items():
            self.server.add_tool(fn, name=name, annotations=_READ)
        if self.settings.read_only:
            return
        for name, (destructive, idempotent) in WRITE_TOOLS.items():
            self.server.add_tool(getattr(self.files, name), annotations=_changes(destructive, idempotent))
        for name, (fn, destructive, idempotent) in self.coord.write_tools().items():
            self.server.add_tool(fn, name=name, annotations=_changes(destructive, idempotent))

    async def _name_the_agent(self, ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        """Middleware: the first request that carries the client's ``clientInfo``
        names the agent of every later change (before any tool runs)."""
        if self._name_pending:
            params = ctx.session.client_params
            name = _agent_name(params.client_info.name if params is not None else "")
            if name:
                self.client.caller = dataclasses.replace(self.client.caller, agent=name)
                self._name_pending = False
                log.info("agent: %s (the client's name)", name)
        return await call_next(ctx)

    def close(self) -> None:
        """Release this session's locks, then close the client (idempotent)."""
        try:
            self.coord.release_all()
        except AgentFSError as e:  # the store is gone: the leases expire after their TTL
            log.warning("releasing the session's locks: %s", e)
        finally:
            self.client.close()

    def __enter__(self) -> McpApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _agent_name(raw: str) -> str:
    """A client-supplied name made fit for the journal: printable, one line, at most 64 characters."""
    return "".join(ch for ch in raw if ch.isprintable()).strip()[:64]


def serve_stdio(client: WorkspaceClient, settings: McpSettings | None = None) -> None:
    """Serve ``client``'s workspace over stdio until the peer closes the stream or
    the process gets SIGTERM/SIGINT; then releases the session's locks and closes ``client``."""
    import signal

    import anyio

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds anyio.run, so the finally below runs

    with McpApp(client, settings) as app:
        signal.signal(signal.SIGTERM, stop)
        try:
            anyio.run(app.server.run_stdio_async)
        except KeyboardInterrupt:
            log.info("stopped by a signal")
