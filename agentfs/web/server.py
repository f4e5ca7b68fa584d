"""Serve the review page with hypercorn under trio (the core's own event loop
library; uvicorn would need asyncio).

Error contract: :func:`serve` raises :class:`agentfs.errors.InvalidArgument`
for settings it refuses (a non-loopback address without ``--auth-file``, a bad
users file), :class:`agentfs.errors.NotFound` for a ``--workspace`` the store
does not have, and ``OSError`` when the address cannot be bound; all before
the first request.  It returns after SIGINT or SIGTERM, once in-flight
requests are answered and every workspace client is closed.

Concurrency: one trio loop in the calling thread; core calls run in worker
threads (see :mod:`agentfs.web.app`).
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework
from starlette.types import ASGIApp

from agentfs.errors import AgentFSError
from agentfs.store import open_store
from agentfs.web.app import create_app
from agentfs.web.security import load_users
from agentfs.web.service import ReviewService
from agentfs.web.settings import WebSettings

__all__ = ["serve"]

log = logging.getLogger(__name__)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _run(app: ASGIApp, config: Config, ready: Callable[[list[str]], None] | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async def shutdown() -> None:
            async for signum in signals:
                log.info("signal %d: stopping the review server", signum)
                return

        async with trio.open_nursery() as nursery:
            urls = await nursery.start(functools.partial(hypercorn_serve, cast(ASGIFramework, app), config, shutdown_trigger=shutdown))
            if ready is not None:
                ready(list(urls or []))


def _leaf(eg: BaseExceptionGroup) -> BaseException:
    """The first deliberate error inside a trio exception group (else the group)."""
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            e = _leaf(e)
        if isinstance(e, OSError | AgentFSError):
            return e
    return eg


def serve(settings: WebSettings, *, ready: Callable[[list[str]], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; ``ready`` gets the bound URLs once listening."""
    settings.check_exposure()
    users = load_users(settings.auth_file) if settings.auth_file else None
    store = open_store(settings.store_url, endpoint_url=settings.endpoint_url)
    service = ReviewService(store, workspaces=settings.workspaces, agent=settings.agent)
    try:
        for ws in settings.workspaces:
            service.client(ws)  # an unknown workspace fails now, not on the first page
        config = Config()
        config.bind = [_bind(settings.host, settings.port)]
        config.accesslog = None
        # hypercorn's messages through this module's logger (the process's logging
        # setup decides), not a second stderr handler of its own
        config.errorlog = log
        config.graceful_timeout = 5.0
        config.h11_max_incomplete_size = 16 * 1024  # request line + headers
        app = create_app(service, settings, users)
        try:
            trio.run(_run, app, config, ready)
        except BaseExceptionGroup as eg:
            raise _leaf(eg) from None
    finally:
        service.close()
        store.close()
