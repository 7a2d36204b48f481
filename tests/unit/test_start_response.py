"""The response state machine as tables: (method, status, version, length) -> framing, head, body; ResponsePhase steps."""

from __future__ import annotations

import sys

import pytest

from gunicorn_aiowsgi.errors import AppError
from gunicorn_aiowsgi.response import (
    BodyFramer,
    Framing,
    Head,
    ResponsePhase,
    StartResponse,
    framing,
    render_head,
)

LEN, CHUNKED, CLOSE, NONE = Framing.LENGTH, Framing.CHUNKED, Framing.CLOSE, Framing.NONE


def head_bytes(version: str, status: str, connection: str, *fields: str) -> bytes:
    """The head render_head must produce: gunicorn's order, Server, Date, Connection, then the rest."""
    lines = [f"HTTP/{version} {status}", "Server: s", "Date: d", f"Connection: {connection}", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


TE = "Transfer-Encoding: chunked"
APP = "X-App: 1"

# (method, status, version, the app's Content-Length) -> framing, head bytes, and b"hello" on the wire.
# keep-alive is the server's choice (Server.keep_alive); a close-delimited body never keeps it.
RESPONSES = {
    "get-1.1-no-length-is-chunked": (
        "GET", "200 OK", (1, 1), None, CHUNKED, True,
        head_bytes("1.1", "200 OK", "keep-alive", TE, APP), b"5\r\nhello\r\n", b"0\r\n\r\n", True),
    "get-1.1-length-is-length-delimited": (
        "GET", "200 OK", (1, 1), 5, LEN, True,
        head_bytes("1.1", "200 OK", "keep-alive", APP, "Content-Length: 5"), b"hello", b"", True),
    "get-1.1-length-0-drops-the-body": (
        "GET", "200 OK", (1, 1), 0, LEN, True,
        head_bytes("1.1", "200 OK", "keep-alive", APP, "Content-Length: 0"), b"", b"", True),
    "get-1.1-length-short-body-is-incomplete": (
        "GET", "200 OK", (1, 1), 9, LEN, True,
        head_bytes("1.1", "200 OK", "keep-alive", APP, "Content-Length: 9"), b"hello", b"", False),
    "get-1.1-length-long-body-is-truncated": (
        "GET", "200 OK", (1, 1), 3, LEN, True,
        head_bytes("1.1", "200 OK", "keep-alive", APP, "Content-Length: 3"), b"hel", b"", True),
    "get-1.0-no-length-is-close-delimited": (
        "GET", "200 OK", (1, 0), None, CLOSE, False,
        head_bytes("1.0", "200 OK", "close", APP), b"hello", b"", True),
    "get-1.0-length-is-length-delimited": (
        "GET", "200 OK", (1, 0), 5, LEN, True,
        head_bytes("1.0", "200 OK", "keep-alive", APP, "Content-Length: 5"), b"hello", b"", True),
    "post-201-1.1-no-length-is-chunked": (
        "POST", "201 Created", (1, 1), None, CHUNKED, True,
        head_bytes("1.1", "201 Created", "keep-alive", TE, APP), b"5\r\nhello\r\n", b"0\r\n\r\n", True),
    "error-500-1.0-is-close-delimited": (
        "GET", "500 Internal Server Error", (1, 0), None, CLOSE, False,
        head_bytes("1.0", "500 Internal Server Error", "close", APP), b"hello", b"", True),
    "head-no-length-has-no-body-and-no-chunking": (
        "HEAD", "200 OK", (1, 1), None, NONE, True,
        head_bytes("1.1", "200 OK", "keep-alive", APP), b"", b"", True),
    "head-keeps-the-apps-content-length": (
        "HEAD", "200 OK", (1, 1), 5, NONE, True,
        head_bytes("1.1", "200 OK", "keep-alive", APP, "Content-Length: 5"), b"", b"", True),
    "head-1.0-no-length-needs-no-close": (
        "HEAD", "200 OK", (1, 0), None, NONE, True,
        head_bytes("1.0", "200 OK", "keep-alive", APP), b"", b"", True),
    "204-has-no-body": (
        "GET", "204 No Content", (1, 1), None, NONE, True,
        head_bytes("1.1", "204 No Content", "keep-alive", APP), b"", b"", True),
    "204-drops-content-length": (
        "GET", "204 No Content", (1, 1), 0, NONE, True,
        head_bytes("1.1", "204 No Content", "keep-alive", APP), b"", b"", True),
    "304-has-no-body-and-keeps-content-length": (
        "GET", "304 Not Modified", (1, 1), 10, NONE, True,
        head_bytes("1.1", "304 Not Modified", "keep-alive", APP, "Content-Length: 10"), b"", b"", True),
    "304-1.0-no-length-needs-no-close": (
        "GET", "304 Not Modified", (1, 0), None, NONE, True,
        head_bytes("1.0", "304 Not Modified", "keep-alive", APP), b"", b"", True),
    "1xx-has-no-body-and-no-content-length": (
        "GET", "103 Early Hints", (1, 1), 4, NONE, True,
        head_bytes("1.1", "103 Early Hints", "keep-alive", APP), b"", b"", True),
}


@pytest.mark.parametrize("method, status, version, length, mode, keep, head, wire, tail, complete",
                         RESPONSES.values(), ids=RESPONSES.keys())
def test_framing_head_and_body(method, status, version, length, mode, keep, head, wire, tail, complete):
    code = int(status[:3])
    assert framing(method, code, version, length) is mode
    assert render_head(version, Head(status, code, [("X-App", "1")], length, False), mode, keep, "s", "d") == head
    framer = BodyFramer(mode, length)
    assert framer.frame(b"hello") == wire
    assert framer.finish() == (tail, complete)


def test_connection_close_from_the_server_is_rendered():
    head = Head("200 OK", 200, [], 2, True)
    assert render_head((1, 1), head, LEN, False, "s", "d") == head_bytes("1.1", "200 OK", "close",
                                                                          "Content-Length: 2")


def test_app_headers_keep_their_order_and_repeats_between_connection_and_length():
    head = Head("200 OK", 200, [("Set-Cookie", "a=1"), ("X", "2"), ("Set-Cookie", "b=2")], 0, False)
    assert render_head((1, 1), head, LEN, True, "s", "d") == head_bytes(
        "1.1", "200 OK", "keep-alive", "Set-Cookie: a=1", "X: 2", "Set-Cookie: b=2", "Content-Length: 0")


# -- StartResponse phases (PEP 3333 "the start_response() Callable") -----------------------------

class AppFailure(Exception):
    """The app's own error, handed to start_response as exc_info."""


def step(start: StartResponse, name: str):
    """One thing that can happen to a response: a start_response call, or the head going out."""
    if name == "start":
        return start("200 OK", [("A", "1")])
    if name == "sent":  # AppCall._begin: the head went to the loop
        start.phase = ResponsePhase.SENT
        return None
    try:
        raise AppFailure(name)
    except AppFailure:
        if name == "start-exc":
            return start("500 Oops", [("B", "2")], sys.exc_info())
        if name == "bad-status":
            return start("20 OK", [])
        if name == "bad-exc":
            return start("20 OK", [], sys.exc_info())
    raise AssertionError(name)


OK = "ok"
PHASES = {
    "new-response-has-not-started": ([], [], ResponsePhase.NOT_STARTED, None),
    "first-call-starts-it": (["start"], [OK], ResponsePhase.STARTED, "200 OK"),
    "first-call-may-carry-exc-info": (["start-exc"], [OK], ResponsePhase.STARTED, "500 Oops"),
    "second-call-without-exc-info-is-an-error-and-keeps-the-first": (
        ["start", "start"], [OK, AppError], ResponsePhase.STARTED, "200 OK"),
    "second-call-with-exc-info-before-sent-replaces": (
        ["start", "start-exc"], [OK, OK], ResponsePhase.STARTED, "500 Oops"),
    "replacement-may-be-repeated-with-exc-info": (
        ["start", "start-exc", "start-exc"], [OK, OK, OK], ResponsePhase.STARTED, "500 Oops"),
    "call-without-exc-info-after-a-replacement-is-an-error": (
        ["start-exc", "start"], [OK, AppError], ResponsePhase.STARTED, "500 Oops"),
    "exc-info-after-sent-reraises-the-apps-error": (
        ["start", "sent", "start-exc"], [OK, OK, AppFailure], ResponsePhase.SENT, "200 OK"),
    "call-without-exc-info-after-sent-is-an-error": (
        ["start", "sent", "start"], [OK, OK, AppError], ResponsePhase.SENT, "200 OK"),
    "bad-status-leaves-it-not-started": (["bad-status"], [AppError], ResponsePhase.NOT_STARTED, None),
    "bad-replacement-keeps-the-first-head": (["start", "bad-exc"], [OK, AppError], ResponsePhase.STARTED, "200 OK"),
}


@pytest.mark.parametrize("steps, outcomes, phase, status", PHASES.values(), ids=PHASES.keys())
def test_start_response_phases(steps, outcomes, phase, status):
    written = []
    start = StartResponse("GET", written.append)
    got = []
    for name in steps:
        try:
            result = step(start, name)
        except (AppError, AppFailure) as exc:
            got.append(type(exc))
        else:
            assert result is None or result == written.append, "start_response must return write"
            got.append(OK)
    assert got == outcomes
    assert start.phase is phase
    assert (start.head.status if start.head else None) == status


def test_exc_info_after_sent_reraises_the_same_exception_with_its_traceback():
    start = StartResponse("GET", lambda data: None)
    start("200 OK", [])
    start.phase = ResponsePhase.SENT
    try:
        raise AppFailure("late")
    except AppFailure:
        info = sys.exc_info()
        with pytest.raises(AppFailure) as raised:
            start("500 Oops", [], info)
    assert raised.value is info[1]
    chain, tb = [], raised.value.__traceback__
    while tb is not None:
        chain.append(tb)
        tb = tb.tb_next
    assert info[2] in chain, "the app's own traceback was lost"
