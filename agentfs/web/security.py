"""Who may use the review page, and what protects its pages and actions.

- **Login.** With a users file (``--auth-file``: lines ``NAME:TOKEN``) every
  request needs HTTP Basic credentials of one of its users (the browser asks
  for them); the user's NAME is the agent recorded in the journal for what
  they do.  Without one the page is for this machine only (the server refuses
  to listen elsewhere, :mod:`agentfs.web.server`) and records the server's agent.
- **CSRF.** Every state-changing request is a POST carrying the field ``csrf``:
  an HMAC, under a per-process secret, of the random ``agentfs_csrf`` cookie
  the page set (``SameSite=Strict``, ``HttpOnly``); a POST whose token does
  not match, or whose ``Origin`` is another site, is refused (403).
- **Headers.** Every response carries a Content-Security-Policy that allows
  scripts only from the page's own static files (no inline script),
  ``frame-ancestors 'none'``,
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
- **Bodies.** Forms are ``application/x-www-form-urlencoded`` up to
  ``max_body`` bytes (413 beyond, 415 for another type).

Error contract: :class:`agentfs.errors.AgentFSError` subclasses (InvalidArgument
for a bad users file, PermissionDenied for a refused POST, TooBig for an oversize
body); the app turns them into 4xx pages.
Concurrency: the secret and the users are read-only after start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
    SimpleUser,
)
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentfs.errors import InvalidArgument, PermissionDenied, TooBig

__all__ = ["CSP", "CSRF_COOKIE", "BasicAuth", "Csrf", "SecurityHeaders", "UnsupportedMedia", "auth_error",
           "load_users", "read_form"]

log = logging.getLogger(__name__)

CSRF_COOKIE = "agentfs_csrf"
#: Scripts only from the page's own files (static/live.js): no inline script, no
#: eval; agent-written bytes are never served as script (downloads are
#: application/octet-stream under nosniff), and previews carry no script tags.
CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
MIN_TOKEN = 12


class UnsupportedMedia(InvalidArgument):
    """A POST body that is not a URL-encoded form (HTTP 415)."""


def load_users(path: str) -> dict[str, str]:
    """Users from ``path``: one ``NAME:TOKEN`` a line, ``#`` comments.

    Raises InvalidArgument (naming the line, never the token) for a missing
    file, a bad line, a short token (under 12 characters) or no user at all.
    A file that others may read is used with a warning."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        mode = p.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"cannot read the users file ({type(e).__name__})", path=path) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("users file %s can be read by others (chmod 600 it)", path)
    users: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep or not _NAME_RE.match(name) or len(token) < MIN_TOKEN:
            raise InvalidArgument(f"users file line {n}: expected NAME:TOKEN (a token of at least "
                                  f"{MIN_TOKEN} characters)", path=path)
        users[name] = token
    if not users:
        raise InvalidArgument("users file names no user", path=path)
    return users


class BasicAuth(AuthenticationBackend):
    """HTTP Basic against the users file; without users every request passes."""

    def __init__(self, users: dict[str, str] | None) -> None:
        self.users = users or {}

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if not self.users:
            return None
        scheme, _, value = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            raise AuthenticationError("login required")
        try:
            name, _, token = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("bad credentials") from None
        want = self.users.get(name)
        # compare even for an unknown name, so timing does not tell names apart
        ok = hmac.compare_digest(token.encode(), (want or secrets.token_hex(16)).encode())
        if want is None or not ok:
            raise AuthenticationError("bad credentials")
        return AuthCredentials(["authenticated"]), SimpleUser(name)


def auth_error(conn: HTTPConnection, exc: Exception) -> Response:
    """401 with the Basic challenge (the browser shows its login box)."""
    return PlainTextResponse(f"401 {exc}\n", status_code=401,
                             headers={"WWW-Authenticate": 'Basic realm="agentfs", charset="UTF-8"',
                                      "Content-Security-Policy": CSP})


class Csrf:
    """Tokens bound to the browser's ``agentfs_csrf`` cookie by an HMAC."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    def token(self, cookie: str) -> str:
        return hmac.new(self.secret, cookie.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(32)

    def check(self, request: Request, form: dict[str, str]) -> None:
        """Raise PermissionDenied unless the POST carries this browser's token
        and comes from this site (``Origin``, when the browser sends it)."""
        origin = request.headers.get("origin")
        if origin and origin != "null":
            o = urlsplit(origin)
            if o.netloc != request.headers.get("host", "") or o.scheme != request.url.scheme:
                raise PermissionDenied("request from another site refused")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = form.get("csrf", "")
        if not cookie or not sent or not hmac.compare_digest(sent, self.token(cookie)):
            raise PermissionDenied("form expired or not from this page (CSRF check failed): reload and retry")


async def read_form(request: Request, limit: int) -> dict[str, str]:
    """The URL-encoded form of a POST, at most ``limit`` bytes (last value of each field)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise UnsupportedMedia("expected a form (application/x-www-form-urlencoded)")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise TooBig(f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooBig(f"request body over {limit} bytes")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidArgument(f"malformed form ({type(e).__name__})") from None
    return {k: v[-1] for k, v in fields.items()}


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response."""

    HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
               (b"cache-control", b"no-store")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.HEADERS if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
