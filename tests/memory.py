"""In-memory harness for the connection: a fake transport, an inline pool, a real loop; no socket, no master."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from gunicorn_aiowsgi.context import Context
from gunicorn_aiowsgi.diagnostics import Monitor
from gunicorn_aiowsgi.environ import base_environ
from gunicorn_aiowsgi.files import FileWrapper
from gunicorn_aiowsgi.protocol import Connection
from gunicorn_aiowsgi.settings import Settings
from gunicorn_aiowsgi.spool_store import SpoolStore


class FakeTransport:
    """What asyncio's transport offers a protocol, recording what the connection does with it.

    Its client takes every byte at once, unless `slow`: then written bytes wait (`pending`)
    until the test lets the client take them (`take`), and the protocol is paused and resumed
    at the write buffer limits the connection set, as asyncio's transports do.
    """

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.peer = peer
        self.sock: Any = None  # a test may give a real socket: what the loop has not read yet
        self.protocol: Any = None  # told when writing pauses and resumes
        self.slow = False
        self.pending = 0          # bytes written that the client has not taken (when slow)
        self.high, self.low = 65536, 16384
        self.paused = False       # the protocol was told to pause writing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {"peername": self.peer, "sockname": ("127.0.0.1", 8000), "socket": self.sock}
        return extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.high, self.low = high, high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self.pending

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data
        if self.slow:
            self.pending += len(data)
            if self.pending > self.high and not self.paused:
                self.paused = True
                self.protocol.pause_writing()

    def take(self, size: int | None = None) -> None:
        """The client reads `size` bytes (all of them if None) of what waits for it."""
        self.pending -= self.pending if size is None else min(size, self.pending)
        if self.paused and self.pending <= self.low:
            self.paused = False
            self.protocol.resume_writing()

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock a test moves forward (Harness.advance): timers fire without
    waiting for them, and real waits (Harness.wait, until) still work beside them."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0.0  # seconds the test moved the clock forward

    def time(self) -> float:
        return super().time() + self.skipped


class InlinePool:
    """Runs each app call at once on the caller's thread: deterministic, no thread needed."""

    size = 1
    queued = 0
    held = 0
    busy = 0

    def submit(self, job: Any) -> None:
        job.run()

    def cancel(self, job: Any, state: Any) -> bool:
        return False  # run at once: never still queued

    def jobs(self) -> list[Any]:
        return []


class Log:
    """gunicorn's logger methods the worker calls, recorded as (level, message)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}

    def _add(self, level: str, msg: str, *args: Any, **_kw: Any) -> None:
        self.lines.append((level, msg % args if args else msg))

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self._add("debug", msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self._add("info", msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self._add("warning", msg, *args, **kw)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self._add("error", msg, *args, **kw)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        self._add("exception", msg, *args, **kw)

    def access(self, *args: Any) -> None:
        pass

    def increment(self, name: str, value: int, *_args: Any) -> None:
        """A statsd counter (the worker's Monitor counts through it), recorded by its last part."""
        key = name.rpartition(".")[2]
        self.counts[key] = self.counts.get(key, 0) + value


class Cfg:
    @staticmethod
    def pre_request(worker: Any, req: Any) -> None:
        pass

    @staticmethod
    def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
        pass


class FakeWorker:
    cfg = Cfg()

    def __init__(self) -> None:
        self.served = 0

    def request_started(self) -> None:
        self.served += 1


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Answers "METHOD PATH body" so that every response names the request it answers."""
    body = environ["wsgi.input"].read()
    text = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} ".encode() + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(text)))])
    return [text]


class Opened:
    """What tests opened and must close whatever they asserted: harnesses (a loop, a spool
    writer thread each) and thread pools. A test module keeps one; its fixture closes it."""

    def __init__(self) -> None:
        self.harnesses: list[Harness] = []
        self.pools: list[Any] = []

    def add(self, h: "Harness") -> "Harness":
        self.harnesses.append(h)
        return h

    def pool(self, threads: int) -> Any:
        from gunicorn_aiowsgi.bridge import ThreadPool
        pool = ThreadPool(threads)
        self.pools.append(pool)
        return pool

    def close(self) -> None:
        while self.harnesses:
            self.harnesses.pop().close()
        while self.pools:
            self.pools.pop().shutdown(1)


class Harness:
    """One Connection on a FakeTransport inside a real (not running) event loop."""

    def __init__(self, app: Callable[..., Any] = echo_app, pool: Any = None, clock: bool = False,
                 **settings: Any) -> None:
        # `clock`: a loop whose clock the test moves (advance), for timeouts without waiting.
        self.loop = ClockLoop() if clock else asyncio.new_event_loop()
        self.settings = Settings(**settings)
        self.log = Log()
        self.worker = FakeWorker()
        # A real ThreadPool for an app that must run beside the loop (one reading a body
        # while it arrives); inline otherwise.
        pool = InlinePool() if pool is None else pool
        self.spools = SpoolStore(self.loop, self.settings)  # its writer thread idles unless spooling
        self.ctx = Context(self.settings, self.loop, self.log, pool, app,
                           base_environ(self.settings, None, FileWrapper), self.worker,
                           Monitor(pool, self, self.log, 0), self.spools)
        self.clients: list[Client] = []     # further connections on the same worker (connect)
        self.transport = FakeTransport()
        self.conn = Connection(self.ctx)
        self.transport.protocol = self.conn
        self.conn.connection_made(self.transport)

    def feed(self, *pieces: bytes) -> "Harness":
        """Deliver each piece as one read, letting the loop run its callbacks between reads."""
        for piece in pieces:
            if not self.transport.closed:
                self.conn.data_received(piece)
            self.settle()
        return self

    def eof(self) -> "Harness":
        if not self.conn.eof_received():
            self.transport.close()
        self.settle()
        return self

    def settle(self, turns: int = 5) -> None:
        for _ in range(turns):
            self.loop.run_until_complete(asyncio.sleep(0))

    def advance(self, seconds: float) -> None:
        """Move the loop's clock `seconds` forward (Harness(clock=True)); due timers fire."""
        assert isinstance(self.loop, ClockLoop), "Harness(clock=True) moves its clock"
        self.loop.skipped += seconds
        self.settle()

    def wait(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def until(self, ready: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Run the loop until `ready()` (app threads at work beside it), or fail naming `what`."""
        deadline = self.loop.time() + timeout
        while not ready():
            assert self.loop.time() < deadline, f"timed out waiting for {what}"
            self.wait(0.002)

    def connect(self, handshake: float = 0.0) -> "Client":
        """Another client's connection on the same worker context (shared pool, slots, budget);
        `handshake`: seconds a TLS handshake takes before it is made (a clock harness only)."""
        client = Client(self, 40001 + len(self.clients), handshake)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for conn in [self.conn, *(client.conn for client in self.clients)]:
            conn.connection_lost(None)
        self.spools.shutdown(timeout=1)
        self.loop.close()

    def responses(self) -> list[tuple[int, bytes]]:
        """(status, body) of every complete response written, in order (Content-Length framed)."""
        return responses_in(bytes(self.transport.written))


class Client:
    """One more connection on a Harness's worker (Harness.connect), with a transport of its own."""

    def __init__(self, harness: Harness, port: int, handshake: float = 0.0) -> None:
        self.harness = harness
        self.transport = FakeTransport(("127.0.0.1", port))
        self.conn = Connection(harness.ctx)
        if handshake:  # asyncio builds the protocol on accept, makes it once the handshake is done
            harness.advance(handshake)
        self.transport.protocol = self.conn
        self.conn.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        """Deliver one read, then let the loop run its callbacks."""
        self.conn.data_received(data)
        self.harness.settle()

    def responses(self) -> list[tuple[int, bytes]]:
        return responses_in(bytes(self.transport.written))


def responses_in(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of every complete response in `data`, in order (Content-Length framed)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


# -- requests as bytes, and reads of them ------------------------------------------------------
def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(path: str, *chunks: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def splits(data: bytes) -> list[list[bytes]]:
    """The data as two reads, split at every byte boundary (and once whole)."""
    return [[data]] + [[data[:i], data[i:]] for i in range(1, len(data))]
