"""One request's life on the loop: environ, body, hand-off to an app thread, and the relay of its response."""

from __future__ import annotations

import contextlib
import errno
from io import BufferedReader, BytesIO
from time import time as wall_time
from typing import TYPE_CHECKING, Any, Sequence

from .application import AppCall
from .body import READ_BUFFER, STREAM_BACKLOG, BodySpool, check_length, streamed
from .boundary import BODY, CLOSED, check_head_only
from .bridge import BodyFeed, Channel
from .context import Context
from .diagnostics import timed_out
from .environ import build_environ
from .errors import BodyCutShort, GatewayTimeout, HTTPError, Unavailable
from .listener import unread_bytes
from .messages import Abort, CallDone, Data, End, Fail, Hints, JobState, SendFile, Start
from .output import Output, send_file
from .parser import Request
from .replies import CONTINUE, SERVER_HEADER, early_hints, error_reply, health_reply, plain
from .response import CLOSE, COPY_LIMIT, render_head

if TYPE_CHECKING:
    from .protocol import Connection

# No messages waiting: one shared empty backlog rather than a new list per request.
NOTHING: tuple[Any, ...] = ()


class Exchange:
    """Created by the connection when a request head is parsed; ends with conn.finish() or an error.

    Callbacks only, no task: a bodyless request goes to the pool from data_received, and the
    response comes back through the channel's listener (one loop wake-up per batch).
    """

    __slots__ = ("ctx", "conn", "request", "number", "started", "environ", "spool", "feed", "channel",
                 "call", "keep", "head_sent", "backlog", "timer", "sending")

    def __init__(self, ctx: Context, conn: "Connection", request: Request, number: int) -> None:
        self.ctx = ctx
        self.conn = conn
        self.request = request
        self.number = number                 # this request's place on its connection (count)
        self.started = wall_time()           # when its head was parsed (time.time)
        self.environ: dict[str, Any] = {}
        # The body being received, if any; kept until the response ends (stop): a body held in
        # memory holds its share of the worker's memory budget till then.
        self.spool: BodySpool | None = None
        self.feed: BodyFeed | None = None    # or the body an app thread reads as it arrives
        self.channel: Channel | None = None  # the response, once the app has the request
        self.call: AppCall | None = None
        self.keep = False                    # keep the connection after this response
        self.head_sent = False
        self.backlog: Sequence[Any] = NOTHING  # messages taken but not written (socket was full)
        self.timer: Any = None               # AIOWSGI_REQUEST_TIMEOUT
        self.sending = False                 # a sendfile is under way

    # -- the request -------------------------------------------------------------------------
    def begin(self, body_done: bool) -> None:
        """The head is parsed: answer on the loop, refuse, or get ready for the body (none to
        come when `body_done`: the parser has seen its end, RFC 9112 section 6.3)."""
        ctx, conn, req = self.ctx, self.conn, self.request
        settings = ctx.settings
        head_only = req.upgrade or req.method == "CONNECT" or req.stopped  # the parser may stop
        if (settings.health_path and not head_only  # there: judged first (check_head_only)
                and req.target.partition("?")[0] == settings.health_path):
            self.health()
            return
        assert conn.peer is not None  # set in connection_made, before any byte is read
        try:
            method = req.method
            environ, expect = build_environ(
                ctx.base, settings, conn.peer, method, req.target, req.version, req.raw_headers)
            self.environ = environ
            if head_only:  # the field, not the environ key ("dangerous" header_map maps _ too)
                check_head_only(method, req.chunked, req.has_field(b"transfer-encoding"),
                                environ.get("CONTENT_LENGTH", "0"), req.stopped)
            if body_done:
                environ["wsgi.input"] = BytesIO()  # no body: nothing to wait for
                self.dispatch()
                return
            # 413/503/507 before 100-continue (RFC 9110 section 10.1.1): the body is never sent.
            self.open_body(None if req.chunked else int(environ["CONTENT_LENGTH"]))
        except HTTPError as error:
            self.refused(error)
            return
        if expect:  # only now that the body is wanted
            conn.write(CONTINUE)

    def open_body(self, length: int | None) -> None:
        """Spool the body, or (a large one, while a stream slot is free) let an app thread read
        it as it arrives: no disk, and the app starts once the first memory's worth is in."""
        ctx = self.ctx
        if streamed(ctx.settings, length, ctx.streams, ctx.stream_limit):
            check_length(ctx.settings, length)
            ctx.streams += 1
            self.feed = BodyFeed(ctx.inbox, STREAM_BACKLOG, self.conn.body_caught_up)
            return
        self.spool = BodySpool(ctx.settings, ctx.spools)
        self.spool.expect(length)

    def refused(self, error: HTTPError) -> None:
        """The request cannot be taken; load (errors.Unavailable) is answered 503, retry soon."""
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        load = isinstance(error, Unavailable)  # a full spool budget, no descriptor for a file
        if isinstance(error, Unavailable):  # load, not a fault: a warning, counted, no traceback
            self.ctx.monitor.count(error.metric)
            self.ctx.log.warning("%s: %s; answering 503", error.label, error)
        self.conn.refuse(error, self.request.method, logged=load)
        self.ctx.log_answer(self, f"{error.status} {error.reason}")

    def body(self, data: bytes) -> None:
        """Body bytes from the parser. While the disk (or the app) is behind, the socket is not read."""
        feed = self.feed
        if feed is not None:
            # More in the socket: the reading thread need not be woken for this read alone. Not
            # judged under TLS (fd -1): bytes there may be a record that carries no body.
            conn = self.conn
            if not feed.put(data, conn.fd >= 0 and unread_bytes(conn.transport) > 0):
                conn.pause_reading()  # the app must be reading it, or nothing ever will (below)
            if self.call is None and (not conn.reading
                                      or feed.received >= self.ctx.settings.body_memory_limit):
                # Buffered for reading: readline() on the raw feed would take a byte at a time.
                self.environ["wsgi.input"] = BufferedReader(feed, READ_BUFFER)
                self.dispatch()
            return
        spool = self.spool
        assert spool is not None
        try:
            spool.write(data)
        except HTTPError as error:
            self.refused(error)
            return
        if spool.backlogged:
            self.conn.pause_reading()
            spool.on_drained(self.conn.body_caught_up)

    def body_end(self) -> None:
        """Every body byte is in: wsgi.input once the writer thread has them all on disk."""
        if self.feed is not None:  # the app thread reads the rest, then the end
            self.end_feed(None)
            return
        assert self.spool is not None
        self.spool.finish(self.spooled)

    def spooled(self, result: Any) -> None:
        if isinstance(result, HTTPError):
            self.refused(result)
            return
        self.environ["wsgi.input"] = result
        if self.request.chunked:  # a de-chunked body gets its length (gunicorn leaves it unset)
            assert self.spool is not None
            self.environ["CONTENT_LENGTH"] = str(self.spool.size)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand the request to the pool, or answer 503 at once when too many are waiting."""
        ctx = self.ctx
        # Nothing to count while far fewer than the limit wait (nearly every request): the queue's
        # size, cancelled calls included, plus a job each thread may have taken and not counted.
        pool = ctx.pool
        if pool.held + len(ctx.pending) + pool.size >= ctx.queue_limit > 0 and ctx.queue_full():
            self.environ["wsgi.input"].close()
            self.stop()  # a streamed body's slot is free again
            ctx.monitor.overloaded(ctx.queued, ctx.queue_limit)
            self.answer(503, "Service Unavailable", b"overloaded\n", [("Retry-After", "1")])
            ctx.log_answer(self, "503 Service Unavailable")
            return
        # Counted before it is answered, so the request reaching max_requests gets
        # Connection: close; only requests the app serves count (not health checks, not 503s).
        ctx.worker.request_started()
        req, settings = self.request, ctx.settings
        self.channel = channel = Channel(ctx.inbox, settings.write_buffer, self.relay)
        self.call = call = AppCall(ctx.wsgi, self.environ, channel, req.version, ctx,
                                   self.started, req.raw_headers, self.conn.peer, self.number)
        ctx.submit(call)
        if settings.request_timeout:
            self.timer = ctx.loop.call_later(settings.request_timeout, self.timed_out)

    # -- answers the loop gives itself ----------------------------------------------------------
    def keep_alive(self, close: bool = False) -> bool:
        """Keep the connection? Not past an answer begun before its streamed body was in (what
        follows cannot be trusted), or a CONNECT (a tunnel's bytes follow: gunicorn's
        should_close). An Upgrade offer is declined by answering (RFC 9110 7.8). Not a FIN:
        requests pipelined before it are answered first (Connection.finish), as under gthread."""
        req = self.request
        return (not close and not req.close and self.ctx.settings.keepalive > 0
                and not self.ctx.draining and req.method != "CONNECT"
                and self.conn.state is not BODY)

    def answer(self, code: int, reason: str, body: bytes, headers: list[tuple[str, str]]) -> None:
        keep = self.keep_alive()
        req = self.request
        try:
            self.conn.write(plain(req.version, req.method, code, reason, body, headers, keep,
                                  self.ctx.date()))
        except ConnectionError:
            return
        self.conn.finish(keep)

    def health(self) -> None:
        ctx = self.ctx
        full = ctx.settings.health_queue_full and ctx.queue_full()
        self.answer(*health_reply(ctx.draining, full))

    def timed_out(self) -> None:
        """AIOWSGI_REQUEST_TIMEOUT passed before the head: 504, and say what the thread is doing.

        A queued call is cancelled (a retrying client must not write twice); a running thread
        cannot be killed: the channel closes behind us, and what it produces later is discarded.
        """
        self.timer = None
        if self.head_sent or self.call is None:
            return
        ctx = self.ctx
        ctx.monitor.count("request_timeouts")
        timed_out(ctx.pool, self.call, ctx.log, ctx.settings.request_timeout)
        self.stop()
        try:
            self.conn.write(error_reply(GatewayTimeout(), self.request.method))
        except ConnectionError:
            return
        self.conn.finish(False)

    def end_feed(self, error: BaseException | None) -> None:
        """The streamed body ends (`error`: cut short, raised by the app's next read); its slot is free."""
        feed, self.feed = self.feed, None
        if feed is not None:
            feed.end(error)
            self.ctx.streams -= 1

    def stop(self) -> None:
        """No more of this response will be written: the app thread's next put raises."""
        if self.feed is not None:  # an app still reading the body gets an error, never a hang
            self.end_feed(BodyCutShort(errno.ECONNRESET, "the request body was cut short"))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.spool is not None:  # a body held in memory: its share of the budget is back
            self.spool.close()
            self.spool = None
        if self.channel is not None and not self.sending:  # else at its end: the file is in use
            self.channel.close()
            self.channel = None

    def abandon(self) -> None:
        """The connection ended (or refused the request) before the response was complete."""
        call = self.call
        if call is not None and self.ctx.pool.cancel(call, JobState.GONE):
            # Still queued: it must never run for a client that is gone (its thread skips it).
            # Its body's memory or file goes now, not when a thread reaches it (the threads may
            # all be stuck); closing is safe beside the skip's own close, which finds it closed.
            call.body.close()
        self.stop()  # and a body still arriving is abandoned (its file closed, budgets back)

    # -- the response ---------------------------------------------------------------------------
    def relay(self) -> None:
        """Write what the app thread produced, in order; release its credit as bytes leave us.

        Called by the channel when messages arrive and by the connection when its socket can
        take more; stops while the transport's buffer is full (flow control, both ways).
        """
        channel = self.channel
        if channel is None or self.sending:
            return
        try:
            if not self.backlog and self.conn.writable:
                batch: Sequence[Any] = channel.take()
                count = len(batch)
                if 0 < count <= 2:  # a whole response, and maybe its CallDone behind it
                    item = batch[0]
                    if (type(item) is Start and item.end is not None and item.size < COPY_LIMIT
                            and (count == 1 or type(batch[1]) is CallDone)):
                        self.whole(item, count == 2)
                        return
                self.backlog = batch  # taken, not written yet: the loop below writes it
            out = Output(self.conn.write)
            while self.conn.writable:
                batch = self.backlog or channel.take()
                if not batch:
                    break
                self.backlog = NOTHING
                for index, item in enumerate(batch):
                    if not self.conn.writable:
                        self.backlog = batch[index:]
                        break
                    if not self.write(item, out):
                        if self.sending:  # the rest waits for sendfile to finish
                            self.backlog = batch[index + 1:]
                        return
                    channel.release(item.size)
            out.flush()
        except Exception as exc:
            self.broke(exc)

    def whole(self, item: Start, call_done: bool = False) -> None:
        """A small response known in full (a list body): head, body and end in one write."""
        end, head, mode = item.end, item.head, item.mode
        assert end is not None
        self.head_sent = True
        if self.timer is not None:
            self.started_response()
        self.keep = keep = self.keep_alive(head.close or mode is CLOSE)
        self.conn.write(b"".join((render_head(self.request.version, head, mode, keep, SERVER_HEADER,
                                              self.ctx.date()), *item.pieces, end.tail)))
        keep = keep and end.complete
        if end.last or not keep or call_done:  # else the CallDone is still to come (ended)
            self.done(keep)

    def write(self, item: Any, out: Output) -> bool:
        """One message from the app thread; False once the response is over."""
        kind = type(item)
        if kind is Start:
            self.started_response()
            req = self.request
            self.keep = self.keep_alive(item.head.close or item.mode is CLOSE)
            out.add(render_head(req.version, item.head, item.mode, self.keep, SERVER_HEADER,
                                self.ctx.date()), *item.pieces)
            if item.end is not None:
                return self.write(item.end, out)
        elif kind is Data:
            out.add(*item.pieces)
        elif kind is End:
            out.add(item.tail)
            out.flush()
            return self.ended(item)
        elif kind is CallDone:
            self.done(True)  # the End kept the connection and waited for this
            return False
        elif kind is SendFile:
            out.flush()
            self.sending = True
            self.ctx.loop.create_task(self.sendfile(item))
            return False
        elif kind is Hints:
            out.add(early_hints(item.headers))
        elif kind is Fail:
            self.started_response()
            out.add(error_reply(item.error, self.request.method))
            out.flush()
            self.done(False)
            return False
        elif kind is Abort:
            out.flush()
            self.stop()
            self.conn.close()  # what was written still goes out; then the client sees the end
            return False
        return True

    def started_response(self) -> None:
        self.head_sent = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def ended(self, end: End) -> bool:
        """The response is out; True while the next request waits for the thread's CallDone
        (its iterable's close() and post_request run first, as under gthread)."""
        if end.last or not (self.keep and end.complete):
            self.done(self.keep and end.complete)
            return False
        return True

    def done(self, keep: bool) -> None:
        self.stop()
        self.conn.finish(keep)

    def broke(self, exc: BaseException) -> None:
        """An error while writing. Before the head: a 500 page. Once a head is out: close, never a
        second response (its bytes would be read as body, RFC 9112 section 6.3)."""
        self.stop()
        if isinstance(exc, ConnectionError) or self.conn.state is CLOSED:
            self.ctx.log.debug("Client went away while sending a response: %r", exc)
            self.conn.abort()
            return
        self.ctx.log.error("Error sending the response to %s %s; closing the connection",
                           self.request.method, self.request.target, exc_info=exc)
        if not self.head_sent:
            self.head_sent = True
            with contextlib.suppress(ConnectionError):
                self.conn.write(error_reply(HTTPError("internal error"), self.request.method))
        self.conn.close()

    async def sendfile(self, item: SendFile) -> None:
        try:
            await send_file(self.ctx.loop, self.conn.transport, item.file, item.offset, item.count)
        except Exception as exc:
            self.sending = False
            self.broke(exc)
            return
        self.sending = False
        if self.channel is not None:
            self.channel.release(item.size)
            self.relay()
