"""The worker's connection registry (server.Server) in memory: what a drain and a quick stop close."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from memory import FakeTransport, FakeWorker, InlinePool, Log, echo_app, get

from gunicorn_aiowsgi import server as server_module
from gunicorn_aiowsgi.boundary import ConnState
from gunicorn_aiowsgi.bridge import ThreadPool
from gunicorn_aiowsgi.protocol import Connection
from gunicorn_aiowsgi.server import Server
from gunicorn_aiowsgi.settings import Settings


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def serve(loop: asyncio.AbstractEventLoop, app: Any = echo_app, pool: Any = None) -> Server:
    server = Server(FakeWorker(), Settings(), app, pool or InlinePool(), loop, Log(), None)
    return server


def connect(server: Server, port: int = 40000) -> tuple[Connection, FakeTransport]:
    conn, transport = server(), FakeTransport(("127.0.0.1", port))
    conn.connection_made(transport)
    return conn, transport


def turn(loop: asyncio.AbstractEventLoop) -> None:
    """One pass of the loop: callbacks scheduled during it wait for the next."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_a_drain_spares_a_connection_whose_next_request_is_read_already(loop, monkeypatch):
    # Its next request came in the same read as the last one and waits in `held` for a loop
    # turn; closing it as idle would drop a request the client has sent.
    monkeypatch.setattr(server_module, "STOP_KEEPALIVE_LINGER", 0.0)
    server = serve(loop)
    conn, transport = connect(server)
    conn.data_received(get("/a") + get("/b"))
    for _ in range(5):  # until /a's response is written; reading /b waits for the next turn
        turn(loop)
        if conn.state is ConnState.IDLE:
            break
    assert conn.state is ConnState.IDLE and conn.held
    server.draining = True
    server.close_idle()
    for _ in range(3):
        turn(loop)
    written = bytes(transport.written)
    assert written.count(b"HTTP/1.1 200 OK") == 2 and b"GET /b " in written
    assert written.rsplit(b"HTTP/1.1 200 OK", 1)[1].count(b"Connection: close") == 1
    server.spools.shutdown(timeout=1)


def test_a_drain_keeps_idle_connections_for_the_linger_and_answers_them_with_close(loop, monkeypatch):
    # gthread (gunicorn 27) keeps kept-alive connections up to STOP_KEEPALIVE_LINGER on a
    # graceful stop: a proxy's request sent meanwhile gets its answer, and Connection: close.
    monkeypatch.setattr(server_module, "STOP_KEEPALIVE_LINGER", 0.2)
    server = serve(loop)
    asked, _ = connect(server, 40001)
    silent, silent_transport = connect(server, 40002)
    for conn in (asked, silent):
        conn.requests = 1  # kept alive after a first request: no fresh-connection grace
    server.draining = True
    server.close_idle()
    assert not silent_transport.closed
    asked.data_received(get("/late"))
    loop.run_until_complete(asyncio.sleep(0.05))
    assert b"Connection: close" in bytes(asked.transport.written)  # type: ignore[union-attr]
    loop.run_until_complete(asyncio.sleep(0.3))  # the linger is over: the silent one goes
    assert silent_transport.closed
    server.spools.shutdown(timeout=1)


def test_a_quick_stop_cancels_a_call_still_queued(loop):
    # close_all closes transports that may call connection_lost late or never (bytes still to
    # send, a TLS close_notify awaited); a queued call must not run after the loop is gone.
    release, seen = threading.Event(), []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        release.wait(5)
        start_response("200 OK", [("Content-Length", "0")])
        return []

    pool = ThreadPool(1)
    server = serve(loop, app, pool)
    try:
        running, _ = connect(server, 40001)
        queued, _ = connect(server, 40002)
        running.data_received(get("/running"))
        queued.data_received(get("/queued"))
        for _ in range(50):
            if seen:
                break
            loop.run_until_complete(asyncio.sleep(0.01))
        assert seen == ["/running"]
        server.close_all()
        release.set()
    finally:
        release.set()
        pool.shutdown(timeout=2)
        server.spools.shutdown(timeout=1)
    assert seen == ["/running"]


@pytest.mark.parametrize("buffered", [0, 100])
def test_a_closed_connection_counts_as_open_till_connection_lost(loop, buffered):
    # Its socket stays open till then: a TLS transport still sends what it holds below its own
    # buffer, and its close_notify; uncounted at close(), a drain ended before those bytes went
    # out, and worker_connections let more sockets open than the descriptor plan allows.
    server = serve(loop)
    conn, transport = connect(server)
    transport.pending = buffered  # what the client has not taken yet
    conn.close()
    assert conn in server.conns
    conn.connection_lost(None)
    assert conn not in server.conns
    server.spools.shutdown(timeout=1)
