"""Many requests do not grow the worker: its memory, threads and file descriptors plateau.

The CI run is bounded (40,000 requests after a 5,000-request warm-up); the million-request soak
runs with `AIOWSGI_SOAK=1 .venv/bin/pytest tests/robustness/test_soak.py` (README).
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
from server import Gunicorn, Usage, settle

SOAK = os.environ.get("AIOWSGI_SOAK") == "1"
TOTAL = 1_000_000 if SOAK else 40_000
WARMUP = 5_000
CONNECTIONS = 8
DEPTH = 16   # requests pipelined per round trip
REQUEST = b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
MARK = b"\r\n\r\nhello "  # a head ending and the app's body beginning: one per 200 from the app

pytestmark = pytest.mark.timeout(3600 if SOAK else 240)


def hammer(server: Gunicorn, count: int) -> None:
    """`count` requests over CONNECTIONS kept-alive sockets, DEPTH in flight on each."""
    errors: list[BaseException] = []

    def run(share: int) -> None:
        try:
            with socket.create_connection((server.host, server.port), timeout=30) as sock:
                done = 0
                while done < share:
                    batch = min(DEPTH, share - done)
                    sock.sendall(REQUEST * batch)
                    seen, tail = 0, b""
                    while seen < batch:
                        data = sock.recv(262144)
                        if not data:
                            raise ConnectionError("closed by the worker")
                        chunk = tail + data
                        seen += chunk.count(MARK)
                        tail = chunk[-(len(MARK) - 1):]
                    done += batch
        except Exception as exc:  # noqa: BLE001 - reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(count // CONNECTIONS,)) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]


def test_many_requests_do_not_grow_memory_threads_or_fds(start):
    server, _calls = start("robustness.robust_apps:hello", "--threads", "4", "--keep-alive", "60",
                           access_log=False, env={"ROBUST_CALLS": ""})
    pid = server.worker_pid()
    hammer(server, WARMUP)
    base = Usage.of(pid)
    samples = []
    for _ in range(8):
        hammer(server, TOTAL // 8)
        samples.append(Usage.of(pid))
    assert {s.threads for s in samples} == {base.threads}
    assert max(s.fds for s in samples) <= base.fds + CONNECTIONS  # a connection may linger
    growth = samples[-1].rss_kib - base.rss_kib
    late = samples[-1].rss_kib - samples[len(samples) // 2].rss_kib
    assert growth < 8 * 1024, f"RSS grew {growth} KiB over {TOTAL} requests"
    assert late < 2 * 1024, f"RSS still growing: {late} KiB over the last half"
    served = server.log().count("Traceback")
    assert served == 0, server.log()[-3000:]
    settle(pid, base)
