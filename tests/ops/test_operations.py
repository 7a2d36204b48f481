"""Operating it: overload 503s, the health path, request timeouts, stack dumps (statsd: test_statsd.py)."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import time

import pytest
from server import (
    Conn,
    Gunicorn,
    abort,
    connect_many,
    get,
    open_gate,
    read_mark,
    request,
    socket_count,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)


def test_overload_503s_come_while_the_thread_is_still_held_and_nothing_hangs(tmp_path):
    """--threads 1, AIOWSGI_QUEUE_LIMIT 2: with the only thread held in the app, eleven requests
    more: two wait in the queue, the nine others are refused 503 while the thread is still held
    (not queued behind it); once it is let go, the two are served. "Overloaded:" is logged at
    most once a second: never twice in one second of the log's timestamps."""
    env = {"AIOWSGI_QUEUE_LIMIT": "2", "AIOWSGI_TEST_MARKS": str(tmp_path)}
    with Gunicorn("apps:router", "--threads", "1", env=env) as srv:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            running = pool.submit(get, srv, "/gate?mark=running")
            assert read_mark(tmp_path / "running") == "started\n"
            futures = [pool.submit(get, srv, "/hello") for _ in range(11)]
            wait_until(lambda: sum(f.done() for f in futures) >= 9, 30, "nine answers")
            refused = [f.result() for f in futures if f.done()]
            assert (tmp_path / "running").read_text() == "started\n"  # the thread still held
            open_gate(tmp_path / "running")
            results = [f.result(timeout=30) for f in futures]
            assert running.result(timeout=30)[0] == 200
        assert len(refused) == 9
        for status, headers, body in refused:
            assert (status, headers["retry-after"], body) == (503, "1", b"overloaded\n")
        assert sorted(status for status, _, _ in results) == [200] * 2 + [503] * 9
        log = srv.wait_log("Overloaded:")
        stamps = re.findall(r"^(\[[^]]+\]) \[\d+\] \[WARNING\] Overloaded:", log, re.MULTILINE)
        assert stamps and len(stamps) == len(set(stamps)), log


def test_requests_whose_clients_left_do_not_fill_the_queue(tmp_path):
    """--threads 1, one request holding the thread, four more filling AIOWSGI_QUEUE_LIMIT=4,
    whose clients then reset: a canary is queued (and served), not refused 503 until the
    running call ends, and the health path says 200; the four are skipped, never run."""
    env = {"AIOWSGI_QUEUE_LIMIT": "4", "AIOWSGI_TEST_MARKS": str(tmp_path),
           "AIOWSGI_HEALTH_PATH": "/healthz", "AIOWSGI_HEALTH_QUEUE_FULL": "1"}
    with Gunicorn("apps:router", "--threads", "1", env=env) as srv:
        pid = srv.worker_pid()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(get, srv, "/slow?s=2&mark=running")
            assert read_mark(tmp_path / "running") == "started\n"
            sockets = socket_count(pid)
            gone = connect_many(srv, 4, b"GET /slow?s=5&mark=gone HTTP/1.1\r\nHost: t\r\n\r\n")
            wait_until(lambda: socket_count(pid) == sockets + 4, 10, "the four connections")
            assert get(srv, "/healthz")[0] == 503  # the queue is full while they wait
            for sock in gone:
                abort(sock)
            wait_until(lambda: socket_count(pid) == sockets, 10, "the worker to see them go")
            assert get(srv, "/healthz")[0] == 200
            status, _headers, body = get(srv, "/hello")  # waits for the thread, then served
            assert (status, body) == (200, b"Hello, world!\n")
            assert running.result(timeout=10)[0] == 200
        srv.wait_log("Skipped GET /slow?s=5&mark=gone", count=4)
        assert not (tmp_path / "gone").exists()


def test_queue_depth_warning():
    with Gunicorn("apps:router", "--threads", "1", env={"AIOWSGI_QUEUE_LIMIT": "0"}) as srv:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(get, srv, "/slow?s=1.5") for _ in range(4)]
            srv.wait_log("Task queue depth is", timeout=10)
            assert all(f.result(timeout=30)[0] == 200 for f in futures)


def test_health_path_answered_on_the_loop_while_pool_is_busy(tmp_path):
    env = {"AIOWSGI_HEALTH_PATH": "/healthz", "AIOWSGI_TEST_MARKS": str(tmp_path)}
    with Gunicorn("apps:router", "--threads", "1", env=env) as srv:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            busy = pool.submit(get, srv, "/slow?s=3&mark=busy")
            assert read_mark(tmp_path / "busy") == "started\n"  # it holds the only thread
            status, headers, body = get(srv, "/healthz")
            assert (status, body) == (200, b"ok\n")
            # Answered while the slow request still held the thread: not queued behind it.
            assert (tmp_path / "busy").read_text() == "started\n"
            assert busy.result(timeout=10)[0] == 200
        assert (tmp_path / "busy").read_text() == "started\ndone\n"
        # Other paths are untouched: they reach the app.
        assert get(srv, "/hello")[2] == b"Hello, world!\n"
        assert get(srv, "/healthz/other")[0] == 200 and b"PATH_INFO" in get(srv, "/healthz/other")[2]


def test_health_path_says_503_once_draining(tmp_path):
    env = {"AIOWSGI_HEALTH_PATH": "/healthz", "AIOWSGI_TEST_MARKS": str(tmp_path)}
    with Gunicorn("apps:router", "--threads", "2", env=env) as srv:
        with concurrent.futures.ThreadPoolExecutor(1) as pool, Conn.to(srv, timeout=20) as probe:
            # A request in the app keeps the worker draining for a while.
            busy = pool.submit(get, srv, "/slow?s=2&mark=busy")
            probe.send(b"GET /healthz HTTP/1.1\r\nHost: h\r\n")  # a probe mid-request
            assert read_mark(tmp_path / "busy") == "started\n"
            srv.signal(signal.SIGTERM)
            srv.wait_log("Worker draining")
            probe.send(b"\r\n")
            status, headers, body = probe.response()
            assert (status, body) == (503, b"draining\n")
            assert headers["connection"] == "close"
            first = busy.result(timeout=10)
            assert first[0] == 200 and first[1]["connection"] == "close"
        assert srv.wait(20) == 0


def test_health_path_503_when_queue_full():
    env = {"AIOWSGI_HEALTH_PATH": "/healthz", "AIOWSGI_HEALTH_QUEUE_FULL": "1", "AIOWSGI_QUEUE_LIMIT": "1"}
    with Gunicorn("apps:router", "--threads", "1", env=env) as srv:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            # Slow requests one by one until the queue is full (the first takes the thread,
            # the next waits in the queue); the health path must then say 503.
            futures = []
            status = None
            deadline = time.monotonic() + 10
            while status != 503 and time.monotonic() < deadline:
                if len(futures) < 3:
                    futures.append(pool.submit(get, srv, "/slow?s=2"))
                status = get(srv, "/healthz")[0]
            assert status == 503
            answers = [f.result(timeout=20) for f in futures]
            assert any(a[0] == 200 for a in answers)
            # Nothing hangs or is lost: a slow request is served or refused with the overload 503.
            assert all(a[0] == 200 or (a[0] == 503 and a[2] == b"overloaded\n") for a in answers)
        assert get(srv, "/healthz")[0] == 200


def test_request_timeout_gives_504_logs_stack_and_keeps_serving(tmp_path):
    """AIOWSGI_REQUEST_TIMEOUT 1: a request still in the app is answered 504 (while the app
    still holds it), its thread's stack is logged at the app's frame, and the worker serves on."""
    env = {"AIOWSGI_REQUEST_TIMEOUT": "1", "AIOWSGI_TEST_MARKS": str(tmp_path)}
    with Gunicorn("apps:router", "--threads", "2", env=env) as srv:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(get, srv, "/gate?mark=held")
            assert read_mark(tmp_path / "held") == "started\n"
            status, headers, body = held.result(timeout=30)
        assert status == 504 and headers["connection"] == "close"
        assert (tmp_path / "held").read_text() == "started\n"  # the app had not answered
        log = srv.wait_log("Request timed out after 1.0s: GET /gate?mark=held")
        assert "in gate" in log and "time.sleep" in log  # the thread's stack, at the app's frame
        open_gate(tmp_path / "held")
        wait_until(lambda: (tmp_path / "held").read_text() == "started\ndone\n", 10, "the app done")
        assert get(srv, "/hello")[0] == 200
        assert get(srv, "/slow?s=0.1")[0] == 200  # requests within the timeout are untouched


def test_a_timed_out_request_is_logged_as_the_504_its_client_got(tmp_path):
    """Running when the 504 went out (its late 200 is discarded), or still queued (skipped):
    the access log and statsd see the 504, as gunicorn logs the error pages it writes."""
    env = {"AIOWSGI_REQUEST_TIMEOUT": "1", "AIOWSGI_TEST_MARKS": str(tmp_path)}
    with Gunicorn("apps:router", "--threads", "1", env=env) as srv:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(get, srv, "/gate?mark=running")
            assert read_mark(tmp_path / "running") == "started\n"  # it has the only thread
            queued = pool.submit(get, srv, "/hello?queued")
            assert [running.result(timeout=30)[0], queued.result(timeout=30)[0]] == [504, 504]
        srv.wait_log("(still queued: no thread took it, and none will)")
        open_gate(tmp_path / "running")  # its late 200 is discarded, and the queued one skipped
        srv.wait_log("Skipped GET /hello?queued")
        lines = wait_until(lambda: srv.access().splitlines() if srv.access().count("\n") == 2
                           else None, 10, "two access lines")
        assert any('"GET /gate?mark=running HTTP/1.1" 504 ' in line for line in lines), lines
        assert any('"GET /hello?queued HTTP/1.1" 504 ' in line for line in lines), lines
        assert get(srv, "/hello")[0] == 200


def test_answers_the_loop_gives_instead_of_the_app_are_in_the_access_log(tmp_path):
    """A 413 (body over AIOWSGI_MAX_BODY_SIZE) and an overload 503, as gunicorn logs the error
    pages it writes once it has a request (statsd counts them through the same call). The queue's
    one place is known taken when the health path says so (AIOWSGI_HEALTH_QUEUE_FULL)."""
    env = {"AIOWSGI_MAX_BODY_SIZE": "10", "AIOWSGI_QUEUE_LIMIT": "1",
           "AIOWSGI_TEST_MARKS": str(tmp_path), "AIOWSGI_HEALTH_PATH": "/healthz",
           "AIOWSGI_HEALTH_QUEUE_FULL": "1"}
    with Gunicorn("apps:router", "--threads", "1", env=env) as srv:
        assert get(srv, "/body", method="POST", body=b"x" * 100)[0] == 413
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            busy = pool.submit(get, srv, "/gate?mark=busy")      # the only thread
            assert read_mark(tmp_path / "busy") == "started\n"
            queued = pool.submit(get, srv, "/hello?queued")      # the queue's one place
            wait_until(lambda: get(srv, "/healthz")[0] == 503, 10, "the queue full")
            assert get(srv, "/hello?refused")[0] == 503
            open_gate(tmp_path / "busy")
            assert [busy.result(timeout=30)[0], queued.result(timeout=30)[0]] == [200, 200]
        expected = ('"POST /body HTTP/1.1" 413 ', '"GET /hello?refused HTTP/1.1" 503 ',
                    '"GET /gate?mark=busy HTTP/1.1" 200 ', '"GET /hello?queued HTTP/1.1" 200 ')
        lines = wait_until(lambda: srv.access().splitlines() if all(e in srv.access() for e in expected)
                           else None, 10, "the four access lines")
        assert len(lines) == 4, lines  # health checks are not logged


def test_requests_refused_after_their_head_was_parsed_are_in_the_access_log():
    """Refused once the head is parsed (contradictory scheme headers: 400; an Expect it cannot meet: 417;
    a path outside SCRIPT_NAME: 500): logged, and counted by statsd, as gunicorn's handle_error
    logs a refusal it has a request for. One the parser refuses has none, as with gunicorn."""
    with Gunicorn("apps:router", "--threads", "1", env={"SCRIPT_NAME": "/app"}) as srv:
        assert request(srv, b"GET /app/s HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n"
                            b"X-Forwarded-Ssl: off\r\n\r\n")[0] == 400
        assert request(srv, b"GET /app/e HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n")[0] == 417
        assert request(srv, b"GET /other?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 500
        assert request(srv, b"G@T /app/bad HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 400
        assert get(srv, "/app/hello")[0] == 200
        lines = wait_until(lambda: srv.access().splitlines() if srv.access().count("\n") >= 4
                           else None, 10, "four access lines")
    for logged in ('"GET /app/s HTTP/1.1" 400 ', '"GET /app/e HTTP/1.1" 417 ',
                   '"GET /other?x=1 HTTP/1.1" 500 ', '"GET /app/hello HTTP/1.1" 200 '):
        assert any(logged in line for line in lines), (logged, lines)
    assert not any("/app/bad" in line for line in lines), lines


def test_stack_dump_on_sigurg(tmp_path):
    with Gunicorn("apps:router", "--threads", "2", env={"AIOWSGI_TEST_MARKS": str(tmp_path)}) as srv:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(get, srv, "/slow?s=2&mark=busy")
            assert read_mark(tmp_path / "busy") == "started\n"  # in the app, holding a thread
            os.kill(srv.worker_pid(), signal.SIGURG)
            srv.wait_log("Stack dump requested (SIGURG): 1 of 2 app threads busy")
            srv.wait_log(
                re.compile(r"App thread \d+ serving GET /slow\?s=2&mark=busy \(\d+\.\ds\):"))
            assert (tmp_path / "busy").read_text() == "started\n"  # dumped while it was busy
            assert busy.result(timeout=10)[0] == 200
        assert "time.sleep" in srv.log()


def test_stack_dump_on_abort_then_master_replaces_worker(tmp_path):
    with Gunicorn("apps:router", "--threads", "1", env={"AIOWSGI_TEST_MARKS": str(tmp_path)}) as srv:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: _swallow(get, srv, "/slow?s=3&mark=busy"))
            assert read_mark(tmp_path / "busy") == "started\n"  # the only thread is busy
            old = srv.worker_pid()
            os.kill(old, signal.SIGABRT)
            srv.wait_log("Worker timed out (SIGABRT): 1 of 1 app threads busy")
            srv.wait_log("serving GET /slow?s=3&mark=busy")
            srv.wait_workers(1, exclude=(old,))


def _swallow(fn, *args):
    try:
        return fn(*args)
    except (ConnectionError, socket.timeout, OSError):
        return None
