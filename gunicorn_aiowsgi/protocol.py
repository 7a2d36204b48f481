"""One client connection as an asyncio.Protocol: request boundaries, timeouts, flow control (PROXY preambles: preamble.py).

The connection serves one request at a time, as gunicorn does. Its request boundary is one state
machine (ConnState). The parser is fed only bytes that follow, in order, what it was fed since a
known message boundary, and never past the end of the current request when that end is known:
bytes after a complete request wait (bounded) until its response is complete, so a malformed
request can never take down or be joined to the one before it (RFC 9112 sections 2.2 and 9.3.2).
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import proxy_protocol
from .boundary import APP, BODY, CLOSED, HEAD, IDLE, LINGER, PREAMBLE, Boundary
from .context import Context
from .environ import Peer, make_peer
from .errors import BadRequest, HTTPError, IncompleteBody
from .exchange import Exchange
from .listener import send
from .parser import SPARE_HEAD, Parser, Request
from .preamble import Preamble
from .replies import error_reply
from .timeouts import Timeouts

# Bytes of later requests kept while one is answered; past this, reading pauses (bytes).
HELD_LIMIT = 64 * 1024


class Connection(Timeouts, Preamble, asyncio.Protocol):
    """The asyncio protocol of one client socket.

    A plain protocol: each read arrives as one bytes object of its exact size, which the loop
    made (uvloop from its own buffer, asyncio by recv). A buffered one costs two Python calls
    and a copy per read on both loops (uvloop adds a buffer export): 4% more CPU per request.
    """

    __slots__ = ("ctx", "transport", "peer", "state", "parser", "exchange", "held", "requests",
                 "since", "timer", "stall", "bound", "request", "body_left", "proxy",
                 "reading", "writable", "eof", "fd")

    def __init__(self, ctx: Context, fd: int = -1) -> None:
        self.ctx = ctx
        self.fd = fd  # the plain TCP socket's descriptor, for direct writes (write()); -1: none
        self.transport: Any = None
        self.peer: Peer | None = None
        mode = ctx.settings.proxy_protocol
        self.proxy = proxy_protocol.ProxyParser(mode) if proxy_protocol.enabled(mode) else None
        self.state = PREAMBLE if self.proxy else IDLE
        # The current message's parser and request line: taken on its first byte, let go (the
        # parser to the worker's spares) when its response is complete: none held while idle.
        self.parser: Parser | None = None
        self.bound: Boundary | None = None
        self.exchange: Exchange | None = None
        self.request: Request | None = None      # the request whose head or body is being read
        self.held: bytes | bytearray = b""  # bytes after the request, known to start the next
        self.requests = 0           # requests answered on this connection (count)
        self.since = 0.0  # when the current state began, or the last body byte came (loop s)
        self.timer: Any = None      # the state's deadline (timeouts.py)
        self.stall: Any = None      # the send timeout, while output waits for the client
        self.body_left: int | None = None  # Content-Length bytes still to come; None: chunked
        self.reading = True         # the transport is reading (we pause it, never aiohttp)
        self.writable = True        # the transport's buffer is below its high-water mark
        self.eof = False            # the client half-closed (sent FIN)

    # -- lifecycle -----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # its socket's options are set on accept (listener.py)
        # asyncio pauses writers at 64 KiB; large streamed chunks would then stall on every
        # one. A quarter of write_buffer (the app thread's credit) may wait in the transport.
        high = self.ctx.settings.write_buffer // 4
        transport.set_write_buffer_limits(high=high, low=high // 4)
        self.peer = make_peer(self.ctx.settings, transport.get_extra_info("peername"),
                              transport.get_extra_info("sockname"))
        self.since = self.ctx.clock()  # the start; over TLS, the handshake's end (its own limit)
        self.ctx.opened(self)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.state = CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._unwatch_send()
        if self.exchange is not None:
            self.exchange.abandon()
            self.exchange = None
        self.ctx.closed(self)

    def pause_writing(self) -> None:
        """Past the transport's high-water mark: no more output, and no next request parsed
        (a loop answer would write at once), until the client takes some; send_timeout."""
        self.writable = False
        self._watch_send()

    def resume_writing(self) -> None:
        self.writable = True
        if self.state is CLOSED:  # closing: the send timeout watches the flush to its end
            return
        self._unwatch_send()
        if self.exchange is not None:
            self.exchange.relay()
        elif self.state is IDLE:  # the answers are taken: keep-alive counts from now
            self.since = self.ctx.clock()
            if self.held:  # requests that waited behind them
                self._resume_held()
            elif not self.reading:
                self.resume_reading()

    # -- bytes in ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is PREAMBLE:
            data = self._preamble(data)
            state = self.state
        if not data or state is LINGER or state is CLOSED:
            return
        if state is APP or self.held:  # a request is answered, or held bytes go first
            self._hold(data)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Feed the parser up to the end of the current message; what follows is held."""
        try:
            while data:
                state = self.state
                if state is IDLE:
                    if not self.writable:  # the answers before wait for the client: held
                        break
                    self._open()
                    data = self._head(data)
                elif state is HEAD:
                    data = self._head(data)
                elif state is BODY:
                    data = self._body(data)
                else:
                    break
        except HTTPError as error:
            self.refuse(error)
            return
        state = self.state
        if data and (state is APP or state is IDLE):
            self._hold(data)
        elif state is HEAD or state is BODY:
            self._arm()  # the state this read ends in; those it only passed through need no timer

    def _hold(self, data: bytes) -> None:
        """Bytes after a complete request (pipelining): parsed once its response is complete."""
        if self.held:
            self.held += data
        else:
            self.held = bytearray(data)  # b"" while none: no buffer kept per idle connection
        if len(self.held) > HELD_LIMIT:
            self.pause_reading()

    def _open(self) -> None:
        """A request's first byte: a parser at a message boundary (a spare one when there is
        one: parser.Parsers), a new request line boundary."""
        limits = self.ctx.limits
        self.parser = self.ctx.parsers.take()
        self.bound = Boundary(limits.max_line, limits.max_head)
        self.state = HEAD  # armed by _feed or _expire
        # A connection's first head must be complete within header_timeout of the connection's
        # start, as with nginx's client_header_timeout: a client that waits, then trickles,
        # does not get the time twice. A later head's time counts from its first byte.
        if self.requests:
            self.since = self.ctx.clock()

    def _head(self, data: bytes) -> bytes:
        """Feed head bytes, up to and including the blank line that ends the head."""
        bound, parser = self.bound, self.parser
        assert bound is not None and parser is not None  # built on entering HEAD (_open)
        if data[0] in b"\r\n":  # empty lines before a request line: dropped in one pass
            data = bound.skip_empty_lines(data)
        end = bound.blank_line(data)
        chunk, rest = (data, b"") if end < 0 or end == len(data) else (data[:end], data[end:])
        bound.check_head(chunk)
        requests, tail = parser.feed(chunk, line_done=bound.line_done)
        if not requests:
            return rest
        if len(requests) > 1 or tail:
            # Strict CRLF parsing ends a head at its blank line; anything else is not HTTP/1.1.
            raise BadRequest("Invalid request framing")
        if bound.size > SPARE_HEAD:  # a spare keeps its last head's fields: not a large one's
            parser.reusable = False
        bound.reset()
        if parser.upgraded:
            # The parser stops at an Upgrade or CONNECT head; what follows it starts a new one.
            parser.reset(self.ctx.loop)
        self._begin(requests[0])
        return rest

    def _begin(self, request: Request) -> None:
        """A head is complete: start its exchange; read its body, if any, next."""
        self.exchange = exchange = Exchange(self.ctx, self, request, self.requests + 1)
        done = request.complete
        if done:
            self.state = APP
        else:
            self.request = request
            # A Content-Length body is framed by counting (RFC 9112 section 6.2): _body hands
            # its bytes on as they came, never through the parser (it would copy each read
            # once more), which feed() marked not reusable.
            self.body_left = None if request.chunked else request.content_length()
            self.state, self.since = BODY, self.ctx.clock()  # armed by _feed
        exchange.begin(done)  # may answer at once (a health check, an error), or wait for the body

    def _body(self, data: bytes) -> bytes:
        """Feed body bytes: exactly Content-Length of them, or chunks up to the last chunk."""
        request, exchange = self.request, self.exchange
        assert request is not None and exchange is not None
        self.since = self.ctx.clock()
        left = self.body_left
        if left is not None:  # never a byte past the body's end (the next request's bytes)
            body, rest = (data, b"") if left >= len(data) else (data[:left], data[left:])
            self.body_left = left = left - len(body)
            done = not left
        else:
            bound = self.bound
            assert bound is not None  # a chunked body ends with a blank line (RFC 9112 7.1)
            end = bound.chunked_end(data, self._chunk)
            rest = data[end:] if end < len(data) else b""
            body = request.take_body()
            bound.check_tail(end, bool(body))  # trailer fields count as a head's do
            done = request.body_done()
        if body:
            exchange.body(body)
            if self.state is not BODY:  # refused on the way in (413, 503, 507)
                return b""
        if done:
            self.request = None
            self.state = APP
            exchange.body_end()
        return rest

    def _chunk(self, data: bytes) -> bool:
        """A chunked body's bytes, up to a blank line at most: is the body complete?"""
        self.parser.feed_body(data)  # type: ignore[union-attr]  # set while in BODY (_begin)
        return self.request.body_done()  # type: ignore[union-attr]

    # -- bytes out (called by the exchange) ----------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        send(transport, self.fd, data)  # is_closing() was False: fd is still this connection's

    def finish(self, keep_alive: bool) -> None:
        """The response is complete: the next request may begin, or the connection ends."""
        self.exchange = None
        self.requests += 1
        if self.state is BODY:
            # Answered before its body was read (a loop answer): the rest of the body is still
            # coming, and nothing after it can be trusted to start a request.
            self.linger()
            return
        if not keep_alive or self.state is not APP:
            self.close()
            return
        if self.parser is not None:  # set from _open on: checked, as a spare is never worth a crash
            self.ctx.parsers.give(self.parser)
        self.parser = self.bound = None  # the next request takes its own (_open)
        self._enter(IDLE)
        if self.held or self.eof:
            # Later, not now: a long pipeline must not nest one call per request. After a FIN,
            # a loop answer finishes inside _feed, whose read may hold more requests: they are
            # answered before the connection closes (_resume_held), as gthread does.
            self.ctx.loop.call_soon(self._resume_held)
        elif not self.reading and self.writable:  # paused by the body's backlog: read on
            self.resume_reading()  # (not writable: resume_writing reads on)

    def _resume_held(self) -> None:
        """Parse the bytes held while the last request was answered; they start at its end."""
        if self.state is not IDLE:  # a request the read held is being answered: finish calls again
            return
        if self.held:
            if not self.writable:  # resume_writing calls again
                return
            data, self.held = bytes(self.held), b""
            self._feed(data)
            if len(self.held) <= HELD_LIMIT and (self.writable or self.state is not IDLE):
                self.resume_reading()  # (IDLE and not writable: once resume_writing parses on)
        if self.eof and not self.held:
            self._client_done()

    def _client_done(self) -> None:
        """The client sent FIN and every byte it sent before is parsed: nothing more will come."""
        if self.state is BODY:
            self.refuse(IncompleteBody("the client closed before the body was complete"))
        elif self.state is IDLE or self.state is HEAD:
            self.close()

    def refuse(self, error: HTTPError, method: str = "", logged: bool = False) -> None:
        """Answer an error with gunicorn's page and end the connection (RFC 9112 section 2.2)."""
        if not logged:
            self.ctx.log_client_error(self.peer, error)
        if self.exchange is not None:
            streaming = self.exchange.call is not None  # the app has it and may have answered
            self.exchange.abandon()
            self.exchange = None
            if streaming:  # never a second response after one that may have begun: close
                self.close()
                return
        try:
            self.write(error_reply(error, method))
        except ConnectionError:
            return
        self.linger()

    def linger(self) -> None:
        """Close after an error answer, reading (and dropping) what the client still sends first."""
        transport = self.transport
        self.held = b""
        if (transport is None or transport.is_closing() or self.eof
                or not transport.can_write_eof()):
            self.close()
            return
        transport.write_eof()
        self._enter(LINGER)
        if not self.reading:
            self.resume_reading()

    def close(self) -> None:
        """End the connection once what the transport holds is sent; over TLS, let it go once
        the client has all of it (Timeouts.await_close_notify)."""
        self.state = CLOSED
        transport = self.transport
        if transport is None:
            return
        # Counted open till connection_lost: a transport still sends what it holds (a TLS one
        # its close_notify too) after this, and its socket stays open meanwhile: the send
        # timeout watches that flush, also when asyncio closed the transport itself (a FIN).
        if transport.get_write_buffer_size():
            self._watch_send()
        # Once only: asyncio's TLS transport closed a second time drops its TLS layer, and with
        # it what it still had to send and any later abort() (the exit closes every connection).
        if not transport.is_closing():
            tls = transport.get_extra_info("ssl_object") is not None
            transport.close()
            if tls:
                self.await_close_notify()

    def abort(self) -> None:
        """Close at once: a response broke off and nothing more may be written."""
        self.state = CLOSED
        if self.transport is not None:
            self.transport.abort()

    def body_caught_up(self) -> None:
        """The body's backlog is written or read: read again (the wait was not the client's)."""
        if self.state is BODY:
            self.since = self.ctx.clock()
            self.resume_reading()

    def pause_reading(self) -> None:
        if self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.transport.is_closing():
            self.reading = True
            self.transport.resume_reading()

    # -- the client half-closes ----------------------------------------------------------
    def eof_received(self) -> bool | None:
        """The client half-closed (RFC 9112 section 9.6): still answer the requests it completed.

        A body cut short by the FIN is refused with 400 and never reaches the app. Nothing in
        progress, or TLS (which cannot half-close): close now, as asyncio does by default.
        """
        self.eof = True
        if self.transport is None or self.transport.get_extra_info("ssl_object") is not None:
            return None
        if self.state is APP or self.held:
            return True  # finish() answers what is complete, then closes
        self._client_done()
        return None
