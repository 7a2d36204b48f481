"""Table-driven cases for the pure response core: start_response, headers, framing, head rendering."""

from __future__ import annotations

import sys

import pytest
from gunicorn.util import hop_headers

from gunicorn_aiowsgi.errors import AppError
from gunicorn_aiowsgi.response import (
    HOP_BY_HOP,
    BodyFramer,
    Framing,
    Head,
    ResponsePhase,
    StartResponse,
    check_headers,
    check_status,
    framing,
    render_head,
)


@pytest.mark.parametrize("status, code", [("200 OK", 200), ("404 Not Found", 404), ("599", 599),
                                          ("200 ", 200), ("201 Caf\xe9", 201)])
def test_good_status(status, code):
    assert check_status(status) == code


@pytest.mark.parametrize("status", ["20 OK", "2000 OK", "OK", b"200 OK", "200 OK\r\nX: y", "200\tOK", 200,
                                    # interim statuses are never a final answer (RFC 9110 15.2)
                                    "100 Continue", "101 Switching Protocols", "103 Early Hints",
                                    "099 Odd", "000 X"])
def test_bad_status(status):
    with pytest.raises(AppError):
        check_status(status)


@pytest.mark.parametrize("headers, kept, length, close", [
    ([("Content-Type", "text/plain")], [("Content-Type", "text/plain")], None, False),
    ([("Content-Length", "12")], [], 12, False),
    ([("Connection", "close"), ("X", "1")], [("X", "1")], None, True),
    ([("Connection", "keep-alive, Close")], [], None, True),
    ([("Connection", "x-closed-loop"), ("Connection", "enclosed")], [], None, False),
    ([("Transfer-Encoding", "chunked")], [], None, False),
    ([("Keep-Alive", "timeout=5"), ("Upgrade", "h2c")], [], None, False),
    ([("X-Pad", "  v  ")], [("X-Pad", "v")], None, False),
    ([("Content-Length", "3"), ("Content-Length", "3")], [], 3, False),
    # the server sends its own (render_head): a second copy would repeat a singleton field
    ([("Server", "upstream/1.0"), ("Date", "Mon, 01 Jan 2001 00:00:00 GMT"), ("X", "1")],
     [("X", "1")], None, False),
    ([("server", "a"), ("DATE", "b")], [], None, False),
    # PEP 3333 asks for a list of tuples; gunicorn takes any sequence of pairs, and so do we
    ((("X", "1"),), [("X", "1")], None, False),
    ([["X", "1"], ["Content-Length", "2"]], [("X", "1")], 2, False),
])
def test_check_headers(headers, kept, length, close):
    assert check_headers(headers) == (kept, length, close)


@pytest.mark.parametrize("headers", [
    [("X", "a\r\nb")], [("X", "a\nb")], [("X", "a\x00")], [("Bad Name", "v")], [("", "v")],
    [("X", 1)], [(b"X", "v")], [("X", "v", "w")], {"X": "v"}, "X: v", [["X"]], ["Xv"],
    [("Content-Length", "-1")], [("Content-Length", "abc")], [("Content-Length", "1"), ("Content-Length", "2")],
    # digits to str.isdigit() but not to RFC 9110 section 8.6 (1*DIGIT, ASCII only)
    [("Content-Length", "\u00b2")], [("Content-Length", "\u0663")], [("Content-Length", "1\u00b9")],
])
def test_bad_headers(headers):
    with pytest.raises(AppError):
        check_headers(headers)


@pytest.mark.parametrize("method, code, version, length, mode", [
    ("GET", 200, (1, 1), None, Framing.CHUNKED),
    ("GET", 200, (1, 1), 5, Framing.LENGTH),
    ("GET", 200, (1, 0), None, Framing.CLOSE),
    ("GET", 200, (1, 0), 5, Framing.LENGTH),
    ("HEAD", 200, (1, 1), None, Framing.NONE),
    ("GET", 204, (1, 1), None, Framing.NONE),
    ("GET", 304, (1, 1), 10, Framing.NONE),
    ("GET", 101, (1, 1), None, Framing.NONE),
])
def test_framing(method, code, version, length, mode):
    assert framing(method, code, version, length) is mode


@pytest.mark.parametrize("mode, length, chunks, wire, sent, overflow, complete", [
    (Framing.LENGTH, 5, [b"ab", b"cde"], [b"ab", b"cde"], 5, 0, True),
    (Framing.LENGTH, 5, [b"abcdefg"], [b"abcde"], 5, 2, True),
    (Framing.LENGTH, 5, [b"ab"], [b"ab"], 2, 0, False),
    (Framing.LENGTH, 2, [b"ab", b"cd"], [b"ab", b""], 2, 2, True),
    (Framing.CHUNKED, None, [b"ab", b"", b"c" * 16], [b"2\r\nab\r\n", b"", b"10\r\n" + b"c" * 16 + b"\r\n"],
     18, 0, True),
    (Framing.CLOSE, None, [b"ab"], [b"ab"], 2, 0, True),
    (Framing.NONE, None, [b"ab"], [b""], 0, 0, True),
])
def test_body_framer(mode, length, chunks, wire, sent, overflow, complete):
    framer = BodyFramer(mode, length)
    assert [framer.frame(c) for c in chunks] == wire
    tail, done = framer.finish()
    assert (framer.sent, framer.overflow, done) == (sent, overflow, complete)
    assert tail == (b"0\r\n\r\n" if mode is Framing.CHUNKED else b"")


@pytest.mark.parametrize("head, mode, keep, expect", [
    (Head("200 OK", 200, [("X", "1")], 3, False), Framing.LENGTH, True,
     b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d\r\nConnection: keep-alive\r\nX: 1\r\nContent-Length: 3\r\n\r\n"),
    (Head("200 OK", 200, [], None, False), Framing.CHUNKED, False,
     b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"),
    (Head("204 No Content", 204, [], 0, False), Framing.NONE, True,
     b"HTTP/1.1 204 No Content\r\nServer: s\r\nDate: d\r\nConnection: keep-alive\r\n\r\n"),
    (Head("200 Caf\xe9", 200, [("X-L", "\xe9")], None, False), Framing.NONE, True,
     b"HTTP/1.1 200 Caf\xe9\r\nServer: s\r\nDate: d\r\nConnection: keep-alive\r\nX-L: \xe9\r\n\r\n"),
])
def test_render_head(head, mode, keep, expect):
    assert render_head((1, 1), head, mode, keep, "s", "d") == expect


def test_start_response_states():
    writes = []
    start = StartResponse("GET", writes.append)
    assert start.phase is ResponsePhase.NOT_STARTED
    write = start("200 OK", [("A", "1")])
    assert write == writes.append and start.phase is ResponsePhase.STARTED
    with pytest.raises(AppError):
        start("200 OK", [])  # a second call without exc_info
    try:
        raise ValueError("x")
    except ValueError:
        start("500 Oops", [("B", "2")], sys.exc_info())  # replaces, headers not sent yet
    assert start.head is not None and start.head.status == "500 Oops"
    start.phase = ResponsePhase.SENT
    try:
        raise KeyError("late")
    except KeyError:
        with pytest.raises(KeyError):
            start("500 Oops", [], sys.exc_info())  # too late: re-raised (PEP 3333)


class Text(str):
    """A str subclass: checked every time, never kept in the caches."""


@pytest.mark.parametrize("repeat", [1, 2, 3])
def test_checks_are_the_same_whether_seen_before_or_not(repeat):
    """Statuses and header names are cached once checked: the second and third look give what
    the first gave, and what was refused is refused again (never cached)."""
    assert check_status("200 OK") == 200 and check_status(Text("201 Created")) == 201
    assert check_headers([("X-Seen", "v"), (Text("X-Sub"), "w")]) == (
        [("X-Seen", "v"), ("X-Sub", "w")], None, False)
    assert check_headers([("X-Pad", " v\t"), ("Connection", "close"), ("Content-Length", "3")]) == (
        [("X-Pad", "v")], 3, True)
    for status in ("20 OK", "200 OK\r\nX: y"):
        with pytest.raises(AppError):
            check_status(status)
    for headers in ([("Bad Name", "v")], [("X-Seen", "a\r\nb")], [("X-Seen", "\x7f")],
                    [("X-Seen", ["v"])], [["X-Seen"]], [("X-Seen", "v", "w")]):
        with pytest.raises(AppError):
            check_headers(headers)


def test_caches_are_bounded(monkeypatch):
    from gunicorn_aiowsgi import response
    monkeypatch.setattr(response, "_NAMES", {})
    monkeypatch.setattr(response, "_STATUSES", {})
    for n in range(response.CHECKED_CACHE_SIZE + 10):
        check_headers([(f"X-{n}", "v"), ("Content-Length", str(n))])
        check_status(f"200 Ok {n}")
    assert len(response._NAMES) == len(response._STATUSES) == response.CHECKED_CACHE_SIZE
    assert response._NAMES["X-0"] == ""  # passed on as it is
    assert response._NAMES["Content-Length"] == "content-length"  # the server's own


@pytest.mark.parametrize("value, ok", [("plain ascii ~", True), ("tab\there", True),
                                       ("caf\xe9 \x80\xff", True), ("\u20ac", False),
                                       ("del\x7f", False), ("nul\x00", False)])
def test_header_values_past_the_printable_ascii_fast_path(value, ok):
    if ok:
        assert check_headers([("X", value)])[0] == [("X", value.strip(" \t"))]
    else:
        with pytest.raises(AppError):
            check_headers([("X", value)])


@pytest.mark.parametrize("version, start", [((1, 1), b"HTTP/1.1 "), ((1, 0), b"HTTP/1.0 "), ((2, 0), b"HTTP/2.0 ")])
def test_render_head_status_line_for_any_version(version, start):
    """1.0 and 1.1 come from a table; any other version is formatted as before."""
    head = Head("200 OK", 200, [], None, False)
    assert render_head(version, head, Framing.NONE, True, "s", "d") == (
        start + b"200 OK\r\nServer: s\r\nDate: d\r\nConnection: keep-alive\r\n\r\n")


def test_every_field_gunicorn_drops_from_an_apps_headers_is_dropped():
    assert hop_headers <= HOP_BY_HOP
