"""AIOWSGI_QUEUE_LIMIT counts the calls that wait for a thread, not those whose client left, in
memory: a fake transport per client, a real loop and a real one-thread pool."""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from memory import Harness, get, post

from gunicorn_aiowsgi.bridge import ThreadPool
from gunicorn_aiowsgi.diagnostics import Monitor

pytestmark = pytest.mark.timeout(60)


class Slow:
    """/slow holds the only thread until `go`; every path is recorded when the app runs it."""

    def __init__(self) -> None:
        self.started, self.go = threading.Event(), threading.Event()
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        self.paths.append(path)
        environ["wsgi.input"].read()
        if path == "/slow":
            self.started.set()
            self.go.wait(10)
        start_response("200 OK", [("Content-Length", str(len(path)))])
        return [path.encode()]


def status(client: Any) -> int | None:
    """The status of the first response written to a client, None while there is none."""
    written = bytes(client.transport.written)
    return int(written.split(b" ", 2)[1]) if written else None


class Gauges:
    """A statsd logger's gauge, recorded (what gunicorn's Statsd logger gets each heartbeat)."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def gauge(self, name: str, value: int) -> None:
        self.values[name.rsplit(".", 1)[1]] = value

    def warning(self, *_args: Any) -> None:
        pass


# --threads 1, /slow holding the thread; `gone` clients sent a request each (half of them with a
# body in memory, half with one spooled) and reset; `live` clients wait. Then a canary and a
# health probe (AIOWSGI_HEALTH_QUEUE_FULL).
@pytest.mark.parametrize("limit, connections, gone, live, canary", [
    pytest.param(2, 100, 0, 0, 200, id="idle-queue"),
    pytest.param(2, 100, 6, 0, 200, id="clients-gone-do-not-count"),
    pytest.param(2, 100, 6, 1, 200, id="one-live-behind-six-gone"),
    pytest.param(2, 100, 0, 2, 503, id="live-clients-fill-it"),
    pytest.param(2, 100, 6, 2, 503, id="live-clients-fill-it-whoever-left"),
    # Cancelled calls stay in the queue until a thread skips them: at most worker_connections
    # of them besides the limit, or a flood of resets would grow it while the threads are stuck.
    pytest.param(2, 6, 5, 0, 200, id="gone-held-under-the-bound"),
    pytest.param(2, 4, 6, 0, 503, id="too-many-gone-held"),
    pytest.param(0, 4, 6, 3, 200, id="no-limit"),
])
def test_calls_whose_clients_left_do_not_fill_the_queue(limit, connections, gone, live, canary):
    app, pool = Slow(), ThreadPool(1)
    h = Harness(app, pool=pool, threads=1, queue_limit=limit, worker_connections=connections,
                body_memory_limit=1000, health_path="/healthz", health_queue_full=True)
    try:
        h.feed(get("/slow"))
        h.until(app.started.is_set, "/slow to hold the only thread")
        for index in range(gone):  # each queued (none refused), then its client resets
            client = h.connect()
            client.feed(post(f"/gone{index}", b"g" * (100 if index % 2 else 2000)))
            # In the queue (a spooled body once the writer has it all), not refused.
            h.until(lambda index=index: pool.held == index + 1, "the call queued")
            assert status(client) is None
            client.conn.connection_lost(ConnectionResetError())
        waiting = [h.connect() for _ in range(live)]
        for client in waiting:
            client.feed(get("/live"))
        assert all(status(client) is None for client in waiting)
        h.settle()
        assert h.ctx.queued == live and pool.held == gone + live
        # Their bodies are let go at once, not when the thread reaches them: memory now, the
        # spooled files once the writer has closed them.
        assert h.spools.in_memory == 0
        h.until(lambda: h.spools.used == 0, "the spooled bodies' files closed")
        gauges = Gauges()
        Monitor(pool, SimpleNamespace(ctx=h.ctx, conns={}), gauges, 0).tick(0.0)
        assert gauges.values["queued_requests"] == live and gauges.values["busy_threads"] == 1

        probe = h.connect()
        probe.feed(get("/healthz"))
        assert status(probe) == (503 if canary == 503 else 200)
        last = h.connect()
        last.feed(get("/canary"))
        if canary == 503:
            assert status(last) == 503 and b"overloaded" in bytes(last.transport.written)
        else:
            assert status(last) is None  # queued, not refused
        app.go.set()
        h.until(lambda: all(status(c) is not None for c in [last, *waiting]), "every answer")
        assert status(last) == canary and all(status(c) == 200 for c in waiting)
        assert not any(path.startswith("/gone") for path in app.paths)  # skipped, never run
        h.until(lambda: pool.inflight == 0, "the queue to drain")
        assert (pool.queued, pool.held, h.ctx.queued) == (0, 0, 0)
    finally:
        app.go.set()
        h.close()
        pool.shutdown(1)


@contextlib.contextmanager
def one_thread(**settings: Any) -> Iterator[tuple[Slow, ThreadPool, Harness]]:
    """--threads 1 serving Slow: (app, pool, harness), all closed whatever the test asserted."""
    app, pool = Slow(), ThreadPool(1)
    h = Harness(app, pool=pool, threads=1, **settings)
    try:
        yield app, pool, h
    finally:
        app.go.set()
        h.close()
        pool.shutdown(1)


def test_a_call_cancelled_before_its_hand_over_is_not_counted():
    """A call parsed in this loop turn waits in the context's pending list until the turn ends;
    its client leaving in the same turn cancels it there: the queue counts it at no point."""
    with one_thread(queue_limit=1) as (app, pool, h):
        h.feed(get("/slow"))
        h.until(app.started.is_set, "/slow to hold the only thread")
        client = h.connect()
        client.conn.data_received(get("/gone"))  # no settle: still pending
        assert len(h.ctx.pending) == 1 and h.ctx.queued == 1
        client.conn.connection_lost(ConnectionResetError())
        assert h.ctx.queued == 0 and not h.ctx.queue_full()
        h.settle()  # the hand-over: submitted, cancelled, counted once
        assert h.ctx.queued == 0 and pool.held == 1
        canary = h.connect()
        canary.feed(get("/canary"))
        assert status(canary) is None  # queued behind /slow, not refused
        app.go.set()
        h.until(lambda: status(canary) == 200, "the canary's answer")
        assert "/gone" not in app.paths


def test_a_call_a_thread_took_but_has_not_counted_still_counts_toward_the_limit():
    # Between a thread's get() from the queue and its started count (taken under the pool's
    # lock), a call has left the queue's size but still waits: dispatch's first look (the
    # queue's size) must not let a request past the limit then. The window is held open here
    # by holding the lock the thread takes next.
    with one_thread(queue_limit=1) as (app, pool, h):
        running, waiting, third = h.connect(), h.connect(), h.connect()
        running.feed(get("/slow"))
        h.until(lambda: pool.busy == 1, "/slow running")
        waiting.feed(get("/waiting"))
        pool._lock.acquire()
        try:
            app.go.set()
            h.until(lambda: pool.held == 0, "the thread taking /waiting off the queue")
            third.feed(get("/third"))
            assert status(third) == 503
        finally:
            pool._lock.release()
        h.until(lambda: status(waiting) == 200, "/waiting served")
        assert "/third" not in app.paths
