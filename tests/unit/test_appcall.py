"""In-memory tests of one WSGI call (AppCall): every PEP 3333 rule, checked on what it hands the loop.

AppCall runs on the test's thread against a channel that records what it is given (and never
blocks) and a server object whose log records calls. Each case says, in its id, which rule it
holds; `describe` is the one place that knows the shape of the bridge's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from gunicorn_aiowsgi import messages
from gunicorn_aiowsgi.application import AppCall
from gunicorn_aiowsgi.errors import AppError, BadRequest, ClientDisconnected, HTTPError
from gunicorn_aiowsgi.files import FileKind, FileWrapper, file_kind
from gunicorn_aiowsgi.messages import JobState
from gunicorn_aiowsgi.response import ResponsePhase
from gunicorn_aiowsgi.settings import Settings

CHUNK_END = b"0\r\n\r\n"
OVERFLOW = "past its Content-Length"
SHORT = "fewer bytes than its Content-Length"


def describe(item: Any) -> tuple:
    """A message the app thread put on the channel, as a plain tuple:
    ("head", status, framing, wire body) / ("data", wire bytes) / ("file", offset, count) /
    ("end", closing bytes, complete) / ("error", status) / ("abort",) / ("hints", headers) /
    ("call done",)."""
    kind = type(item)
    if kind is messages.Start:
        return ("head", item.head.status, item.mode.value, b"".join(item.pieces))
    if kind is messages.Data:
        return ("data", b"".join(item.pieces))
    if kind is messages.SendFile:
        return ("file", item.offset, item.count)
    if kind is messages.End:
        return ("end", item.tail, item.complete)
    if kind is messages.Fail:
        return ("error", item.error.status)
    if kind is messages.Abort:
        return ("abort",)
    if kind is messages.Hints:
        return ("hints", item.headers)
    if kind is messages.CallDone:
        return ("call done",)
    raise AssertionError(f"unknown message {item!r}")


def credit(described: tuple) -> int:
    """The bytes a message carries to the socket (and a Data message's own objects, which a
    stalled reader's backlog holds): what its put() must charge against the limit."""
    if described[0] == "head":
        return len(described[3])
    if described[0] == "data":
        return len(described[1]) + messages.MESSAGE_COST
    if described[0] == "file":
        return described[2]
    return 0


# -- fakes: a channel and a server ---------------------------------------------------------------

class RecordingChannel:
    """Records put() items in order; raises ClientDisconnected from put number `gone_at` on."""

    def __init__(self, events: list, gone_at: int | None = None) -> None:
        self.events = events
        self.gone_at = gone_at
        self.puts: list[tuple[Any, int]] = []
        self.flushes = 0

    def put(self, item: Any, wait: bool = True) -> None:
        if self.gone_at is not None and len(self.puts) >= self.gone_at:
            raise ClientDisconnected()
        end = getattr(item, "end", None)
        if end is not None:
            # A Start carrying its End (a response known in full) stands for both messages;
            # recorded as the two, so every case reads the same whichever way it was sent.
            item = messages.Start(item.head, item.mode, item.pieces, item.size)
        self.puts.append((item, item.size))
        self.events.append(("put", describe(item)[0]))
        if end is not None:
            self.puts.append((end, end.size))
            self.events.append(("put", describe(end)[0]))

    def flush(self) -> None:
        self.flushes += 1
        self.events.append(("flush",))

    @property
    def sent(self) -> list[tuple]:
        """The response's messages (the CallDone after them: test_next_request_waits_for_*)."""
        return [describe(item) for item, _ in self.puts if type(item) is not messages.CallDone]

    @property
    def ends(self) -> list[tuple[bool, bool]]:
        """(End.last, followed by CallDone) of the response, as the loop sees them."""
        kinds = [type(item) for item, _ in self.puts]
        last = [item.last for item, _ in self.puts if type(item) is messages.End]
        return [(flag, kinds[-1] is messages.CallDone) for flag in last]


class RecordingLog:
    """gunicorn's logger as AppCall uses it: each call kept as (level, message, current exception)."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.records: list[tuple[str, str, BaseException | None]] = []
        self.access_calls: list[tuple] = []
        self.fail_access = False

    def _add(self, level: str, msg: str, *args: Any) -> None:
        self.records.append((level, msg % args if args else msg, sys.exc_info()[1]))

    def debug(self, msg: str, *args: Any) -> None:
        self._add("debug", msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self._add("info", msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self._add("warning", msg, *args)

    def exception(self, msg: str, *args: Any) -> None:
        self._add("exception", msg, *args)

    def access(self, resp: Any, req: Any, environ: Any, elapsed: Any) -> None:
        self.events.append(("access",))
        self.access_calls.append((resp, req, environ, elapsed))
        if self.fail_access:
            raise RuntimeError("access log broke")

    def messages(self, level: str) -> list[str]:
        return [msg for lvl, msg, _ in self.records if lvl == level]


class Hooks:
    """gunicorn's cfg as AppCall reads it: pre_request and post_request as plain callables."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.fail_pre = self.fail_post = False
        self.post_args: list[tuple] = []

    def pre_request(self, worker: Any, req: Any) -> None:
        self.events.append(("pre_request",))
        if self.fail_pre:
            raise RuntimeError("pre_request hook broke")

    def post_request(self, worker: Any, req: Any, environ: Any, resp: Any) -> None:
        self.events.append(("post_request",))
        self.post_args.append((worker, req, environ, resp))
        if self.fail_post:
            raise RuntimeError("post_request hook broke")


class FakeWorker:
    def __init__(self, events: list) -> None:
        self.cfg = Hooks(events)


class FakeServer:
    """What AppCall reads from the Server: worker (with cfg hooks), log, can_sendfile, settings."""

    def __init__(self, events: list, can_sendfile: bool = False) -> None:
        self.settings = Settings()
        self.worker = FakeWorker(events)
        self.log = RecordingLog(events)
        self.can_sendfile = can_sendfile
        # As Context resolves them (context.request_hooks): every one set here.
        self.pre_request = self.worker.cfg.pre_request
        self.post_request = self.worker.cfg.post_request
        self.access = self.log.access
        self.monitor = self  # the counters the pool's skip path bumps
        self.counts: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


@dataclass
class Result:
    call: AppCall
    channel: RecordingChannel
    server: FakeServer
    events: list
    environ: dict
    body: io.BytesIO

    @property
    def sent(self) -> list[tuple]:
        return self.channel.sent

    @property
    def warnings(self) -> list[str]:
        return self.server.log.messages("warning")


def call(app: Callable, method: str = "GET", version: tuple[int, int] = (1, 1), sendfile: bool = False,
         gone_at: int | None = None, setup: Callable[[FakeServer], None] | None = None,
         events: list | None = None, cancelled: JobState | None = None) -> Result:
    """Run one WSGI call to the end, as an app thread would; `events` receives the trace.
    `cancelled`: the loop cancelled it while queued, and the thread skips it instead."""
    events = [] if events is None else events
    body = io.BytesIO(b"")
    environ = {"REQUEST_METHOD": method, "RAW_URI": "/t?q=1", "QUERY_STRING": "q=1",
               "wsgi.url_scheme": "http", "wsgi.input": body, "wsgi.file_wrapper": FileWrapper}
    channel = RecordingChannel(events, gone_at)
    server = FakeServer(events, sendfile)
    if setup is not None:
        setup(server)

    def traced(environ: dict, start_response: Callable) -> Any:
        events.append(("app",))
        return app(environ, start_response)

    appcall = AppCall(traced, environ, channel, version, server, 0.0, (),  # type: ignore[arg-type]
                      ("127.0.0.1", 50000), 1)
    if cancelled is None:
        appcall.run()
    else:
        appcall.state = cancelled
        appcall.skip()
    return Result(appcall, channel, server, events, environ, body)


# -- apps ------------------------------------------------------------------------------------------

def respond(body: Any, headers: list | None = None, status: str = "200 OK",
            writes: tuple[bytes, ...] = ()) -> Callable:
    """An app: start_response(status, headers), write() each of `writes`, return body() or body."""
    def app(environ: dict, start_response: Callable) -> Any:
        write = start_response(status, list(headers or []))
        for data in writes:
            write(data)
        return body() if callable(body) else body
    return app


def cl(n: int) -> list[tuple[str, str]]:
    return [("Content-Length", str(n))]


def gen(*chunks: Any, then: BaseException | None = None) -> Callable:
    """A fresh generator of `chunks` per call, raising `then` after the last one."""
    def make():
        yield from chunks
        if then is not None:
            raise then
    return make


class Closing:
    """An iterable that counts close() calls (and traces them); yields `chunks`, then raises `then`."""

    def __init__(self, chunks: list, then: BaseException | None = None) -> None:
        self.chunks, self.then = chunks, then
        self.closed = 0
        self.yielded = 0
        self.events: list = []

    def __iter__(self):
        for chunk in self.chunks:
            self.yielded += 1
            self.events.append(("yield",))
            yield chunk
        if self.then is not None:
            raise self.then

    def close(self) -> None:
        self.closed += 1
        self.events.append(("close",))


class ClosingList(list):
    """A list with close(): takes the known-in-full path, and must still be closed."""

    closed = 0
    events: list = []

    def close(self) -> None:
        self.closed += 1
        self.events.append(("close",))


def raising(exc: BaseException) -> Callable:
    def app(environ: dict, start_response: Callable) -> Any:
        raise exc
    return app


def raise_before(environ: dict, start_response: Callable) -> Any:
    raise RuntimeError("boom before headers")


def start_twice(environ: dict, start_response: Callable) -> Any:
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"x"]


def exc_info_replaces(environ: dict, start_response: Callable) -> Any:
    start_response("200 OK", [("X-First", "1")])
    try:
        raise ValueError("replaced")
    except ValueError:
        start_response("500 Internal Server Error", [("X-Second", "1")], sys.exc_info())
    return [b"replaced body"]


def exc_info_late(environ: dict, start_response: Callable) -> Any:
    write = start_response("200 OK", [])
    write(b"partial")
    try:
        raise ValueError("too late")
    except ValueError:
        start_response("500 Internal Server Error", [], sys.exc_info())
    return [b"never"]


def lazy_start(status: str, headers: list, chunks: list) -> Callable:
    """PEP 3333 allows start_response in the first iteration: a generator that calls it there."""
    def app(environ: dict, start_response: Callable) -> Any:
        def body():
            start_response(status, headers)
            yield from chunks
        return body()
    return app


def real_file(size: int, offset: int = 0) -> Any:
    f = tempfile.TemporaryFile()
    f.write(bytes(range(256)) * (size // 256) + b"e" * (size % 256))
    f.seek(offset)
    return f


def file_app(size: int, offset: int = 0, headers: list | None = None, blksize: int = 8192,
             kind: str = "real") -> Callable:
    def app(environ: dict, start_response: Callable) -> Any:
        start_response("200 OK", list(headers or []))
        f = real_file(size, offset) if kind == "real" else io.BytesIO(b"abcdefghij")
        return environ["wsgi.file_wrapper"](f, blksize)
    return app


# -- the table: (app, how it is called) -> what reaches the loop, and what is logged ---------------

@dataclass
class Case:
    app: Callable
    sent: list[tuple]
    warnings: tuple[str, ...] = ()
    method: str = "GET"
    version: tuple[int, int] = (1, 1)
    sendfile: bool = False
    opts: dict = field(default_factory=dict)
    known_gap: str = ""     # a rule the code breaks today: the case is a strict xfail saying so


def chunk(data: bytes) -> bytes:
    return b"%X\r\n%b\r\n" % (len(data), data)


HEAD_LEN = ("head", "200 OK", "content-length")
HEAD_CHUNKED = ("head", "200 OK", "chunked")
END_OK = ("end", b"", True)
END_CHUNKED = ("end", CHUNK_END, True)
ERROR_500 = [("error", 500)]

CASES = {
    # Iterables (PEP 3333 "the application object must return an iterable yielding zero or more bytestrings")
    "list-with-content-length-is-one-head-message": Case(
        respond([b"hello"], cl(5)), [(*HEAD_LEN, b"hello"), END_OK]),
    "list-items-each-framed-as-their-own-chunk": Case(
        respond([b"ab", b"cd"]), [(*HEAD_CHUNKED, chunk(b"ab") + chunk(b"cd")), END_CHUNKED]),
    "tuple-is-sent-like-a-list": Case(
        respond((b"ab", b"cd"), cl(4)), [(*HEAD_LEN, b"abcd"), END_OK]),
    "empty-list-sends-head-and-end": Case(
        respond([]), [(*HEAD_CHUNKED, b""), END_CHUNKED]),
    "empty-list-with-content-length-0-is-complete": Case(
        respond([], cl(0)), [(*HEAD_LEN, b""), END_OK]),
    "generator-each-chunk-its-own-message": Case(
        respond(gen(b"a", b"bc")), [(*HEAD_CHUNKED, chunk(b"a")), ("data", chunk(b"bc")), END_CHUNKED]),
    "empty-generator-sends-head-and-end": Case(
        respond(gen()), [(*HEAD_CHUNKED, b""), END_CHUNKED]),
    "empty-chunks-are-skipped-not-sent-as-last-chunk": Case(
        respond(gen(b"", b"a", b"")), [(*HEAD_CHUNKED, chunk(b"a")), END_CHUNKED]),
    "iterable-with-close-is-streamed": Case(
        respond(lambda: Closing([b"x", b"y"]), cl(2)), [(*HEAD_LEN, b"x"), ("data", b"y"), END_OK]),
    # The write() callable (PEP 3333 "The write() Callable"), before the iterable
    "write-then-list": Case(
        respond([b"three"], writes=(b"one,", b"two,")),
        [(*HEAD_CHUNKED, chunk(b"one,")), ("data", chunk(b"two,")), ("data", chunk(b"three")), END_CHUNKED]),
    "write-then-generator": Case(
        respond(gen(b"c"), cl(3), writes=(b"ab",)), [(*HEAD_LEN, b"ab"), ("data", b"c"), END_OK]),
    "write-only-then-empty-list": Case(
        respond([], writes=(b"w",)), [(*HEAD_CHUNKED, chunk(b"w")), END_CHUNKED]),
    "write-of-empty-bytes-sends-nothing": Case(
        respond([b"x"], cl(1), writes=(b"",)), [(*HEAD_LEN, b"x"), END_OK]),
    # wsgi.file_wrapper
    "file-wrapper-of-bytesio-is-iterated-in-blksize": Case(
        file_app(0, kind="bytesio", blksize=4, headers=cl(10)),
        [(*HEAD_LEN, b"abcd"), ("data", b"efgh"), ("data", b"ij"), END_OK]),
    "file-wrapper-of-real-file-without-sendfile-is-iterated": Case(
        file_app(300, blksize=256, headers=cl(300)),
        [(*HEAD_LEN, bytes(range(256))), ("data", b"e" * 44), END_OK]),
    "file-wrapper-with-sendfile-gets-its-length-and-one-file-message": Case(
        file_app(5000), [(*HEAD_LEN, b""), ("file", 0, 5000), END_OK], sendfile=True),
    "file-wrapper-with-sendfile-starts-at-the-file-offset": Case(
        file_app(5000, offset=100), [(*HEAD_LEN, b""), ("file", 100, 4900), END_OK], sendfile=True),
    "file-wrapper-with-sendfile-sends-at-most-content-length": Case(
        file_app(5000, headers=cl(1000)), [(*HEAD_LEN, b""), ("file", 0, 1000), END_OK], sendfile=True),
    "file-wrapper-with-sendfile-longer-content-length-is-incomplete": Case(
        file_app(100, headers=cl(1000)), [(*HEAD_LEN, b""), ("file", 0, 100), ("end", b"", False)],
        warnings=(SHORT,), sendfile=True),
    "file-wrapper-with-sendfile-of-empty-file-sends-no-file-message": Case(
        file_app(0), [(*HEAD_LEN, b""), END_OK], sendfile=True),
    "file-wrapper-with-sendfile-on-head-request-sends-no-file": Case(
        file_app(5000), [("head", "200 OK", "none", b""), END_OK], method="HEAD", sendfile=True),
    # Framing (RFC 9112 section 6): chunked on 1.1, close-delimited on 1.0, the app's length enforced
    "http10-without-length-is-close-delimited": Case(
        respond(gen(b"zz", b"zz")), [("head", "200 OK", "close", b"zz"), ("data", b"zz"), END_OK],
        version=(1, 0)),
    "http10-with-length-uses-it": Case(
        respond([b"zz"], cl(2)), [(*HEAD_LEN, b"zz"), END_OK], version=(1, 0)),
    "content-length-list-longer-is-truncated-and-logged": Case(
        respond([b"z" * 9], cl(5)), [(*HEAD_LEN, b"zzzzz"), END_OK], warnings=(OVERFLOW,)),
    "content-length-generator-longer-is-truncated-and-logged": Case(
        respond(gen(b"zzz", b"zzzz"), cl(5)), [(*HEAD_LEN, b"zzz"), ("data", b"zz"), END_OK],
        warnings=(OVERFLOW,)),
    "content-length-reached-later-chunks-send-nothing": Case(
        respond(gen(b"zzzzz", b"zz", b"z"), cl(5)), [(*HEAD_LEN, b"zzzzz"), END_OK], warnings=(OVERFLOW,)),
    "content-length-generator-shorter-ends-incomplete-and-logged": Case(
        respond(gen(b"zzzz"), cl(10)), [(*HEAD_LEN, b"zzzz"), ("end", b"", False)], warnings=(SHORT,)),
    "content-length-list-shorter-ends-incomplete-and-logged": Case(
        respond([b"zzz"], cl(10)), [(*HEAD_LEN, b"zzz"), ("end", b"", False)], warnings=(SHORT,)),
    "content-length-write-longer-is-truncated": Case(
        respond([], cl(2), writes=(b"abc",)), [(*HEAD_LEN, b"ab"), END_OK], warnings=(OVERFLOW,)),
    # RFC 9110 section 6.4.1: HEAD, 204 and 304 carry no body, whatever the app yields
    "head-request-sends-no-body-from-a-list": Case(
        respond([b"body"], cl(4)), [("head", "200 OK", "none", b""), END_OK], method="HEAD"),
    "head-request-sends-no-body-from-a-generator": Case(
        respond(gen(b"bo", b"dy")), [("head", "200 OK", "none", b""), END_OK], method="HEAD"),
    "204-sends-no-body": Case(
        respond(gen(b"body"), status="204 No Content"), [("head", "204 No Content", "none", b""), END_OK]),
    "304-sends-no-body-even-with-content-length": Case(
        respond(gen(b"body"), cl(4), status="304 Not Modified"),
        [("head", "304 Not Modified", "none", b""), END_OK]),
    # Errors before the head: one 500 (or the app's own 5xx), never a head (PEP 3333, RFC 9110 15.6.1)
    "app-raises-before-start-response-is-500": Case(raise_before, ERROR_500),
    "app-returns-none-is-500": Case(respond(None), ERROR_500),
    "app-returns-non-iterable-is-500": Case(respond(42), ERROR_500),
    "list-item-not-bytes-is-500": Case(respond(["not bytes"]), ERROR_500),
    "first-generator-chunk-not-bytes-is-500": Case(respond(gen("text", b"x")), ERROR_500),
    "bytearray-chunk-is-not-bytes-is-500": Case(respond(gen(bytearray(b"x"))), ERROR_500),
    "write-of-str-before-head-is-500": Case(respond([], writes=("text",)), ERROR_500),  # type: ignore[arg-type]
    "start-response-twice-without-exc-info-is-500": Case(start_twice, ERROR_500),
    "no-start-response-with-list-is-500": Case(lambda e, s: [b"no start"], ERROR_500),
    "no-start-response-with-empty-list-is-500": Case(lambda e, s: [], ERROR_500),
    "no-start-response-with-generator-is-500": Case(lambda e, s: gen(b"no start")(), ERROR_500),
    "bad-header-value-crlf-is-500-not-split": Case(
        respond([b"x"], [("X-Bad", "a\r\nSet-Cookie: evil=1")]), ERROR_500),
    "bad-header-value-nul-is-500": Case(respond([b"x"], [("X-Bad", "a\x00b")]), ERROR_500),
    "bad-header-name-is-500": Case(respond([b"x"], [("Bad Name", "v")]), ERROR_500),
    "bad-status-is-500": Case(respond([b"x"], status="20 OK"), ERROR_500),
    "bad-header-in-lazy-start-response-is-500": Case(lazy_start("200 OK", [("X", "\n")], [b"x"]), ERROR_500),
    "app-http-error-5xx-keeps-its-status": Case(
        raising(HTTPError("unavailable", 503)), [("error", 503)]),
    "app-http-error-4xx-is-500-not-blamed-on-client": Case(
        raising(BadRequest("app's own 400")), ERROR_500),
    # Not Exception subclasses, but the app's failure all the same: answered, never left hanging
    "app-raising-cancelled-error-is-500": Case(raising(asyncio.CancelledError()), ERROR_500),
    "app-raising-system-exit-is-500": Case(raising(SystemExit(1)), ERROR_500),
    "app-raising-keyboard-interrupt-is-500": Case(raising(KeyboardInterrupt()), ERROR_500),
    # exc_info (PEP 3333 "the start_response() Callable")
    "exc-info-before-head-replaces-status-and-headers": Case(
        exc_info_replaces, [("head", "500 Internal Server Error", "chunked", chunk(b"replaced body")), END_CHUNKED]),
    "exc-info-after-head-reraises-and-aborts": Case(exc_info_late, [(*HEAD_CHUNKED, chunk(b"partial")), ("abort",)]),
    "lazy-start-response-in-first-iteration-works": Case(
        lazy_start("201 Created", cl(2), [b"ok"]), [("head", "201 Created", "content-length", b"ok"), END_OK]),
    # Errors after the head: the connection is closed, never a second response
    "generator-raising-system-exit-after-head-aborts": Case(
        respond(gen(b"first chunk", then=SystemExit(1))), [(*HEAD_CHUNKED, chunk(b"first chunk")), ("abort",)]),
    "generator-raises-after-head-aborts": Case(
        respond(gen(b"first chunk", then=RuntimeError("boom after headers"))),
        [(*HEAD_CHUNKED, chunk(b"first chunk")), ("abort",)]),
    "chunk-not-bytes-after-head-aborts": Case(
        respond(gen(b"ok", "text")), [(*HEAD_CHUNKED, chunk(b"ok")), ("abort",)]),
    "write-of-str-after-head-aborts": Case(
        respond([], writes=(b"ok", "text")), [(*HEAD_CHUNKED, chunk(b"ok")), ("abort",)]),  # type: ignore[arg-type]
    "client-gone-at-head-sends-nothing-more": Case(
        respond(gen(b"a", b"b")), [], opts={"gone_at": 0}),
    "client-gone-mid-stream-stops-iteration": Case(
        respond(gen(b"a", b"b", b"c")), [(*HEAD_CHUNKED, chunk(b"a"))], opts={"gone_at": 1}),
}


def run_case(case: Case) -> Result:
    return call(case.app, case.method, case.version, case.sendfile, **case.opts)


def with_gaps(cases: dict[str, Case]) -> list:
    return [pytest.param(c, id=k, marks=[pytest.mark.xfail(strict=True, reason=c.known_gap)]
                         if c.known_gap else []) for k, c in cases.items()]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_messages_reaching_the_loop(case):
    assert run_case(case).sent == case.sent


@pytest.mark.parametrize("case", with_gaps(CASES))
def test_warnings_logged(case):
    result = run_case(case)
    for text in case.warnings:
        assert any(text in w for w in result.warnings), (text, result.warnings)
    if not case.warnings:
        assert result.warnings == []


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_put_charges_the_bytes_it_carries(case):
    """Backpressure only holds if every put() charges what the loop will later release."""
    result = run_case(case)
    for item, size in result.channel.puts:
        assert size == credit(describe(item)), describe(item)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_hooks_access_log_and_body_close_run_once_in_order(case):
    """pre_request before the app; access log, then post_request, once each, on every path; then
    wsgi.input is closed (a spooled body is a temporary file)."""
    result = run_case(case)
    hooks = [e[0] for e in result.events if e[0] in ("pre_request", "app", "access", "post_request")]
    assert hooks == ["pre_request", "app", "access", "post_request"]
    worker, req, environ, resp = result.server.worker.cfg.post_args[0]
    assert worker is result.server.worker and req is result.call.req and environ is result.environ
    assert resp is result.call.resp and result.server.log.access_calls[0][0] is resp
    assert result.body.closed


@pytest.mark.parametrize("case", [c for c in CASES.values() if c.sent and c.sent[0][0] == "head"],
                         ids=[k for k, c in CASES.items() if c.sent and c.sent[0][0] == "head"])
def test_response_record_matches_what_was_sent(case):
    """The access log's %(s)s and %(B)s: the status sent and the body bytes (not framing) sent."""
    result = run_case(case)
    resp, head = result.call.resp, result.sent[0]
    assert (resp.status, resp.status_code) == (head[1], int(head[1][:3]))
    assert resp.headers_sent and result.call.phase is ResponsePhase.SENT
    assert resp.chunked == (head[2] == "chunked")
    if head[2] == "none":
        assert resp.sent == 0
    if head[2] in ("content-length", "close"):
        body = b"".join(d[-1] for d in result.sent if d[0] in ("head", "data"))
        files = sum(d[2] for d in result.sent if d[0] == "file")
        assert resp.sent == len(body) + files


@pytest.mark.parametrize("case", [c for c in CASES.values() if c.sent == ERROR_500],
                         ids=[k for k, c in CASES.items() if c.sent == ERROR_500])
def test_errors_before_the_head_are_logged_with_the_exception_and_recorded_as_500(case):
    result = run_case(case)
    logged = [(msg, exc) for lvl, msg, exc in result.server.log.records if lvl == "exception"]
    assert logged and logged[0][0] == "Error handling request GET /t?q=1" and logged[0][1] is not None
    assert (result.call.resp.status, result.call.resp.status_code) == ("500 Internal Server Error", 500)
    assert not result.call.resp.headers_sent


# -- close() exactly once (PEP 3333: "the server must call close() ... upon completion") ---------

def closing_app(iterable: Any, headers: list | None = None, start: bool = True) -> Callable:
    def app(environ: dict, start_response: Callable) -> Any:
        if start:
            start_response("200 OK", list(headers or []))
        return iterable
    return app


CLOSE_PATHS = {
    "normal-streamed": (lambda: Closing([b"a", b"b"]), {}, ["head", "data", "end"]),
    "normal-list-with-close": (lambda: ClosingList([b"a", b"b"]), {}, ["head", "end"]),
    "empty-iterable": (lambda: Closing([]), {}, ["head", "end"]),
    "exception-in-iteration-before-head": (lambda: Closing([], RuntimeError("x")), {}, ["error"]),
    "exception-in-iteration-after-head": (lambda: Closing([b"a"], RuntimeError("x")), {}, ["head", "abort"]),
    "non-bytes-chunk": (lambda: Closing([b"a", "text"]), {}, ["head", "abort"]),
    "content-length-overflow": (lambda: Closing([b"abc", b"def"]), {"headers": cl(4)}, ["head", "data", "end"]),
    "client-disconnected-mid-stream": (lambda: Closing([b"a", b"b", b"c"]), {"gone_at": 1}, ["head"]),
    "client-disconnected-at-end": (lambda: Closing([b"a"]), {"gone_at": 1}, ["head"]),
    "start-response-never-called": (lambda: Closing([b"a"]), {"start": False}, ["error"]),
}


@pytest.mark.parametrize("make, opts, kinds", CLOSE_PATHS.values(), ids=CLOSE_PATHS.keys())
def test_iterable_close_called_exactly_once(make, opts, kinds):
    iterable = make()
    iterable.events = events = []
    app_opts = {k: opts[k] for k in ("headers", "start") if k in opts}
    result = call(closing_app(iterable, **app_opts), gone_at=opts.get("gone_at"), events=events)
    assert [d[0] for d in result.sent] == kinds
    assert iterable.closed == 1
    # close() once iteration is over, and before the access log and post_request see the response.
    names = [e[0] for e in events]
    assert names.index("close") < names.index("access") < names.index("post_request")
    assert "yield" not in names[names.index("close"):]


def no_post_request(server: FakeServer) -> None:
    server.post_request = None


# What follows a response whose End the loop has written: nothing (End.last: the next request
# may begin), or, once close() and post_request ran in the thread, a CallDone (gthread reads the
# connection's next request only after both). (app, hook set) -> (End.last, CallDone last put).
NEXT_REQUEST = {
    "list-no-hook": (respond([b"ok"], cl(2)), False, [(True, False)]),
    "tuple-no-hook": (respond((b"o", b"k"), cl(2)), False, [(True, False)]),
    "write-then-list-no-hook": (respond([b"k"], cl(2), writes=(b"o",)), False, [(True, False)]),
    "list-post-request": (respond([b"ok"], cl(2)), True, [(False, True)]),
    "generator-no-hook": (respond(gen(b"o", b"k"), cl(2)), False, [(False, True)]),
    "closing-iterable-no-hook": (lambda e, s: closing_app(Closing([b"ok"]))(e, s), False,
                                 [(False, True)]),
    "generator-chunked-post-request": (respond(gen(b"o", b"k")), True, [(False, True)]),
    "file-wrapper-no-hook": (lambda e, s: respond(e["wsgi.file_wrapper"](io.BytesIO(b"ok")), cl(2))(e, s),
                             False, [(False, True)]),
}


@pytest.mark.parametrize("app, hook, ends", NEXT_REQUEST.values(), ids=NEXT_REQUEST.keys())
def test_next_request_waits_for_close_and_post_request(app, hook, ends):
    result = call(app, setup=None if hook else no_post_request)
    assert result.sent[-1][0] == "end" and result.channel.ends == ends
    if ends[0][1]:  # the CallDone comes after close() and post_request, never before
        names = [e[0] for e in result.events]
        assert names[-1] == "put" and ("post_request" in names) is hook


def test_a_post_request_raising_a_base_exception_still_lets_the_connection_read_on():
    # _finish catches Exception only; the End said a CallDone follows, and the connection waits
    # for it whatever ends the thread's work.
    events: list = []

    def setup(server: FakeServer) -> None:
        def post_request(*args: Any) -> None:
            raise SystemExit(3)
        server.post_request = post_request

    with pytest.raises(SystemExit):
        call(respond([b"ok"], cl(2)), setup=setup, events=events)
    assert events[-1] == ("put", "call done")


def test_no_call_done_after_an_error_answer():
    # The loop closes the connection on Fail or Abort; the CallDone's put then finds the channel
    # closed (the RecordingChannel records it: it never closes), and nothing waits for it.
    result = call(respond(gen(b"a", then=RuntimeError("late"))), setup=no_post_request)
    assert [d[0] for d in result.sent] == ["head", "abort"]
    assert type(result.channel.puts[-1][0]) is messages.CallDone


def test_close_called_once_when_start_response_raises_inside_iteration():
    closes = []

    class LazyBad:
        def __init__(self, start_response):
            self.start_response = start_response

        def __iter__(self):
            self.start_response("200 OK", [("X", "a\r\nb")])  # raises: bad header
            yield b"never"

        def close(self):
            closes.append(1)

    result = call(lambda environ, start_response: LazyBad(start_response))
    assert result.sent == ERROR_500 and closes == [1]


def test_client_disconnected_mid_stream_stops_iterating_and_logs_debug_not_error():
    iterable = Closing([b"a", b"b", b"c", b"d"])
    result = call(closing_app(iterable), gone_at=2)
    assert iterable.yielded == 3 and iterable.closed == 1  # the 3rd chunk's put raised: no 4th
    assert result.server.log.messages("exception") == []
    assert result.server.log.messages("debug") == ["Client went away during GET /t?q=1"]


def test_client_disconnected_before_the_head_is_recorded_as_499():
    def app(environ, start_response):
        raise ClientDisconnected()  # e.g. the loop closed the channel while the app read its body
    result = call(app)
    assert result.sent == [] and result.call.resp.status == "499 Client Closed Request"


def test_file_wrapper_closes_the_wrapped_file_once():
    files = []

    class File(io.BytesIO):
        def close(self):
            files.append("closed")
            super().close()

    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](File(b"abc"), 2)

    result = call(app)
    assert result.sent == [(*HEAD_CHUNKED, chunk(b"ab")), ("data", chunk(b"c")), END_CHUNKED]
    assert files == ["closed"]


def test_sendfile_waits_for_the_loop_before_close():
    """The file must stay open until the loop has sent it: flush() before the wrapper's close()."""
    events: list = []
    f = real_file(1000)
    real_close = f.close

    def close():
        events.append(("close",))
        real_close()

    def app(environ, start_response):
        start_response("200 OK", [])
        wrapper = environ["wsgi.file_wrapper"](f)
        wrapper.close = close
        return wrapper

    result = call(app, sendfile=True, events=events)
    assert [d[0] for d in result.sent] == ["head", "file", "end"]
    names = [e[0] for e in events if e[0] in ("flush", "close")]
    assert names == ["flush", "close"], "the file was closed before the loop had sent it"


# -- the streaming rule: each chunk is handed over before the next is produced -----------------

def test_each_generator_chunk_reaches_the_channel_before_the_next_is_made():
    """Streaming (server-sent events): a chunk waits for nothing but its own put()."""
    iterable = Closing([b"0", b"1", b"2"])
    iterable.events = events = []
    call(closing_app(iterable), events=events)
    trace = [e if e[0] == "put" else (e[0],) for e in events if e[0] in ("put", "yield", "close")]
    assert trace == [("yield",), ("put", "head"), ("yield",), ("put", "data"), ("yield",), ("put", "data"),
                     ("put", "end"), ("close",), ("put", "call done")]


# -- exc_info details ------------------------------------------------------------------------------

def test_exc_info_replacement_sends_only_the_second_headers():
    result = call(exc_info_replaces)
    head = result.call.head
    assert head is not None and head.headers == [("X-Second", "1")]


def test_exc_info_after_head_logs_the_apps_own_exception():
    result = call(exc_info_late)
    (msg, exc), = [(m, e) for lvl, m, e in result.server.log.records if lvl == "exception"]
    assert isinstance(exc, ValueError) and str(exc) == "too late"


# -- hooks that fail -------------------------------------------------------------------------------

def test_pre_request_failure_is_500_and_the_app_never_runs():
    result = call(respond([b"x"]), setup=lambda s: setattr(s.worker.cfg, "fail_pre", True))
    assert result.sent == ERROR_500
    assert ("app",) not in result.events
    assert ("post_request",) in result.events


def test_post_request_failure_is_logged_and_changes_nothing_sent():
    result = call(respond([b"x"], cl(1)), setup=lambda s: setattr(s.worker.cfg, "fail_post", True))
    assert result.sent == [(*HEAD_LEN, b"x"), END_OK]
    assert "Exception in post_request hook" in result.server.log.messages("exception")


def test_access_log_failure_is_logged_and_post_request_still_runs():
    result = call(respond([b"x"], cl(1)), setup=lambda s: setattr(s.log, "fail_access", True))
    assert "Access log failed" in result.server.log.messages("exception")
    assert ("post_request",) in result.events and result.body.closed


def test_app_replacing_wsgi_input_does_not_get_its_wrapper_closed():
    wrapper = io.BytesIO(b"")

    def app(environ, start_response):
        environ["wsgi.input"] = wrapper  # middleware (wsgiref.validate) wraps the stream
        start_response("200 OK", [("Content-Length", "0")])
        return []

    result = call(app)
    assert result.body.closed and not wrapper.closed


@contextlib.contextmanager
def no_call_left_to_the_collector():
    """Fails if an AppCall made inside the block is freed only by the garbage collector (a cycle).
    (The fakes here have cycles of their own: only the call must not be among the garbage.)"""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
        gc.collect()
        assert not [o for o in gc.garbage if isinstance(o, AppCall)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_finished_call_leaves_no_reference_cycle():
    """write() and wsgi.early_hints both lead back to the call, which holds the environ: run()
    must break both cycles, or every request's objects would wait for the garbage collector."""
    with no_call_left_to_the_collector():
        result = call(respond([b"x"], cl(1)))
        del result


def test_a_skipped_call_never_runs_and_leaves_no_reference_cycle():
    """A call cancelled while queued (its client left, or got the request timeout's 504): the app
    is never called, the body is closed, the relay is ended, and the call is freed at once."""
    with no_call_left_to_the_collector():
        for state in (JobState.GONE, JobState.ANSWERED):
            result = call(respond([b"x"], cl(1)), cancelled=state)
            assert ("app",) not in result.events and result.body.closed
            assert [type(item) for item, _size in result.channel.puts] == [messages.Abort]
            assert result.server.counts == {"skipped_requests": 1}
            del result


def test_early_hints_after_the_call_ended_are_ignored():
    result = call(respond([b"x"], cl(1)))
    sent = list(result.sent)
    result.environ["wsgi.early_hints"]([("Link", "</a.css>; rel=preload")])  # as gunicorn: ignored
    assert result.sent == sent


class _OldStyleTextFile:
    """A file-like object outside io's classes, saying it is in text mode."""
    mode = "r"

    def read(self, size: int = -1) -> str:
        return "text"


def _zip_member() -> Any:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("m", b"bytes")
    return zipfile.ZipFile(archive).open("m")


@pytest.mark.parametrize("make, kind", [
    (lambda path: open(path, "rb"), FileKind.SENDFILE),
    (lambda path: io.FileIO(path, "rb"), FileKind.SENDFILE),
    (lambda path: io.BytesIO(b"x"), FileKind.ITERATE),
    (lambda path: _zip_member(), FileKind.ITERATE),          # mode "r", yet binary
    (lambda path: open(path, encoding="ascii"), "text mode"),
    (lambda path: _OldStyleTextFile(), "text mode"),
    (lambda path: open(path, "ab"), "not open for reading"),
])
def test_file_kind(tmp_path, make, kind):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    filelike = make(path)
    try:
        if isinstance(kind, FileKind):
            assert file_kind(filelike) is kind
        else:
            with pytest.raises(AppError, match=kind):
                file_kind(filelike)
    finally:
        getattr(filelike, "close", lambda: None)()


def test_write_after_the_client_left_raises_an_oserror_the_app_may_catch():
    """As a write to a closed socket under gthread (ConnectionResetError): an app catching
    OSError around its writes sees it, and its own answer is then the end of it."""
    seen: list[BaseException] = []

    def app(environ: dict, start_response: Callable) -> Any:
        write = start_response("200 OK", [])
        try:
            write(b"data")
        except OSError as exc:
            seen.append(exc)
        return []

    result = call(app, gone_at=0)
    assert [type(e) for e in seen] == [ClientDisconnected]
    assert isinstance(seen[0], ConnectionResetError) and result.sent == []
