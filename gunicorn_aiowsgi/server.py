"""The loop side of a request: parse into environ, receive the body, hand off to a thread, relay the response."""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import os
import time
from email.utils import formatdate
from typing import Any, Callable

from aiohttp import web_server
from aiohttp.web_protocol import RequestHandler

from .application import AppCall, FileWrapper
from .body import BodySpool, SpoolFull, SpoolStore
from .bridge import ABORT, DATA, END, ERROR, FILE, HEAD, Channel, Inbox, JobState, ThreadPool
from .connection import CLOSE, KEEP, Connection, ConnState, Reply, error_reply, fail_body
from .diagnostics import Monitor, describe, thread_stack
from .environ import Peer, base_environ, build_environ
from .errors import BadRequest, GatewayTimeout, HTTPError
from .listener import unread_bytes
from .output import Output
from .records import RequestRecord
from .response import Framing, Head, render_head
from .settings import Settings

SERVER_HEADER = "gunicorn"
# What a write to a client that went away raises (aiohttp: ConnectionResetError, or RuntimeError
# from a closed transport; the loop's sendfile: OSError).
CLIENT_GONE = (ConnectionError, RuntimeError, OSError)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A connection accepted less than this long ago (seconds) is not closed as idle when draining:
# its client has just connected, and its first request is on the way.
FRESH_GRACE = 1.0


def resolve(future: asyncio.Future[Any], result: Any) -> None:
    """A body spool's answer, unless the request stopped waiting for it (cancelled)."""
    if not future.done():
        future.set_result(result)


class BodyTimeout(asyncio.TimeoutError):
    """No request body bytes arrived for body_timeout seconds."""


class Exchange:
    """One parsed request as aiohttp hands it to the handler: a light stand-in for BaseRequest.

    aiohttp's RequestHandler only needs `_cancel`, `_finish`, `_task` and `writer` of it.
    """

    __slots__ = ("message", "payload", "protocol", "writer", "_task", "call")

    def __init__(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> None:
        self.message = message
        self.payload = payload
        self.protocol = protocol
        self.writer = writer
        self._task = task
        self.call: AppCall | None = None  # once handed to the pool

    def _cancel(self, exc: BaseException) -> None:
        """aiohttp: the connection was lost while this request was being handled."""
        self.payload.set_exception(exc)
        if self.call is not None:
            # Still queued: it must never run for a client that is gone (its thread skips it).
            self.protocol.server.pool.cancel(self.call, JobState.GONE)

    def _finish(self) -> None:
        return None


def handler_options(settings: Settings) -> dict[str, Any]:
    """aiohttp RequestHandler options from gunicorn's limits (0 means gunicorn's maximum)."""
    line = settings.limit_request_line
    fields = settings.limit_request_fields
    options = {
        # Our Connection owns idle and head timeouts; aiohttp's own timer must never fire.
        "keepalive_timeout": 10.0 ** 9,
        "tcp_keepalive": True,
        "access_log": None,
        "lingering_time": 2.0,
        # Request body bytes aiohttp buffers before pausing the socket (its StreamReader limit;
        # it pauses at twice this): larger than the 64 KiB default so fast uploads need fewer
        # pause/resume round trips, still a small bound per connection.
        "read_bufsize": 256 * 1024,
        "auto_decompress": False,
        "max_line_size": 8190 if line <= 0 or line > 8190 else line,
        # gunicorn counts a whole field line, "Name: value\r\n"; aiohttp counts name + value.
        "max_field_size": max(1, (settings.limit_request_field_size
                                  if settings.limit_request_field_size > 0 else 8190) - 4),
        "max_headers": 32768 if fields <= 0 or fields > 32768 else fields,
    }
    accepted = inspect.signature(RequestHandler.__init__).parameters
    return {k: v for k, v in options.items() if k in accepted}


class Server(web_server.Server):
    """aiohttp's low-level server with our Connection protocol and the WSGI handler."""

    def __init__(self, worker: Any, settings: Settings, wsgi: Callable[..., Any], pool: ThreadPool,
                 loop: asyncio.AbstractEventLoop, log: Any, errors: Any) -> None:
        # Our handler and request factory are duck-typed stand-ins for aiohttp's BaseRequest and
        # StreamResponse: RequestHandler uses only what Exchange and Reply provide.
        super().__init__(self.handle, request_factory=Exchange,  # type: ignore[arg-type]
                         loop=loop, **handler_options(settings))
        self.worker = worker
        self.settings = settings
        self.wsgi = wsgi
        self.pool = pool
        self.loop = loop
        self.log = log
        self.base = base_environ(settings, errors, FileWrapper)
        self.can_sendfile = (settings.sendfile and not settings.is_ssl
                             and isinstance(loop, asyncio.BaseEventLoop))
        self.inbox = Inbox(loop)
        self.spools = SpoolStore(loop, settings)  # the body writer thread and the spool budget
        # Read per request: resolved once.
        self.health_path = settings.health_path
        self.queue_limit = settings.effective_queue_limit
        self.request_timeout = settings.request_timeout
        self.write_buffer = settings.write_buffer
        self.conns: set[Connection] = set()
        self.draining = False
        self.on_close: Callable[[], None] = lambda: None
        self.monitor = Monitor(pool, self, log, os.getpid())
        self._date = (0, "")

    def __call__(self) -> Connection:
        return Connection(self, **self._kwargs)

    # -- connections ---------------------------------------------------------------------
    def opened(self, conn: Connection) -> None:
        self.conns.add(conn)
        if conn.transport is not None:
            # asyncio pauses writers at 64 KiB; large streamed chunks then stall on every
            # one. Let the transport hold up to write_buffer before the relay waits.
            high = self.settings.write_buffer
            conn.transport.set_write_buffer_limits(high=high, low=high // 4)

    def closed(self, conn: Connection) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            self.on_close()

    def close_idle(self) -> None:
        """Graceful shutdown: idle keep-alive connections go at once; busy ones finish first.

        Spared (answered with Connection: close instead): one whose next request is already in
        the socket, and a new one that has had no chance yet to send its first request.
        """
        now = self.loop.time()
        for conn in list(self.conns):
            if conn.state not in (ConnState.IDLE, ConnState.PREAMBLE):
                continue
            fresh = not conn.requests and now - conn.since < FRESH_GRACE
            if fresh or unread_bytes(conn.transport):
                continue
            conn.force_close()

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.force_close()

    def log_client_error(self, peer: Peer | None, error: HTTPError) -> None:
        if error.client_error:
            self.log.warning("Invalid request from ip=%s: %s", peer.remote_addr if peer else "", error)
        else:
            self.log.error("Error handling request: %s", error)

    def http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    # -- the handler ---------------------------------------------------------------------
    async def handle(self, ex: Exchange) -> Reply:
        conn: Connection = ex.protocol
        if conn.state is not ConnState.BUSY:
            conn.enter(ConnState.BUSY)
        try:
            reply = await self.serve(ex, conn)
        except HTTPError as error:
            self.log_client_error(conn.peer, error)
            reply = error_reply(error, ex.message.method)
        conn.requests += 1
        if reply.keep_alive:
            conn.enter(ConnState.IDLE)
        return reply

    async def serve(self, ex: Exchange, conn: Connection) -> Reply:
        msg = ex.message
        started = time.time()
        if self.health_path and msg.path.partition("?")[0] == self.health_path:
            return self.health(msg)
        assert conn.peer is not None  # set in connection_made, before any byte is read
        environ, expect = build_environ(self.base, self.settings, conn.peer, msg.method,
                                        msg.path.encode("utf-8", "surrogateescape"),
                                        msg.version, msg.raw_headers)
        if not msg.chunked and environ.get("CONTENT_LENGTH", "0") in ("0", ""):
            environ["wsgi.input"] = io.BytesIO()  # no body: no coroutine to read one
        else:
            refused = await self.receive(ex, environ, expect)
            if refused is not None:
                return refused
        conn.body_read = True
        limit = self.queue_limit
        if limit and self.pool.queued >= limit:
            environ["wsgi.input"].close()
            self.monitor.overloaded(self.pool.queued, limit)
            return self.plain(msg, 503, "Service Unavailable", b"overloaded\n", [("Retry-After", "1")])
        channel = Channel(self.inbox, self.loop, self.write_buffer)
        req = RequestRecord(environ, msg.version, msg.raw_headers, conn.peer, conn.requests + 1)
        call = AppCall(self.wsgi, environ, channel, msg.version, req, self, started)
        # Only requests the app serves count toward max_requests (not health checks nor our
        # own refusals); counted before the answer, so the one reaching it gets Connection: close.
        self.worker.request_started()
        ex.call = call
        self.pool.submit(call)
        return await self.relay(ex, channel, msg, call)

    # -- request body --------------------------------------------------------------------
    async def receive(self, ex: Exchange, environ: dict[str, Any], expect: bool) -> Reply | None:
        """Read the whole body on the loop, so a slow upload never holds a thread."""
        msg, payload = ex.message, ex.payload
        spool = BodySpool(self.settings, self.spools)
        try:
            # 413/503/507 before 100-continue (RFC 9110 section 10.1.1): the body is never sent.
            spool.expect(None if msg.chunked else int(environ["CONTENT_LENGTH"]))
            if expect:  # only now that the body is wanted
                await ex.writer.write(CONTINUE)
            await self.pump(payload, spool)
            environ["wsgi.input"] = await self.spooled(spool)
        except SpoolFull as error:
            spool.close()
            self.monitor.count("spool_full_503")
            self.log.warning("Spool budget full: %s; answering 503", error)
            return self.plain(msg, 503, "Service Unavailable", b"upload capacity in use\n",
                              [("Retry-After", error.retry_after)], keep=False)
        except HTTPError:
            spool.close()
            raise
        except (ConnectionError, asyncio.TimeoutError, OSError) as exc:
            spool.close()
            self.log.debug("Request body not received in full: %r", exc)
            return CLOSE
        except Exception as exc:  # aiohttp's payload errors: bad chunking, bad trailers
            spool.close()
            # Answered like a bad head (gunicorn: 400 for InvalidChunkSize and the like).
            raise BadRequest(f"Invalid request body: {exc}") from exc
        except BaseException:  # cancelled (connection lost): the file and budget go back
            spool.close()
            raise
        if msg.chunked:  # a de-chunked body gets its length (gunicorn leaves it unset)
            environ["CONTENT_LENGTH"] = str(spool.size)
        return None

    async def spooled(self, spool: BodySpool) -> Any:
        """wsgi.input, once the writer thread has every byte on disk."""
        done: asyncio.Future[Any] = self.loop.create_future()
        spool.finish(functools.partial(resolve, done))
        result = await done
        if isinstance(result, HTTPError):
            raise result
        return result

    async def pump(self, payload: Any, spool: BodySpool) -> None:
        """Move body bytes into the spool; no byte for body_timeout seconds ends the request.

        While the spool waits for the disk, the body is not read: aiohttp's reader fills and
        pauses the socket (backpressure), and that wait is not the client's idleness.
        """
        loop = self.loop
        timeout = self.settings.body_timeout
        progress = [loop.time()]
        handle = None

        def check() -> None:
            nonlocal handle
            if spool.backlogged:
                progress[0] = loop.time()
            left = progress[0] + timeout - loop.time()
            if left <= 0:
                fail_body(loop, payload, BodyTimeout(f"no request body bytes for {timeout}s"))
            else:
                handle = loop.call_later(left, check)

        if not payload.is_eof():
            handle = loop.call_later(timeout, check)
        try:
            while True:
                chunk = await payload.readany()
                if not chunk:
                    return
                progress[0] = loop.time()
                spool.write(chunk)
                if spool.backlogged:
                    await self.drained(spool)
                    progress[0] = loop.time()
        finally:
            if handle is not None:
                handle.cancel()

    async def drained(self, spool: BodySpool) -> None:
        done: asyncio.Future[None] = self.loop.create_future()
        spool.on_drained(functools.partial(resolve, done, None))
        await done

    # -- response ------------------------------------------------------------------------
    def keep_alive(self, msg: Any, head: Head, mode: Framing) -> bool:
        return (not msg.should_close and self.settings.keepalive > 0 and not self.draining
                and not head.close and mode is not Framing.CLOSE)

    async def relay(self, ex: Exchange, channel: Channel, msg: Any, call: AppCall) -> Reply:
        """Write what the app thread produces, in order, releasing credit as the socket drains."""
        writer = ex.writer
        keep = False
        begun = False  # a head is out: an error can only close the connection now
        started = not self.request_timeout
        out = Output(writer)
        try:
            while True:
                if started:
                    batch = await channel.get()
                else:
                    try:
                        batch = await asyncio.wait_for(channel.get(), self.request_timeout)
                    except asyncio.TimeoutError:
                        return await self.timed_out(ex, call, self.request_timeout)
                    started = True
                for item in batch:
                    kind = item[0]
                    if kind == HEAD:
                        begun = True
                        keep = self.keep_alive(msg, item[1], item[2])
                        out.add(render_head(msg.version, item[1], item[2], keep,
                                            SERVER_HEADER, self.http_date()))
                        out.add(*item[3])
                    elif kind == DATA:
                        out.add(*item[1])
                    elif kind == FILE:
                        out.flush()
                        await self.sendfile(ex, item[1], item[2], item[3])
                    elif kind == END:
                        out.add(item[1])
                        out.flush()
                        await writer.drain()
                        return KEEP if keep and item[2] else CLOSE
                    elif kind == ERROR:
                        out.add(error_reply(item[1], msg.method).payload)
                        out.flush()
                        return CLOSE
                    elif kind == ABORT:
                        out.flush()
                        ex.protocol.force_close()
                        return CLOSE
                    # Credit goes back once the bytes are ours to send: the thread makes the
                    # next chunk while the socket drains this one (the pipe never runs dry).
                    channel.release(item[-1])
                out.flush()
                await writer.drain()
        except Exception as exc:
            if not begun and not isinstance(exc, CLIENT_GONE):
                raise  # nothing sent yet: the connection answers 500 (handle_error)
            return self.abandon(ex, msg, exc)
        finally:
            channel.close()

    def abandon(self, ex: Exchange, msg: Any, exc: Exception) -> Reply:
        """A response that cannot go on: close the connection, never write a second response.

        A 500 after a head would be read as body bytes (RFC 9112 section 6.3): closing before
        the announced end is the only way left to tell the client.
        """
        if isinstance(exc, CLIENT_GONE):
            self.log.debug("Client went away while sending a response: %r", exc)
        else:
            self.log.error("Error sending the response to %s %s; closing the connection",
                           msg.method, msg.path, exc_info=exc)
        ex.protocol.force_close()
        return CLOSE

    async def timed_out(self, ex: Exchange, call: AppCall, timeout: float) -> Reply:
        """AIOWSGI_REQUEST_TIMEOUT passed before the head: 504, and say what the thread is doing.

        A call still queued is cancelled: no thread will run it (a retrying client must not
        write twice). A running thread cannot be killed; the channel closes behind us, so
        whatever it produces later is discarded.
        """
        self.monitor.count("request_timeouts")
        self.pool.cancel(call, JobState.ANSWERED)  # if still queued, it will never run
        if call.state is JobState.RUNNING:
            stack = next((thread_stack(ident) for ident, job in self.pool.jobs() if job is call),
                         "  (its thread has just finished it)\n")
        else:
            stack = "  (still queued: no thread took it, and none will)\n"
        self.log.error("Request timed out after %ss: %s; its app thread is at:\n%s",
                       timeout, describe(call, time.time()), stack)
        await ex.writer.write(error_reply(GatewayTimeout(), ex.message.method).payload)
        return CLOSE

    # -- answered on the loop ------------------------------------------------------------
    def plain(self, msg: Any, code: int, reason: str, body: bytes,
              headers: list[tuple[str, str]] = (), keep: bool = True) -> Reply:  # type: ignore[assignment]
        """A small text response written by the loop itself (health checks, overload 503s)."""
        head = Head(f"{code} {reason}", code, [("Content-Type", "text/plain"), *headers], len(body), False)
        keep = keep and self.keep_alive(msg, head, Framing.LENGTH)
        data = render_head(msg.version, head, Framing.LENGTH, keep, SERVER_HEADER, self.http_date())
        return Reply(keep, data + (b"" if msg.method == "HEAD" else body))

    def health(self, msg: Any) -> Reply:
        """200 while serving; 503 once draining (so balancers stop routing first) or, if asked, when full."""
        limit = self.settings.effective_queue_limit
        if self.draining:
            return self.plain(msg, 503, "Service Unavailable", b"draining\n")
        if self.settings.health_queue_full and limit and self.pool.queued >= limit:
            return self.plain(msg, 503, "Service Unavailable", b"overloaded\n", [("Retry-After", "1")])
        return self.plain(msg, 200, "OK", b"ok\n")

    async def sendfile(self, ex: Exchange, file: Any, offset: int, count: int) -> None:
        transport = ex.protocol.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        await ex.writer.drain()
        await self.loop.sendfile(transport, file, offset, count)
