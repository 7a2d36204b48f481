"""Framing end to end through real masters: no request assembled across a boundary, never a
second response inside the first, untrusted PROXY peers refused before their preamble.

- A read that continues a request head the parser still holds is never parsed as if it began
  a request: `GET /admin HTTP/1.1` sent after a partial head is a bad header line of that head
  (gunicorn: 400 and close), never a request for /admin (a front proxy forwarding those bytes
  sees one request for /b: an access-control bypass). Requests before the bad one are answered.
- wsgi.file_wrapper on a file that cannot be sent (text mode, write-only) is a clean 500 before
  any head; a binary file object that is not a regular file (GzipFile, BytesIO, a pipe) is read
  and sent; a failure on the loop once the head is out closes the connection, never a 500
  written after it.
- PROXY protocol: a peer outside proxy_allow_ips is refused once its signature is recognised,
  not after it sent (or failed to send) the whole preamble.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from server import Conn, Gunicorn, needs, proxy_modes

from robustness.conftest import WORKER_CONFIGS, worker_config
from robustness.robust_apps import WRAPPED_TEXT

pytestmark = pytest.mark.timeout(120)

HEAD_A = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
PARTIAL_B = b"GET /b HTTP/1.1\r\nHost: x\r\nX-Junk: 1\r\n"          # a head, not complete
CONTINUATION = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"            # its next "header" line
PIPELINED = (b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
             b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
             b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
PAUSE = 0.3         # seconds between sends: each arrives in a read of its own
SHORT_PAUSE = 0.03  # the same, for the many byte-boundary splits


class Served:
    """What the app was asked for: robust_apps records `METHOD RAW_URI` per call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def reset(self) -> None:
        self.path.write_text("")

    def lines(self) -> list[str]:
        return self.path.read_text(encoding="latin-1").splitlines()


@pytest.fixture(scope="module", params=WORKER_CONFIGS)
def srv(tmp_path_factory, request):
    """One master per worker configuration (conftest.WORKER_CONFIGS) for every framing case
    (router: /held waits for a file)."""
    base = tmp_path_factory.mktemp("framing")
    served, release = Served(base / "calls"), base / "release"
    release.mkdir()
    worker_class, args, env = worker_config(
        request.param, {"ROBUST_CALLS": str(served.path), "ROBUST_RELEASE": str(release)})
    server = Gunicorn("robustness.robust_apps:router", "--keep-alive", "30", *args, env=env,
                      worker_class=worker_class)
    yield server, served, release
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def exchange(server: Gunicorn, parts: list[bytes], pause: float,
             before_reading=None) -> list[tuple[int, dict[str, str]]]:
    """Send `parts` on one connection, `pause` seconds apart; read answers until it closes."""
    sock = server.connect(10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with Conn(sock, 10) as conn:
        for i, part in enumerate(parts):
            if i:
                time.sleep(pause)
            try:
                conn.send(part)
            except OSError:  # refused and closed already: read what came back
                break
        if before_reading is not None:
            before_reading()
        answers = []
        while True:
            try:
                status, headers, _body = conn.response()
            except ConnectionError:  # closed (EOF or reset) before another status line
                return answers
            answers.append((status, headers))


def assert_refused_after(answers: list, served: Served, expected: list[str], server: Gunicorn) -> None:
    """The requests before the bad bytes answered 200, then one 400 and the connection closed;
    the app saw exactly those requests and nothing assembled from the bytes after them."""
    assert [status for status, _ in answers] == [200] * len(expected) + [400], answers
    assert answers[-1][1]["connection"] == "close"
    assert served.lines() == expected
    assert "/admin" not in server.access()


@pytest.mark.parametrize("first", ["/a", "/held?name=running"], ids=["answered", "running"])
def test_continuation_of_a_partial_head_is_never_served_as_a_request(srv, first):
    """The issue's bytes: /a, a partial /b head, a pause, then `GET /admin ...`."""
    server, served, release = srv
    served.reset()
    (release / "running").unlink(missing_ok=True)  # /held answers only once the test says so
    head = HEAD_A.replace(b"/a", first.encode())
    answers = exchange(server, [head + PARTIAL_B, CONTINUATION], PAUSE,
                       before_reading=lambda: (release / "running").touch())
    assert_refused_after(answers, served, [f"GET {first}"], server)


def test_continuation_split_at_every_byte_is_never_served(srv):
    server, served, _release = srv
    for at in range(1, len(CONTINUATION)):
        served.reset()
        parts = [HEAD_A + PARTIAL_B, CONTINUATION[:at], CONTINUATION[at:]]
        answers = exchange(server, parts, SHORT_PAUSE)
        try:
            assert_refused_after(answers, served, ["GET /a"], server)
        except AssertionError as exc:
            raise AssertionError(f"continuation split after byte {at}: {exc}") from None


def test_pipelined_requests_before_a_partial_head_are_answered_and_the_rest_refused(srv):
    server, served, _release = srv
    served.reset()
    answers = exchange(server, [PIPELINED + PARTIAL_B, CONTINUATION], PAUSE)
    assert_refused_after(answers, served, ["GET /1", "POST /2", "GET /3"], server)


# -- wsgi.file_wrapper ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The asyncio worker (the one that uses sendfile) serving robust_apps.wrapped."""
    served = Served(tmp_path_factory.mktemp("files") / "calls")
    server = Gunicorn("robustness.robust_apps:wrapped", "--threads", "2",
                      env={"ROBUST_CALLS": str(served.path)})
    yield server
    server.stop()


def raw_get(server: Gunicorn, path: str) -> bytes:
    """Every byte the worker sends for one GET, up to its close."""
    with Conn.to(server) as conn:
        conn.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return conn.read_all()


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("path, reason", [("/text", "text mode"), ("/write-only", "not open for reading")])
def test_file_that_cannot_be_sent_is_one_clean_500(files, path, reason):
    data = raw_get(files, path)
    assert data.count(b"HTTP/1.1 ") == 1, data   # one response, nothing inside it
    assert status_of(data) == 500 and b"Internal Server Error" in data
    log = files.wait_log(f"Error handling request GET {path}")
    assert "Traceback (most recent call last)" in log and reason in log
    assert raw_get(files, "/binary").endswith(WRAPPED_TEXT)   # the worker goes on


@pytest.mark.parametrize("path", ["/gzip", "/bytesio", "/pipe", "/zip", "/binary"])
def test_binary_file_objects_are_sent_as_read_gives_them(files, path):
    with Conn.to(files) as conn:
        conn.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, _headers, body = conn.response()
        assert status == 200 and body == WRAPPED_TEXT   # a GzipFile: decompressed
        conn.send(b"GET /binary HTTP/1.1\r\nHost: x\r\n\r\n")  # and the connection goes on
        assert conn.response()[2] == WRAPPED_TEXT


def test_file_read_from_before_it_is_wrapped_is_sent_from_where_reading_stopped(files):
    """PEP 3333: the file's bytes as read() gives them, from its position (a buffered reader's
    descriptor is further on: it read ahead)."""
    with Conn.to(files) as conn:
        conn.send(b"GET /after-read HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _headers, body = conn.response()
    assert status == 200 and body == WRAPPED_TEXT[10:]


def test_failure_on_the_loop_after_the_head_closes_without_a_second_response(files):
    data = raw_get(files, "/loop-fails")
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(head) == 200 and data.count(b"HTTP/1.1 ") == 1, data
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    assert len(body) < length   # cut short: the client sees the failure
    log = files.wait_log("forced failure of the file on the loop")
    assert "Traceback (most recent call last)" in log
    assert raw_get(files, "/binary").endswith(WRAPPED_TEXT)


# -- PROXY protocol ---------------------------------------------------------------------------
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_LONGEST = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 0xFFFF) + b"abcd"


# gunicorn 24.1+ takes --proxy-protocol off|v1|v2|auto; before, it is a flag, which the worker
# takes as PROXY v1 only (as those releases did; tests/unit/test_compat.py): v2 needs the modes.
PROXY_ARGS = ["--proxy-protocol", "auto"] if proxy_modes() else ["--proxy-protocol"]
V2 = needs("proxy_modes")


@pytest.mark.parametrize("start, allowed", [
    pytest.param(V2_LONGEST, "192.0.2.1", marks=V2),  # announces 64 KiB and sends 4 bytes of it
    (b"PROXY TCP4 203.0.113.7", "192.0.2.1"),         # a v1 line without its end
    pytest.param(V2_SIGNATURE, "192.0.2.1", marks=V2),
], ids=["v2-64k", "v1-unfinished", "v2-signature-only"])
def test_untrusted_proxy_peer_is_refused_before_its_preamble_is_complete(start, allowed):
    """Refused long before header_timeout (30 s here), with the preamble still incomplete."""
    with Gunicorn("robustness.robust_apps:echo", *PROXY_ARGS,
                  "--proxy-allow-from", allowed, env={"AIOWSGI_HEADER_TIMEOUT": "30"}) as server:
        with Conn.to(server, timeout=5) as conn:
            conn.send(start)
            try:
                status, headers, _body = conn.response()
            except socket.timeout:
                raise AssertionError("the worker waited for the rest of the preamble") from None
            assert status == 403 and headers["connection"] == "close"
            assert conn.closed_by_peer(5)
        server.wait_log("Request forbidden")


@pytest.mark.parametrize("preamble", [
    b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 8000\r\n",
    pytest.param(V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12)
                 + bytes([203, 0, 113, 7, 127, 0, 0, 1]) + struct.pack("!HH", 4242, 8000), marks=V2),
], ids=["v1", "v2"])
def test_trusted_proxy_peer_sending_its_preamble_in_pieces_is_served(preamble):
    with Gunicorn("robustness.robust_apps:echo", *PROXY_ARGS,
                  "--proxy-allow-from", "127.0.0.1") as server:
        with Conn.to(server) as conn:
            for at in range(0, len(preamble), 5):
                conn.send(preamble[at:at + 5])
                time.sleep(SHORT_PAUSE)
            conn.send(b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _headers, body = conn.response()
            assert status == 200 and b'"REMOTE_ADDR": "203.0.113.7"' in body
