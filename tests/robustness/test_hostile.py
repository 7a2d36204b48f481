"""Hostile and unlucky clients against one worker with few threads.

slowloris heads and stalled uploads are held by the loop, never by a thread, and closed after
AIOWSGI_HEADER_TIMEOUT (whole head) and AIOWSGI_BODY_TIMEOUT (no body byte for that long);
thousands of idle keep-alive connections cost little; a vanished client frees its thread,
closes the app's iterable and leaves no descriptor or temp file behind; a slow reader holds a
bounded buffer; past worker_connections new clients wait in the backlog, until a
connection is idle after its request and gives way.
"""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest
from server import (
    Conn,
    Usage,
    abort,
    close_all,
    closed_by_server,
    connect_many,
    get,
    settle,
    socket_count,
    temp_files,
    wait_until,
)
from sysinfo import rss_kib, thread_count

from gunicorn_aiowsgi.settings import Settings

pytestmark = pytest.mark.timeout(120)

HEADER_TIMEOUT, BODY_TIMEOUT = 2.0, 3.0
LORIS_HEAD = b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: "
STALLED_HEAD = b"POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n"


def test_slowloris_and_stalled_uploads_neither_starve_nor_hold_threads(start):
    server, calls = start("robustness.robust_apps:router", "--threads", "2",
                          "--worker-connections", "2000",
                          env={"AIOWSGI_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
                               "AIOWSGI_BODY_TIMEOUT": str(BODY_TIMEOUT)})
    pid = server.worker_pid()
    base = Usage.of(pid)
    opened = time.monotonic()
    lorises = connect_many(server, 500, LORIS_HEAD)
    stalled = connect_many(server, 200, STALLED_HEAD + b"u" * 10)
    wait_until(lambda: socket_count(pid) >= 700, what="the worker holds all 700")
    status, _headers, _body = get(server, "/hello")
    assert status == 200
    assert socket_count(pid) >= 700  # answered while every attacker was still connected
    assert thread_count(pid) == base.threads  # and none of them holds a thread
    for sock in lorises:  # a trickle: still closed (that it gets no more time: test_timeouts.py)
        sock.send(b"a")
    closed = closed_by_server(lorises + stalled, HEADER_TIMEOUT + BODY_TIMEOUT + 20)
    took = time.monotonic() - opened
    assert len(closed) == 700, f"{700 - len(closed)} still open after {took:.1f}s"
    assert took >= HEADER_TIMEOUT  # closed by the timeouts, not before
    assert calls.lines() == ["GET /hello"]  # no stalled upload reached the app
    close_all(lorises + stalled)
    settle(pid, base)


def test_five_thousand_idle_keepalive_connections_are_cheap_and_served_again(start):
    count = 5000
    server, _calls = start("robustness.robust_apps:router", "--threads", "4",
                           "--worker-connections", str(count + 100), "--keep-alive", "300")
    pid = server.worker_pid()
    for _ in range(50):  # warm up before measuring
        get(server, "/hello")
    base = Usage.of(pid)
    conns = [Conn(sock, 60) for sock in connect_many(server, count)]
    request = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
    try:
        for round_ in range(2):  # served, left idle, served again
            for wave in range(0, count, 50):  # in waves: a burst of 5000 would meet the queue limit
                for conn in conns[wave:wave + 50]:
                    conn.send(request)
                assert [c.response()[0] for c in conns[wave:wave + 50]] == [200] * 50, round_
            if round_ == 0:
                wait_until(lambda: socket_count(pid) >= count, what="all connections idle")
                per_conn = (rss_kib(pid) - base.rss_kib) * 1024 / count
                assert per_conn < 24 * 1024, f"{per_conn:.0f} bytes per idle connection"
        assert thread_count(pid) == base.threads
    finally:
        for conn in conns:
            conn.close()
    settle(pid, base)


@pytest.fixture
def traced(start, tmp_path):
    """A one-thread worker whose apps leave close() and hold traces in tmp_path."""
    (tmp_path / "release").mkdir()
    env = {name: str(tmp_path / name.lower()) for name in
           ("ROBUST_CLOSED", "ROBUST_HELD", "ROBUST_PROGRESS")}
    env["ROBUST_RELEASE"] = str(tmp_path / "release")
    env["AIOWSGI_BODY_MEMORY_LIMIT"] = "65536"
    server, calls = start("robustness.robust_apps:router", "--threads", "1", env=env)
    server.trace = lambda name: (tmp_path / name).read_text() if (tmp_path / name).exists() else ""
    server.release = lambda name: (tmp_path / "release" / name).touch()
    return server, calls


def test_client_vanishing_mid_stream(traced):
    server, _calls = traced
    pid = server.worker_pid()
    base = Usage.of(pid)
    conn = Conn.to(server)
    conn.send(b"GET /big?n=209715200 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert conn.read(1 << 20)  # a megabyte of the 200 MiB, then gone without a FIN
    abort(conn.sock)
    wait_until(lambda: "closed" in server.trace("robust_closed"), what="iterable closed")
    assert int(server.trace("robust_closed").split()[1]) > 0  # closed early, not exhausted
    assert get(server, "/hello")[0] == 200  # the only thread is free
    settle(pid, base)


def test_client_vanishing_mid_upload_leaves_no_temp_file(traced):
    server, calls = traced
    pid = server.worker_pid()
    base = Usage.of(pid)
    conn = Conn.to(server)
    conn.send(b"POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\n")
    conn.send(b"u" * (3 << 20))
    wait_until(lambda: temp_files(pid), what="the body spools to a temp file")
    abort(conn.sock)
    settle(pid, base)
    assert temp_files(pid) == [] and calls.lines() == []


def test_client_vanishing_before_the_response(traced):
    server, calls = traced
    pid = server.worker_pid()
    base = Usage.of(pid)
    conn = Conn.to(server)
    conn.send(b"GET /held?name=gone HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_until(lambda: "gone" in server.trace("robust_held"), what="the app holds the thread")
    abort(conn.sock)
    server.release("gone")
    wait_until(lambda: "closed" in server.trace("robust_closed"), what="iterable closed")
    assert get(server, "/hello")[0] == 200
    assert calls.lines() == ["GET /held?name=gone", "GET /hello"]
    settle(pid, base)


CUT_SHORT = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"u" * 50


@pytest.mark.parametrize("worker", ["gunicorn_aiowsgi.Worker", "gthread"])
def test_body_cut_short_by_a_half_close_never_reaches_the_app(start, worker):
    """gthread is the contrast: it hands the app the 50 bytes as if they were the whole body."""
    server, calls = start("robustness.robust_apps:size", "--threads", "2", worker_class=worker,
                          wait_ready=worker != "gthread")
    with Conn.to(server) as conn:
        conn.send(CUT_SHORT)
        conn.sock.shutdown(socket.SHUT_WR)
        status, _headers, body = conn.response()
    if worker == "gthread":
        assert status == 200 and body.startswith(b"50 ") and calls.lines() == ["POST /"]
        return
    assert status == 400 and calls.lines() == []
    server.wait_log("the client closed before the body was complete")


def test_body_cut_short_by_a_reset_never_reaches_the_app(start):
    server, calls = start("robustness.robust_apps:size", "--threads", "2")
    pid = server.worker_pid()
    base, own = Usage.of(pid), socket_count(pid)
    conn = Conn.to(server)
    conn.send(CUT_SHORT)
    wait_until(lambda: socket_count(pid) > own, what="the worker took the connection")
    abort(conn.sock)
    settle(pid, base)  # the worker has dropped the connection ...
    assert calls.lines() == []  # ... without calling the app


def test_slow_reader_of_a_large_response_holds_a_bounded_buffer(traced):
    server, _calls = traced
    pid = server.worker_pid()
    base = Usage.of(pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect((server.host, server.port))
    conn = Conn(sock, 30)
    conn.send(b"GET /big?n=268435456 HTTP/1.1\r\nHost: t\r\n\r\n")
    received, most_ahead = 0, 0
    # The app thread's credit (AIOWSGI_WRITE_BUFFER) and the transport's quarter of it, each
    # overshot by at most a 64 KiB piece, plus the piece being handed over and the kernel's buffers.
    credit = Settings().write_buffer
    kernel = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    bound = credit + credit // 4 + 3 * 65536 + kernel
    for _ in range(50):  # a slow client: 64 KiB every 20 ms
        received += len(conn.read(65536))
        produced = int(server.trace("robust_progress") or 0)
        most_ahead = max(most_ahead, produced - received)
        time.sleep(0.02)
    assert 0 < most_ahead <= bound, most_ahead
    assert rss_kib(pid) - base.rss_kib < 24 * 1024  # not the 256 MiB the app would make
    abort(sock)
    wait_until(lambda: "closed" in server.trace("robust_closed"), what="iterable closed")
    settle(pid, base)


@pytest.mark.parametrize("worker", ["gunicorn_aiowsgi.Worker", "gunicorn_aiowsgi.UVLoopWorker"])
def test_a_client_that_never_reads_is_cut_off_after_the_send_timeout(start, tmp_path, worker):
    """One thread, one client that asks for 100 MiB and reads nothing: AIOWSGI_SEND_TIMEOUT
    after the output stalls, the connection is aborted, the app's iterable closed and the
    thread serves the next client (gthread's thread would wait for that client for ever)."""
    env = {"ROBUST_CLOSED": str(tmp_path / "closed"), "AIOWSGI_SEND_TIMEOUT": "1"}
    server, _calls = start("robustness.robust_apps:router", "--threads", "1", env=env,
                           worker_class=worker, loglevel="debug")
    pid = server.worker_pid()
    assert get(server, "/hello")[0] == 200  # uvloop opens a descriptor on its first request
    base = Usage.of(pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    sock.sendall(b"GET /big?n=104857600 HTTP/1.1\r\nHost: t\r\n\r\n")
    server.wait_log("no response bytes taken for 1.0s")
    closed = tmp_path / "closed"
    # The app thread creates the file, then writes its line: wait for the whole line.
    line = wait_until(lambda: closed.exists() and closed.read_text().endswith("\n")
                      and closed.read_text(), what="the iterable closed")
    assert int(line.split()[1]) > 0  # cut off: bytes were left
    assert get(server, "/hello", timeout=5)[0] == 200  # the only thread is free
    sock.settimeout(10)
    received = 0
    try:  # what the kernel still held, then the end (or a reset)
        while data := sock.recv(1 << 20):
            received += len(data)
    except ConnectionResetError:
        pass
    assert received < 104857600
    sock.close()
    settle(pid, base)


def test_past_worker_connections_new_clients_wait_in_the_backlog(start):
    limit = 10
    server, _calls = start("robustness.robust_apps:router", "--threads", "2",
                           "--worker-connections", str(limit), "--keep-alive", "60")
    pid = server.worker_pid()
    own = socket_count(pid)  # the listener and the loop's self-pipe
    # Every slot holds a request on its way (a head not complete): none may give way.
    busy = [Conn(s, 10) for s in connect_many(server, limit, b"GET /hello HTTP/1.1\r\n")]
    wait_until(lambda: socket_count(pid) == own + limit, what="the worker to take them all")
    waiting = connect_many(server, 20, b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    ready, _w, _x = select.select(waiting, [], [], 1.0)
    assert ready == []  # not accepted: nothing answered while the limit is reached
    assert socket_count(pid) == own + limit  # the worker holds only its `limit`
    for conn in busy:
        conn.send(b"Host: t\r\n\r\n")
        assert conn.response()[0] == 200
    # Answered, they are idle: they give way to the clients waiting, which the client does
    # not close here.
    answers = [Conn(s, 10).response()[0] for s in waiting]
    assert answers == [200] * 20  # none was dropped
    server.wait_log("worker_connections (10) are all open: closing idle keep-alive connections")
    assert socket_count(pid) <= own + limit
    close_all(waiting)
    close_all([conn.sock for conn in busy])
