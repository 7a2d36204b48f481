"""TLS connections the worker closes (idle, after a response that closes them, an error page or
a response cut short): given up once everything sent has reached the client, not held for the
close_notify a client that does not read never sends (asyncio waits 30 s for it; gthread just
closes). Real masters, real TLS clients (Python's ssl).
"""

from __future__ import annotations

import hashlib
import select
import signal
import socket
import ssl
import time
from typing import Any

import pytest
import trustme
from server import Conn, Gunicorn, wait_until

from .helpers import tls_serve

pytestmark = pytest.mark.timeout(120)

WORKERS = ["gunicorn_aiowsgi.Worker", "gunicorn_aiowsgi.UVLoopWorker"]
# Failure detection, and below asyncio's 30 s wait for a close_notify (SSL_SHUTDOWN_TIMEOUT): a
# client answered at all within it was not kept waiting for that wait to run out (seconds).
BEFORE_ASYNCIOS_WAIT = 20.0
# A graceful stop's own limit: its drain (18 s of it) ends before asyncio's 30 s wait would.
GRACEFUL = "20"
MIB = 1 << 20
# The slow reader's pace: this many bytes, then a pause this long (seconds): about 5 MB/s, so a
# 24 MiB response takes 5 s, well past keep-alive (1 s) and the worker's two looks (2 s).
SLOW_READ, SLOW_PAUSE = 128 * 1024, 0.025


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(tmp / "server.pem"))
    return {"ca": ca, "server": str(tmp / "server.pem")}


def tls_connect(g: Gunicorn, pki: dict[str, Any], timeout: float = 10.0) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    pki["ca"].configure_trust(context)
    return context.wrap_socket(socket.create_connection((g.host, g.port), timeout=timeout),
                               server_hostname="127.0.0.1")


def pooled(g: Gunicorn, pki: dict[str, Any]) -> ssl.SSLSocket:
    """A pooled client's connection: one request answered and kept alive, then never read again
    (an HTTP client's pool between requests)."""
    sock = tls_connect(g, pki)
    conn = Conn(sock)
    conn.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, _ = conn.response()
    assert status == 200 and not conn.buf and headers.get("connection") != "close"
    return sock


def unread_from_server(sock: ssl.SSLSocket) -> bool:
    """The server sent something (its close_notify, its FIN) that this client has not read:
    the client kept its socket open and never looked at it."""
    return sock.pending() == 0 and bool(select.select([sock], [], [], 0)[0])


@pytest.mark.parametrize("worker_class", WORKERS)
def test_idle_tls_clients_that_never_read_give_way_and_do_not_hold_a_stop(pki, worker_class):
    # The reviewer's case: worker_connections 2, both held by idle pooled clients; a third
    # client waited for asyncio's 30 s close_notify wait, and a graceful stop 27 s.
    with tls_serve("--certfile", pki["server"], "--keyfile", pki["server"], "--keep-alive", "2",
                   "--worker-connections", "2", "--graceful-timeout", GRACEFUL, app="apps:router",
                   worker_class=worker_class, loglevel="debug") as g:
        idle = [pooled(g, pki), pooled(g, pki)]
        with Conn(tls_connect(g, pki, BEFORE_ASYNCIOS_WAIT), BEFORE_ASYNCIOS_WAIT) as third:
            third.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert third.response()[0] == 200
        # Answered while both idle clients hold their sockets open, never read: the worker
        # closed theirs (its close_notify and FIN wait there, unread) without their answer.
        wait_until(lambda: all(unread_from_server(sock) for sock in idle), BEFORE_ASYNCIOS_WAIT,
                   "the worker's close of both idle connections")
        last = pooled(g, pki)
        g.signal(signal.SIGTERM)
        assert g.wait(BEFORE_ASYNCIOS_WAIT + 10) == 0
        log = g.log()
        assert unread_from_server(last)
        assert "connections at exit" not in log  # the drain ended as its last connection closed
        assert log.count("no TLS close_notify from the client") >= 3
        for sock in (*idle, last):
            sock.close()


# What a client reads before it falls silent, and how the answer ends: each is followed by the
# worker's close_notify. The cut-short one is chunked: what the client has of it ends mid-body.
CLOSED_AFTER = {
    "a closing answer": (b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                         b"HTTP/1.1 200 ", b"\r\n\r\nHello, world!\n"),
    "an error page": (b"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
                      b"HTTP/1.1 400 ", b"</html>\n"),
    "a response cut short": (b"GET /fail?when=after HTTP/1.1\r\nHost: t\r\n\r\n",
                             b"HTTP/1.1 200 ", b"first chunk\r\n"),
}


@pytest.mark.parametrize("fate", CLOSED_AFTER)
@pytest.mark.parametrize("worker_class", WORKERS)
def test_a_tls_client_that_read_its_last_answer_and_stays_silent_gives_way(pki, worker_class,
                                                                         fate):
    # A client that has read what the worker sent before closing, and keeps its socket without
    # a word (no close_notify, no FIN), held the connection, and worker_connections' only slot,
    # for asyncio's 30 s wait.
    request, status, end = CLOSED_AFTER[fate]
    with tls_serve("--certfile", pki["server"], "--keyfile", pki["server"],
                   "--worker-connections", "1", app="apps:router", worker_class=worker_class,
                   loglevel="debug") as g:
        silent = tls_connect(g, pki)
        silent.sendall(request)
        answer = b""
        while not answer.endswith(end):  # no further: the close_notify after it stays unread
            chunk = silent.recv(4096)
            assert chunk, f"closed before the end of the answer: {answer!r}"
            answer += chunk
        assert answer.startswith(status), answer
        with Conn(tls_connect(g, pki, BEFORE_ASYNCIOS_WAIT), BEFORE_ASYNCIOS_WAIT) as second:
            second.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert second.response()[0] == 200
        assert unread_from_server(silent)  # its close_notify and FIN wait there, unread
        assert "no TLS close_notify from the client" in g.log()
        silent.close()


@pytest.mark.parametrize("worker_class", WORKERS)
def test_a_slow_tls_reader_gets_a_large_response_whole_though_its_connection_went_idle(
        pki, worker_class):
    # The reason an earlier shortening of asyncio's close_notify wait was reverted: it cut off
    # the end of responses a slow client was still reading. Here keep-alive (1 s) closes the
    # connection long before the client has read the response: its bytes are in the TLS
    # layer, the loop's socket buffer and the kernel's, and the worker must wait for them all.
    size = 24 * MIB
    with tls_serve("--certfile", pki["server"], "--keyfile", pki["server"], "--keep-alive", "1",
                   app="apps:router", worker_class=worker_class, loglevel="debug",
                   env={"AIOWSGI_WRITE_BUFFER": str(2 * MIB)}) as g:
        sock = tls_connect(g, pki, timeout=30)
        conn = Conn(sock, 30)
        conn.send(f"GET /big?mib={size // MIB}&length=1 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        status, headers, body = slow_response(conn, sock)
        assert status == 200 and int(headers["content-length"]) == size
        assert len(body) == size and hashlib.sha256(body).digest() == hashlib.sha256(
            b"x" * size).digest()
        # Its close_notify left unread: the worker lets the connection go, by the path that
        # waited for every byte to reach the client.
        g.wait_log("no TLS close_notify from the client", BEFORE_ASYNCIOS_WAIT)
        sock.close()


def slow_response(conn: Conn, sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """Read one response SLOW_READ bytes at a time, each after a SLOW_PAUSE: a slow reader (a
    mobile client, about 5 MB/s), far slower than the worker writes (the pauses are its pace,
    not a wait for the worker)."""
    line = conn.readline()
    headers = {}
    while (header := conn.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body, size = bytearray(conn.buf), int(headers["content-length"])
    while len(body) < size:
        time.sleep(SLOW_PAUSE)
        goal = min(size, len(body) + SLOW_READ)
        while len(body) < goal:
            chunk = sock.recv(goal - len(body))
            if not chunk:
                return int(line.split()[1]), headers, bytes(body)
            body += chunk
    return int(line.split()[1]), headers, bytes(body)
