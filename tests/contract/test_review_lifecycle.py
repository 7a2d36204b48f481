"""Drains that wait for app calls, calls never run for a client already answered or gone, exit margin, EINTR, max_requests.

The WSGI app these tests serve is `app` below (gunicorn imports this module in the worker);
its marks, and the hooks config's, are JSON lines in $CONTRACT_MARKS.
"""

from __future__ import annotations

import ctypes
import errno
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

from gunicorn_aiowsgi.worker import drain_budget

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


# -- item 8 -------------------------------------------------------------------------------
@pytest.mark.parametrize("graceful, budget", [
    (30.0, 27.0), (10.0, 9.0), (100.0, 90.0), (5.0, 4.0), (2.0, 1.0), (1.0, 0.5), (0.0, 0.0),
])
def test_drain_budget_leaves_a_margin_before_the_masters_sigkill(graceful: float,
                                                                 budget: float) -> None:
    assert drain_budget(graceful) == pytest.approx(budget)


def test_worker_exit_runs_when_a_request_outlasts_graceful_timeout(tmp_path: Path) -> None:
    """The drain ends before the master's SIGKILL, so the worker_exit hook (here one that
    takes 0.3 s to flush something) still runs."""
    marks_path = tmp_path / "marks"
    config = tmp_path / "exit_conf.py"
    config.write_text(
        "import json, os, time\n"
        "def worker_exit(server, worker):\n"
        "    time.sleep(0.3)\n"
        "    with open(os.environ['CONTRACT_MARKS'], 'a') as f:\n"
        "        f.write(json.dumps({'hook': 'worker_exit', 'pid': os.getpid()}) + '\\n')\n")
    with serve(marks_path, "--graceful-timeout", "3", config=str(config)) as g:
        pid = g.worker_pid()
        conn = Conn.to(g, timeout=30)
        conn.send(b"GET /work?s=20&id=a HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: marks(marks_path, "app_called", id="a"), what="the long call")
        g.signal(signal.SIGTERM)
        assert g.wait(30) == 0
        conn.close()
    assert marks(marks_path, "worker_exit", pid=pid), g.log()
    assert exited_cleanly(g, pid), g.log()
    assert "Exiting with 1 app calls unfinished" in g.log()


def _thread_waits_in_pipe_read(pid: int, tid: int) -> bool:
    task = Path(f"/proc/{pid}/task/{tid}")
    return (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "S" and \
        "pipe" in (task / "wchan").read_text()


def _pending(pid: int, tid: int, sig: int) -> bool:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    mask = int(next(line for line in status.splitlines() if line.startswith("SigPnd:")).split()[1], 16)
    return bool(mask & (1 << (sig - 1)))


def test_usr1_does_not_interrupt_a_blocking_read_in_an_app_thread(tmp_path: Path) -> None:
    """SIGUSR1 (reopen logs) to the worker, and one delivered to the app thread itself (as the
    kernel does when the main thread is busy): the thread's read(2) goes on and returns data."""
    marks_path = tmp_path / "marks"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with serve(marks_path, "--threads", "2") as g:
        pid = g.worker_pid()
        conn = Conn.to(g, timeout=30)
        conn.send(f"GET /read?fifo={fifo} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        tid = wait_until(lambda: marks(marks_path, "reading"), what="the read")[0]["tid"]
        wait_until(lambda: _thread_waits_in_pipe_read(pid, tid), what="the thread in read(2)")
        os.kill(pid, signal.SIGUSR1)
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.tgkill(pid, tid, signal.SIGUSR1) == 0, os.strerror(ctypes.get_errno())
        wait_until(lambda: not _pending(pid, tid, signal.SIGUSR1), what="USR1 delivered")
        try:  # the app holds the FIFO open for reading, unless its read already failed
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO, exc
        else:
            os.write(fd, b"data")
            os.close(fd)
        status, _, body = conn.response()
        conn.close()
        assert (status, body) == (200, b"data")
        assert g.worker_pid() == pid


def test_health_checks_do_not_count_toward_max_requests(tmp_path: Path) -> None:
    marks_path = tmp_path / "marks"
    with serve(marks_path, "--max-requests", "5",
               env={"AIOWSGI_HEALTH_PATH": "/healthz"}) as g:
        pid = g.worker_pid()
        for _ in range(20):
            assert get(g, "/healthz")[:3:2] == (200, b"ok\n")
        assert g.worker_pid() == pid
        assert "Autorestarting" not in g.log()
        for n in range(5):
            assert get(g, f"/work?id={n}")[0] == 200
        g.wait_log(f"Worker draining (pid: {pid}): max_requests reached")
        assert g.wait_workers(1, exclude=(pid,))
