"""One client connection: aiohttp's RequestHandler plus PROXY preambles, head/idle timeouts and gunicorn's error answers."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from aiohttp import http_exceptions
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from . import proxy_protocol
from .environ import Peer, is_trusted, make_peer, proxied_peer
from .errors import (
    BadRequest,
    Forbidden,
    HeaderFieldsTooLarge,
    HTTPError,
    IncompleteBody,
    NotImplementedCoding,
    URITooLong,
    error_page,
)
from .listener import unread_bytes

if TYPE_CHECKING:
    from .server import Server


class ConnState(enum.Enum):
    """What the connection is waiting for; decides which timeout applies (RFC 9112 section 9.8)."""

    PREAMBLE = "preamble"   # a PROXY protocol preamble (header timeout)
    IDLE = "idle"           # the first byte of the next request (keepalive, or header timeout at first)
    HEAD = "head"           # the rest of a request head already begun (header timeout)
    BUSY = "busy"           # a request is being read, run or answered (no connection timeout)


class Reply:
    """What our handler gives back to aiohttp: the response is already written; keep the connection?

    aiohttp's RequestHandler only calls prepare() and write_eof() and reads keep_alive.
    """

    __slots__ = ("keep_alive", "payload")

    def __init__(self, keep_alive: bool, payload: bytes = b"") -> None:
        self.keep_alive = keep_alive
        self.payload = payload

    async def prepare(self, request: Any) -> None:
        if self.payload:
            await request.writer.write(self.payload)

    async def write_eof(self, data: bytes = b"") -> None:
        return None


KEEP = Reply(True)
CLOSE = Reply(False)


def error_reply(error: HTTPError, method: str = "") -> Reply:
    """gunicorn's util.write_error response: HTML page, Connection: close.

    RFC 9110 section 9.3.2: the answer to HEAD has the head GET would get, and no content.
    """
    page = error_page(error.status, error.reason, str(error) if error.client_error else "")
    head = (f"HTTP/1.1 {error.status} {error.reason}\r\nConnection: close\r\n"
            f"Content-Type: text/html\r\nContent-Length: {len(page)}\r\n\r\n")
    return Reply(False, head.encode("latin-1") + (b"" if method == "HEAD" else page))


def fail_body(loop: Any, payload: Any, exc: BaseException) -> None:
    """End a request body's reader with `exc`, for sure.

    aiohttp's StreamReader.readany checks for an exception only on entry: if a chunk's end had
    just woken it (without data) when the exception is set, it waits again and never sees it.
    So the exception is set again on the next loop turn, when that new wait has begun.
    """
    payload.set_exception(exc)

    def again() -> None:
        if payload.exception() is exc:
            payload.set_exception(exc)

    loop.call_soon(again)


def parse_error(exc: BaseException, line_done: bool,
                limits: tuple[int, int] | None = None) -> HTTPError:
    """Map aiohttp's parser errors onto the statuses gunicorn gives (414, 431, 501, 400).

    A LineTooLong names the limit it hit: `limits` is (max_line_size, max_field_size), so
    the request-target (414) and a header (431) are told apart even when the whole head came
    in one read. Only when both limits are equal does `line_done` decide.
    """
    text = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, http_exceptions.LineTooLong):
        if limits is not None and limits[0] != limits[1] and len(exc.args) > 1:
            line_done = exc.args[1] != limits[0]
        return HeaderFieldsTooLarge(text) if line_done else URITooLong(text)
    if "Too many headers" in text:
        return HeaderFieldsTooLarge(text)
    if isinstance(exc, http_exceptions.TransferEncodingError) and "not supported" in text.lower():
        return NotImplementedCoding(text)
    return BadRequest(text)


class Connection(RequestHandler):
    """aiohttp's HTTP/1.1 protocol for one socket, with the timeouts and addresses gunicorn users expect."""

    __slots__ = ("server", "peer", "state", "proxy", "requests", "line_done", "since", "timer",
                 "body_read", "early", "half_closed", "payload")

    def __init__(self, server: "Server", **kwargs: Any) -> None:
        super().__init__(server, loop=server.loop, **kwargs)
        self.server = server
        self.peer: Peer | None = None
        self.proxy = (proxy_protocol.ProxyParser(server.settings.proxy_protocol)
                      if proxy_protocol.enabled(server.settings.proxy_protocol) else None)
        self.state = ConnState.PREAMBLE if self.proxy else ConnState.IDLE
        self.requests = 0          # requests answered on this connection (count)
        self.line_done = False     # the request line of the current head is complete
        self.since = server.loop.time()  # when the current state began (loop seconds)
        self.timer: Any = None
        self.body_read = False     # the current request's body is in; later bytes are the next head
        self.early = False         # bytes of the next request arrived while this one was busy
        self.half_closed = False   # the client sent FIN: answer what it sent, then close
        self.payload: Any = None   # body stream of the newest request parsed (aiohttp StreamReader)

    # -- lifecycle -----------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.peer = make_peer(self.server.settings, transport.get_extra_info("peername"),
                              transport.get_extra_info("sockname"))
        self.server.opened(self)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().connection_lost(exc)
        self.server.closed(self)

    # -- timeouts ------------------------------------------------------------------------
    def _deadline(self) -> float | None:
        settings = self.server.settings
        if self.state is ConnState.BUSY:
            return None
        if self.state is ConnState.IDLE and self.requests:
            return self.since + settings.keepalive
        return self.since + settings.header_timeout

    def _arm(self) -> None:
        deadline = self._deadline()
        if deadline is None:
            return
        if self.timer is not None:
            if self.timer.when() <= deadline:
                return  # fires first, then re-arms itself for the later deadline
            # A shorter deadline than the pending one (keepalive 2 s after a 30 s header
            # timeout, say): the pending timer would close the idle connection far too late.
            self.timer.cancel()
        self.timer = self.server.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self.timer = None
        deadline = self._deadline()
        if deadline is None or self.transport is None:
            return
        if self.server.loop.time() < deadline:  # the state moved on since: re-check later
            self.timer = self.server.loop.call_at(deadline, self._expire)
            return
        if self.state is ConnState.IDLE and unread_bytes(self.transport):
            # The next request is in the socket, not read yet: a head has begun, never close.
            self.enter(ConnState.HEAD)
            return
        if self.state is not ConnState.IDLE:
            self.server.log.debug("Closing %s: request head not received within %ss",
                                  self.peer, self.server.settings.header_timeout)
        self.force_close()

    def enter(self, state: ConnState) -> None:
        if state is ConnState.IDLE and self.early:
            # Never time a kept-alive connection out while a request may be arriving on it.
            state = ConnState.HEAD
        self.state = state
        if state is ConnState.BUSY:
            # No connection deadline while busy: a pending timer finds BUSY and stands down.
            self.body_read = self.early = False
            return
        self.since = self.server.loop.time()
        if state is ConnState.IDLE:
            self.line_done = False
            if self.half_closed and not self._messages:
                self.close()  # aiohttp closes once this response is out: nothing more can come
        self._arm()

    # -- bytes in ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.proxy is not None:
            data = self._preamble(data)
            if not data:
                return
        if data:  # aiohttp re-parses its buffered tail with b"": no client activity, that
            if self.state is ConnState.IDLE:
                self.enter(ConnState.HEAD)
            elif self.state is ConnState.BUSY and self.body_read:
                self.early = True
            if not self.line_done and self.state is ConnState.HEAD:
                self.line_done = b"\n" in data
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._parsed()

    def _parsed(self) -> None:
        """aiohttp queued new messages (requests, or one parse error).

        Framing is security: nothing is ever parsed again from a read that is not known to
        begin at a message boundary (a read may begin inside a head aiohttp still holds, and
        re-parsing it alone smuggles a request past a front proxy). When a read holds a bad
        request, aiohttp answers 400 for the whole read, requests before it included.
        """
        newest, payload = self._messages[-1] if self._messages else (None, None)
        current = self.payload
        if isinstance(newest, _ErrInfo):
            # aiohttp's parser failed inside a body (a bad trailer, say) without telling
            # that body's reader: end it with the error, or its handler waits for ever.
            if current is not None and not current.is_eof() and current.exception() is None:
                fail_body(self.server.loop, current, self._parse_error(newest.exc))
        elif payload is not None:
            self.payload = payload
        if self.state is not ConnState.BUSY:
            self.enter(ConnState.BUSY)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol allows a bool
        """The client half-closed (RFC 9112 section 9.6): still answer the requests it completed.

        A body cut short by the FIN is refused with 400 and never reaches the app. Nothing in
        progress, or TLS (which cannot half-close): close now, as asyncio does by default.
        """
        if self.transport is None or self.transport.get_extra_info("ssl_object") is not None:
            return None
        if self.state is not ConnState.BUSY and not self._messages:
            return None
        payload = self.payload
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            fail_body(self.server.loop, payload,
                      IncompleteBody("the client closed before the body was complete"))
        self.half_closed = True
        return True

    def _preamble(self, data: bytes) -> bytes:
        """Consume a PROXY protocol preamble before aiohttp sees any byte."""
        assert self.proxy is not None and self.peer is not None
        settings = self.server.settings
        try:
            result = self.proxy.feed(data)
        except proxy_protocol.ProxyProtocolError as exc:
            self._refuse(BadRequest(f"Invalid PROXY line: {exc}"))
            return b""
        # Judged as soon as the signature is recognised (the parser's `version`), as gunicorn
        # does: a v2 header may announce 64 KiB, which an untrusted peer must not make us hold
        # until header_timeout.
        if self.proxy.version is not None and self.peer.remote_port is not None and not is_trusted(
                self.peer.remote_addr, settings.proxy_allow_ips, settings.proxy_networks):
            self._refuse(Forbidden("Request forbidden"))
            return b""
        if result is None:
            return b""
        self.proxy = None
        info, rest = result
        if info is not None:
            self.peer = proxied_peer(self.peer, info)
        self.enter(ConnState.IDLE)
        return rest

    def _refuse(self, error: HTTPError) -> None:
        """Answer a connection-level error directly and close (no request was parsed)."""
        self.server.log_client_error(self.peer, error)
        if self.transport is not None:
            self.transport.write(error_reply(error).payload)
        self.force_close()

    # -- errors --------------------------------------------------------------------------
    def _parse_error(self, exc: BaseException) -> HTTPError:
        kwargs = self.server._kwargs
        limits = (kwargs.get("max_line_size", 8190), kwargs.get("max_field_size", 8190))
        return parse_error(exc, self.line_done, limits)

    # A duck-typed response (Reply), not aiohttp's StreamResponse: RequestHandler only calls
    # prepare()/write_eof() and reads keep_alive.
    def handle_error(  # type: ignore[override]
            self, request: Any, status: int = 500, exc: BaseException | None = None,
            message: str | None = None) -> Reply:
        """aiohttp calls this for parse errors and for exceptions escaping our handler."""
        if isinstance(exc, http_exceptions.HttpProcessingError):
            error = self._parse_error(exc)
            self.server.log_client_error(self.peer, error)
        else:
            error = HTTPError("internal error")
            self.server.log.exception("Error handling request", exc_info=exc)
        return error_reply(error)
