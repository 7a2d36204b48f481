"""The response side through a real master: start_response, streaming, framing, file_wrapper, errors."""

from __future__ import annotations

import functools
import itertools
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import server
from server import Conn, Gunicorn, read_mark, wait_until
from sysinfo import hwm_kib, rss_kib

pytestmark = pytest.mark.timeout(90)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def marks(tmp_path_factory):
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(scope="module")
def srv(marks):
    with Gunicorn("apps:checked", "--threads", "4", env={"AIOWSGI_TEST_MARKS": str(marks)}) as g:
        yield g


# Kept alive (no Connection: close): these tests look at how the worker ends each response.
get = functools.partial(server.get, close=False)


def test_hello_has_gunicorn_default_headers(srv):
    status, headers, body = get(srv, "/hello")
    assert status == 200 and body == b"Hello, world!\n"
    assert headers["server"] == "gunicorn"
    assert headers["date"].endswith("GMT")
    assert headers["connection"] == "keep-alive"
    assert headers["content-length"] == "14"


def test_streaming_events_arrive_as_produced(srv):
    with Conn.to(srv) as conn:
        conn.send(b"GET /stream?n=5&gap=0.5 HTTP/1.1\r\nHost: h\r\n\r\n")
        status_line = conn.readline()
        assert b"200" in status_line
        while conn.readline() not in (b"\r\n", b""):
            pass
        events = []  # (when the app produced it, by its own stamp; when it reached us)
        while len(events) < 5:
            size = int(conn.readline(), 16)
            data = conn.read(size)
            conn.readline()
            _, index, stamp = data.split()
            assert int(index) == len(events)
            events.append((float(stamp), time.time()))
        assert int(conn.readline(), 16) == 0
    # Each event reached the client before the app produced the next one: sent as yielded, not
    # held back for a burst. The app's stamps, not gaps measured here, so a slow client can
    # only make this fail when it is slower than the app's 0.5 s gap.
    for (_, arrived), (produced_next, _) in itertools.pairwise(events):
        assert arrived < produced_next, events


@pytest.mark.parametrize("query, framing, expect_body, expect_close", [
    ("declared=5&actual=5", "content-length", b"zzzzz", False),
    ("declared=5&actual=9", "content-length", b"zzzzz", False),  # the 4 extra bytes dropped
    ("declared=5&actual=9&gen=1", "content-length", b"zzzzz", False),
    ("actual=7&gen=1", "transfer-encoding", b"zzzzzzz", False),
    ("declared=5&actual=5&close=1", "content-length", b"zzzzz", True),  # the app said close
])
def test_framing_enforces_content_length(srv, query, framing, expect_body, expect_close):
    with Conn.to(srv) as conn:
        conn.send(f"GET /framing?{query} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        status, headers, body = conn.response()
        assert (status, body) == (200, expect_body)
        assert framing in headers
        assert headers["connection"] == ("close" if expect_close else "keep-alive")
        if expect_close:
            assert conn.closed_by_peer()
        else:
            # Nothing was sent past the body: the next response starts right after it.
            conn.send(b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n")
            assert conn.readline() == b"HTTP/1.1 200 OK\r\n"


def test_short_body_closes_connection(srv):
    with Conn.to(srv) as conn:
        conn.send(b"GET /framing?declared=10&actual=4&gen=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        status_line = conn.readline()
        assert b"200" in status_line
        data = conn.read_all()  # the server closes instead of leaving us waiting for 6 bytes
    assert data.endswith(b"\r\n\r\nzzzz")
    assert b"log" not in data


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


@pytest.mark.parametrize("when", ["before"])  # the other breaches: tests/unit/test_appcall.py
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


@pytest.mark.parametrize("query", ["kind=real", "kind=real&declared=1000",
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


def test_disconnect_mid_stream_closes_iterable_and_frees_thread(srv, marks):
    with Conn.to(srv) as conn:
        conn.send(b"GET /tracked?name=mid&chunks=100000&size=65536&gap=0 HTTP/1.1\r\nHost: h\r\n\r\n")
        conn.read(300_000)
    text = read_mark(marks / "mid", 10)
    assert text.startswith("closed after")
    assert int(text.split()[2]) < 100000
    # All four threads are free again: four slow requests sent at once all start before any
    # ends (with a thread still held, the fourth would start only after one had finished).
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: get(srv, "/slow?s=2&mark=four", timeout=30), range(4)))
    assert [a[0] for a in answers] == [200] * 4
    assert (marks / "four").read_text().splitlines() == ["started"] * 4 + ["done"] * 4


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


def chunks_before_stall(progress: Path) -> int:
    """How many chunks the app had handed over once it stopped (its progress mark unchanged for
    half a second: the app thread waits for the client)."""
    last = [-1]

    def stalled() -> int:
        count = len(progress.read_text().splitlines()) if progress.exists() else 0
        settled, last[0] = count == last[0] and count > 0, count
        return count if settled else 0

    return wait_until(stalled, 60, f"{progress.name} to stop growing", interval=0.5)


def test_write_buffer_bounds_how_far_the_app_runs_ahead_of_a_stalled_reader(gunicorn, tmp_path):
    """AIOWSGI_WRITE_BUFFER: facing a client that reads nothing, the app thread waits once about
    that much is in flight (at most 1.25 times it plus a chunk), beyond what the kernel's socket
    buffers hold; a larger setting lets it run that much further ahead."""
    kernel = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]) + 2 * 65536
    small, large = 256 * 1024, max(32 * MIB, 4 * kernel)
    chunk = 64 * 1024
    ahead = {}
    for write_buffer in (small, large):
        srv = gunicorn("apps:checked", env={"AIOWSGI_WRITE_BUFFER": str(write_buffer),
                                           "AIOWSGI_TEST_MARKS": str(tmp_path)})
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect
            sock.connect((srv.host, srv.port))
            sock.sendall(b"GET /tracked?name=wb%d&chunks=%d&size=%d&gap=0&progress=1 HTTP/1.1\r\n"
                         b"Host: h\r\n\r\n" % (write_buffer, (2 * large + kernel) // chunk, chunk))
            ahead[write_buffer] = chunks_before_stall(tmp_path / f"wb{write_buffer}.progress") * chunk
        srv.stop()
    # In the worker: the channel's credit and the transport's quarter of it, each overshot by at
    # most one chunk, and the chunk the app is handing over.
    assert ahead[small] <= small + small // 4 + 3 * chunk + kernel, ahead
    assert ahead[large] >= large, ahead


def test_a_stalled_reader_of_small_chunks_holds_about_the_write_buffer(gunicorn):
    """An event stream's small chunks to a client that reads nothing: each queued message's
    objects count in its credit, so the worker holds about AIOWSGI_WRITE_BUFFER (1.25 times it,
    said the README), not the ten times its bytes alone would let pile up."""
    kernel = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]) + 2 * 65536
    write_buffer = 2 * MIB
    srv = gunicorn("apps:router", env={"AIOWSGI_WRITE_BUFFER": str(write_buffer)})
    pid = srv.worker_pid()
    assert get(srv, "/tracked?chunks=1000&size=16&gap=0")[0] == 200  # warm: first-use memory
    base = rss_kib(pid)
    chunks = (kernel + 20 * write_buffer) // 16
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((srv.host, srv.port))
        sock.sendall(b"GET /tracked?chunks=%d&size=16&gap=0 HTTP/1.1\r\nHost: h\r\n\r\n" % chunks)
        samples: list[int] = []

        def settled() -> int:  # the app thread waits for the client: memory stops growing
            samples.append(rss_kib(pid))  # (the kernel's buffers fill first, for a second or so)
            recent = samples[-6:]
            return recent[-1] if len(samples) >= 8 and max(recent) - min(recent) < 64 else 0

        grown = wait_until(settled, 90, "the worker's memory to settle", interval=0.5) - base
    srv.stop()
    assert grown < 2 * write_buffer // 1024, (grown, write_buffer // 1024)  # and allocator slack


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


def test_a_file_that_shrinks_while_it_is_sent_ends_the_connection_not_the_response():
    """sendfile sends what the file still has: fewer bytes than the Content-Length said. The
    connection closes (and it is logged); the next response never follows inside that body."""
    with Gunicorn("apps:router", "--threads", "2") as srv:  # asyncio: the loop's sendfile
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(10)
        sock.connect((srv.host, srv.port))
        size = 50 * MIB
        sock.sendall(f"GET /files?size={size}&shrink=10000000 HTTP/1.1\r\nHost: x\r\n\r\n"
                     "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(1.0)  # not reading: the file is cut (at 0.5 s) while it is being sent
        data = bytearray()
        while chunk := sock.recv(1 << 20):
            data += chunk
        sock.close()
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert f"Content-Length: {size}".encode() in head
        assert len(body) < size and b"HTTP/1.1 " not in body
        srv.wait_log("the file shrank while it was sent")
        assert get(srv, "/hello")[0] == 200


def test_clients_leaving_before_their_file_is_sent_are_not_errors():
    """The loop's sendfile meets a closed socket: a client that went away (debug), never an
    error with a traceback; the app closes its file only once the loop is done with it."""
    with Gunicorn("apps:router", "--threads", "4") as srv:  # asyncio: the loop's sendfile
        for _ in range(10):
            sock = socket.create_connection((srv.host, srv.port))
            sock.sendall(b"GET /files?size=3145728&delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.close()  # gone while the app still prepares its file
        time.sleep(1.5)
        assert get(srv, "/hello")[0] == 200
        log = srv.log()
        assert "Error sending the response" not in log and "Traceback" not in log, log
