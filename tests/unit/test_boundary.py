"""The pure boundary core: deadlines per state, the blank line across reads, the request line check."""

from __future__ import annotations

import pytest

from gunicorn_aiowsgi.boundary import (
    LINGER_TIME,
    Boundary,
    ConnState,
    check_head_only,
    deadline,
    protocol_ok,
)
from gunicorn_aiowsgi.errors import BadRequest, HeaderFieldsTooLarge, URITooLong
from gunicorn_aiowsgi.settings import Settings

SETTINGS = Settings(keepalive=2.0, header_timeout=30.0, body_timeout=60.0)


@pytest.mark.parametrize("state, requests, expected", [
    (ConnState.PREAMBLE, 0, 130.0),
    (ConnState.IDLE, 0, 130.0),      # nothing sent yet: the header timeout
    (ConnState.IDLE, 3, 102.0),      # between requests: keepalive
    (ConnState.HEAD, 3, 130.0),
    (ConnState.BODY, 0, 160.0),
    (ConnState.APP, 0, None),        # the app answers: no connection deadline
    (ConnState.LINGER, 1, 100.0 + LINGER_TIME),
    (ConnState.CLOSED, 1, None),
])
def test_deadline_per_state(state, requests, expected):
    assert deadline(state, 100.0, requests, SETTINGS) == expected


@pytest.mark.parametrize("reads, ends", [
    ([b"GET / HTTP/1.1\r\n\r\n"], [18]),
    ([b"GET / HTTP/1.1\r\n\r\nrest"], [18]),
    ([b"GET / HTTP/1.1\r\n", b"\r\n"], [-1, 2]),
    ([b"GET / HTTP/1.1\r", b"\n\r\n"], [-1, 3]),
    ([b"GET / HTTP/1.1\r\n\r", b"\n"], [-1, 1]),
    ([b"x\r", b"\n", b"\r", b"\nmore"], [-1, -1, -1, 1]),   # one byte a read
    ([b"a\r\n\r", b"\n\r\n"], [-1, 1]),                    # the first blank line, not a later one
    ([b"no blank line\r\n"], [-1]),
])
def test_blank_line_across_reads(reads, ends):
    bound = Boundary()
    assert [bound.blank_line(data) for data in reads] == ends


@pytest.mark.parametrize("data, start, end", [
    (b"ab\r\n\r\ncd\r\n\r\n", 0, 6),
    (b"ab\r\n\r\ncd\r\n\r\n", 6, 12),      # from an offset: the next one
    (b"ab\r\n\r\ncd", 6, -1),
])
def test_blank_line_from_an_offset(data, start, end):
    assert Boundary().blank_line(data, start) == end


def pieces_fed(reads: list[bytes], done_after: int | None = None) -> tuple[list[bytes], list[int]]:
    """chunked_end over `reads`, its feed recording each piece (the body done after that many)."""
    bound, fed, ends = Boundary(), [], []

    def feed(piece: bytes) -> bool:
        fed.append(piece)
        return done_after is not None and len(fed) >= done_after

    for data in reads:
        ends.append(bound.chunked_end(data, feed))
    return fed, ends


@pytest.mark.parametrize("reads, done_after, fed, ends", [
    ([b"5\r\nhello\r\n"], None, [b"5\r\nhello\r\n"], [10]),           # no blank line: whole
    ([b"0\r\n\r\nGET"], 1, [b"0\r\n\r\n"], [5]),                       # ends at the blank line
    ([b"2\r\n\r\n\r\n\r\n0\r\n\r\n"], 3,                              # cut at each; ends at the third
     [b"2\r\n\r\n", b"\r\n\r\n", b"0\r\n\r\n"], [14]),
    ([b"0\r\n\r", b"\n\r\nX"], 2, [b"0\r\n\r", b"\n"], [4, 1]),        # a blank line across reads
])
def test_chunked_end_cuts_at_each_blank_line_until_the_body_is_done(reads, done_after, fed, ends):
    assert pieces_fed(reads, done_after) == (fed, ends)


def test_chunked_end_feeds_a_read_of_blank_lines_once_over():
    """Offsets, not copies of the rest: the pieces are the read, each byte fed once."""
    data = b"\r\n\r\n" * 10_000
    fed, ends = pieces_fed([data])
    assert b"".join(fed) == data and ends == [len(data)]
    assert len(fed) == 10_000


@pytest.mark.parametrize("line, data, left", [
    (b"", b"\r\n\r\n\r\nGET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\n"),
    (b"", b"\r\n" * 5000, b""),
    (b"", b"\n\r\n\nGET", b"GET"),        # a bare LF may end a line (RFC 9112 section 2.2)
    (b"", b"\r\n\r", b"\r"),                # a CR ending the read waits for the next byte
    (b"GE", b"\r\n", b"\r\n"),              # a request line has begun: nothing to skip
])
def test_skip_empty_lines(line, data, left):
    bound = Boundary()
    bound.line = line
    assert bound.skip_empty_lines(data) == left


@pytest.mark.parametrize("reads", [
    [b"\rGET / HTTP/1.1\r\n"], [b"\n\r\n\rGET / HTTP/1.1\r\n"], [b"\r\r\n"],
    [b"\r", b"GET / HTTP/1.1\r\n"], [b"\r\n\r", b"\rGET / HTTP/1.1\r\n"],
])
def test_a_bare_cr_before_the_request_line_is_refused_however_split(reads):
    """RFC 9112 section 2.2: a bare CR is invalid; llhttp would skip it with the empty lines."""
    bound = Boundary()
    with pytest.raises(BadRequest, match="bare CR"):
        for data in reads:
            data = bound.skip_empty_lines(data)
            bound.check_head(data)


@pytest.mark.parametrize("reads, refused", [
    ([b"GET / HTTP/1.1\r\nHost: x\r\n"], False),
    ([b"GET / HT", b"TP/1.1\r\n"], False),
    ([b"\r\n\r\nGET / HTTP/1.0\r\n"], False),     # empty lines before the request line (RFC 9112 2.2)
    ([b"GET / RTSP/1.0\r\n"], True),
    ([b"GET / RT", b"SP/1.0\r\nHost: x\r\n"], True),
    ([b"SOURCE / ICE/1.0\r\n"], True),
    # RFC 9112 section 3: single spaces between method, target and version
    ([b"GET  / HTTP/1.1\r\n"], True),
    ([b"GET / ", b" HTTP/1.1\r\n"], True),
    ([b" GET / HTTP/1.1\r\n"], True),
    ([b"\r\n GET / HTTP/1.1\r\n"], True),
    ([b"GET /a%20b HTTP/1.1\r\nX:  two spaces in a field\r\n"], False),
])
def test_request_line_protocol_is_checked_once_complete(reads, refused):
    check_heads(Boundary(), reads, BadRequest if refused else None)


def check_heads(bound: Boundary, reads: list[bytes], refusal: type[Exception] | None) -> None:
    """Feed each read's bytes to check_head: refused with `refusal`, or the line done."""
    feed_heads(bound, reads, refusal)
    assert refusal is not None or bound.line_done


def feed_heads(bound: Boundary, reads: list[bytes], refusal: type[Exception] | None) -> None:
    """Feed each read's bytes to check_head: refused with `refusal`, or taken."""
    if refusal is not None:
        with pytest.raises(refusal):
            for data in reads:
                bound.check_head(data)
        return
    for data in reads:
        bound.check_head(data)


def test_reset_starts_a_new_message():
    bound = Boundary()
    bound.check_head(b"GET / HTTP/1.1\r\n")
    bound.blank_line(b"x\r\n\r")
    bound.reset()
    assert not bound.line_done and bound.blank_line(b"\n") == -1


@pytest.mark.parametrize("reads, refused", [
    ([b"GET /" + b"a" * 99 + b" HTTP/1.1\r\n"], False),              # a 100-byte target: the limit
    ([b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n"], True),
    ([b"GET /" + b"a" * 50, b"a" * 50 + b" HTTP/1.1\r\n"], True),     # split across reads
    ([b"GET /" + b"a" * 300], True),                                  # never ends: refused early
])
def test_request_target_limit_holds_across_reads(reads, refused):
    check_heads(Boundary(max_target=100), reads, URITooLong if refused else None)


@pytest.mark.parametrize("line", [
    b"GET / HTTP/1.1\r", b"GET / HTTP/1.0", b"GET / HTTP/1.1\r\r", b"GET / HTTP/1.1 \r",
    b"GET /HTTP/1.1\r", b"HTTP/1.1\r", b"GET / RTSP/1.0\r", b"GET / http/1.1\r", b"GET / HTTP\r",
    b"GET /a b HTTP/1.1\r", b"X\r", b"GET / HTTP/\r",
])
def test_check_head_agrees_with_protocol_ok(line):
    """check_head looks at the line in place; it refuses exactly what protocol_ok refuses."""
    bound = Boundary()
    if protocol_ok(line):
        bound.check_head(line + b"\n")
        assert bound.line_done
    else:
        with pytest.raises(BadRequest):
            bound.check_head(line + b"\n")
        assert not bound.line_done


@pytest.mark.parametrize("reads, refused", [
    ([b"GET / HTTP/1.1\r\n", b"A: b\r\n" * 10], False),        # 16 + 60 bytes: at the limit
    ([b"GET / HTTP/1.1\r\n", b"A: b\r\n" * 10, b"\r"], True),  # one past it, in any read
    ([b"GET / HTTP/1.1\r\nA: b\r\n" + b"A: b\r\n" * 9], False),
    ([b"G"] * 76, False),                                         # counted a byte at a time
    ([b"GET /" + b"a" * 80], True),                              # a request line alone
])
def test_head_size_counts_across_reads(reads, refused):
    bound = Boundary(max_target=100, max_head=76)
    feed_heads(bound, reads, HeaderFieldsTooLarge if refused else None)
    # Every byte fed is counted, the refused read's too (refused once past 76, not before).
    assert bound.size == sum(map(len, reads))
    assert (bound.size > 76) is refused
    if not refused:
        bound.reset()  # a message boundary: the next head counts from 0
        assert bound.size == 0


def test_a_request_line_past_its_limit_is_a_414_before_the_head_size_is_judged():
    bound = Boundary(max_target=100, max_head=120)
    with pytest.raises(URITooLong):
        bound.check_head(b"GET /" + b"a" * 200)


def test_trailer_bytes_count_from_the_last_read_that_gave_body_bytes():
    bound = Boundary(max_head=100)
    bound.check_tail(500, True)     # body bytes: nothing counts
    bound.check_tail(60, False)
    bound.check_tail(40, False)     # 100: at the limit
    bound.check_tail(1000, True)    # body bytes again: counting starts over
    bound.check_tail(100, False)
    with pytest.raises(HeaderFieldsTooLarge):
        bound.check_tail(1, False)


# An Upgrade or CONNECT head: (method, chunked, Transfer-Encoding field, Content-Length, whether
# the parser stopped at it, refused with).
HEAD_ONLY = [
    ("POST", False, True, "0", True, "Transfer-Encoding without chunked"),  # identity, gzip
    ("POST", False, True, "0", False, "Transfer-Encoding without chunked"),  # chunked<TAB>
    ("GET", True, True, "0", False, None),                              # chunked: framed, read
    ("GET", False, False, "0", True, None),                             # no body: an offer declined
    ("POST", False, False, "5", False, None),                           # a length frames it, read
    ("POST", False, False, "5", True, "Upgrade request with content"),  # ... but not read
    ("GET", True, True, "0", True, "Upgrade request with content"),
    ("CONNECT", False, False, "0", True, None),
    ("CONNECT", False, False, "10", True, "CONNECT request with content"),
    ("CONNECT", True, True, "0", True, "CONNECT request with content"),
    ("CONNECT", False, True, "0", True, "Transfer-Encoding without chunked"),
]


@pytest.mark.parametrize("method, chunked, te, length, stopped, refused", HEAD_ONLY)
def test_an_upgrade_or_connect_head_frames_its_body_or_is_refused(method, chunked, te, length,
                                                                    stopped, refused):
    if refused is None:
        check_head_only(method, chunked, te, length, stopped)
        return
    with pytest.raises(BadRequest, match=refused):
        check_head_only(method, chunked, te, length, stopped)
