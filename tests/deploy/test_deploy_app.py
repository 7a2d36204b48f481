"""deploy/example_app.py: a valid WSGI app, and under the worker its streams really stream."""

from __future__ import annotations

import json
import threading
import time

import pytest
from deploy_helpers import DEPLOY, assert_streamed, call, load_example, read_sse
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
        for t in threads:
            t.start()
        first.wait()  # all three streams are open and have sent their first event
        assert get(server, "/healthz")[0] == 200
        healthz_answered = time.time()
        for t in threads:
            t.join(20)

        produced = []  # each stream's event stamps, by the app's clock
        for status, headers, events in results:
            assert status == 200 and headers["content-type"].startswith("text/event-stream")
            assert [e["id"] for _, e in events] == [str(n) for n in range(1, 11)]
            assert_streamed(events)
            produced.append([json.loads(e["data"])["time"] for _, e in events])
        # Side by side: every stream had begun before any had ended (one after another, the
        # second would begin only after the first had ended).
        assert max(p[0] for p in produced) < min(p[-1] for p in produced), produced
        # And /healthz had its answer while all three streams were still running.
        assert healthz_answered < min(p[-1] for p in produced), "/healthz waited for a stream"
        wait_until(
            lambda: server.access().count('"GET /stream HTTP/1.1" 200') == 3,
            5,
            "three /stream lines in the access log",
        )
