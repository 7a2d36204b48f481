"""In-loop tests (no subprocess): the thread rule and the bridge, with the real server on a real socket."""

from __future__ import annotations

import asyncio
import io
import tempfile
import threading

import pytest
from inloop import fetch, serving

pytestmark = pytest.mark.timeout(60)


def stream_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return (b"chunk %d\n" % i for i in range(200))


def big_app(environ, start_response):
    start_response("200 OK", [])
    return (b"b" * 1_000_000 for _ in range(20))


def file_app(environ, start_response):
    start_response("200 OK", [])
    f = tempfile.TemporaryFile()
    f.write(b"f" * 500_000)
    f.seek(0)
    return environ["wsgi.file_wrapper"](f)


def writer_app(environ, start_response):
    write = start_response("200 OK", [])
    for i in range(50):
        write(b"w%d" % i)
    return [b"end"]


def list_app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def test_app_threads_never_write_to_a_transport(monkeypatch):
    """Every transport write of every response kind happens on the loop's own thread."""
    writers: set[int] = set()
    transport_cls = None

    async def run() -> None:
        nonlocal transport_cls
        loop_thread = threading.get_ident()
        apps = {b"/s": stream_app, b"/b": big_app, b"/f": file_app, b"/w": writer_app, b"/l": list_app}

        def router(environ, start_response):
            return apps[environ["PATH_INFO"].encode()](environ, start_response)

        async with serving(router, threads=4) as (worker, port):
            # Instrument the transport class the loop really uses for accepted sockets.
            reader, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            for conn in list(worker.server.conns):
                transport_cls = type(conn.transport)
            cls = transport_cls
            original_write = cls.write

            def write(self, data):
                writers.add(threading.get_ident())
                return original_write(self, data)

            monkeypatch.setattr(cls, "write", write)
            results = await asyncio.gather(*(
                fetch(port, b"GET %s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % path)
                for path in apps))
            for data in results:
                assert data.startswith(b"HTTP/1.1 200 OK")
        assert writers == {loop_thread}, writers

    asyncio.run(run())
    assert transport_cls is not None


def _listening_channel(loop, limit):
    """A Channel whose listener wakes an asyncio.Event; returns (channel, next_batch coroutine)."""
    from gunicorn_aiowsgi.bridge import Channel, Inbox

    ready = asyncio.Event()
    channel = Channel(Inbox(loop), limit, ready.set)

    async def next_batch():
        while True:
            batch = channel.take()
            if batch:
                return batch
            ready.clear()
            await ready.wait()

    return channel, next_batch


def test_channel_backpressure_bounds_inflight():
    """A producer thread far faster than the consumer waits on credit instead of queueing."""
    from gunicorn_aiowsgi.messages import Data, End

    async def run() -> int:
        loop = asyncio.get_running_loop()
        channel, next_batch = _listening_channel(loop, 64 * 1024)
        peak = 0

        def produce() -> None:
            for _ in range(200):
                channel.put(Data((b"x" * 16384,), 16384))
            channel.put(End(b"", True), wait=False)

        thread = threading.Thread(target=produce)
        thread.start()
        done = False
        while not done:
            batch = await next_batch()
            peak = max(peak, channel.inflight)
            for item in batch:
                if isinstance(item, End):
                    done = True
                else:
                    await asyncio.sleep(0.001)  # a slow socket
                    channel.release(item.size)
        thread.join()
        return peak

    peak = asyncio.run(run())
    assert peak <= 64 * 1024 + 16384


def test_closed_channel_stops_the_producer():
    from gunicorn_aiowsgi.errors import ClientDisconnected
    from gunicorn_aiowsgi.messages import Data

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        channel, next_batch = _listening_channel(loop, 1024)
        outcome: list[str] = []

        def produce() -> None:
            try:
                while True:
                    channel.put(Data((b"x" * 1024,), 1024))
            except ClientDisconnected:
                outcome.append("stopped")

        thread = threading.Thread(target=produce)
        thread.start()
        await next_batch()
        channel.close()  # the client went away
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 5)
        return outcome

    assert asyncio.run(run()) == ["stopped"]


def test_input_is_plain_bytesio_for_small_bodies():
    seen = []

    def app(environ, start_response):
        seen.append((type(environ["wsgi.input"]), environ["wsgi.input"].read()))
        start_response("204 No Content", [])
        return []

    async def run() -> None:
        async with serving(app) as (_worker, port):
            await fetch(port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
            await fetch(port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")

    asyncio.run(run())
    assert seen == [(io.BytesIO, b"abc"), (io.BytesIO, b"")]


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_both_loops_read_through_a_plain_protocol(loop_kind):
    """The connection takes each read as the bytes the loop made (no buffer of ours to copy
    out of): a 3 MB body and a pipelined request behind it arrive whole and in order."""
    from gunicorn_aiowsgi.protocol import Connection

    seen = []

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        seen.append((environ["PATH_INFO"], len(body), body[:1], body[-1:]))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    body = b"a" + b"x" * 2_999_998 + b"z"
    raw = (b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 3000000\r\n\r\n" + body
           + b"GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")

    async def run() -> None:
        async with serving(app) as (worker, port):
            data = await fetch(port, raw)
            assert data.count(b"HTTP/1.1 200 OK") == 2
            assert worker.server is not None and isinstance(worker.server(), Connection)

    if loop_kind == "uvloop":
        import uvloop  # a test dependency (pyproject's `test` extra): never skipped

        uvloop.run(run())
    else:
        asyncio.run(run())
    assert issubclass(Connection, asyncio.Protocol)
    assert not issubclass(Connection, asyncio.BufferedProtocol)
    assert seen == [("/big", 3_000_000, b"a", b"z"), ("/next", 0, b"", b"")]
