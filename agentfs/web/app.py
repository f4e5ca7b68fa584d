"""The review page: a Starlette (ASGI) app over :class:`agentfs.web.service.ReviewService`.

Pages (GET): ``/`` workspaces; ``/w/WS`` its dashboard; ``/w/WS/files/PATH`` a directory listing or a
file (preview, agent state, Approve / Request changes, its history);
``/w/WS/raw/PATH[?at=CP]`` the bytes (a download); ``/w/WS/review`` the
review queue (``status``, ``owner``, ``label``, ``task`` filters, oldest first);
``/w/WS/log[?path=P]`` the audit log; ``/w/WS/locks`` who holds which lease; ``/w/WS/events[?path=P]`` server-sent events of the journal's tail; ``/w/WS/checkpoints``; ``/w/WS/diff?a=CP&b=head``
(``&path=P`` for one file, ``&other=COPY`` against its conflict copy); ``/w/WS/restore/CP`` the roll-back confirmation.
Actions (POST, CSRF-checked, refused on a read-only server):
``/w/WS/review/PATH`` (``decision=approve|changes``, ``note``),
``/w/WS/resolve/PATH`` (a conflict copy: ``keep=file|copy|both``, ``name``),
``/w/WS/checkpoints`` (create), ``/w/WS/restore/CP`` (roll back; undoable).

Error contract: a bad path, name or parameter, an unknown workspace, file or
checkpoint, a refused transition, an oversize body or a failed CSRF check is
answered with a 4xx page carrying a one-line reason; anything unexpected is
logged with its traceback and answered with a plain 500 page without one.
The server keeps serving either way.

Concurrency: handlers are async; every core call runs in a worker thread
(``run_in_threadpool``), as the core's API is blocking and thread-safe.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from agentfs import agentstate
from agentfs.errors import AgentFSError, InvalidArgument, PermissionDenied
from agentfs.web.render import IMAGE_TYPES, Preview, preview
from agentfs.web.security import (
    CSRF_COOKIE,
    BasicAuth,
    Csrf,
    SecurityHeaders,
    UnsupportedMedia,
    auth_error,
    read_form,
)
from agentfs.web.service import (
    LOG_WINDOW,
    PAGE_ROWS,
    ReviewService,
    check_path,
    error_status,
)
from agentfs.web.settings import WebSettings, is_loopback

__all__ = ["DECISIONS", "WebApp", "create_app"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
#: Review decisions -> the status each one sets (transitions of the default lifecycle).
DECISIONS = {"approve": "approved", "changes": "in_progress"}
_MAX_LIMIT = 10_000
#: Seconds between two looks at the journal's tail for a live page.
LIVE_POLL = 0.5


def _when(ns_or_s: float | int | None, *, ns: bool = False) -> str:
    if not ns_or_s:
        return ""
    t = ns_or_s / 1e9 if ns else float(ns_or_s)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _size(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if f < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return f"{n} B"


class WebApp:
    """The routes, bound to one service and one CSRF secret."""

    def __init__(self, service: ReviewService, settings: WebSettings, users: dict[str, str] | None) -> None:
        self.service = service
        self.settings = settings
        self.users = users
        self.csrf = Csrf()
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True, auto_reload=False,
                                 undefined=jinja2.StrictUndefined)
        env.filters.update(when=_when, size=_size, q=lambda s: quote(str(s), safe="/"),
                           qs=lambda d: urlencode({k: v for k, v in d.items() if v}))
        self.templates = Jinja2Templates(env=env)

    # -- helpers ------------------------------------------------------------------

    def page(self, request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
        """Render a template with the CSRF token of this browser (setting its cookie once)."""
        cookie = request.cookies.get(CSRF_COOKIE)
        fresh = not cookie
        if not cookie:
            cookie = self.csrf.new_cookie()
        full = {"csrf": self.csrf.token(cookie), "read_only": self.settings.read_only,
                "reviewer": self.reviewer(request) or self.settings.agent, "ws": None, "live": None, **ctx}
        resp = self.templates.TemplateResponse(request, name, full, status_code=status)
        if fresh:
            resp.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict", path="/")
        return resp

    @staticmethod
    def reviewer(request: Request) -> str:
        user = request.scope.get("user")
        return user.display_name if user is not None and user.is_authenticated else ""

    async def action(self, request: Request) -> dict[str, str]:
        """The form of a state-changing POST, after the read-only and CSRF checks."""
        if self.settings.read_only:
            raise PermissionDenied("this review server is read-only")
        form = await read_form(request, self.settings.max_body)
        self.csrf.check(request, form)
        return form

    @staticmethod
    def ws_of(request: Request) -> str:
        return str(request.path_params["ws"])

    @staticmethod
    def int_of(request: Request, name: str, default: int, most: int, least: int = 0) -> int:
        """Query parameter ``name`` as an int in [least, most] (InvalidArgument otherwise)."""
        raw = request.query_params.get(name, str(default))
        if not raw.isdigit() or not least <= int(raw) <= max(most, least):
            raise InvalidArgument(f"bad {name} (a number from {least} to {max(most, least)})", path=raw[:40])
        return int(raw)

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kw)

    # -- pages --------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        names = await self.call(self.service.workspaces)
        return self.page(request, "index.html", {"workspaces": names})

    async def workspace(self, request: Request) -> Response:
        ws = self.ws_of(request)
        dash = await self.call(self.service.dashboard, ws)
        return self.page(request, "dashboard.html", {"ws": ws, "dash": dash, "live": _live(ws, "")})

    async def files(self, request: Request) -> Response:
        ws, path = self.ws_of(request), check_path(request.path_params["path"])
        at = request.query_params.get("at", "")
        at = "" if at == "head" else at
        offset = self.int_of(request, "offset", 0, 10**9)
        tree = await self.call(self.service.tree, ws, at)
        entry, items, total = await self.call(functools.partial(
            self.service.lookup, ws, path, at, offset=offset, count=PAGE_ROWS, tree=tree))
        base = {"ws": ws, "path": path, "at": at, "crumbs": _crumbs(path),
                "live": None if at else _live(ws, path)}
        if entry.kind == "d":
            if offset and offset >= total:
                raise InvalidArgument(f"bad offset (the directory has {total} entries)", path=str(offset))
            return self.page(request, "dir.html", {
                **base, "items": items, "total": total, "offset": offset, "page_rows": PAGE_ROWS})
        data = b"" if entry.kind != "f" else await self.call(self.service.preview_bytes, ws, path, at)
        state = agentstate.row_of(path, entry)
        history = [] if at else await self.call(self.service.audit_log, ws, path, limit=50)
        cps = await self.call(self.service.checkpoints, ws)
        lock = None if at else await self.call(self.service.lock_of, ws, path)
        return self.page(request, "file.html", {
            **base, "lock": lock, "conflicts": ReviewService.conflicts_of(tree, path), "entry": entry,
            "state": state, "history": history, "checkpoints": cps, "decisions": DECISIONS, "window": LOG_WINDOW,
            "preview": Preview("binary", truncated=True) if data is None else preview(path, data, entry.size)})

    async def events(self, request: Request) -> Response:
        """Server-sent events: ``change`` (data: the journal seq) whenever a commit
        touches ``path`` (a file, a directory's subtree; none: the workspace).
        Driven by the journal tail, polled here every LIVE_POLL seconds."""
        ws, path = self.ws_of(request), check_path(request.query_params.get("path", ""))
        seq = (await self.call(self.service.tree, ws)).seq

        async def stream() -> AsyncIterator[str]:
            nonlocal seq
            yield ": agentfs live\n\n"
            while True:  # ends when the browser goes (the response's disconnect listener cancels it)
                await anyio.sleep(LIVE_POLL)
                try:
                    new, paths = await self.call(self.service.changes, ws, seq)
                except AgentFSError as e:  # the store hiccuped: look again next time
                    log.debug("live %s: %s", ws, e)
                    continue
                if new != seq and any(_touches(p, path) for p in paths):
                    yield f"event: change\ndata: {new}\n\n"
                seq = new
        return StreamingResponse(stream(), media_type="text/event-stream")

    async def raw(self, request: Request) -> Response:
        ws, path = self.ws_of(request), check_path(request.path_params["path"])
        at = request.query_params.get("at", "")
        ext = posixpath.splitext(path)[1].lower()
        inline = request.query_params.get("inline") == "1" and ext in IMAGE_TYPES
        name = quote(posixpath.basename(path) or "file")
        headers = {"Content-Disposition": ("inline" if inline else "attachment") + f"; filename*=UTF-8''{name}",
                   "Content-Security-Policy": "default-src 'none'; sandbox"}
        media = IMAGE_TYPES[ext] if inline else "application/octet-stream"
        if at and at != "head":
            data = await self.call(self.service.version_bytes, ws, path, at)
            return Response(data, media_type=media, headers=headers)
        entry = await self.call(self.service.entry, ws, path)
        if entry.kind != "f":
            raise InvalidArgument("not a file", path=path)
        f = await self.call(self.service.open_file, ws, path)  # opened now: its errors are 4xx pages

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await self.call(f.read, 1 << 20):
                    yield chunk
            finally:
                await self.call(f.close)
        return StreamingResponse(chunks(), media_type=media, headers={**headers, "Content-Length": str(entry.size)})

    async def review(self, request: Request) -> Response:
        ws, q = self.ws_of(request), request.query_params
        filters = {k: q.get(k, "") for k in ("owner", "label", "task")}
        status = q.get("status", "review")
        rows = await self.call(self.service.review_queue, ws, status=status, **filters)
        return self.page(request, "review.html", {"ws": ws, "rows": rows, "status": status, "filters": filters,
                                                  "live": _live(ws, "")})

    async def decide(self, request: Request) -> Response:
        ws, path = self.ws_of(request), check_path(request.path_params["path"])
        form = await self.action(request)
        decision = form.get("decision", "")
        if decision not in DECISIONS:
            raise InvalidArgument("decision must be approve or changes", path=decision[:40])
        await self.call(self.service.set_status, ws, self.reviewer(request), path, DECISIONS[decision],
                        form.get("note", ""))
        return RedirectResponse(f"/w/{quote(ws)}/files/{quote(path)}?done={decision}", status_code=303)

    async def resolve(self, request: Request) -> Response:
        ws, path = self.ws_of(request), check_path(request.path_params["path"])
        form = await self.action(request)
        shown = await self.call(self.service.resolve_conflict, ws, self.reviewer(request), path,
                                form.get("copy", ""), form.get("keep", ""), form.get("name", ""))
        return RedirectResponse(f"/w/{quote(ws)}/files/{quote(shown)}?done=resolved", status_code=303)

    async def audit(self, request: Request) -> Response:
        ws = self.ws_of(request)
        path = check_path(request.query_params.get("path", ""))
        limit = self.int_of(request, "limit", 200, _MAX_LIMIT, least=1)
        window = self.int_of(request, "window", LOG_WINDOW, 10**9)
        rows = await self.call(self.service.audit_log, ws, path, limit=limit, window=window)
        return self.page(request, "log.html", {"ws": ws, "path": path, "rows": rows, "window": window,
                                               "live": _live(ws, path)})

    async def locks(self, request: Request) -> Response:
        ws = self.ws_of(request)
        rows = await self.call(self.service.locks, ws)
        return self.page(request, "locks.html", {"ws": ws, "rows": rows, "now": time.time()})

    async def checkpoints(self, request: Request) -> Response:
        ws = self.ws_of(request)
        if request.method == "POST":
            form = await self.action(request)
            cp = await self.call(self.service.create_checkpoint, ws, self.reviewer(request),
                                 form.get("name", ""), form.get("note", ""))
            return RedirectResponse(f"/w/{quote(ws)}/checkpoints?created={quote(cp.name)}", status_code=303)
        cps = await self.call(self.service.checkpoints, ws)
        q = request.query_params
        return self.page(request, "checkpoints.html", {
            "ws": ws, "checkpoints": list(reversed(cps)), "created": q.get("created", ""),
            "restored": q.get("restored", ""), "undo": q.get("undo", "")})

    async def diff(self, request: Request) -> Response:
        ws, q = self.ws_of(request), request.query_params
        other = check_path(q.get("other", ""))
        a, b = q.get("a", "head" if other else ""), q.get("b", "head") or "head"
        if not a:
            raise InvalidArgument("diff needs a=CHECKPOINT")
        path = check_path(q.get("path", ""))
        if other and not path:
            raise InvalidArgument("diff with other=FILE needs path=FILE")
        if path:
            fd = await self.call(functools.partial(self.service.file_diff, ws, path, a, b, other=other))
            return self.page(request, "diff.html", {"ws": ws, "a": a, "b": b, "d": None, "files": [fd]})
        d = await self.call(self.service.diff, ws, a, b)
        files = await self.call(self.service.file_diffs, ws, d, a, b)
        return self.page(request, "diff.html", {"ws": ws, "a": a, "b": b, "d": d, "files": files})

    async def restore(self, request: Request) -> Response:
        ws, name = self.ws_of(request), str(request.path_params["name"])
        if request.method == "POST":
            await self.action(request)
            undo = await self.call(self.service.restore, ws, self.reviewer(request), name)
            return RedirectResponse(f"/w/{quote(ws)}/checkpoints?{urlencode({'restored': name, 'undo': undo.name})}",
                                    status_code=303)
        d = await self.call(self.service.diff, ws, "head", name)  # what the roll back changes
        return self.page(request, "restore.html", {"ws": ws, "name": name, "d": d})

    # -- errors -------------------------------------------------------------------

    async def on_agentfs_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AgentFSError)
        status = 415 if isinstance(exc, UnsupportedMedia) else error_status(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return self.page(request, "error.html", {"status": status, "reason": str(exc)}, status)

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.page(request, "error.html", {"status": exc.status_code, "reason": exc.detail},
                         exc.status_code)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Last resort: logged with the traceback, answered without it."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return HTMLResponse("<!doctype html><title>500</title><h1>500 internal error</h1>"
                        "<p>The error was logged on the server.</p>", status_code=500)


def _live(ws: str, path: str) -> str:
    """The event-stream URL a page follows (static/live.js reloads it on a change)."""
    return f"/w/{quote(ws)}/events" + (f"?{urlencode({'path': path})}" if path else "")


def _touches(changed: str, shown: str) -> bool:
    """Does a change of ``changed`` show on the page of ``shown`` ("" : everything)?"""
    return (not shown or not changed or changed == shown or changed.startswith(shown + "/")
            or shown.startswith(changed + "/"))


def _crumbs(path: str) -> list[tuple[str, str]]:
    parts = path.split("/") if path else []
    return [(p, "/".join(parts[: i + 1])) for i, p in enumerate(parts)]


def create_app(service: ReviewService, settings: WebSettings, users: dict[str, str] | None = None) -> ASGIApp:
    """The ASGI app of the review page (wrapped in its security headers).

    ``users`` (from :func:`agentfs.web.security.load_users`) turns on the
    login; the caller keeps ownership of ``service`` (close it after serving)."""
    w = WebApp(service, settings, users)
    routes = [
        Route("/", w.index),
        Route("/w/{ws}", w.workspace),
        Route("/w/{ws}/files/{path:path}", w.files),
        Route("/w/{ws}/raw/{path:path}", w.raw),
        Route("/w/{ws}/events", w.events),
        Route("/w/{ws}/review", w.review),
        Route("/w/{ws}/review/{path:path}", w.decide, methods=["POST"]),
        Route("/w/{ws}/resolve/{path:path}", w.resolve, methods=["POST"]),
        Route("/w/{ws}/log", w.audit),
        Route("/w/{ws}/locks", w.locks),
        Route("/w/{ws}/checkpoints", w.checkpoints, methods=["GET", "POST"]),
        Route("/w/{ws}/diff", w.diff),
        Route("/w/{ws}/restore/{name}", w.restore, methods=["GET", "POST"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    # loopback: only loopback Host names (a page on another site cannot reach us by DNS rebinding)
    hosts = ["127.0.0.1", "localhost", "[::1]"] if is_loopback(settings.host) and not users else ["*"]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        Middleware(AuthenticationMiddleware, backend=BasicAuth(users), on_error=auth_error),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={
        AgentFSError: w.on_agentfs_error, HTTPException: w.on_http_error, Exception: on_unexpected})
    return SecurityHeaders(app)
