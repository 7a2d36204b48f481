"""A large body read by an app thread while it arrives (AIOWSGI_STREAMED_BODIES), in memory:
a fake transport, a real loop and a real thread pool (the app must run beside the loop)."""

from __future__ import annotations

import errno
import hashlib
import threading
from typing import Any

import pytest
from memory import Harness, Opened, get, post, splits

from gunicorn_aiowsgi.body import STREAM_BACKLOG, streamed
from gunicorn_aiowsgi.boundary import ConnState
from gunicorn_aiowsgi.settings import Settings

pytestmark = pytest.mark.timeout(60)

LIMIT = 16                      # body_memory_limit here: a longer body with a length streams
BODY = b"0123456789" * 4        # 40 bytes
OPENED = Opened()


@pytest.fixture(autouse=True)
def close_all():
    yield
    OPENED.close()


def harness(app: Any, threads: int = 2, **settings: Any) -> Harness:
    """threads=4 in the settings: one stream slot (a quarter of them)."""
    pool = OPENED.pool(threads)
    h = Harness(app, pool=pool, **{"threads": 4, "body_memory_limit": LIMIT, **settings})
    OPENED.add(h)
    return h


def kind(environ: dict[str, Any]) -> str:
    """How the app got its body: BodyFeed (streamed), SpooledInput (disk) or BytesIO (memory)."""
    stream = environ["wsgi.input"]
    return type(getattr(stream, "raw", stream)).__name__


def kind_echo(environ, start_response):
    """Answers "METHOD PATH KIND body"."""
    body = environ["wsgi.input"].read()
    text = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {kind(environ)} ".encode() + body
    start_response("200 OK", [("Content-Length", str(len(text)))])
    return [text]


class Gate:
    """An app that says when it started, waits for the test, then reads its body (recording an error)."""

    def __init__(self) -> None:
        self.started, self.go = threading.Event(), threading.Event()
        self.kinds: list[str] = []
        self.error: BaseException | None = None

    def __call__(self, environ, start_response):
        self.kinds.append(kind(environ))
        self.started.set()
        self.go.wait(10)
        try:
            body = environ["wsgi.input"].read()
        except OSError as exc:
            self.error = exc
            body = b""
        digest = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
        start_response("200 OK", [("Content-Length", str(len(digest)))])
        return [digest]


@pytest.mark.parametrize("length, streams, limit, expected", [
    (17, 0, 1, True),          # over the memory limit, a slot free
    (16, 0, 1, False),         # fits in memory
    (None, 0, 1, False),       # chunked: spooled (its size is unknown until its end)
    (10**9, 1, 1, False),      # every slot taken
    (10**9, 0, 0, False),      # streaming off (fewer than 4 threads by default)
])
def test_which_bodies_stream(length, streams, limit, expected):
    assert streamed(Settings(body_memory_limit=LIMIT), length, streams, limit) is expected


@pytest.mark.parametrize("reads", splits(post("/up", BODY) + get("/canary")),
                         ids=lambda r: f"split-{len(r[0])}")
def test_streamed_body_then_a_canary_split_anywhere(reads):
    """The next request starts exactly where the streamed body ends, however the bytes arrive."""
    h = harness(kind_echo)
    h.feed(*reads)
    h.until(lambda: len(h.responses()) == 2, "both answers")
    assert h.responses() == [(200, b"POST /up BodyFeed " + BODY), (200, b"GET /canary BytesIO ")]
    assert h.ctx.streams == 0 and h.spools.used == 0  # the slot is back, no disk was used


def test_the_app_starts_before_the_body_is_in_and_reads_it_as_it_arrives():
    app = Gate()
    h = harness(app)
    h.feed(post("/up", BODY)[:-20])  # the head and 20 body bytes: over the memory limit
    h.until(app.started.is_set, "the app started")
    assert h.conn.state is ConnState.BODY and h.ctx.streams == 1
    app.go.set()
    h.feed(BODY[-20:])
    h.until(lambda: len(h.responses()) == 1, "the answer")
    assert h.responses() == [(200, f"40 {hashlib.sha256(BODY).hexdigest()}".encode())]
    assert app.kinds == ["BodyFeed"] and h.ctx.streams == 0


def test_a_second_large_body_spools_while_the_only_slot_is_taken():
    """A slot is held while the body arrives (a slow client could hold the thread); once the
    body is in, the thread is the app's as for any request, and the slot is free."""
    app = Gate()
    h = harness(app, threads=3)
    h.feed(post("/one", BODY)[:-1])
    h.until(app.started.is_set, "the first app call")
    other = h.connect()
    other.feed(post("/two", BODY))
    h.until(lambda: len(app.kinds) == 2, "the second app call")
    assert app.kinds == ["BodyFeed", "SpooledInput"]
    h.feed(BODY[-1:])
    assert h.ctx.streams == 0
    third = h.connect()
    third.feed(post("/three", BODY)[:-1])
    h.until(lambda: len(app.kinds) == 3, "the third app call")
    assert app.kinds[2] == "BodyFeed" and h.ctx.streams == 1
    third.feed(BODY[-1:])
    app.go.set()
    h.until(lambda: len(h.responses()) == 1 and other.transport.written and third.transport.written,
            "every answer")
    assert h.ctx.streams == 0


@pytest.mark.parametrize("end", ["half-close", "body-timeout"])
def test_a_body_cut_short_raises_in_the_app_and_closes_without_a_second_answer(end):
    app = Gate()
    h = harness(app, body_timeout=0.2)
    h.feed(post("/up", BODY)[:-10])
    h.until(app.started.is_set, "the app started")
    app.go.set()
    if end == "half-close":
        h.eof()
    else:
        h.until(lambda: h.transport.aborted, "the body timeout")
        h.conn.connection_lost(None)  # what the loop reports next (the fake transport does not)
    h.until(lambda: app.error is not None, "the app's read to fail")
    assert isinstance(app.error, ConnectionResetError) and app.error.errno == errno.ECONNRESET
    h.until(lambda: h.transport.closed, "the connection closed")
    assert h.responses() == []  # no 400 page: the response was the app's to give
    assert h.ctx.streams == 0
    assert h.transport.aborted is (end == "body-timeout")


def test_an_answer_before_the_body_is_in_says_close_and_no_later_request_is_read():
    def early(environ, start_response):
        start_response("200 OK", [("Content-Length", "5")])
        return [b"early"]

    h = harness(early)
    h.feed(post("/up", BODY)[:-10])
    h.until(lambda: h.responses() == [(200, b"early")], "the early answer")
    assert b"Connection: close" in bytes(h.transport.written)
    h.feed(BODY[-10:] + get("/canary"))
    assert h.responses() == [(200, b"early")]  # the canary is dropped, never answered
    assert h.conn.state in (ConnState.LINGER, ConnState.CLOSED) and h.ctx.streams == 0


def feed_as_read(h: Harness, request: bytes, sent: int = 0, step: int = 64 * 1024) -> None:
    """Feed the rest of `request` from `sent`, a read at a time, each once reading is on again."""
    while sent < len(request):
        h.until(lambda: h.transport.reading, "reading again")
        h.feed(request[sent:sent + step])
        sent += step


def test_reading_pauses_while_the_app_is_behind_and_resumes_as_it_reads():
    app = Gate()
    h = harness(app)
    size = 2 * STREAM_BACKLOG
    data = bytes(range(256)) * (size // 256)
    request = post("/up", data)
    step, sent = 64 * 1024, 0
    while sent < len(request) and h.transport.reading:
        h.feed(request[sent:sent + step])
        sent += step
    assert not h.transport.reading  # held: at most STREAM_BACKLOG and a read unread
    assert sent < STREAM_BACKLOG + 2 * step
    app.go.set()
    feed_as_read(h, request, sent, step)
    h.until(lambda: len(h.responses()) == 1, "the answer")
    assert h.responses() == [(200, f"{size} {hashlib.sha256(data).hexdigest()}".encode())]


def test_a_body_whose_last_read_paused_reading_leaves_the_connection_reading_for_the_next():
    """The read that completes a body can also pause reading (the app is behind): once the
    response is complete, the kept-alive connection reads again (RFC 9112 section 9.3)."""
    app = Gate()
    h = harness(app)
    data = b"x" * (STREAM_BACKLOG + 64 * 1024)
    h.feed(post("/up", data))  # one read: it completes the body and passes the backlog limit
    assert h.conn.state is ConnState.APP and not h.transport.reading
    app.go.set()
    h.until(lambda: len(h.responses()) == 1, "the answer")
    h.until(lambda: h.transport.reading, "reading again")
    h.feed(post("/next", BODY))
    h.until(lambda: len(h.responses()) == 2, "the next request's answer")
    assert h.responses()[1] == (200, f"40 {hashlib.sha256(BODY).hexdigest()}".encode())


def test_a_memory_limit_above_the_backlog_starts_the_app_when_the_feed_is_full():
    """AIOWSGI_BODY_MEMORY_LIMIT over STREAM_BACKLOG: reading pauses at the backlog before that
    much is in, so the app must start then (it alone can read it), or nothing ever would."""
    app = Gate()
    app.go.set()
    h = harness(app, body_memory_limit=2 * STREAM_BACKLOG)
    data = bytes(range(256)) * (3 * STREAM_BACKLOG // 256)
    feed_as_read(h, post("/up", data))
    h.until(lambda: len(h.responses()) == 1, "the answer")
    assert h.responses() == [(200, f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())]
    assert app.kinds == ["BodyFeed"] and h.ctx.streams == 0


def test_queue_full_at_dispatch_answers_503_and_frees_the_slot():
    app = Gate()
    h = harness(app, threads=1, queue_limit=1)
    h.feed(get("/busy"))  # takes the only thread
    h.until(app.started.is_set, "the busy call")
    h.connect().feed(get("/queued"))  # waits for the thread: the queue is full
    streaming = h.connect()
    streaming.feed(post("/up", BODY))
    assert bytes(streaming.transport.written).startswith(b"HTTP/1.1 503")
    assert h.ctx.streams == 0
    app.go.set()


def test_an_uncaught_cut_short_read_is_logged_as_the_client_going_away():
    """As gunicorn's "Ignored premature client disconnection": debug, no app-error traceback."""
    started = threading.Event()

    def reads(environ, start_response):
        started.set()
        environ["wsgi.input"].read()  # raises BodyCutShort, an OSError the app does not catch
        start_response("200 OK", [])
        return [b""]

    h = harness(reads)
    h.feed(post("/up", BODY)[:-10])
    h.until(started.is_set, "the app started")
    h.eof()
    h.until(lambda: ("debug", "Client went away during POST /up") in h.log.lines, "the debug line")
    assert not [line for line in h.log.lines if line[0] in ("error", "exception")]
