"""The pure response core: start_response's state machine, header checks, head rendering, body framing."""

from __future__ import annotations

import enum
import re
from typing import Any, Callable

from .errors import AppError

# RFC 9110 section 5.6.2: field names are tokens.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
# RFC 9110 section 5.5: field-vchar / SP / HTAB / obs-text; no CR, LF, NUL or other CTLs.
FIELD_VALUE = re.compile(r"[ \t\x21-\x7e\x80-\xff]*")
# RFC 9112 section 4 and PEP 3333: "NNN reason", reason may be empty.
STATUS = re.compile(r"[0-9]{3}(?: [ \t\x21-\x7e\x80-\xff]*)?")
# RFC 9110 section 7.6.1: hop-by-hop fields are the server's to send, never the app's (PEP 3333).
# Server and Date too: render_head always sends its own, and a second of either would repeat a
# singleton field (RFC 9110 section 5.3); gunicorn drops the app's (its util.hop_headers).
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailers", "trailer", "transfer-encoding", "upgrade", "server", "date",
))


# Chunks below this are framed by copying them into one buffer (one transport write); larger
# ones go out as three pieces, since copying them costs more than the extra writes (bytes).
COPY_LIMIT = 16 * 1024


class ResponsePhase(enum.Enum):
    """Where a response is in its life, seen from start_response (h11-style named states)."""

    NOT_STARTED = "not started"   # start_response not called yet
    STARTED = "started"           # status and headers set, nothing sent
    SENT = "sent"                 # the head went to the loop; headers can no longer change


class Framing(enum.Enum):
    """How the body is delimited on the wire (RFC 9112 section 6)."""

    LENGTH = "content-length"     # the app's Content-Length, enforced
    CHUNKED = "chunked"           # HTTP/1.1 without a length
    CLOSE = "close"               # HTTP/1.0 without a length: the connection ends the body
    NONE = "none"                 # HEAD, 1xx, 204, 304: no body whatever the app yields


# The members, as module names for the per-request paths: on Python 3.11 every `Enum.MEMBER`
# lookup goes through EnumType's attribute lookup (about 1,000 CPU instructions, as much as a
# small function call); a module global costs next to nothing. Compare with `is` as before.
NOT_STARTED, STARTED, SENT = ResponsePhase.NOT_STARTED, ResponsePhase.STARTED, ResponsePhase.SENT
LENGTH, CHUNKED, CLOSE, NO_BODY = Framing.LENGTH, Framing.CHUNKED, Framing.CLOSE, Framing.NONE


class Head:
    """A validated status and header list, ready to be framed and rendered."""

    __slots__ = ("status", "code", "headers", "content_length", "close")

    def __init__(self, status: str, code: int, headers: list[tuple[str, str]],
                 content_length: int | None, close: bool) -> None:
        self.status = status                  # "200 OK"
        self.code = code                      # 200
        self.headers = headers                # app headers minus hop-by-hop ones
        self.content_length = content_length  # the app's Content-Length, if any
        self.close = close                    # the app sent "Connection: close"


# Statuses and header names already checked: the same few come back on every response, so
# each is matched once. Bounded: past CHECKED_CACHE_SIZE entries, new ones are checked every time.
CHECKED_CACHE_SIZE = 1024
_STATUSES: dict[str, int] = {}
# Header name -> "" for a field passed on as it is, else the lower-case name of one the server
# handles itself (Content-Length, hop-by-hop fields): one lookup tells both.
_NAMES: dict[str, str] = {}
# Values are not remembered: they vary (Content-Length, ETag) and may be secrets (Set-Cookie),
# which a process-wide table would keep alive; printable ASCII needs no pattern anyway.


def check_status(status: Any) -> int:
    if type(status) is str:
        code = _STATUSES.get(status)
        if code is not None:
            return code
    if not isinstance(status, str):
        raise AppError(f"status {status!r} is not a str (PEP 3333)")
    if not STATUS.fullmatch(status):
        raise AppError(f"invalid status {status!r}")
    code = int(status[:3])
    if code < 200:
        # RFC 9110 section 15.2: a 1xx is interim, never the final answer; sent as one, the
        # client would read the connection's next response as this request's (103: early hints).
        raise AppError(f"status {status!r} cannot be a final response")
    if type(status) is str and len(_STATUSES) < CHECKED_CACHE_SIZE:
        _STATUSES[status] = code
    return code


def _header_role(name: Any) -> str:
    """A valid field name's entry in _NAMES ("" or its lower-case name); AppError for anything else."""
    if type(name) is str:
        role = _NAMES.get(name)
        if role is not None:
            return role
    if not isinstance(name, str) or not TOKEN.fullmatch(name):
        raise AppError(f"invalid header name {name!r}")
    lname = name.lower()
    role = lname if lname == "content-length" or lname in HOP_BY_HOP else ""
    if type(name) is str and len(_NAMES) < CHECKED_CACHE_SIZE:
        _NAMES[name] = role
    return role


def check_headers(headers: Any) -> tuple[list[tuple[str, str]], int | None, bool]:
    """Validate the app's headers; returns (kept headers, Content-Length, Connection: close).

    PEP 3333 asks for a list of tuples; gunicorn takes any sequence of pairs, and an app that
    ran under it keeps working: a tuple of them, or pairs as lists, are taken too.
    """
    if not isinstance(headers, (list, tuple)):
        raise AppError(f"headers must be a list, not {type(headers).__name__} (PEP 3333)")
    kept = []
    length = None
    close = False
    names = _NAMES
    for item in headers:
        # `type() is` first: the exact type is the common case, and cheaper than isinstance().
        if type(item) is not tuple and not isinstance(item, (tuple, list)):
            raise AppError(f"header {item!r} is not a (name, value) tuple")
        try:
            name, value = item
        except ValueError:
            raise AppError(f"header {item!r} is not a (name, value) tuple") from None
        role = names.get(name) if type(name) is str else None
        if role is None:
            role = _header_role(name)
        # Printable ASCII (SP to "~") needs no pattern.
        if type(value) is not str or not (value.isascii() and value.isprintable()):
            if not isinstance(value, str) or not FIELD_VALUE.fullmatch(value):
                # The name only in the message: the value may hold a secret (a cookie, a token).
                raise AppError(f"invalid value for header {name!r}")
        value = value.strip(" \t")
        if not role:
            kept.append((name, value))
        elif role == "content-length":
            # RFC 9110 section 8.6: ASCII digits only ("²" is a digit to str.isdigit()).
            if not (value.isascii() and value.isdigit()) or (length is not None
                                                              and int(value) != length):
                raise AppError(f"invalid Content-Length {value!r}")
            length = int(value)  # rendered once by render_head, after the others
        else:  # hop-by-hop
            # RFC 9110 section 7.6.1: a list of options; "close" is one of them, not a substring.
            close = close or (role == "connection" and any(
                option.strip(" \t").lower() == "close" for option in value.split(",")))
    return kept, length, close


def framing(method: str, code: int, version: tuple[int, int], length: int | None) -> Framing:
    """RFC 9110 section 6.4.1: HEAD, 1xx, 204 and 304 carry no body; else length, chunks or close."""
    if method == "HEAD" or code in (204, 304) or code < 200:
        return NO_BODY
    if length is not None:
        return LENGTH
    if version >= (1, 1):
        return CHUNKED
    return CLOSE


# The status line's start for each version: formatting two ints per response costs more.
STATUS_LINES = {(1, 1): "HTTP/1.1", (1, 0): "HTTP/1.0"}
# The one header the server adds for chunked framing (RFC 9112 section 7.1).
TRANSFER_CHUNKED = "Transfer-Encoding: chunked\r\n"


def render_head(version: tuple[int, int], head: Head, mode: Framing, keep_alive: bool,
                server: str, date: str) -> bytes:
    """Status line and headers in one buffer, gunicorn's order: Server, Date, Connection, app's."""
    # One string grown in place and formatted once: no list of lines to append to and join.
    fields = ""
    for name, value in head.headers:
        fields += f"{name}: {value}\r\n"
    # RFC 9110 section 8.6: no Content-Length on 1xx or 204; HEAD and 304 may keep it.
    code = head.code
    if head.content_length is not None and code != 204 and code >= 200:
        fields = f"{fields}Content-Length: {head.content_length}\r\n"
    start = STATUS_LINES.get(version) or f"HTTP/{version[0]}.{version[1]}"
    chunked = TRANSFER_CHUNKED if mode is CHUNKED else ""
    return (f"{start} {head.status}\r\nServer: {server}\r\nDate: {date}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n{chunked}{fields}\r\n"
            ).encode("latin-1")


class BodyFramer:
    """Turns app chunks into wire bytes for one framing, enforcing the declared length."""

    __slots__ = ("mode", "remaining", "sent", "overflow")

    def __init__(self, mode: Framing, length: int | None) -> None:
        self.mode = mode
        self.remaining = length if mode is LENGTH else None
        self.sent = 0             # body bytes (not framing) that will reach the client
        self.overflow = 0         # bytes the app produced past its Content-Length, dropped

    def frame(self, chunk: bytes) -> bytes:
        return b"".join(self.pieces(chunk))

    def pieces(self, chunk: bytes) -> tuple[bytes, ...]:
        """The wire bytes for one chunk, as pieces: a large chunk is never copied to frame it."""
        mode = self.mode
        if not chunk or mode is NO_BODY:
            return ()
        # Fields read once and the length taken once: this runs for every chunk of every body.
        size, remaining = len(chunk), self.remaining
        if remaining is not None:
            if size > remaining:
                self.overflow += size - remaining
                chunk, size = chunk[:remaining], remaining
            self.remaining = remaining - size
        self.sent += size
        if mode is CHUNKED:  # upper-case hex sizes, byte for byte as gunicorn
            if size >= COPY_LIMIT:
                return (b"%X\r\n" % size, chunk, b"\r\n")
            return (b"%X\r\n%b\r\n" % (size, chunk),)
        return (chunk,) if size else ()

    def finish(self) -> tuple[bytes, bool]:
        """The closing bytes and whether the body is complete (a short body must close)."""
        if self.mode is CHUNKED:
            return b"0\r\n\r\n", True
        return b"", not self.remaining


class StartResponse:
    """PEP 3333's start_response for one request, run in the app thread."""

    __slots__ = ("phase", "head", "method", "write")

    def __init__(self, method: str, write: Callable[[bytes], None]) -> None:
        self.phase = NOT_STARTED
        self.head: Head | None = None
        self.method = method
        self.write = write

    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.phase is SENT:
                    # PEP 3333: too late to change the response; re-raise the app's error.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.phase is not NOT_STARTED:
            raise AppError("start_response called a second time without exc_info (PEP 3333)")
        code = _STATUSES.get(status) if type(status) is str else None  # checked before
        if code is None:
            code = check_status(status)
        kept, length, close = check_headers(headers)
        self.head = Head(status, code, kept, length, close)
        self.phase = STARTED
        return self.write
