"""The pure core of request boundaries: the connection's states and deadlines, where a head's lines end.

Plain bytes in, plain values out (no I/O, no parser): the connection uses it to feed aiohttp's
parser exactly one request head at a time, and a chunked body up to its last chunk, so that bytes
after a request's end are never parsed before its response is complete (RFC 9112 section 9.3.2).
"""

from __future__ import annotations

import enum
from typing import Callable

from .errors import BadRequest, HeaderFieldsTooLarge, URITooLong
from .settings import Settings

# The end of a request head, and of a chunked body (RFC 9112 sections 2.1 and 7.1). aiohttp's C
# parser (llhttp, strict) takes no bare LF, so a message always ends with this.
BLANK_LINE = b"\r\n\r\n"
# What an empty line before a request line starts with (RFC 9112 section 2.2).
EMPTY_LINE_START = (b"\r", b"\n")
# A request line's bytes besides its target (method, spaces, version, CR), at most (bytes).
LINE_SLACK = 64
# After an error answer, how long the client's remaining bytes are read and dropped before the
# socket closes, so the answer is not lost to a reset (seconds; aiohttp's lingering time).
LINGER_TIME = 2.0


class ConnState(enum.Enum):
    """Where the connection is between requests; each state has its own timeout (RFC 9112 section 9.8)."""

    PREAMBLE = "preamble"   # a PROXY protocol preamble (header timeout)
    IDLE = "idle"           # at a message boundary, no byte of the next request yet (keepalive)
    HEAD = "head"           # a request head has begun (header timeout)
    BODY = "body"           # the head is in; its body is being received (body timeout)
    APP = "app"             # the request is complete; the app answers it (no connection timeout)
    LINGER = "linger"       # answered an error; dropping what the client still sends, then close
    CLOSED = "closed"


# The states as module names, which the connection compares against several times a request: on
# Python 3.11 every ConnState.X is a descriptor call, about ten times a global name's cost.
PREAMBLE, IDLE, HEAD, BODY, APP, LINGER, CLOSED = (
    ConnState.PREAMBLE, ConnState.IDLE, ConnState.HEAD, ConnState.BODY, ConnState.APP,
    ConnState.LINGER, ConnState.CLOSED)


def deadline(state: ConnState, since: float, requests: int, settings: Settings) -> float | None:
    """When a connection that entered `state` at `since` (loop seconds) times out; None: never."""
    if state is IDLE:
        return since + (settings.keepalive if requests else settings.header_timeout)
    if state is BODY:
        return since + settings.body_timeout
    if state is LINGER:
        return since + LINGER_TIME
    if state is HEAD or state is PREAMBLE:
        return since + settings.header_timeout
    return None


def empty_lines_end(data: bytes) -> int:
    """Where the empty lines (CRLF, or a bare LF, which RFC 9112 section 2.2 lets a recipient
    take as a line end) at the start of `data` end. A CR followed by anything but LF is a bare
    CR, invalid there (section 2.2; llhttp skips it, gthread answers 400): refused. A CR that
    ends `data` is not counted: the next byte decides."""
    stripped = data.lstrip(b"\r\n")
    end = len(data) - len(stripped)
    prefix = data[:end]
    if b"\r" in prefix:
        if not stripped and prefix[-1:] == b"\r":  # ends the read: only the next byte says
            prefix, end = prefix[:-1], end - 1
        if b"\r" in prefix.replace(b"\r\n", b""):  # a CR that no LF follows
            raise BadRequest("Invalid request: a bare CR before the request line")
    return end


def check_head_only(method: str, chunked: bool, transfer_encoding: bool, content_length: str,
                    stopped: bool) -> None:
    """An Upgrade or CONNECT request, whose head aiohttp's parser may stop at (`stopped`: it read
    none of the body): what follows its head, then, is judged as the next request, so a body
    must be one we can frame, and one it did not read is refused.

    RFC 9112 section 6.3: a Transfer-Encoding that does not end in chunked gives no length a
    reader can trust: 400, then close (the parser refuses it elsewhere, not here). RFC 9110
    section 9.3.6: CONNECT has no content (the parser would hand its bytes on as a tunnel's),
    never given a length that wsgi.input does not hold. RFC 9110 section 7.8 lets an Upgrade
    request have content (curl --http2 sends its POST body with Upgrade: h2c): served when the
    parser reads it, refused when it stopped at the head, never read as the next request."""
    content = chunked or content_length != "0"
    if transfer_encoding and not chunked:
        raise BadRequest("Transfer-Encoding without chunked as the final coding")
    if method == "CONNECT" and content:
        raise BadRequest("CONNECT request with content")
    if stopped and content:
        raise BadRequest("Upgrade request with content")


def protocol_ok(line: bytes) -> bool:
    """RFC 9112 section 2.3: the request line ends in HTTP-name "/" version; the name is "HTTP".

    aiohttp's parser (llhttp) also takes RTSP/1.0 and ICE/1.0 request lines as HTTP/1.0.
    """
    return line.rstrip(b"\r").rpartition(b" ")[2].startswith(b"HTTP/")


class Boundary:
    """What one connection has seen of the current message: its request line, the last bytes fed,
    the size of its head (or of a chunked body's trailer section) so far."""

    __slots__ = ("line", "line_done", "carry", "max_target", "max_head", "size")

    def __init__(self, max_target: int = 8190, max_head: int = 64 * 1024) -> None:
        self.line: bytes | None = b""  # a head's first bytes until its request line ends; then None
        # Whether the request line is complete (line is None): a plain attribute, not a property,
        # since the connection reads it on every head read (a property is a Python call on 3.11).
        self.line_done = False
        self.carry = b""               # the last bytes fed, to find a blank line split across reads
        self.max_target = max_target   # limit_request_line, as aiohttp's parser applies it (bytes)
        self.max_head = max_head       # AIOWSGI_MAX_HEAD_SIZE (bytes)
        self.size = 0                  # bytes of the head so far, or of a chunked body's tail

    def reset(self) -> None:
        """A message boundary: what follows starts a new request."""
        self.line = b""
        self.line_done = False
        self.carry = b""
        self.size = 0

    def check_head(self, chunk: bytes) -> None:
        """A head's next bytes, before the parser keeps them: keep its first bytes until its request
        line is complete, then check its protocol; count them all against max_head (431 past it:
        aiohttp's parser keeps each field twice, and gunicorn's limits allow 100 x 8 KiB)."""
        if self.line is not None:
            self._check_line(chunk)
        self.size += len(chunk)
        if self.size > self.max_head:
            raise HeaderFieldsTooLarge(f"request head longer than {self.max_head} bytes")

    def _check_line(self, chunk: bytes) -> None:
        """Keep a head's first bytes until its request line is complete; then check it."""
        line = self.line
        line = line + chunk if line else chunk
        if line[:1] in EMPTY_LINE_START:
            line = line[empty_lines_end(line):]  # RFC 9112 section 2.2: empty lines may come first
        end = line.find(b"\n")
        if end < 0:
            if len(line) > self.max_target + LINE_SLACK:  # kept bytes stay bounded
                raise URITooLong(f"request line longer than {self.max_target} bytes")
            self.line = line
            return
        # protocol_ok(line[:end]) without copying the line: the word after its last space.
        if not line.startswith(b"HTTP/", line.rfind(b" ", 0, end) + 1, end):
            raise BadRequest(f"Invalid HTTP version: {line[:end].decode('latin-1')!r}")
        if line.find(b"  ", 0, end) >= 0 or line[0] == 32:  # 32: b" "
            # RFC 9112 section 3: single spaces between the parts. llhttp takes runs of them; a
            # proxy that reads the line otherwise would disagree on the target, so gunicorn's 400.
            raise BadRequest(f"Invalid request line: {line[:end].decode('latin-1')!r}")
        # The request-target's limit holds however the line was split into reads (aiohttp
        # before 3.14 checks it only within one read). The target is shorter than its line:
        # only a line past the limit needs cutting out its target.
        if end > self.max_target:
            target = line[:end].partition(b" ")[2].rpartition(b" ")[0]
            if len(target) > self.max_target:
                raise URITooLong(f"request-target longer than {self.max_target} bytes")
        self.line = None
        self.line_done = True

    def check_tail(self, fed: int, body: bool) -> None:
        """A read of a chunked body fed `fed` bytes, which gave body bytes or not (`body`).

        After the last chunk come trailer fields, which the parser keeps as it keeps a head's:
        they count against max_head. Where the last chunk ends is the parser's to know, so what
        counts is every byte since the last read that gave body bytes: the read that brings the
        last chunk may also bring trailer fields beyond the limit (a read's worth, at most)."""
        if body:
            self.size = 0
            return
        self.size += fed
        if self.size > self.max_head:
            raise HeaderFieldsTooLarge(
                f"chunked body's trailer section longer than {self.max_head} bytes")

    def skip_empty_lines(self, data: bytes) -> bytes:
        """Empty lines before the request line (RFC 9112 section 2.2; the parser skips them
        too), dropped in one pass instead of cut at each blank line they hold. A CR ending the
        read stays: the head keeps it (_check_line) until the next read says whether a LF
        follows."""
        return data[empty_lines_end(data):] if self.line == b"" else data

    def chunked_end(self, data: bytes, feed: Callable[[bytes], bool]) -> int:
        """Give a chunked body's bytes to `feed` (true once the body is complete), cut at each
        blank line, where alone it can end (RFC 9112 section 7.1); returns the index its end
        is at, or len(data). Offsets, not copies of the rest: linear in the read, blank lines
        and all."""
        start, size = 0, len(data)
        while start < size:
            end = self.blank_line(data, start)
            stop = size if end < 0 else end
            done = feed(data[start:stop] if start or stop < size else data)
            start = stop
            if done:
                break
        return start

    def blank_line(self, data: bytes, start: int = 0) -> int:
        """Index in `data` just past the first blank line at or after `start`, counting the bytes
        fed before (those up to `start` among them); -1 if none, and all of `data` is fed."""
        carry = self.carry
        if carry:
            found = (carry + data[start:start + 3]).find(BLANK_LINE)
            if found >= 0:
                self.carry = b""
                return start + found + 4 - len(carry)
        found = data.find(BLANK_LINE, start)
        if found >= 0:
            self.carry = b""
            return found + 4
        self.carry = data[-3:] if len(data) - start >= 3 else (carry + data[start:])[-3:]
        return -1
