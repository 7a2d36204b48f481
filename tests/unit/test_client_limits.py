"""What one client can make a connection hold, in memory: answers it does not read (the loop's own
answers wait for it like the app's), a request head's total size (AIOWSGI_MAX_HEAD_SIZE, trailers
included) and the time it may take no output (AIOWSGI_SEND_TIMEOUT). A fake transport that pauses
writing as asyncio's do; timeouts on a loop whose clock the test moves, without waiting."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from memory import Harness, InlinePool, Opened, get, splits

from gunicorn_aiowsgi.boundary import ConnState
from gunicorn_aiowsgi.parser import HEAD_UNLIMITED, LINE_UNLIMITED, line_limit
from gunicorn_aiowsgi.protocol import HELD_LIMIT

pytestmark = pytest.mark.timeout(60)

OPENED = Opened()
READ = 4096          # bytes the connection reads at a time here
ANSWER = 512         # more than any one answer these tests get (a plain reply, an echo)


@pytest.fixture(autouse=True)
def close_all():
    yield
    OPENED.close()


def harness(app: Any = None, slow: bool = True, **settings: Any) -> Harness:
    """A connection whose client takes nothing until the test says (`slow`)."""
    h = Harness(app, **settings) if app is not None else Harness(**settings)
    h.transport.slow = slow
    OPENED.add(h)
    return h


def deliver(h: Harness, data: bytes, size: int = READ) -> bytes:
    """The client sends `data`; the connection reads it `size` bytes at a time while it reads.
    Returns what it has not read (reading paused)."""
    while data and h.transport.reading and not h.transport.closed:
        h.conn.data_received(data[:size])
        data = data[size:]
        h.settle()
    return data


def statuses(h: Harness) -> list[int]:
    return [status for status, _ in h.responses()]


class FullPool(InlinePool):
    """A pool whose queue is always full: every request gets the overload 503."""

    queued = held = 1  # held: in the queue, cancelled ones included (never fewer)

    def submit(self, job: Any) -> None:
        raise AssertionError("no request may reach the app while the queue is full")


# -- the loop's own answers wait for a client that does not read --------------------------------
PIPELINED = {  # settings, the path pipelined, the status each gets
    "health": ({"health_path": "/healthz"}, "/healthz", 200),
    "overload-503": ({"pool": FullPool(), "queue_limit": 1}, "/x", 503),
    "app": ({}, "/x", 200),
}


@pytest.mark.parametrize("case", list(PIPELINED))
def test_pipelined_requests_wait_while_the_client_does_not_read_their_answers(case):
    """A client pipelining thousands of requests that the loop answers itself (health checks,
    the overload 503) and reading nothing: answers stop at the transport's high-water mark,
    the requests behind them wait (bounded), and reading pauses; each time the client takes the
    answers, the next ones go out; all of them, in order, in the end."""
    settings, path, status = PIPELINED[case]
    h = harness(write_buffer=16384, **settings)  # the transport pauses past 4 KiB
    count = 4000  # 148 KB: more than the connection holds
    rest = deliver(h, get(path) * count)
    assert rest and not h.transport.reading and h.transport.paused
    answered = h.transport.written.count(b"HTTP/1.1 ")
    assert 0 < answered < 100
    for _ in range(count):
        if not rest and answered == count:
            break
        assert h.transport.pending <= h.transport.high + ANSWER
        assert len(h.conn.held) <= HELD_LIMIT + READ
        h.transport.take()  # the client reads all that waits, then sends on
        h.settle()
        rest = deliver(h, rest)
        answered = h.transport.written.count(b"HTTP/1.1 ")
    assert statuses(h) == [status] * count
    assert h.conn.state is ConnState.IDLE and not h.transport.closed and h.transport.reading


@pytest.mark.parametrize("client", ["reading", "not-reading"])
@pytest.mark.parametrize("case", list(PIPELINED))
def test_requests_pipelined_before_a_half_close_are_all_answered_then_it_closes(case, client):
    """A client pipelines requests, then half-closes (FIN) before the first answer: every one is
    answered, in order, then the connection closes, as under gthread. The loop's own answers
    (a health check, the overload 503) finish while the read they came in is being parsed: the
    FIN must not close the connection under the requests behind them in that read."""
    settings, path, status = PIPELINED[case]
    h = harness(slow=client == "not-reading", write_buffer=16384, **settings)
    count = 3 if client == "reading" else 400  # 400: more than the transport takes unread
    pipeline = get("/x") + get(path) * count   # the app's request first: the rest is held
    h.conn.data_received(pipeline[:READ])
    rest = pipeline[READ:]
    while rest:  # the client sends all it pipelined (taking answers while the worker waits)
        h.transport.take()
        h.settle()
        rest = deliver(h, rest)
    h.conn.eof_received()  # False or None: what asyncio does next is not what is tested here
    for _ in range(count + 1):
        if h.transport.closed:
            break
        h.transport.take()
        h.settle()
    assert statuses(h) == [status] * (count + 1)
    assert h.transport.closed


def test_an_error_answer_the_client_never_takes_after_its_fin_is_cut_off_by_the_send_timeout():
    """A refused request: its 400 waits in the transport (the client reads nothing), then the
    client half-closes and asyncio closes the transport itself. When lingering ends, the send
    timeout still watches the flush: the connection (and its worker_connections slot) is let
    go, not held for as long as the client keeps its socket open."""
    # Under the transport's high-water mark (1 KiB), so writing never paused: nothing else
    # watches these bytes (a paused transport arms the send timeout itself).
    h = harness(clock=True, write_buffer=4096, send_timeout=10.0)
    deliver(h, get("/x") + b"NOT A REQUEST\r\n\r\n")
    assert h.conn.state is ConnState.LINGER and h.transport.pending and not h.transport.paused
    h.eof()  # the FIN: eof_received returns None while lingering, so the transport closes
    assert h.transport.closed and not h.transport.aborted
    h.advance(3.0)  # past LINGER_TIME: the connection's own close comes
    assert h.conn.stall is not None, "no send timeout watches the flush"
    h.advance(11.0)
    assert h.transport.aborted


def test_answers_waiting_for_the_client_are_not_an_idle_connection_but_time_out_as_a_send():
    h = harness(clock=True, write_buffer=4096, health_path="/healthz", keepalive=2.0,
                send_timeout=10.0)
    deliver(h, get("/healthz") * 200)
    assert h.transport.paused and h.conn.held
    h.advance(5.0)  # past keepalive: requests wait behind answers, nothing is idle
    assert not h.transport.closed
    h.advance(6.0)  # past the send timeout: the client took nothing
    assert h.transport.aborted
    assert h.log.counts == {"send_timeouts": 1}
    assert [line for level, line in h.log.lines if level == "debug"] == [
        f"Closing {h.conn.peer}: no response bytes taken for 10.0s ({h.transport.pending} waiting)"]


def test_keepalive_counts_from_when_the_client_took_the_last_answer():
    h = harness(clock=True, write_buffer=256, health_path="/healthz", keepalive=2.0)  # pauses past 64 bytes
    deliver(h, get("/healthz"))
    assert statuses(h) == [200] and h.transport.paused and h.conn.state is ConnState.IDLE
    h.advance(5.0)
    assert not h.transport.closed  # the answer still waits for the client: not idle
    h.transport.take()
    h.advance(1.5)
    assert not h.transport.closed
    h.advance(1.0)  # keepalive after the client took it
    assert h.transport.closed and not h.transport.aborted and h.log.counts == {}


# -- AIOWSGI_SEND_TIMEOUT -----------------------------------------------------------------------
def sized(size: int) -> Any:
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(size))])
        return [b"x" * size]
    return app


def test_send_timeout_counts_from_the_last_bytes_the_client_took():
    """nginx's send_timeout: the wait between two writes that took bytes, not a whole response's
    time; a client that reads slowly (never down to the low-water mark) keeps its connection."""
    h = harness(sized(8192), clock=True, write_buffer=4096, send_timeout=10.0)
    deliver(h, get("/x"))
    assert h.transport.paused and h.conn.stall is not None
    h.advance(9.0)
    h.transport.take(100)  # some, not enough to resume writing
    assert h.transport.paused
    h.advance(2.0)  # the timeout comes: bytes were taken since, so it starts again
    assert not h.transport.closed and h.conn.stall is not None
    h.advance(9.0)
    assert not h.transport.closed
    h.advance(2.0)  # nothing taken for the whole timeout
    assert h.transport.aborted and h.log.counts == {"send_timeouts": 1}


def test_send_timeout_stands_down_once_the_client_takes_the_output():
    h = harness(sized(8192), clock=True, write_buffer=4096, send_timeout=10.0, keepalive=2.0)
    deliver(h, get("/x"))
    assert h.transport.paused
    h.advance(5.0)  # keep-alive's time passes while the answer waits: not idle
    assert not h.transport.closed
    h.transport.take()
    assert not h.transport.paused and h.conn.stall is None
    h.advance(3.0)  # now idle: keep-alive closes it, the send timeout has nothing to say
    assert h.transport.closed and not h.transport.aborted and h.log.counts == {}


def test_a_close_with_output_still_waiting_is_watched_by_the_send_timeout():
    """Connection: close below the high-water mark: the close waits for the client to take the
    bytes; one that never does is aborted, not kept for ever."""
    h = harness(sized(8192), clock=True, send_timeout=10.0)  # high-water mark 2 MiB
    deliver(h, get("/x", "Connection: close\r\n"))
    assert h.transport.closed and not h.transport.paused and h.transport.pending
    h.advance(11.0)
    assert h.transport.aborted and h.log.counts == {"send_timeouts": 1}


class Endless:
    """A response of 64 KiB chunks until its client is gone; /hello answers at once."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/hello":
            start_response("200 OK", [("Content-Length", "5")])
            return [b"hello"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return self.chunks()

    def chunks(self):
        try:
            for _ in range(100_000):
                yield b"x" * 65536
        finally:
            self.closed.set()


def test_send_timeout_frees_the_app_thread_of_a_client_that_never_reads():
    """One thread, one client that never reads a large response: after the send timeout the
    connection is aborted, the thread's next write raises, the iterable is closed and the
    thread serves the next client."""
    app, pool = Endless(), OPENED.pool(1)
    h = harness(app, pool=pool, clock=True, write_buffer=1 << 20, send_timeout=10.0)
    deliver(h, get("/big"))
    # Past half the credit in flight, the thread waits (bridge.Channel.put) for the client.
    h.until(lambda: h.transport.paused and h.conn.exchange.channel.inflight > 1 << 19,
            "the thread waits for credit")
    assert pool.busy == 1
    h.advance(11.0)
    assert h.transport.aborted and h.log.counts == {"send_timeouts": 1}
    h.conn.connection_lost(None)  # what the transport does next
    h.until(app.closed.is_set, "the iterable closed")
    h.until(lambda: pool.busy == 0, "the thread free")
    canary = h.connect()
    canary.feed(get("/hello"))
    h.until(lambda: canary.transport.written.endswith(b"hello"), "the next client served")


# -- AIOWSGI_MAX_HEAD_SIZE -------------------------------------------------------------------------
HEAD_LIMIT = 256


def head(size: int) -> bytes:
    """A GET head of exactly `size` bytes, blank line included."""
    start, end = b"GET /h HTTP/1.1\r\nHost: t\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"p" * (size - len(start) - len(end)) + end


def chunked_with_trailers(trailers: bytes) -> bytes:
    return (b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n")


TRAILERS = b"X-T: " + b"t" * 100 + b"\r\n"  # the section with its last chunk: well below 256

# Within the limit, a canary behind, split anywhere: (request, its answer).
WITHIN_LIMIT = {
    "head-of-the-limit": (head(HEAD_LIMIT), (200, b"GET /h ")),
    "trailers-below-the-limit": (chunked_with_trailers(TRAILERS), (200, b"POST /c hello")),
}


@pytest.mark.parametrize("name, reads", [(name, reads) for name, (data, _) in WITHIN_LIMIT.items()
                                         for reads in splits(data + get("/canary"))],
                         ids=lambda v: v if isinstance(v, str) else f"split-{len(v[0])}")
def test_a_head_or_trailer_section_within_the_limit_is_served(name, reads):
    h = harness(slow=False, max_head_size=HEAD_LIMIT)
    h.feed(*reads)
    assert h.responses() == [WITHIN_LIMIT[name][1], (200, b"GET /canary ")]


@pytest.mark.parametrize("reads", splits(head(HEAD_LIMIT + 1) + get("/canary")),
                         ids=lambda r: f"split-{len(r[0])}")
def test_a_head_past_the_limit_is_refused_and_nothing_behind_it_is_served(reads):
    h = harness(slow=False, max_head_size=HEAD_LIMIT)
    h.feed(*reads)
    assert statuses(h) == [431] and h.worker.served == 0
    assert h.conn.state is ConnState.LINGER


def test_the_head_limit_counts_across_reads_and_refuses_before_the_head_ends():
    """A byte a read: refused at the byte past the limit, not at the blank line that never comes
    (each field within limit_request_field_size, fewer than limit_request_fields)."""
    h = harness(slow=False, max_head_size=HEAD_LIMIT)
    data = b"GET /h HTTP/1.1\r\nHost: t\r\n" + b"X-A: aaaaaaaa\r\n" * 40
    for fed in range(1, len(data) + 1):
        h.feed(data[fed - 1:fed])
        if h.responses():
            break
    assert fed == HEAD_LIMIT + 1 and statuses(h) == [431]


def test_a_head_limit_of_zero_leaves_gunicorns_limits_alone():
    h = harness(slow=False, max_head_size=0)
    h.feed(head(64 * 1024) + get("/canary"))  # one field of 64 KiB: past limit_request_field_size
    assert statuses(h) == [431]
    h = harness(slow=False, max_head_size=0, limit_request_field_size=80 * 1024)
    h.feed(head(64 * 1024) + get("/canary"))
    assert statuses(h) == [200, 200]


@pytest.mark.parametrize("line, max_head, limit", [
    (4094, 65536, 4094), (8190, 65536, 8190), (8191, 65536, 8190), (20000, 65536, 8190),
    (-1, 65536, 8190), (0, 65536, 65536), (0, 20000, 20000), (0, HEAD_UNLIMITED, LINE_UNLIMITED),
    (0, 4 * LINE_UNLIMITED, LINE_UNLIMITED),
])
def test_the_request_target_limit_of_gunicorns_limit_request_line(line, max_head, limit):
    """gunicorn's values above its maximum mean that maximum; its 0 (no limit) means as long as
    AIOWSGI_MAX_HEAD_SIZE lets a head be (gunicorn 27's own parser stops at 1 MiB)."""
    assert line_limit(line, max_head) == limit


def test_a_request_line_limit_of_zero_is_gunicorns_no_limit_within_the_head_limit():
    """A request-target past 8190 bytes is served with limit_request_line 0 (it was 414), as under
    gunicorn, the canary behind it too; one longer than AIOWSGI_MAX_HEAD_SIZE (64 KiB) is 414."""
    long_target = "/t?" + "a" * 20_000
    h = harness(slow=False, limit_request_line=0)
    deliver(h, get(long_target) + get("/canary"))
    assert h.responses() == [(200, b"GET /t "), (200, b"GET /canary ")]
    h = harness(slow=False, limit_request_line=0)
    deliver(h, get("/t?" + "a" * 64 * 1024) + get("/canary"))
    assert statuses(h) == [414] and h.worker.served == 0
    h = harness(slow=False, limit_request_line=8190)  # gunicorn's maximum as a number: a limit
    deliver(h, get(long_target) + get("/canary"))
    assert statuses(h) == [414] and h.worker.served == 0


def test_a_request_target_past_8190_bytes_with_limit_request_line_zero_split_anywhere():
    """Just past the old cap (8190): the request line kept across reads however it is split,
    the canary behind it answered as its own request, at every split."""
    data = get("/t?" + "a" * 8200) + get("/canary")
    h = harness(slow=False, limit_request_line=0)
    for at in range(len(data)):
        client = h.connect()  # a connection of its own per split, on the one worker
        for read in ([data[:at], data[at:]] if at else [data]):
            client.feed(read)
        assert client.responses() == [(200, b"GET /t "), (200, b"GET /canary ")], at


def test_trailers_count_against_the_head_limit_as_they_arrive():
    """A trailer section (fields within gunicorn's limits each) that never ends: refused once
    the bytes since the last body byte pass the limit, the app never called."""
    h = harness(slow=False, max_head_size=HEAD_LIMIT)
    h.feed(chunked_with_trailers(b"")[:-2])  # the body up to its last chunk, in one read
    fed = 0
    while not h.responses():
        h.feed(b"X-T: tttttttttt\r\n")
        fed += 17
        assert fed < 10 * HEAD_LIMIT
    assert HEAD_LIMIT < fed <= HEAD_LIMIT + 17
    assert statuses(h) == [431] and h.worker.served == 0
    h.feed(b"\r\n" + get("/canary"))
    assert statuses(h) == [431]
