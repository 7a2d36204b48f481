"""The response side through a real master: start_response, streaming, framing, file_wrapper, errors."""

from __future__ import annotations

import os
import socket
import time

import pytest
from server import Conn, Gunicorn, hwm_kib, request, rss_kib

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def marks(tmp_path_factory):
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def srv(marks):
    with Gunicorn("apps:checked", "--threads", "4", env={"AIOWSGI_TEST_MARKS": str(marks)}) as g:
        yield g


def get(srv, path, method="GET", version="1.1"):
    data = f"{method} {path} HTTP/{version}\r\nHost: h\r\n\r\n".encode()
    return request(srv, data, head=(method == "HEAD"))


def test_hello_has_gunicorn_default_headers(srv):
    status, headers, body = get(srv, "/hello")
    assert status == 200 and body == b"Hello, world!\n"
    assert headers["server"] == "gunicorn"
    assert headers["date"].endswith("GMT")
    assert headers["connection"] == "keep-alive"
    assert headers["content-length"] == "14"


def test_streaming_events_arrive_spread_out(srv):
    with Conn.to(srv) as conn:
        conn.send(b"GET /stream?n=5&gap=0.3 HTTP/1.1\r\nHost: h\r\n\r\n")
        status_line = conn.readline()
        assert b"200" in status_line
        while conn.readline() not in (b"\r\n", b""):
            pass
        arrivals = []
        while len(arrivals) < 5:
            size = int(conn.readline(), 16)
            data = conn.read(size)
            conn.readline()
            assert data.startswith(b"data: %d " % len(arrivals))
            arrivals.append(time.monotonic())
        assert int(conn.readline(), 16) == 0
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) > 0.15, gaps  # each event as produced, not one burst at the end


def test_write_callable_then_iterable(srv):
    status, headers, body = get(srv, "/writer")
    assert status == 200 and body == b"one,two,three"
    assert headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("query, expect_body, expect_close", [
    ("declared=5&actual=5", b"zzzzz", False),
    ("declared=5&actual=9", b"zzzzz", False),         # extra bytes dropped
    ("declared=5&actual=9&gen=1", b"zzzzz", False),
    ("actual=7&gen=1", b"zzzzzzz", False),            # chunked
])
def test_framing_enforces_content_length(srv, query, expect_body, expect_close):
    status, headers, body = get(srv, f"/framing?{query}")
    assert body == expect_body
    assert (headers["connection"] == "close") == expect_close


def test_short_body_closes_connection(srv):
    with Conn.to(srv) as conn:
        conn.send(b"GET /framing?declared=10&actual=4&gen=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        status_line = conn.readline()
        assert b"200" in status_line
        data = conn.read_all()  # the server closes instead of leaving us waiting for 6 bytes
    assert data.endswith(b"\r\n\r\nzzzz")
    assert b"log" not in data


def test_short_body_is_logged(srv):
    get(srv, "/framing?declared=10&actual=3&gen=1")
    srv.wait_log("fewer bytes than its Content-Length")


def test_http10_without_length_is_close_delimited(srv):
    status, headers, body = get(srv, "/framing?actual=6&gen=1", version="1.0")
    assert headers["connection"] == "close"
    assert "transfer-encoding" not in headers and "content-length" not in headers
    assert body == b"zzzzzz"


@pytest.mark.parametrize("path, method", [
    ("/status?code=200", "HEAD"), ("/status?code=204", "GET"), ("/status?code=304", "GET"),
])
def test_no_body_responses(srv, path, method):
    with Conn.to(srv) as conn:
        conn.send(f"{method} {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        status, headers, body = conn.response(head=True)
        assert body == b""
        if path.endswith("204"):
            assert "content-length" not in headers
        assert "transfer-encoding" not in headers
        # The connection is still in sync: the next response parses.
        conn.send(b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n")
        assert conn.response()[2] == b"Hello, world!\n"


@pytest.mark.parametrize("which", ["crlf", "nul", "name", "status"])
def test_bad_header_is_500_not_split(srv, which):
    status, headers, body = get(srv, f"/bad_header?which={which}")
    assert status == 500
    assert "x-bad" not in headers and "set-cookie" not in headers
    assert b"should not be sent" not in body


@pytest.mark.parametrize("when", ["before", "none", "nonlist", "str", "twice", "never"])
def test_app_errors_before_headers_give_500(srv, when):
    status, headers, body = get(srv, f"/fail?when={when}")
    assert status == 500
    assert b"Internal Server Error" in body
    assert get(srv, "/hello")[0] == 200  # still serving


def test_app_error_is_logged_with_traceback(srv):
    get(srv, "/fail?when=before")
    log = srv.wait_log("boom before headers")
    assert "Error handling request GET /fail?when=before" in log
    assert "Traceback (most recent call last)" in log


def test_app_error_after_headers_closes_connection(srv):
    with Conn.to(srv) as conn:
        conn.send(b"GET /fail?when=after HTTP/1.1\r\nHost: h\r\n\r\n")
        data = conn.read_all()
    assert b"200 OK" in data and b"first chunk" in data
    assert not data.endswith(b"0\r\n\r\n")  # no clean end: the client sees the failure
    srv.wait_log("boom after headers")


def test_exc_info_replaces_headers_before_sent(srv):
    status, headers, body = get(srv, "/fail?when=exc_info")
    assert status == 500 and "x-second" in headers and "x-first" not in headers
    assert body == b"replaced body"


def test_exc_info_after_sent_reraises(srv):
    with Conn.to(srv) as conn:
        conn.send(b"GET /fail?when=exc_info_late HTTP/1.1\r\nHost: h\r\n\r\n")
        data = conn.read_all()
    assert b"partial" in data and b"never" not in data
    srv.wait_log("too late")


@pytest.mark.parametrize("query", ["kind=real", "kind=bytesio", "kind=real&declared=1000",
                                   "kind=real&offset=100", "kind=real&size=0"])
def test_file_wrapper(srv, query):
    params = dict(p.split("=") for p in query.split("&"))
    size = int(params.get("size", 3 * 1024 * 1024))
    data = bytes(range(256)) * (size // 256) + b"e" * (size % 256)
    data = data[int(params.get("offset", 0)):]
    if "declared" in params:
        data = data[:int(params["declared"])]
    status, headers, body = get(srv, f"/files?{query}")
    assert status == 200
    assert body == data


def read_mark(path, timeout: float) -> str:
    """A mark's text once a whole line is in: the app's open(..., "a") creates the file
    before its write lands."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            break
        time.sleep(0.02)
    return path.read_text()


def test_disconnect_mid_stream_closes_iterable_and_frees_thread(srv, marks):
    with Conn.to(srv) as conn:
        conn.send(b"GET /tracked?name=mid&chunks=100000&size=65536&gap=0 HTTP/1.1\r\nHost: h\r\n\r\n")
        conn.read(300_000)
    text = read_mark(marks / "mid", 10)
    assert text.startswith("closed after")
    assert int(text.split()[2]) < 100000
    # All four threads are free again: four slow requests at once all complete.
    for _ in range(5):
        assert get(srv, "/hello")[0] == 200


def test_iterable_closed_exactly_once_on_success(srv, marks):
    status, _, body = get(srv, "/tracked?name=ok&chunks=3&size=10&gap=0")
    assert body == b"y" * 30
    lines = read_mark(marks / "ok", 5).splitlines()
    assert lines == [lines[0]] and lines[0].startswith("closed after 3 thread=aiowsgi-")


def test_large_stream_to_slow_reader_keeps_memory_bounded(srv):
    pid = srv.worker_pid()
    base = rss_kib(pid)
    with Conn.to(srv, timeout=30) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn.send(b"GET /big?mib=256 HTTP/1.1\r\nHost: h\r\n\r\n")
        got = 0
        peak = base
        while got < 256 * 1024 * 1024:
            data = conn.sock.recv(1 << 20)
            if not data:
                break
            got += len(data)
            if got % (16 << 20) < len(data):
                peak = max(peak, rss_kib(pid))
                time.sleep(0.01)  # a slow reader
    assert got > 256 * 1024 * 1024
    assert peak - base < 32 * 1024, (base, peak)


def test_large_upload_keeps_memory_bounded(srv):
    pid = srv.worker_pid()
    before = hwm_kib(pid)
    size = 200 * 1024 * 1024
    with Conn.to(srv, timeout=60) as conn:
        conn.send(b"POST /body?how=count HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = os.urandom(1 << 20)
        for _ in range(size >> 20):
            conn.send(chunk)
        status, _, body = conn.response()
    assert status == 200 and b'"len": %d' % size in body
    # The body spooled to disk: memory grew by far less than its size.
    assert hwm_kib(pid) - before < 48 * 1024
