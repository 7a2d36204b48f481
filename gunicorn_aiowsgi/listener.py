"""Accepting connections on gunicorn's listening sockets (at most worker_connections open), and a connection's socket-level helpers."""

from __future__ import annotations

import array
import asyncio
import enum
import errno
import fcntl
import os
import socket
import ssl
import struct
import termios
from typing import Any, Protocol

from .tls import TlsContexts

# Connections taken per readiness event: enough to empty a burst, few enough to stay fair to
# requests already in progress (asyncio's own server takes up to `backlog` at a time).
ACCEPT_BATCH = 64
# After EMFILE/ENFILE: how long to leave the backlog alone before trying again (seconds).
FD_EXHAUSTED_PAUSE = 0.5
# At worker_connections with a client waiting and no idle connection to close for it: how soon
# to look again, once a connection mid-request may have become idle (seconds).
FULL_RECHECK = 0.25
# Where Linux's struct tcp_info (getsockopt TCP_INFO) holds tcpi_bytes_acked, the bytes of this
# connection the peer has acknowledged (a u64, Linux 4.1+; the struct only grows at its end).
TCPI_BYTES_ACKED = 120


class ListenState(enum.Enum):
    """Whether the listener watches gunicorn's listening sockets for new clients."""

    NEW = "new"               # not started
    ACCEPTING = "accepting"   # watched: new clients are taken, up to worker_connections
    FULL = "full"             # every slot open and a client waiting: not watched until one closes
    BACKOFF = "backoff"       # out of descriptors: not watched for FD_EXHAUSTED_PAUSE
    STOPPED = "stopped"       # for good (a drain, the exit)


class Connections(Protocol):
    """What the listener serves (server.Server): a protocol per accepted socket, and the idle
    connections it may close when every slot is taken."""

    def __call__(self, fd: int) -> asyncio.BaseProtocol: ...

    def reclaim_idle(self) -> int: ...


class Listener:
    """Our own accept loop instead of loop.create_server, for two reasons gunicorn users see:

    - create_server calls listen() again with its own backlog (100), overriding gunicorn's
      `backlog`; we never call listen(), so the master's backlog stands.
    - worker_connections: past the limit we stop accepting, so new clients wait in the kernel's
      backlog (and can be taken by another worker) instead of being accepted and starved.

    At the limit the sockets stay watched: one turning readable then says a client is waiting,
    and idle kept-alive connections are closed to make room for it (Connections.reclaim_idle).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[Any],
                 factory: Connections, tls: TlsContexts | None, limit: int, log: Any,
                 handshake_timeout: float = 30.0) -> None:
        self.loop = loop
        self.sockets = [s.sock if hasattr(s, "sock") else s for s in sockets]
        self.factory = factory
        self.tls = tls                # None: plain TCP
        # Time a TLS client has to complete its handshake (seconds): AIOWSGI_HEADER_TIMEOUT, as
        # the handshake is the start of getting a request's head (asyncio's default is 60 s).
        self.handshake_timeout = handshake_timeout
        self.limit = limit
        self.log = log
        self.open = 0                # accepted connections not yet closed (count)
        self.state = ListenState.NEW
        self._timer: asyncio.TimerHandle | None = None  # the end of a BACKOFF, or FULL_RECHECK

    def start(self) -> None:
        for sock in self.sockets:
            sock.setblocking(False)
        self._watch()

    def _watch(self) -> None:
        if self.state is ListenState.ACCEPTING or self.state is ListenState.STOPPED:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = ListenState.ACCEPTING
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _unwatch(self, state: ListenState) -> None:
        if self.state is ListenState.ACCEPTING:
            for sock in self.sockets:
                self.loop.remove_reader(sock.fileno())
        self.state = state

    def stop(self) -> None:
        """Stop accepting for good, and close this process's copy of the listening sockets.

        The master and the other workers hold their own descriptors, so the socket goes on
        listening for them. Ours going away at once matters twice: with reuse_port the socket
        is this worker's alone, and the kernel stops steering connections to a worker that
        will never accept them; and once the master has closed its copy (TERM, QUIT), new
        clients are refused at once instead of waiting, for the whole drain, in a backlog
        nobody reads and that is reset when we exit.
        """
        self._unwatch(ListenState.STOPPED)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in self.sockets:
            sock.close()

    def closed_one(self) -> None:
        """A connection ended; a client waiting for a slot gets it."""
        self.open -= 1
        if self.state is ListenState.FULL:
            self._watch()

    def _accept(self, sock: socket.socket) -> None:
        if self.state is not ListenState.ACCEPTING:
            return  # another of the sockets was ready in the same turn, before we stopped
        if self.open >= self.limit:
            self._full()  # readable at the limit: a client is waiting
            return
        for _ in range(ACCEPT_BATCH):
            if self.open >= self.limit:
                return  # the next readiness says whether another client waits
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.error("Cannot accept: %s; pausing for %ss", exc, FD_EXHAUSTED_PAUSE)
                    self._unwatch(ListenState.BACKOFF)
                    self._timer = self.loop.call_later(FD_EXHAUSTED_PAUSE, self._look_again)
                    return
                if exc.errno == errno.ECONNABORTED:
                    continue
                raise
            conn.setblocking(False)
            tune(conn)
            self.open += 1
            self.loop.create_task(self._connect(conn, addr))

    def _full(self) -> None:
        """Every slot is open and a client waits in the backlog: stop watching (the socket
        stays readable), and close the kept-alive connection idle longest for it, as nginx
        reuses its idle connections. Its closing lets the client in (closed_one); with none
        to close, look again in FULL_RECHECK, once a connection mid-request may be idle.

        With several workers on one socket every watching worker is woken: a full one may
        close an idle connection for a client that another, with room, then takes.
        """
        self._unwatch(ListenState.FULL)
        if not self.factory.reclaim_idle() and self.state is ListenState.FULL:
            self._timer = self.loop.call_later(FULL_RECHECK, self._look_again)

    def _look_again(self) -> None:
        self._timer = None
        self._watch()  # at the limit still, a client still waiting makes _accept call _full

    async def _connect(self, conn: socket.socket, addr: Any) -> None:
        # A plain socket's descriptor goes to its protocol, which may write to it directly.
        factory, fd = self.factory, -1 if self.tls else conn.fileno()
        try:
            if self.tls:
                context = self.tls.current()
                if context is None:  # a rebuild is due (a file changed): this client gets it
                    context = await self.tls.fresh()
                await self.loop.connect_accepted_socket(
                    lambda: factory(fd), conn, ssl=context,
                    ssl_handshake_timeout=self.handshake_timeout)
            else:
                await self.loop.connect_accepted_socket(lambda: factory(fd), conn)
        except Exception as exc:
            # No protocol saw this connection (a failed TLS handshake, say): count it closed here.
            self._setup_failed(exc, addr)
            conn.close()
            self.closed_one()

    def _setup_failed(self, exc: Exception, addr: Any) -> None:
        """A handshake the client got wrong (no certificate, plain HTTP on the TLS port, not TLS
        at all) is a warning in gthread's words (gunicorn's handle_error), so that refused
        clients show in the log. Resets, timeouts and an end of stream mid-handshake stay at
        debug, as gthread has them: port scanners and health checks make many."""
        if isinstance(exc, ssl.SSLError) and exc.args[0] != ssl.SSL_ERROR_EOF:
            ip = addr[0] if isinstance(addr, tuple) else ""
            self.log.warning("Invalid request from ip=%s: %s", ip, exc)
        else:
            self.log.debug("Connection setup failed: %r", exc)


def tune(sock: socket.socket) -> None:
    """TCP options of an accepted connection: no Nagle delay, and kernel keepalive probes.

    Set here, on the socket we accepted, not through the transport: on uvloop, asking a
    transport for its socket makes it keep a pseudo-socket object per connection (~70 bytes).
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def send(transport: Any, fd: int, data: bytes | memoryview) -> None:
    """Write `data` to a connection: to its plain socket `fd` (-1: none) when the transport holds
    nothing, so that order is kept; whatever the socket does not take goes through the transport.

    os.write lets go of the GIL for the syscall; uvloop's transport.write does not, and every app
    thread would wait out each response's send (on loopback, the peer's receive runs in it too).
    The caller checks that the transport is not closing: transports close the descriptor only
    after that, so `fd` cannot belong to another connection yet.
    """
    if fd >= 0 and not transport.get_write_buffer_size():
        try:
            sent = os.write(fd, data)
        except OSError:  # EAGAIN, or a broken connection: the transport meets it and closes
            sent = 0
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    transport.write(data)


def unread_bytes(transport: Any) -> int:
    """Bytes waiting in a connection's socket that the loop has not read yet (0 if unknown).

    Closing a socket with unread bytes resets the connection, and those bytes are a request
    on its way: a kept-alive connection in that state is never closed as idle. Works for TLS
    too (the raw socket holds TLS records), and on uvloop (its pseudo-socket has fileno()).
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return 0
    return count[0]


def acknowledged(transport: Any) -> int | None:
    """Bytes the client has acknowledged on this TCP connection so far (a count that only
    grows), when nothing sent is held before it: none in the TLS layer, none in the kernel's
    send queue (SIOCOUTQ: bytes not yet acknowledged). None while some are held, and where it
    cannot be told (not Linux, a closed socket). On a unix socket (gunicorn's `unix:` bind)
    SIOCOUTQ counts what the client has not read yet, and nothing is acknowledged: 0 once it
    has read everything.

    Not seen: the loop's own socket transport under the TLS layer keeps a buffer that neither
    asyncio's nor uvloop's TLS transport counts or lets a protocol reach. It is written out as
    soon as the socket takes more, so two looks with a poll of the loop between them that both
    give the same count show it held nothing either: what it wrote meanwhile would be in the
    kernel's queue or acknowledged. That is for the caller to do (Timeouts.await_close_notify).
    """
    if transport is None or transport.get_write_buffer_size():
        return None
    sock = transport.get_extra_info("socket")
    queued = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, queued)
        if sock.family == socket.AF_UNIX:
            return None if queued[0] else 0
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPI_BYTES_ACKED + 8)
    except (AttributeError, OSError, ValueError):
        return None
    if queued[0] or len(info) < TCPI_BYTES_ACKED + 8:
        return None
    return int(struct.unpack_from("Q", info, TCPI_BYTES_ACKED)[0])
