"""The small context every connection and request gets from its worker: settings, loop, pool, log, hooks."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from .bridge import Inbox, ThreadPool
from .diagnostics import Monitor
from .replies import HttpDate
from .settings import Settings


class Context:
    """What one worker's connections share; built once by the Server, read on the loop thread.

    Connections never see the Server (no import cycle, and nothing they should not touch):
    `opened`/`closed` report to the registry, `draining` says that keep-alive is over.
    """

    __slots__ = ("settings", "loop", "log", "pool", "inbox", "wsgi", "base", "worker", "monitor",
                 "spools", "can_sendfile", "date", "draining", "opened", "closed")

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, log: Any,
                 pool: ThreadPool, wsgi: Callable[..., Any], base: dict[str, Any], worker: Any,
                 monitor: Monitor, spools: Any) -> None:
        self.settings = settings
        self.loop = loop
        self.log = log
        self.pool = pool
        self.inbox = Inbox(loop)
        self.wsgi = wsgi
        self.base = base                    # the environ keys every request shares
        self.worker = worker                # gunicorn's worker: cfg hooks, max_requests
        self.monitor = monitor
        self.spools = spools                # where request bodies go past memory (body.SpoolStore)
        # Zero-copy file_wrapper: plain sockets on asyncio's own loops (uvloop has no sendfile).
        self.can_sendfile = (settings.sendfile and not settings.is_ssl
                             and isinstance(loop, asyncio.BaseEventLoop))
        self.date = HttpDate()
        self.draining = False
        self.opened: Callable[[Any], None] = lambda conn: None
        self.closed: Callable[[Any], None] = lambda conn: None

    def log_client_error(self, peer: Any, error: Any) -> None:
        """gunicorn's handle_error: the client's fault is a warning with its address, ours an error."""
        if error.client_error:
            self.log.warning("Invalid request from ip=%s: %s", peer.remote_addr if peer else "", error)
        else:
            self.log.error("Error handling request: %s", error)
