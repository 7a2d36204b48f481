"""File descriptors: the open file limit raised at boot for worker_connections (a socket and a spool file each), a warning when it cannot be, and a 503 to retry, not a 500, for an upload that finds none left."""

from __future__ import annotations

import hashlib

import pytest
from server import Conn, Gunicorn, open_file_limit

pytestmark = pytest.mark.timeout(90)

SHORT = "may need 2064 file descriptors"  # worker_connections 1000: 2 each, and 64 of its own


def post(data: bytes) -> bytes:
    return (b"POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(data)) + data


def test_the_worker_raises_its_soft_open_file_limit_for_worker_connections():
    """ulimit -n 256 under a higher hard limit: the worker raises its soft limit to what 1000
    connections with a spool file each may need, and says so in one line, with no warning."""
    with Gunicorn("apps:hello", nofile=(256, 4096)) as srv:
        pid = srv.worker_pid()
        log = srv.wait_log("Open file limit (RLIMIT_NOFILE) raised from 256 to 2064")
        assert open_file_limit(pid) == (2064, 4096)
        assert open_file_limit(srv.pid) == (256, 4096)  # the master's is its own
        assert SHORT not in log and "[WARNING]" not in log


def test_a_hard_limit_too_low_for_worker_connections_is_one_warning():
    with Gunicorn("apps:hello", nofile=(256, 256)) as srv:
        pid = srv.worker_pid()
        log = srv.wait_log(SHORT)
        assert log.count(SHORT) == 1 and log.count("[WARNING]") == 1, log
        assert "is 256 (hard limit 256)" in log
        assert "set worker_connections to 96 or less" in log  # (256 - 64) / 2
        assert open_file_limit(pid) == (256, 256)


def test_an_upload_with_no_descriptor_left_for_its_spool_file_gets_503_to_retry():
    """The app holds every descriptor the worker has left; the next upload on the same connection
    (no new socket to accept) cannot open its spool file: that is load, like a full spool budget
    (503, Retry-After, a warning without a traceback), not a server fault (500, ERROR)."""
    env = {"AIOWSGI_BODY_MEMORY_LIMIT": "1024", "AIOWSGI_STREAMED_BODIES": "0"}
    data = b"x" * 4096
    with Gunicorn("apps:router", "--threads", "1", env=env, nofile=(256, 256)) as srv:
        with Conn.to(srv) as conn:
            conn.send(b"GET /descriptors?take=all HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = conn.response()
            assert status == 200 and int(body) > 100
            conn.send(post(data))
            status, headers, body = conn.response()
            assert status == 503 and headers["retry-after"] == "1", body
        log = srv.wait_log("[WARNING] Out of file descriptors: cannot spool request body: "
                           "[Errno 24] Too many open files")
        assert "Error handling request" not in log and "Traceback" not in log
        # Closing that connection gave one descriptor back: enough to take the next.
        with Conn.to(srv) as conn:
            conn.send(b"GET /descriptors HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.response()[:3:2] == (200, b"0")
            conn.send(post(data))
            status, _, body = conn.response()
            assert (status, body) == (200, f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
        assert '"POST /digest HTTP/1.1" 503 ' in srv.access()
