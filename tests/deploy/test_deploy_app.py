"""deploy/example_app.py: a valid WSGI app, and under the worker its streams really stream."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from deploy_helpers import DEPLOY, call, load_example, read_sse
from server import Gunicorn, get, wait_until


@pytest.fixture
def example(monkeypatch):
    module = load_example()
    monkeypatch.setattr(module, "INTERVAL", 0)
    return module


def test_routes(example):
    status, headers, body = call(example.app, "/")
    assert (
        status == 200
        and headers["Content-Type"].startswith("text/plain")
        and b"Hello" in b"".join(body)
    )
    assert call(example.app, "/healthz")[::2] == (200, [b"ok\n"])
    assert call(example.app, "/nope")[0] == 404
    assert call(example.app, "/", "POST")[0] == 405
    assert call(example.app, "/healthz", "HEAD")[0] == 200


def test_stream_yields_one_event_per_chunk(example):
    status, headers, chunks = call(example.app, "/stream")
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
    assert len(chunks) == example.EVENTS == 10
    for n, chunk in enumerate(chunks, 1):
        assert (
            chunk.startswith(f"id: {n}\n".encode())
            and chunk.endswith(b"\n\n")
            and chunk.count(b"\n\n") == 1
        )
    assert example.INTERVAL == 0  # patched; the real module says 0.5
    assert load_example().INTERVAL == 0.5


def test_quickstart_command_serves_and_streams_in_threads():
    """The README's first command (`--threads 4 --chdir deploy example_app:app`): three streams
    at once take the time of one, each event on its own, and /healthz still answers meanwhile."""
    with Gunicorn("example_app:app", "--threads", "4", "--chdir", str(DEPLOY)) as server:
        status, _, body = get(server, "/")
        assert (status, body) == (200, b"Hello from gunicorn-aiowsgi!\n")

        results: list = [None] * 3
        first = threading.Barrier(4, timeout=10)

        def consume(i: int) -> None:
            results[i] = read_sse(
                server.host, server.port, on_event=lambda n: first.wait() if n == 0 else None
            )

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
        start = time.monotonic()
        for t in threads:
            t.start()
        first.wait()  # all three streams are open and have sent their first event
        t0 = time.monotonic()
        assert get(server, "/healthz")[0] == 200
        assert time.monotonic() - t0 < 1.0, "a free thread should answer /healthz at once"
        for t in threads:
            t.join(20)
        elapsed = time.monotonic() - start

        for status, headers, events in results:
            assert status == 200 and headers["content-type"].startswith("text/event-stream")
            assert [e["id"] for _, e in events] == [str(n) for n in range(1, 11)]
            times = [t for t, _ in events]
            assert times[-1] - times[0] >= 3.0, "events came in a burst, not as they were yielded"
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= 0.25, gaps
        assert elapsed < 8.0, f"3 streams of 4.5 s took {elapsed:.1f}s: not run side by side"
        wait_until(
            lambda: server.access().count('"GET /stream HTTP/1.1" 200') == 3,
            5,
            "three /stream lines in the access log",
        )
