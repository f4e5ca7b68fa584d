"""Settings of the review page (``agentfs serve``), validated once at start.

Error contract: :func:`parse_listen` and :meth:`WebSettings.check_exposure`
raise :class:`agentfs.errors.InvalidArgument` (the CLI exits 64).
Concurrency: immutable after construction.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field

from agentfs.errors import InvalidArgument

__all__ = ["DEFAULT_LISTEN", "WebSettings", "is_loopback", "parse_listen"]

DEFAULT_LISTEN = "127.0.0.1:8330"


class WebSettings(BaseModel):
    """What one review server serves and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store_url: str
    endpoint_url: str | None = None
    #: Only these workspaces (empty: every workspace of the store).
    workspaces: list[str] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(default=8330, ge=0, le=65535)
    #: Viewers only: every POST is refused (403).
    read_only: bool = False
    #: ``NAME:TOKEN`` lines; required to listen on anything but loopback.
    auth_file: str | None = None
    #: The agent recorded for changes when there is no login (loopback use).
    agent: str = "reviewer"
    #: Largest form body accepted (bytes).
    max_body: int = Field(default=64 * 1024, ge=1024)

    def check_exposure(self) -> None:
        """Refuse to serve beyond this machine without a login."""
        if not is_loopback(self.host) and not self.auth_file:
            raise InvalidArgument(f"listening on {self.host} needs --auth-file (NAME:TOKEN lines): "
                                  "without a login the page is for 127.0.0.1 only")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` (loopback) or ``PORT`` -> (host, port)."""
    s = text.strip()
    host, port = "127.0.0.1", s
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise InvalidArgument("bad --listen (expected HOST:PORT)", path=text)
        host, port = s[1:end], s[end + 2:]
    elif ":" in s:
        host, _, port = s.rpartition(":")
        host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument("bad --listen port (expected HOST:PORT, PORT 0-65535)", path=text)
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise InvalidArgument("bad --listen host", path=text)
    return host, int(port)
