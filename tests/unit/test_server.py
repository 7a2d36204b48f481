"""The worker's connection registry (server.Server) in memory: what a drain, a quick stop and a client waiting for a slot close."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest
from memory import ClockLoop, FakeTransport, FakeWorker, InlinePool, Log, echo_app, get, post

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


def serve(loop: asyncio.AbstractEventLoop, app: Any = echo_app, pool: Any = None,
          **settings: Any) -> Server:
    server = Server(FakeWorker(), Settings(**settings), app, pool or InlinePool(), loop, Log(), None)
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


# -- a client waits for a slot: idle kept-alive connections give way (reclaim_idle) -------------
class Holding(InlinePool):
    """Runs each call at once, except while `holding`: then it waits (its connection in APP)."""

    def __init__(self) -> None:
        self.holding = False
        self.waiting: list[Any] = []

    def submit(self, job: Any) -> None:
        if self.holding:
            self.waiting.append(job)
        else:
            job.run()


@pytest.fixture
def clock_loop():
    loop = ClockLoop()  # idle times apart without waiting: the test moves the clock
    yield loop
    loop.close()


def kept_alive(server: Server, port: int, path: str = "/") -> tuple[Connection, FakeTransport]:
    """A connection that made one request, was answered, and is idle."""
    conn, transport = connect(server, port)
    conn.data_received(get(path))
    answered(conn)
    assert conn.requests == 1
    return conn, transport


def answered(conn: Connection) -> None:
    """Loop turns until the connection's request is answered (the answer is written a turn
    or two after the call returns)."""
    for _ in range(5):
        turn(conn.ctx.loop)
        if conn.state is ConnState.IDLE:
            return
    raise AssertionError(f"not answered: {conn.state}")


def test_a_waiting_client_gets_only_a_connection_idle_after_an_answer(clock_loop):
    # Closing any other would lose something: a request on its way (a head, a body, a call, an
    # error answer lingering, the next request read already or still in the socket, an answer
    # the client has not taken), or a new client's first request, which is the header
    # timeout's to wait for (a slowloris is not made to give way here).
    pool = Holding()
    server = serve(clock_loop, pool=pool, keepalive=300.0)
    pair = socket.socketpair()
    try:
        idle, idle_transport = kept_alive(server, 40001)
        others = {}
        others["new"] = connect(server, 40002)[0]
        others["head"] = connect(server, 40003)[0]
        others["head"].data_received(b"GET / HTTP/1.1\r\nHost: t\r\n")
        others["body"] = connect(server, 40004)[0]
        others["body"].data_received(post("/", b"abcdef")[:-3])
        others["lingering"] = connect(server, 40005)[0]
        others["lingering"].data_received(b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400
        others["in the socket"], transport = kept_alive(server, 40006)
        transport.sock = pair[0]
        pair[1].sendall(b"GET /")  # not read by the loop yet
        others["not taken"], transport = connect(server, 40007)
        transport.slow = True  # the client has not taken the answer
        others["not taken"].data_received(get("/"))
        answered(others["not taken"])
        pool.holding = True
        others["app"] = connect(server, 40008)[0]
        others["app"].data_received(get("/"))
        for _ in range(5):  # handed to the pool at a loop turn
            if pool.waiting:
                break
            turn(clock_loop)
        pool.holding = False
        others["held"] = connect(server, 40009)[0]
        others["held"].data_received(get("/a") + get("/b"))
        answered(others["held"])  # /a is; /b is read, and parsed at the next loop turn
        states = {name: conn.state for name, conn in others.items()}
        assert states == {"new": ConnState.IDLE, "head": ConnState.HEAD, "body": ConnState.BODY,
                          "lingering": ConnState.LINGER, "in the socket": ConnState.IDLE,
                          "not taken": ConnState.IDLE, "app": ConnState.APP,
                          "held": ConnState.IDLE}
        clock_loop.skipped += 10  # the idle one is the youngest idle by far: still the only one
        assert server.reclaim_idle() == 1 and idle_transport.closed
        assert server.reclaim_idle() == 0
        assert {name: conn.state for name, conn in others.items()} == states
        assert not any(conn.transport.closed for conn in others.values())
    finally:
        pair[0].close()
        pair[1].close()
        server.spools.shutdown(timeout=1)


def test_a_proxy_preamble_never_gives_way(loop):
    server = serve(loop, proxy_protocol="v1")
    conn, transport = connect(server)
    assert conn.state is ConnState.PREAMBLE
    assert server.reclaim_idle() == 0 and not transport.closed
    server.spools.shutdown(timeout=1)


def test_the_connection_idle_longest_gives_way_first(clock_loop, monkeypatch):
    # Idle longest, not oldest: a connection that has just been used again goes last, also
    # when the scan that ranked the others had it first.
    server = serve(clock_loop, keepalive=300.0)
    scans = []
    scan = server._oldest_idle
    monkeypatch.setattr(server, "_oldest_idle", lambda: scans.append(1) or scan())
    conns = {}
    for name in ("a", "b", "c", "d"):
        conns[name] = kept_alive(server, 40000 + len(conns))[0]
        clock_loop.skipped += 1
    conns["a"].data_received(get("/again"))  # a is now the most recently idle
    answered(conns["a"])
    closed = []

    def reclaim() -> None:
        assert server.reclaim_idle() == 1
        closed.extend(name for name, conn in conns.items()
                      if conn.transport.closed and name not in closed)  # type: ignore[union-attr]

    reclaim()
    assert closed == ["b"]
    clock_loop.skipped += 1
    conns["c"].data_received(get("/again"))  # used again since the scan ranked it next
    answered(conns["c"])
    reclaim()
    reclaim()
    reclaim()
    assert closed == ["b", "d", "a", "c"] and server.reclaim_idle() == 0
    assert len(scans) == 3  # one for b, d and a; c moved: one more for it; one finding none
    server.spools.shutdown(timeout=1)
