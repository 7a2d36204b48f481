"""A slow client's clocks, in memory, on a loop whose clock the test moves (no waiting).

AIOWSGI_HEADER_TIMEOUT is a whole head's time, from its first byte: a trickle of head bytes does
not extend it. AIOWSGI_BODY_TIMEOUT is the longest pause between body reads (README): each body
read restarts it, so a body may take longer in all than the timeout, but never pause for it.
"""

from __future__ import annotations

import socket

import pytest
from memory import Harness, Opened, get, post

from gunicorn_aiowsgi.boundary import ConnState

pytestmark = pytest.mark.timeout(60)

OPENED = Opened()
HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE = 10.0, 7.0, 30.0  # apart: one never stands for another
UNDER, OVER = 0.1, 0.1  # how far from a deadline the clock stops, each side of it (seconds)


@pytest.fixture(autouse=True)
def close_all():
    yield
    OPENED.close()


def harness() -> Harness:
    return OPENED.add(Harness(clock=True, header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT,
                              keepalive=KEEPALIVE))


def debug(h: Harness) -> list[str]:
    return [line for level, line in h.log.lines if level == "debug"]


def begin(h: Harness, first: str) -> None:
    """The connection as a head arrives: its first request, or one after a request answered."""
    if first == "after-a-request":
        h.feed(get("/one"))
        assert h.responses() == [(200, b"GET /one ")] and h.conn.state is ConnState.IDLE
        h.advance(KEEPALIVE - 1)  # idle for most of keepalive: the next head's time is its own
        assert not h.transport.closed


FIRST = ["first-request", "after-a-request"]


# -- AIOWSGI_HEADER_TIMEOUT: the whole head, however it trickles --------------------------------
@pytest.mark.parametrize("first", FIRST)
def test_a_head_byte_does_not_restart_the_header_timeout(first):
    h = harness()
    begin(h, first)
    answered = len(h.responses())
    h.feed(b"G")  # the head begins: HEADER_TIMEOUT from now
    h.advance(6.0)
    h.feed(b"E")  # a byte 6 s later: no more time for the head
    h.advance(HEADER_TIMEOUT - 6.0 - UNDER)
    assert not h.transport.closed and h.conn.state is ConnState.HEAD
    h.advance(UNDER + OVER)  # 5 s after the last byte, past the head's 10 s
    assert h.transport.closed and not h.transport.aborted
    assert h.worker.served == answered and len(h.responses()) == answered  # nothing answered it
    assert debug(h) == [f"Closing {h.conn.peer}: request head not received within {HEADER_TIMEOUT}s"]


@pytest.mark.parametrize("first", FIRST)
def test_a_head_trickled_a_byte_at_a_time_is_closed_at_the_header_timeout(first):
    """One byte every 0.9 s: the 12th (at 9.9 s) is taken, the connection closed at 10 s."""
    h = harness()
    begin(h, first)
    answered = len(h.responses())
    data, fed = get("/slow"), 0
    while not h.transport.closed:
        h.feed(data[fed:fed + 1])
        fed += 1
        h.advance(0.9)
        assert fed < len(data), "the whole head arrived: its time was extended"
    assert fed == 12 and h.worker.served == answered and len(h.responses()) == answered


@pytest.mark.parametrize("first", FIRST)
def test_a_head_trickled_within_the_header_timeout_is_served(first):
    """The other side of the deadline: every byte by 9.9 s, the last one ending the head."""
    h = harness()
    begin(h, first)
    data = get("/slow")
    step = (HEADER_TIMEOUT - UNDER) / (len(data) - 1)
    for at in range(len(data)):
        h.feed(data[at:at + 1])
        if at < len(data) - 1:
            h.advance(step)
    assert h.responses()[-1] == (200, b"GET /slow ")
    assert h.conn.state is ConnState.IDLE and not h.transport.closed


# A connection's first head counts from the connection's start (nginx's client_header_timeout),
# after a PROXY preamble too: waiting first does not add to the head's time.
STARTS = {"plain": ({}, b""),
          "proxy": ({"proxy_protocol": "v1", "proxy_allow_ips": ("*",)},
                    b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n")}


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("complete", [False, True])
def test_the_first_head_counts_from_the_connection_start(start, complete):
    settings, preamble = STARTS[start]
    h = OPENED.add(Harness(clock=True, header_timeout=HEADER_TIMEOUT, keepalive=KEEPALIVE, **settings))
    h.advance(3.0)
    h.feed(preamble)  # (nothing, for a plain connection)
    h.advance(3.0)
    h.feed(b"GET /one HTTP/1.1\r\n")  # 6 s after the start
    h.advance(HEADER_TIMEOUT - 6.0 - UNDER)
    assert not h.transport.closed and h.conn.state is ConnState.HEAD
    if complete:
        h.feed(b"Host: t\r\n\r\n")  # just in time
        assert h.responses() == [(200, b"GET /one ")]
        h.advance(UNDER + OVER)
        assert not h.transport.closed and h.conn.state is ConnState.IDLE
        return
    h.advance(UNDER + OVER)  # HEADER_TIMEOUT after the start, 4 s after the head's first byte
    assert h.transport.closed and h.responses() == []
    assert debug(h) == [f"Closing {h.conn.peer}: request head not received within {HEADER_TIMEOUT}s"]


def test_the_first_head_over_tls_counts_from_the_end_of_the_handshake():
    """The handshake has its own time (AIOWSGI_HEADER_TIMEOUT, tls.py); asyncio makes the
    connection once it is done, and the first head gets a whole header_timeout from then."""
    h = harness()
    client = h.connect(handshake=HEADER_TIMEOUT - 1.0)
    client.feed(b"GET /one HTTP/1.1\r\n")
    h.advance(HEADER_TIMEOUT - UNDER)
    assert not client.transport.closed and client.conn.state is ConnState.HEAD
    client.feed(b"Host: t\r\n\r\n")
    assert client.responses() == [(200, b"GET /one ")]
    h.advance(UNDER + OVER)
    assert not client.transport.closed and client.conn.state is ConnState.IDLE


@pytest.mark.parametrize("first", FIRST)
def test_a_head_waiting_in_the_socket_when_the_idle_time_ends_gets_the_header_timeout(first):
    """Closing with unread bytes resets the connection and loses them: the timer that finds a
    request in the socket, not read yet (reading paused, say), gives its head a header_timeout."""
    h = harness()
    begin(h, first)
    answered = len(h.responses())
    ours, client = socket.socketpair()
    try:
        client.sendall(get("/two"))
        h.transport.sock = ours
        h.advance((1.0 if first == "after-a-request" else HEADER_TIMEOUT) + OVER)
        assert h.conn.state is ConnState.HEAD and not h.transport.closed
        h.advance(HEADER_TIMEOUT - OVER - UNDER)
        assert h.conn.state is ConnState.HEAD and not h.transport.closed
        h.feed(ours.recv(1024))
    finally:
        ours.close()
        client.close()
    assert len(h.responses()) == answered + 1 and h.responses()[-1] == (200, b"GET /two ")
    assert h.conn.state is ConnState.IDLE and not h.transport.closed


# -- AIOWSGI_BODY_TIMEOUT: the longest pause between body reads ----------------------------------
BODIES = {  # a head, then its body's bytes in the reads a slow client sends them
    "content-length": (post("/p", b"0123456789")[:-10], [b"01", b"23", b"45", b"67", b"89"]),
    "chunked": (b"POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
                [b"2\r\n01\r", b"\n8\r\n2345", b"6789\r\n", b"0\r\n", b"\r\n"]),
}


@pytest.mark.parametrize("case", list(BODIES))
def test_a_body_pausing_just_under_the_body_timeout_between_reads_is_served(case):
    """Five pauses of 6.9 s (34.5 s in all, five times the timeout): each read restarts it."""
    head, reads = BODIES[case]
    h = harness()
    h.feed(head)
    for data in reads:
        h.advance(BODY_TIMEOUT - UNDER)
        assert not h.transport.closed and h.conn.state is ConnState.BODY
        h.feed(data)
    assert h.responses() == [(200, b"POST /p 0123456789")] and h.worker.served == 1
    h.feed(get("/next"))  # the connection is still good for the next request
    assert h.responses()[-1] == (200, b"GET /next ") and not h.transport.closed


@pytest.mark.parametrize("stall_after", [0, 1, 4], ids=lambda n: f"after-{n}-reads")
@pytest.mark.parametrize("case", list(BODIES))
def test_a_body_pausing_just_over_the_body_timeout_is_dropped_unanswered(case, stall_after):
    """Reads 6.9 s apart, then one pause of 7.1 s (from the head's end when no body byte came
    yet): the connection is aborted and the app never called."""
    head, reads = BODIES[case]
    h = harness()
    h.feed(head)
    for data in reads[:stall_after]:
        h.advance(BODY_TIMEOUT - UNDER)
        h.feed(data)
    h.advance(BODY_TIMEOUT - UNDER)
    assert not h.transport.closed and h.conn.state is ConnState.BODY
    h.advance(UNDER + OVER)
    assert h.transport.aborted and h.worker.served == 0 and h.responses() == []
    assert debug(h) == [f"Closing {h.conn.peer}: no request body bytes for {BODY_TIMEOUT}s"]
