"""The aiohttp adapter: the only module that imports aiohttp; its C request parser as plain requests and errors.

Everything here goes through names aiohttp exports (`aiohttp.http.__all__`) and the documented
methods of what they return (a message's fields, a payload's `read_nowait`/`is_eof`/`exception`),
so an aiohttp patch release cannot break the worker through a private detail. What the worker
needs is checked once, at import, with a message that names the supported range. One behaviour
is relied on beyond them, the one aiohttp's own server relies on: a parser reads one message
after another. A spare parser is reused only at a message boundary, after whole requests
without a body or an upgrade (Parsers).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from .errors import BadRequest, HeaderFieldsTooLarge, HTTPError, NotImplementedCoding, URITooLong
from .settings import MAX_LINE, Settings

SUPPORTED = "aiohttp>=3.13.4,<4"

try:
    import aiohttp
    from aiohttp.http import HttpProcessingError, HttpRequestParser
except ImportError as exc:  # pragma: no cover - an aiohttp too old or too new to have them
    raise ImportError(f"gunicorn_aiowsgi needs {SUPPORTED}: {exc}") from exc

# Request body bytes the parser's payload buffer may hold before it would ask us to pause reading
# (it asks at twice this). We empty it after every read, so this is never reached by one read.
PAYLOAD_BUFFER = 1024 * 1024
# gunicorn's maxima for its limits: a value above these means these (MAX_LINE: 8190); so does 0,
# but for limit_request_line (below).
MAX_FIELDS = 32768
# No limit on a head's total size (AIOWSGI_MAX_HEAD_SIZE=0): gunicorn's own limits alone.
HEAD_UNLIMITED = 1 << 62
# limit_request_line 0 is no limit for gunicorn (its own parser, from gunicorn 27 on, stops at
# 1 MiB): a request-target may then be as long as AIOWSGI_MAX_HEAD_SIZE lets a head be, or this
# long when that is 0 too (bytes).
LINE_UNLIMITED = 1024 * 1024
# The field whose value frames a body (RFC 9112 section 6.3).
LENGTH = "Content-Length"
# Spare parsers a worker keeps for its next request heads (count, parser.Parsers). Building
# aiohttp's parser is a good part of a small request's cost, and its objects set off the garbage
# collector once every 55 requests or so: reusing them made hello world 6-9% faster. Bounded, so
# a burst's parsers are not all kept.
SPARE_PARSERS = 64
# The largest head whose parser is kept as a spare (bytes): a spare holds its last head's fields
# (aiohttp keeps each twice) until it parses another, so the spares hold about 1 MiB at most,
# whatever AIOWSGI_MAX_HEAD_SIZE allows. Browsers' heads, cookies and all, are rarely larger.
SPARE_HEAD = 8 * 1024
# aiohttp's LineTooLong says which limit it hit: "Got more than 8190 bytes when reading".
LINE_TOO_LONG = re.compile(r"Got more than (\d+) bytes")
# The bytes aiohttp quotes in a parse error: a request line (METHOD target HTTP/x), shown as
# gunicorn shows it, or a header field line, whose value (a cookie, a token) is never shown.
QUOTED = re.compile(r""" b(['"])(.*)\1\.?$""")
REQUEST_LINE = re.compile(r"[^\s:]+ \S+ [A-Z]+/\d\.\d")  # the whole of what is quoted
FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


if not (3, 13, 4) <= _version(aiohttp.__version__) < (4,):
    raise ImportError(f"gunicorn_aiowsgi needs {SUPPORTED}; aiohttp {aiohttp.__version__} is installed")


class Flow:
    """What the parser's payload buffers call on their protocol; our connection paces reading itself."""

    __slots__ = ()
    connected = True
    # aiohttp before 3.14 reads this flag of its protocol when a body ends; ours never pauses
    # through the parser, so it is always False (an attribute aiohttp asks of us, not one of its).
    _reading_paused = False

    def pause_reading(self) -> None:
        return None

    def resume_reading(self, resume_parser: bool = True) -> None:
        return None


FLOW = Flow()


class Request:
    """One parsed request head, as plain values (the connection and environ never see aiohttp's types)."""

    __slots__ = ("method", "target", "version", "raw_headers", "close", "chunked", "upgrade", "stopped",
                 "body", "complete")

    def __init__(self, message: Any, payload: Any, complete: bool) -> None:
        self.method: str = message.method
        self.target: str = message.path             # the request-target as aiohttp decoded it
        self.version: tuple[int, int] = (message.version[0], message.version[1])
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        self.close: bool = message.should_close     # Connection: close, or HTTP/1.0 without keep-alive
        if not self.close and self.version < (1, 1):
            # llhttp keeps an HTTP/1.0 connection on a keep-alive token even beside close; RFC
            # 9112 section 9.3: with close among the Connection options it does not persist.
            self.close = asks_close(self.raw_headers)
        self.chunked: bool = message.chunked
        self.upgrade: bool = message.upgrade
        # The parser stopped at this head (Parser.upgraded): it read none of a body the head
        # announces (aiohttp 3.13 stops at a websocket Upgrade head; 3.14 reads its body first).
        self.stopped = False
        self.body = payload                          # aiohttp's payload: read only below
        # The parser had seen the body's end (or there is none) when the head completed: the
        # payload's is_eof() then, asked once by the parser (body_done() asks again later).
        self.complete = complete

    def take_body(self) -> bytes:
        """Every body byte parsed so far (b"" if none); the payload keeps nothing."""
        data: bytes = self.body.read_nowait(-1)
        return data

    def content_length(self) -> int:
        """The body's length as Content-Length says (0 without one); the parser checked it is
        one plain number."""
        for name, value in self.raw_headers:
            if len(name) == 14 and name.lower() == b"content-length":
                return int(value)
        return 0

    def has_field(self, name: bytes) -> bool:
        """Whether the head has a field named `name` (lowercase)."""
        return any(len(field) == len(name) and field.lower() == name for field, _ in self.raw_headers)

    def body_done(self) -> bool:
        """The parser has seen the end of this request's body (RFC 9112 section 6.3)."""
        return bool(self.body.is_eof())


def asks_close(raw_headers: tuple[tuple[bytes, bytes], ...]) -> bool:
    """Whether a Connection field lists the close option (RFC 9110 section 7.6.1)."""
    return any(len(name) == 10 and name.lower() == b"connection"
               and b"close" in (token.strip(b" \t").lower() for token in value.split(b","))
               for name, value in raw_headers)


class Limits:
    """gunicorn's request limits as aiohttp's parser takes them; built once per worker (context.py).

    Shared by every parser: a dict of them per connection cost each idle connection ~180 bytes.
    """

    __slots__ = ("options", "max_line", "max_head")

    def __init__(self, settings: Settings) -> None:
        fields = settings.limit_request_fields
        field = settings.limit_request_field_size
        # AIOWSGI_MAX_HEAD_SIZE, which the connection counts itself (boundary.Boundary); 0: none.
        self.max_head = settings.max_head_size or HEAD_UNLIMITED
        # The request-target limit in force (limit_request_line), read once per request head:
        # a plain attribute, not a property (a Python call on 3.11).
        self.max_line = line_limit(settings.limit_request_line, self.max_head)
        self.options: dict[str, Any] = dict(
            max_line_size=self.max_line,
            # gunicorn counts a whole field line, "Name: value\r\n"; aiohttp counts name + value.
            max_field_size=max(1, (field if field > 0 else MAX_LINE) - 4),
            max_headers=MAX_FIELDS if fields <= 0 or fields > MAX_FIELDS else fields,
            auto_decompress=False,
        )


def line_limit(line: int, max_head: int) -> int:
    """The request-target limit for gunicorn's limit_request_line: gunicorn's maximum for a value
    above it (or below 0), as gunicorn has it; for 0, gunicorn's "no limit", as long as a head
    may be (LINE_UNLIMITED at most)."""
    if line == 0:
        return min(max_head, LINE_UNLIMITED)
    return MAX_LINE if line < 0 or line > MAX_LINE else line


class Parser:
    """aiohttp's HTTP/1.1 request parser built from gunicorn's limits; feed() returns Requests.

    One parser reads one connection's bytes in order from a message boundary: the connection
    never feeds it bytes that do not follow what it was fed before (RFC 9112 section 2.2).
    """

    __slots__ = ("_parser", "_limits", "upgraded", "reusable")

    def __init__(self, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self._limits = limits
        self._parser = self._new(loop)
        self.upgraded = False   # the parser stopped at an Upgrade/CONNECT head: build a new one
        # Fed only whole requests, none with a body, upgraded, closing or refused: the only
        # parser another request may reuse (Parsers.give). feed() refuses a head announcing a
        # body the parser gives none of; a chunked body is fed up to its end, never past it
        # (feed_body); a Content-Length body is counted by the connection, never fed (the
        # parser is left expecting it).
        self.reusable = True

    def _new(self, loop: asyncio.AbstractEventLoop) -> Any:
        # Flow is duck-typed for what the payloads call (aiohttp types it as its BaseProtocol).
        flow: Any = FLOW
        return HttpRequestParser(flow, loop, PAYLOAD_BUFFER, **self._limits.options)

    def reset(self, loop: asyncio.AbstractEventLoop) -> None:
        """A fresh parser for the bytes after a message boundary (after an upgrade, say)."""
        self._parser = self._new(loop)
        self.upgraded = False
        self.reusable = True

    def feed(self, data: bytes, line_done: bool) -> tuple[list[Request], bytes]:
        """Parse `data`; returns the requests whose heads completed and any bytes after an upgrade.

        Raises an HTTPError with gunicorn's status for a malformed request.
        """
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            self.reusable = False
            raise self.error(exc, line_done) from exc
        except Exception as exc:
            # Anything else the parser raises on untrusted bytes (older releases let a URL
            # error through as ValueError) is still the request's fault: 400, never a crash.
            self.reusable = False
            raise BadRequest(f"Invalid request: {exc}") from exc
        if upgraded:  # at an Upgrade/CONNECT head, or at the end of an Upgrade request's body
            self.upgraded = True
            self.reusable = False  # llhttp stays paused there: a next head would be refused
        requests = []
        last = len(messages) - 1
        for index, (message, payload) in enumerate(messages):
            request = Request(message, payload, payload.is_eof())
            if upgraded and index == last:  # a body it announces: refused (check_head_only)
                request.stopped = True
            elif request.complete and not message.chunked and not zero(message.headers.get(LENGTH)):
                # aiohttp gives no body for a Content-Length of 2^64-1 (its C parser takes that
                # value for "none"), while llhttp still reads that many bytes as the body: the
                # next request would be read as body bytes here, as a request by the proxy.
                self.reusable = False
                raise BadRequest("Invalid Content-Length: too large")
            if request.close or not request.complete:
                # llhttp refuses anything after a message that closes. A body still to come: the
                # connection counts a Content-Length one and never feeds it here (llhttp is left
                # expecting it), and aiohttp's parser keeps a chunked body's last trailer field
                # past the message's end, into its next head.
                self.reusable = False
            requests.append(request)
        return requests, tail or b""

    def feed_body(self, data: bytes) -> None:
        """Body bytes, never past the message's end: nothing after it may come out parsed."""
        requests, tail = self.feed(data, line_done=True)
        if requests or tail:
            raise BadRequest("Invalid request framing")

    def error(self, exc: BaseException, line_done: bool) -> HTTPError:
        """aiohttp's parser errors as the statuses gunicorn gives (414, 431, 501, 400).

        A line too long names the limit it hit, so the request-target (414) and a header field
        (431) are told apart even when the whole head came in one read; when both limits are
        equal, `line_done` (the request line had ended) decides.
        """
        text = without_values(one_line(getattr(exc, "message", None) or str(exc)))
        too_long = LINE_TOO_LONG.search(text)
        if too_long is not None:
            options = self._limits.options
            line, field = options["max_line_size"], options["max_field_size"]
            if line != field:
                line_done = int(too_long.group(1)) != line
            return HeaderFieldsTooLarge(text) if line_done else URITooLong(text)
        if "Too many headers" in text:
            return HeaderFieldsTooLarge(text)
        if "transfer" in text.lower() and "not supported" in text.lower():
            return NotImplementedCoding(text)
        return BadRequest(text)


class Parsers:
    """A worker's spare parsers: a request head is parsed by one the worker's last heads left
    behind, when one is spare, instead of a new one (SPARE_PARSERS at most).

    Only a parser that has read whole requests without a body, each kept alive, none upgraded,
    is given back (Parser.reusable; the connection gives it when the response is complete):
    llhttp is then at a message boundary, as aiohttp's own server relies on to read all of a
    connection's requests with one parser. Of aiohttp's own per-message fields, those a head
    sets are set anew by the next head (its fields, path, singletons) or are used up when a
    head completes (the last field's name and value, its Content-Encoding). What is left is set
    only by a body (a Content-Length one is never fed to the parser, which then still expects
    it; a chunked one keeps its last trailer field into the next head), an upgrade (llhttp
    stays paused) or an error, after which a parser is never reused. A spare keeps its
    last request's fields (a cookie, say) until it parses another head, so one whose head was
    larger than SPARE_HEAD is not kept; nothing of them reaches that head (the tests in
    tests/unit/test_connection.py; one-off differential fuzzes of 60,000 and of 56,000
    sequences of requests against fresh parsers, on aiohttp 3.13.4 and 3.14.5, found the
    2^64-1 Content-Length that feed() refuses and the Upgrade request with a body, whose
    parser is not reused).
    """

    __slots__ = ("_limits", "_loop", "_spare")

    def __init__(self, limits: Limits, loop: asyncio.AbstractEventLoop) -> None:
        self._limits = limits
        self._loop = loop
        self._spare: list[Parser] = []

    def __len__(self) -> int:
        """Spare parsers kept (count)."""
        return len(self._spare)

    def take(self) -> Parser:
        spare = self._spare
        return spare.pop() if spare else Parser(self._limits, self._loop)

    def give(self, parser: Parser) -> None:
        """Keep a parser for a later head, if it is at a message boundary with nothing of the
        requests it read left to carry over (Parser.reusable)."""
        if parser.reusable and len(self._spare) < SPARE_PARSERS:
            self._spare.append(parser)


def zero(length: str | None) -> bool:
    """A Content-Length field's value (the parser checked it is digits; aiohttp 3.13 keeps the
    whitespace after them) is 0, or there is none."""
    return length is None or not length.strip(" \t0")


def without_values(text: str) -> str:
    """aiohttp's error text quotes the line it failed in: a header field's value may be a
    secret (an Authorization token, a session cookie) and goes to the log and the 400 page.
    Keep the field's name only, as gunicorn names the header ("Invalid HTTP Header: 'X'");
    a request line stays, as gunicorn shows it."""
    quoted = QUOTED.search(text)
    if quoted is None or REQUEST_LINE.fullmatch(quoted.group(2)):
        return text
    name, colon, _value = quoted.group(2).partition(":")
    where = f" in field '{name}'" if colon and FIELD_NAME.fullmatch(name) else ""
    return text[:quoted.start()].rstrip(":") + where


def one_line(text: str) -> str:
    """aiohttp's message spans lines (the offending bytes, then a caret under the bad one): one
    line, for the warning a log shipper reads as one event and for the 400 page, as gunicorn's."""
    parts = [line.strip() for line in text.splitlines()]
    return " ".join(part for part in parts if part and part != "^")
