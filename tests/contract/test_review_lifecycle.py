"""Drains that wait for app calls, calls never run for a client already answered or gone, exit margin, EINTR, max_requests.

The WSGI app these tests serve is `app` below (gunicorn imports this module in the worker);
its marks, and the hooks config's, are JSON lines in $CONTRACT_MARKS.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from server import Conn, Gunicorn, wait_until

pytestmark = pytest.mark.timeout(120)

APP = "contract.test_review_lifecycle:app"
HOOKS = str(Path(__file__).resolve().parent / "hooks_conf.py")


# -- the app (runs in the worker) -----------------------------------------------------------
def _mark(hook: str, **fields: object) -> None:
    line = json.dumps({"hook": hook, "pid": os.getpid(), **fields}) + "\n"
    fd = os.open(os.environ["CONTRACT_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write per line: marks never interleave
    finally:
        os.close(fd)


class Body:
    """A response iterable whose close() takes `linger` seconds, then leaves a mark."""

    def __init__(self, ident: str, linger: float) -> None:
        self.ident, self.linger = ident, linger

    def __iter__(self):
        yield b"done"

    def close(self) -> None:
        time.sleep(self.linger)
        _mark("app_close", id=self.ident)


def _read_fifo(path: str) -> bytes:
    """A blocking read(2) in C, as a database driver or C extension makes it: unlike os.read,
    nothing retries it after EINTR."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDWR)  # O_RDWR: the open itself does not wait for a writer
    try:
        _mark("reading", tid=threading.get_native_id())
        buf = ctypes.create_string_buffer(64)
        n = libc.read(fd, buf, 64)
        if n < 0:
            return f"read failed: {os.strerror(ctypes.get_errno())}".encode()
        return buf.raw[:n]
    finally:
        os.close(fd)


def app(environ, start_response):
    query = dict(p.partition("=")[::2] for p in environ["QUERY_STRING"].split("&") if p)
    if environ["PATH_INFO"] == "/read":
        body = _read_fifo(query["fifo"])
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    ident = query.get("id", "")
    _mark("app_called", id=ident, method=environ["REQUEST_METHOD"])  # the app's side effect
    time.sleep(float(query.get("s", "0")))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Body(ident, float(query.get("close", "0")))


# -- test side ------------------------------------------------------------------------------
def marks(marks_path: Path, hook: str, **match: object) -> list[dict]:
    try:
        lines = marks_path.read_text().splitlines()
    except FileNotFoundError:
        return []
    found = [json.loads(line) for line in lines if line]
    return [m for m in found if m["hook"] == hook and all(m.get(k) == v for k, v in match.items())]


def serve(marks_path: Path, *args: str, env: dict | None = None, **kwargs) -> Gunicorn:
    kwargs.setdefault("config", HOOKS)
    return Gunicorn(APP, *args, env={"CONTRACT_MARKS": str(marks_path), **(env or {})}, **kwargs)


def reset(conn: Conn) -> None:
    """Close with SO_LINGER 0: the client's kernel sends RST, not FIN."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def exited_cleanly(g: Gunicorn, pid: int) -> bool:
    """The worker ran its own exit path and the master saw status 0 (no SIGKILL, no code)."""
    log = g.log()
    return (f"Worker exiting (pid: {pid})" in log and f"Worker (pid:{pid}) was sent" not in log
            and f"Worker (pid:{pid}) exited with code" not in log)


def get(g: Gunicorn, target: str) -> tuple[int, dict, bytes]:
    with Conn.to(g, timeout=30) as conn:
        conn.send(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        return conn.response()


def post(g: Gunicorn, target: str) -> Conn:
    conn = Conn.to(g, timeout=30)
    conn.send(f"POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx".encode())
    return conn


# -- item 3: the drain waits for every app call ----------------------------------------------
@pytest.mark.parametrize("leave", ["rst", "fin", "504"])
def test_drain_waits_for_app_calls_whose_client_went_away(tmp_path: Path, leave: str) -> None:
    """TERM (graceful_timeout 10) while the app still works for a client that reset, closed,
    or was answered 504: the worker waits for the call, its close() and post_request run,
    and it exits with status 0."""
    marks_path = tmp_path / "marks"
    env = {"AIOWSGI_REQUEST_TIMEOUT": "1"} if leave == "504" else {}
    with serve(marks_path, "--threads", "2", env=env) as g:
        pid = g.worker_pid()
        conn = Conn.to(g, timeout=30)
        conn.send(b"GET /work?s=3&close=0.5&id=a HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: marks(marks_path, "app_called", id="a"), what="the call in the app")
        if leave == "rst":
            reset(conn)
        elif leave == "fin":
            conn.close()
        else:
            assert conn.response()[0] == 504
            conn.close()
        g.signal(signal.SIGTERM)  # the master TERMs the worker and SIGKILLs it after 10 s
        assert g.wait(30) == 0
    assert marks(marks_path, "app_close", id="a", pid=pid), "the iterable's close() never ran"
    assert marks(marks_path, "post_request", path="/work", pid=pid), "post_request never ran"
    assert exited_cleanly(g, pid), g.log()


# -- item 4: a call answered or abandoned while queued never runs ---------------------------
def test_a_call_answered_504_while_queued_is_never_run(tmp_path: Path) -> None:
    marks_path = tmp_path / "marks"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(10)
    try:
        with serve(marks_path, "--threads", "1", "--statsd-host",
                   f"127.0.0.1:{udp.getsockname()[1]}",
                   env={"AIOWSGI_REQUEST_TIMEOUT": "1"}) as g:
            pid = g.worker_pid()
            slow = Conn.to(g, timeout=30)
            slow.send(b"GET /work?s=3&id=a HTTP/1.1\r\nHost: t\r\n\r\n")
            wait_until(lambda: marks(marks_path, "app_called", id="a"), what="the slow call")
            queued = post(g, "/work?id=b")  # behind the slow call on the only thread
            status, _, _ = queued.response()
            assert status == 504
            queued.close()
            assert slow.response()[0] == 504
            slow.close()
            # The thread is free again once the slow call closed; a request sent after that
            # is taken after the queued POST's turn: the POST has been run or skipped by then.
            wait_until(lambda: marks(marks_path, "app_close", id="a"), what="the slow call's end")
            assert get(g, "/work?id=c")[0] == 200
            log = g.wait_log("Skipped POST /work?id=b: its client was answered 504")
            assert not marks(marks_path, "app_called", id="b"), "the 504'd POST was run"
            assert not [m for m in marks(marks_path, "pre_request") if m["query"] == "id=b"]
            assert "still queued: no thread took it, and none will" in log
            wanted, seen = f"aiowsgi.{pid}.skipped_requests:1|c", []
            deadline = time.monotonic() + 10
            while not any(line.startswith(wanted) for line in seen) and time.monotonic() < deadline:
                seen += udp.recv(65536).decode().splitlines()
            assert any(line.startswith(wanted) for line in seen), seen
    finally:
        udp.close()


def test_a_call_whose_client_reset_while_queued_is_never_run(tmp_path: Path) -> None:
    marks_path = tmp_path / "marks"
    env = {"AIOWSGI_HEALTH_PATH": "/healthz", "AIOWSGI_HEALTH_QUEUE_FULL": "1",
           "AIOWSGI_QUEUE_LIMIT": "1"}
    with serve(marks_path, "--threads", "1", env=env) as g:
        slow = Conn.to(g, timeout=30)
        slow.send(b"GET /work?s=3&id=a HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: marks(marks_path, "app_called", id="a"), what="the slow call")
        queued = post(g, "/work?id=b")
        # With a queue limit of 1, the health path says 503 once the POST waits in the queue.
        wait_until(lambda: get(g, "/healthz")[0] == 503, what="the POST in the queue")
        reset(queued)
        assert slow.response()[0] == 200
        slow.close()
        # Its turn comes once the slow call is over: it is skipped, or (the bug) run.
        wait_until(lambda: "Skipped POST /work?id=b" in g.log()
                   or marks(marks_path, "app_called", id="b"), what="the POST's turn")
        assert not marks(marks_path, "app_called", id="b"), "the abandoned POST was run"
        assert "Skipped POST /work?id=b: its client went away" in g.log()
        assert get(g, "/work?id=c")[0] == 200
