"""The review web page: where people review what agents wrote.

An adapter over the core's public API, beside the CLI and the FUSE mount:
:mod:`agentfs.web.service` asks the core, :mod:`agentfs.web.app` is the
Starlette app, :mod:`agentfs.web.security` the login, CSRF and header rules,
:mod:`agentfs.web.render` the sanitized previews, :mod:`agentfs.web.server`
runs it with hypercorn under trio (``agentfs serve``).
"""

from __future__ import annotations

from agentfs.web.app import create_app
from agentfs.web.service import ReviewService
from agentfs.web.settings import WebSettings

__all__ = ["ReviewService", "WebSettings", "create_app"]
