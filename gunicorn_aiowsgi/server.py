"""The worker's connections: the registry, the factory the listener calls on accept, and the graceful drain."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

from .boundary import ConnState
from .bridge import ThreadPool
from .context import Context
from .diagnostics import Monitor
from .environ import base_environ
from .files import FileWrapper
from .listener import unread_bytes
from .protocol import Connection
from .settings import Settings
from .spool_store import SpoolStore

# A connection accepted less than this long ago (seconds) is not closed as idle when draining:
# its client has just connected, and its first request is on the way.
FRESH_GRACE = 1.0
# On a graceful stop, kept-alive connections stay open this long at most (seconds), as gthread's
# STOP_KEEPALIVE_LINGER (gunicorn 27): a request a pooling client (a proxy) sends meanwhile is
# answered, with Connection: close, instead of meeting a connection closed under it (a 502).
STOP_KEEPALIVE_LINGER = 2.0


class Server:
    """Every open connection of one worker, and the context they share.

    Called with no arguments (by the listener, on accept) it makes the protocol for a new
    connection. `draining` ends keep-alive for every response from then on.
    """

    def __init__(self, worker: Any, settings: Settings, wsgi: Callable[..., Any], pool: ThreadPool,
                 loop: asyncio.AbstractEventLoop, log: Any, errors: Any) -> None:
        self.loop = loop
        self.log = log
        # Open connections, as dict keys (values None): a dict's table is about half a set's at
        # 10,000 members (~30 bytes each, against 50 to 100 as the set grows by fourfold steps).
        self.conns: dict[Connection, None] = {}
        self.monitor = Monitor(pool, self, log, os.getpid())
        self.spools = SpoolStore(loop, settings)  # the body writer thread and the spool budget
        self.ctx = Context(settings, loop, log, pool, wsgi, base_environ(settings, errors, FileWrapper),
                           worker, self.monitor, self.spools)
        self.ctx.opened = self._opened
        self.ctx.closed = self._closed
        self.on_close: Callable[[], None] = lambda: None
        self.linger_end = 0.0  # loop time when a drain closes idle connections (close_idle)

    def __call__(self, fd: int = -1) -> Connection:
        return Connection(self.ctx, fd)

    @property
    def draining(self) -> bool:
        return self.ctx.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        if value and not self.ctx.draining:
            self.linger_end = self.loop.time() + STOP_KEEPALIVE_LINGER
            self.loop.call_at(self.linger_end, self.close_idle)
        self.ctx.draining = value

    def _opened(self, conn: Connection) -> None:
        self.conns[conn] = None

    def _closed(self, conn: Connection) -> None:
        if conn in self.conns:
            del self.conns[conn]
            self.on_close()

    def close_idle(self) -> None:
        """Graceful shutdown: idle keep-alive connections go once STOP_KEEPALIVE_LINGER is over
        (sooner by their own keep-alive timeout); busy ones finish first.

        Spared (answered with Connection: close instead): one whose next request is already in
        the socket (or read, waiting for the client to take the answers before it), and a new
        one that has had no chance yet to send its first request.
        """
        now = self.loop.time()
        if now < self.linger_end:
            return
        for conn in list(self.conns):
            if conn.state is not ConnState.IDLE and conn.state is not ConnState.PREAMBLE:
                continue
            if ((not conn.requests and now - conn.since < FRESH_GRACE) or conn.held
                    or unread_bytes(conn.transport)):
                continue  # the next request is read already (held) or waiting in the socket
            conn.close()

    def close_all(self) -> None:
        for conn in list(self.conns):
            exchange = conn.exchange
            if exchange is not None:
                # Now, not in connection_lost, which a transport with bytes to send (or TLS,
                # awaiting close_notify) calls later or never: a queued call must never run.
                conn.exchange = None
                exchange.abandon()
            conn.close()
