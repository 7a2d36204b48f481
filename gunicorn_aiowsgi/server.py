"""The worker's connections: the registry, the factory the listener calls on accept, and the graceful drain."""

from __future__ import annotations

import asyncio
import heapq
import os
from operator import itemgetter
from typing import Any, Callable

from .boundary import IDLE, ConnState
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
# Idle kept-alive connections one scan finds for clients waiting for a slot, oldest first
# (count): nginx closes up to 32 of its reusable connections at once.
RECLAIM_BATCH = 32
# The warning that worker_connections are all taken: at most once in this long (seconds).
RECLAIM_WARN_EVERY = 60.0


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
        self.reclaim_warned = float("-inf")  # loop time of the last reclaim_idle warning
        # (idle since, connection) of the last scan's oldest idle ones, the oldest last: those
        # closed next for clients waiting for a slot (reclaim_idle), if still idle since then.
        self.reclaimable: list[tuple[float, Connection]] = []

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

    def reclaim_idle(self) -> int:
        """worker_connections are all open and a client waits for one: close the connection
        idle longest for it, as nginx closes its reusable connections. Returns 1, or 0 if none
        is idle; its slot frees as it closes (the listener's closed_one).

        One per waiting client, where nginx closes up to 32 at once (it has the client in hand
        when it does): keep-alive stays on until room is needed, and a full worker woken for a
        client that another worker, with room, then takes closes one connection, not 32. The
        scan is shared instead: it keeps the RECLAIM_BATCH oldest, for the next clients.
        """
        for rescan in (False, True):
            if rescan:
                self.reclaimable = self._oldest_idle()
            while self.reclaimable:
                since, conn = self.reclaimable.pop()
                if conn.since == since and idle(conn):  # idle since the scan, and still is
                    conn.close()
                    self._reclaimed()
                    return 1
        return 0

    def _oldest_idle(self) -> list[tuple[float, Connection]]:
        """The RECLAIM_BATCH connections idle longest, the oldest last (list.pop() takes it).
        A scan of every connection, at the limit only: no bookkeeping per request. Longest to
        the loop clock's step (uvloop's: a millisecond, read once a turn); ties in accept order."""
        found = [(conn.since, conn) for conn in self.conns  # since: idle since, when IDLE
                 if between_requests(conn)]
        oldest = heapq.nsmallest(RECLAIM_BATCH, found, key=itemgetter(0))
        oldest.reverse()
        return oldest

    def _reclaimed(self) -> None:
        self.monitor.count("idle_reclaimed")
        now = self.loop.time()
        if now - self.reclaim_warned >= RECLAIM_WARN_EVERY:
            self.reclaim_warned = now
            self.log.warning("worker_connections (%d) are all open: closing idle keep-alive "
                             "connections for new clients", self.ctx.settings.worker_connections)

    def close_all(self) -> None:
        for conn in list(self.conns):
            exchange = conn.exchange
            if exchange is not None:
                # Now, not in connection_lost, which a transport with bytes to send (or TLS,
                # awaiting close_notify) calls later or never: a queued call must never run.
                conn.exchange = None
                exchange.abandon()
            conn.close()


def between_requests(conn: Connection) -> bool:
    """Between requests after at least one answered (a new connection's first request is the
    header timeout's to wait for), its answers taken, nothing of a next request read (held):
    what the loop knows without asking the transport or the kernel."""
    return conn.state is IDLE and conn.requests > 0 and conn.writable and not conn.held


def idle(conn: Connection) -> bool:
    """Whether closing `conn` loses nothing: between requests, nothing left in its transport
    and nothing of a next request waiting in the socket. Its client meets what a keep-alive
    timeout gives, which it must be ready for (RFC 9112 section 9.5)."""
    transport = conn.transport
    return (between_requests(conn) and not transport.get_write_buffer_size()
            and not unread_bytes(transport))
