"""statsd: the worker's gauges say what it holds, its counters count what it refused, each with
its value (README, Metrics), beside gunicorn's own request metrics; an unreachable statsd is
one warning line."""

from __future__ import annotations

import concurrent.futures
import socket

import pytest
from server import (
    Conn,
    Gunicorn,
    Statsd,
    get,
    open_files,
    open_gate,
    read_mark,
    wait_heartbeats,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

MIB = 1024 * 1024


def upload_head(length: int, expect: bool = False) -> bytes:
    return (f"POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n"
            + ("Expect: 100-continue\r\n" if expect else "") + "\r\n").encode()


def test_gauges_say_what_the_worker_holds_and_overload_503_counts_each_refusal(tmp_path):
    """--threads 1, AIOWSGI_QUEUE_LIMIT 1. Idle, every gauge is 0. A request held in the app:
    busy_threads 1, connections 1. One more, waiting for the thread: queued_requests 1,
    connections 2. The next is refused 503: overload_503 1. Once the held one is let go, the
    gauges are back to 0, and gunicorn's request counters saw the two 200s and the 503."""
    env = {"AIOWSGI_QUEUE_LIMIT": "1", "AIOWSGI_TEST_MARKS": str(tmp_path)}
    with Statsd() as statsd, Gunicorn("apps:router", "--threads", "1", "--statsd-host",
                                      statsd.address, env=env) as srv:
        prefix = f"aiowsgi.{srv.worker_pid()}."

        def gauges() -> tuple:  # (busy_threads, queued_requests, connections), latest values
            return tuple(statsd.last(prefix + name)
                         for name in ("busy_threads", "queued_requests", "connections"))

        wait_until(lambda: gauges() == (0, 0, 0), 10, "the idle worker's gauges")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = pool.submit(get, srv, "/gate?mark=held")
            assert read_mark(tmp_path / "held") == "started\n"
            wait_until(lambda: gauges() == (1, 0, 1), 10, "busy_threads and connections 1")
            waiting = pool.submit(get, srv, "/hello")
            wait_until(lambda: gauges() == (1, 1, 2), 10, "a request queued for the thread")
            assert get(srv, "/hello")[::2] == (503, b"overloaded\n")
            wait_until(lambda: statsd.total(prefix + "overload_503") == 1, 10, "the 503 counted")
            assert (tmp_path / "held").read_text() == "started\n"  # all while the thread was held
            open_gate(tmp_path / "held")
            assert [held.result(timeout=30)[0], waiting.result(timeout=30)[0]] == [200, 200]
        wait_until(lambda: gauges() == (0, 0, 0), 10, "the gauges back to 0")
        wait_until(lambda: statsd.total("gunicorn.requests") == 3, 10, "gunicorn's request counter")
        assert statsd.total("gunicorn.request.status.200") == 2
        assert statsd.total("gunicorn.request.status.503") == 1
        assert statsd.total(prefix + "overload_503") == 1


def test_spool_full_503_request_timeouts_and_skipped_requests_count_each_one(tmp_path):
    """An upload holds part of the spool budget; a head announcing the whole budget is refused
    503: spool_full_503 1. A request held in the app and one queued behind it are both answered
    504: request_timeouts 2; once the thread is free it skips the queued one: skipped_requests 1."""
    where = tmp_path / "spool"
    where.mkdir()
    conf = tmp_path / "spool.conf.py"
    conf.write_text(f"tmp_upload_dir = {str(where)!r}\n")
    budget = 8 * MIB
    env = {"AIOWSGI_SPOOL_BUDGET": str(budget), "AIOWSGI_REQUEST_TIMEOUT": "1",
           "AIOWSGI_TEST_MARKS": str(tmp_path)}
    with Statsd() as statsd, Gunicorn("apps:router", "--threads", "1", "--statsd-host",
                                      statsd.address, config=str(conf), env=env) as srv:
        pid = srv.worker_pid()
        prefix = f"aiowsgi.{pid}."
        with Conn.to(srv) as hog:
            hog.send(upload_head(budget, expect=True))
            assert hog.readline() == b"HTTP/1.1 100 Continue\r\n"
            hog.send(b"h")  # one byte of the budget taken: its spool file is open
            wait_until(lambda: len(open_files(pid, str(where))) == 1, 10, "the hog's spool file")
            with Conn.to(srv) as conn:
                conn.send(upload_head(budget, expect=True))
                status, headers, _body = conn.response()
                assert (status, headers["retry-after"]) == (503, "1")
        wait_until(lambda: statsd.total(prefix + "spool_full_503") == 1, 10, "the 503 counted")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = pool.submit(get, srv, "/gate?mark=held")
            assert read_mark(tmp_path / "held") == "started\n"
            queued = pool.submit(get, srv, "/hello")
            assert [held.result(timeout=30)[0], queued.result(timeout=30)[0]] == [504, 504]
        wait_until(lambda: statsd.total(prefix + "request_timeouts") == 2, 10, "two 504s counted")
        open_gate(tmp_path / "held")
        wait_until(lambda: statsd.total(prefix + "skipped_requests") == 1, 10, "the skip counted")
        assert get(srv, "/hello")[0] == 200
        assert [statsd.total(prefix + name) for name in
                ("spool_full_503", "request_timeouts", "skipped_requests", "overload_503",
                 "no_fd_503")] == [1, 2, 1, 0, 0]


def test_no_fd_503_counts_an_upload_with_no_descriptor_left(tmp_path):
    """The app holds every descriptor the worker has left (tests/ops/test_descriptors.py): the
    next upload on that connection cannot open its spool file, 503, counted in no_fd_503."""
    env = {"AIOWSGI_BODY_MEMORY_LIMIT": "1024", "AIOWSGI_STREAMED_BODIES": "0"}
    data = b"x" * 4096
    with Statsd() as statsd, Gunicorn("apps:router", "--threads", "1", "--statsd-host",
                                      statsd.address, env=env, nofile=(256, 256)) as srv:
        prefix = f"aiowsgi.{srv.worker_pid()}."
        with Conn.to(srv) as conn:
            conn.send(b"GET /descriptors?take=all HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = conn.response()
            assert status == 200 and int(body) > 100
            conn.send(upload_head(len(data)) + data)
            assert conn.response()[0] == 503
        wait_until(lambda: statsd.total(prefix + "no_fd_503") == 1, 10, "the 503 counted")
        with Conn.to(srv) as conn:  # the descriptors back
            conn.send(b"GET /descriptors HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.response()[::2] == (200, b"0")
        assert statsd.total(prefix + "spool_full_503") == 0


def closed_udp_port() -> int:
    """A loopback UDP port nobody listens on: each send there comes back refused (ICMP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return udp.getsockname()[1]


@pytest.mark.parametrize("timeout", ["30", "0"])
def test_an_unreachable_statsd_is_one_warning_not_one_per_gauge(timeout):
    """statsd down: gunicorn's Statsd logger logs each failed send as a warning with a traceback,
    and the worker's gauges go out every second (20 times a second at --timeout 0 before, where
    the heartbeat was 0.05 s). An idle gthread worker sends nothing; ours says it once, one line,
    and its gauges pause. --timeout 0 (no master timeout) keeps a 1 s heartbeat."""
    port = closed_udp_port()
    with Gunicorn("apps:hello", "--timeout", timeout, "--statsd-host", f"127.0.0.1:{port}") as srv:
        pid = srv.worker_pid()
        srv.wait_log("Cannot send the worker's metrics to statsd (ConnectionRefusedError")
        wait_heartbeats(pid, 4)  # 4 s at least: a gauge round per second before the fix
        lines = [line for line in srv.log().splitlines() if f"[{pid}] [" in line]  # the worker's
        warnings = [line for line in lines if "[WARNING]" in line or "[ERROR]" in line]
        assert len(warnings) == 1, "\n".join(lines)
        assert "Error sending message to statsd" not in "\n".join(lines)
        assert get(srv, "/")[0] == 200
