"""One WSGI call, run in an app thread: hooks, start_response, iteration, close(), access log."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Callable, Iterable

from .bridge import Channel
from .errors import AppError, ClientDisconnected, GatewayTimeout, HTTPError
from .files import FileKind, FileWrapper, file_kind, file_span
from .messages import (
    ANSWERED,
    MESSAGE_COST,
    QUEUED,
    Abort,
    CallDone,
    Data,
    End,
    Fail,
    Hints,
    JobState,
    SendFile,
    Start,
)
from .records import RequestRecord, ResponseRecord
from .response import (
    CHUNKED,
    NO_BODY,
    NOT_STARTED,
    SENT,
    BodyFramer,
    Head,
    StartResponse,
    check_headers,
    framing,
)


class EarlyHints:
    """wsgi.early_hints (gunicorn 27): a 103 Early Hints response before the final one.

    As gunicorn does: ignored once the response has begun, and for HTTP/1.0 clients, which
    cannot take a 1xx response (RFC 9110 section 15.2); bad names or values raise. Its own
    object, not a method of the call: the environ holding a bound method of the call that holds
    the environ would be a reference cycle, every request left to the garbage collector. It
    holds the call only while the call runs (AppCall.run lets go of it at the end), for the same
    reason; a hint after that is ignored, as any hint after the response began.
    """

    __slots__ = ("call",)

    def __init__(self, call: "AppCall") -> None:
        self.call: AppCall | None = call

    def __call__(self, headers: list[tuple[str, str]]) -> None:
        call = self.call
        if call is None or call.phase is SENT or call.version < (1, 1):
            return
        pairs = [(n.decode("latin-1") if isinstance(n, bytes) else n,
                  v.decode("latin-1") if isinstance(v, bytes) else v) for n, v in headers]
        kept, _length, _close = check_headers(pairs)
        call.channel.put(Hints(kept))


# Every End is one of these (framer.finish(): done, done after the chunked terminator, or short;
# each last or not), and messages are never changed once put: shared, not made per response.
ENDS = {finished: End(*finished) for finished in ((b"", True), (b"", False), (b"0\r\n\r\n", True))}
WAITING_ENDS = {finished: End(*finished, False) for finished in ENDS}  # a CallDone follows


def _closed_write(data: bytes) -> None:
    raise AppError("write() called after the response was finished")


class AppCall(StartResponse):
    """Everything one request needs in its app thread; `run` is the thread's job.

    The call is its own start_response (PEP 3333): the pure core's state machine, inherited,
    with `write` our body callable. One object per request instead of two.
    """

    __slots__ = ("app", "environ", "channel", "version", "server", "started", "_parts",
                 "_req", "framer", "resp", "body", "state", "hints", "last")

    def __init__(self, app: Callable[..., Any], environ: dict[str, Any], channel: Channel,
                 version: tuple[int, int], server: Any, started: float,
                 raw_headers: Any = (), peer: Any = None, number: int = 1) -> None:
        self.app = app
        self.environ = environ
        self.channel = channel
        self.version = version
        self.server = server        # the worker's Context: worker, hooks, log, monitor, sendfile
        self.started = started      # time.time() when the request head was parsed
        # StartResponse's own fields, set here rather than by a second __init__ call.
        self.phase = NOT_STARTED
        self.head: Head | None = None
        self.method = environ["REQUEST_METHOD"]
        self.write = self._write
        # What the request record is built from, in the app thread and only when something
        # reads it (a hook, the access log, a log line): most requests never need one.
        self._parts = (raw_headers, peer, number)
        self._req: RequestRecord | None = None
        self.hints = environ["wsgi.early_hints"] = EarlyHints(self)
        self.framer: BodyFramer | None = None
        # gunicorn's response record, only for the access log and post_request to read.
        self.resp = (ResponseRecord() if server.access is not None or server.post_request is not None
                     else None)
        # Our own body stream: the app (or middleware such as wsgiref.validate) may replace
        # environ["wsgi.input"] with a wrapper that must not be closed by the server.
        self.body = environ["wsgi.input"]
        # The pool moves it to RUNNING when a thread takes the call; the loop may cancel it
        # before that (ThreadPool.cancel), and then it is skipped, never run.
        self.state = QUEUED
        # Nothing the thread does after the response's End must precede the connection's next
        # request: no post_request hook, and (set in run) an iterable without close().
        self.last = server.post_request is None

    @property
    def req(self) -> RequestRecord:
        """gunicorn's request record, as hooks, the access log and log lines see it."""
        if self._req is None:
            self._req = self._record()
        return self._req

    def _record(self) -> RequestRecord:
        raw_headers, peer, number = self._parts
        return RequestRecord(self.environ, self.version, raw_headers, peer, number,
                             self.server.settings)

    # -- the job -------------------------------------------------------------------------
    def run(self) -> None:
        server = self.server
        worker, pre_request = server.worker, server.pre_request
        req = None
        if pre_request is not None or server.post_request is not None or server.access is not None:
            self._req = req = self._record()  # now: once the app runs, it may change its environ
        try:
            # Inside the try, as gunicorn's workers do: a failing hook is this request's 500.
            if pre_request is None:
                result = self.app(self.environ, self)
            else:
                result = self.app(self.environ, self._pre_request(pre_request, worker))
            if type(result) is list:  # the common case; a plain list has no close() to call
                self._send_all(result)
            else:
                close = getattr(result, "close", None)
                if close is not None:
                    self.last = False  # the next request waits for it, as under gthread
                try:
                    self._consume(result)
                finally:
                    if close is not None:
                        close()  # PEP 3333: exactly once, however iteration ended
        except ClientDisconnected:
            self.server.log.debug("Client went away during %s %s", self.method, self.req.uri)
            if self.resp is not None:
                self.resp.status = self.resp.status or "499 Client Closed Request"
        except BaseException as exc:  # noqa: B036 - SystemExit, CancelledError too: see _fail
            self._fail(exc)
        finally:
            try:
                self._finish(worker, req)
            finally:  # even past a post_request raising SystemExit: the connection waits on it
                self._let_go()
                if not self.last:
                    self._call_done()

    def _pre_request(self, hook: Callable[..., Any], worker: Any) -> Callable[..., Any]:
        """Run the hook; what it changed on the request record reaches the environ (gthread
        builds the environ from the record after this hook). Returns the app's start_response."""
        req = self.req
        before = req.snapshot()
        hook(worker, req)
        closing = req.update_environ(self.environ, before)
        self.method = req.method  # as gunicorn's response reads req.method (HEAD: no body)
        return self._start_closing if closing else self

    def _start_closing(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        """start_response once the hook closed the connection (req.force_close(), or headers
        that say close): the response says Connection: close, and the connection ends with it."""
        write = self(status, headers, exc_info)
        assert self.head is not None
        self.head.close = True
        return write

    def _call_done(self) -> None:
        """The iterable is closed and the hooks ran: the connection may read on (End said wait)."""
        try:
            self.channel.put(CallDone(), wait=False)
        except ClientDisconnected:  # the response ended otherwise (an error, a client gone)
            pass

    def _let_go(self) -> None:
        """start_response's `write` is our bound method, and the environ holds the early hints
        that hold us: reference cycles that would leave every request's objects to the garbage
        collector (and its pauses). Break them."""
        self.write = _closed_write
        self.hints.call = None

    def skip(self) -> None:
        """The pool's alternative to `run` for a call cancelled while queued: the app is never
        called, so a client that was answered 504 (or left) and retries never writes twice."""
        why = ("was answered 504 (request timeout) while it waited for a thread"
               if self.state is JobState.ANSWERED else "went away while it waited for a thread")
        self.server.log.info("Skipped %s %s: its client %s", self.method, self.req.uri, why)
        self.server.monitor.count("skipped_requests")
        if self.state is JobState.ANSWERED and self.server.access is not None:
            resp = ResponseRecord()
            self._answered_by_loop(resp)
            self.server.access(resp, self.req, self.environ,
                               timedelta(0, max(0.0, time.time() - self.started)))
        self.body.close()
        self._let_go()
        try:
            # Ends the relay still waiting for this call (a client that went away); after a
            # 504 the relay is over and the channel closed.
            self.channel.put(Abort(), wait=False)
        except ClientDisconnected:
            pass

    def _fail(self, exc: BaseException) -> None:
        """The app (or a hook) raised: a 500 page if nothing was sent yet, else the connection
        closes (Abort). A head already on the wire can only be followed by its own body (RFC 9112
        section 6.3); a second response would be read as body bytes.

        Any exception, not only Exception's: an app thread is no place for SystemExit or an
        asyncio.CancelledError to end anything but this request, and the client must get its
        answer (or its close) whatever the app raised.
        """
        try:
            self.server.log.exception("Error handling request %s %s", self.method, self.req.uri)
        except Exception:  # the record of an environ the app broke: still answer below
            self.server.log.exception("Error handling request %s", self.method)
        try:
            if self.phase is SENT:
                self.channel.put(Abort(), wait=False)
            else:
                error = exc if isinstance(exc, HTTPError) and exc.status >= 500 else AppError()
                resp = self.resp
                if resp is not None:
                    resp.status, resp.status_code = f"{error.status} {error.reason}", error.status
                self.channel.put(Fail(error), wait=False)
        except ClientDisconnected:
            pass

    def _finish(self, worker: Any, req: RequestRecord | None) -> None:
        """The hooks' end of the request; `req` is the record `run` made (None when no hook or
        access log wants one)."""
        resp, server = self.resp, self.server
        if resp is not None and self.framer is not None:
            resp.sent = self.framer.sent
        if resp is not None and self.state is ANSWERED:
            self._answered_by_loop(resp)
        # The access log and post_request see every request, failed or cut short.
        if server.access is not None:
            elapsed = max(0.0, time.time() - self.started)
            try:
                server.access(resp, req, self.environ, timedelta(0, elapsed))  # (days, seconds)
            except Exception:
                server.log.exception("Access log failed")
        if server.post_request is not None:
            try:
                server.post_request(worker, req, self.environ, resp)
            except Exception:
                server.log.exception("Exception in post_request hook")
        # A spooled body is an unnamed temporary file: close it now rather than whenever the
        # app lets go of its environ (the disk space is freed on close).
        self.body.close()

    def _answered_by_loop(self, resp: ResponseRecord) -> None:
        """The loop answered 504 (the request timeout) and discarded this call's answer: the
        access log, statsd and post_request see that status, logged as gunicorn logs the
        error pages it writes itself (no body bytes counted), as context.log_answer does."""
        error = GatewayTimeout()
        resp.status, resp.status_code, resp.sent = f"{error.status} {error.reason}", error.status, 0

    # -- the response --------------------------------------------------------------------
    def _consume(self, result: Iterable[bytes]) -> None:
        if isinstance(result, FileWrapper):
            if file_kind(result.filelike) is FileKind.SENDFILE and self._send_file(result):
                return
        if isinstance(result, (list, tuple)):
            # Known in full already: one hop to the loop for the whole response.
            self._send_all(result)
            return
        for chunk in result:
            self._write(chunk)
        self._end()

    def _begin(self) -> tuple[Head, BodyFramer]:
        head = self.head
        if head is None:
            raise AppError("the application returned without calling start_response")
        mode = framing(self.method, head.code, self.version, head.content_length)
        framer = BodyFramer(mode, head.content_length)
        self.framer = framer
        self.phase = SENT
        resp = self.resp
        if resp is None:
            return head, framer
        resp.status, resp.status_code, resp.headers = head.status, head.code, head.headers
        resp.response_length, resp.chunked = head.content_length, mode is CHUNKED
        resp.headers_sent = True
        if head.content_length is not None:
            resp.headers = head.headers + [("Content-Length", str(head.content_length))]
        return head, framer

    def _write(self, chunk: bytes) -> None:
        """The body chunk callable: start_response's `write` and each item of the iterable."""
        if type(chunk) is not bytes:
            if not isinstance(chunk, bytes):
                raise AppError(f"the application produced {type(chunk).__name__}, not bytes (PEP 3333)")
        if not chunk:
            return
        if self.phase is not SENT:
            head, framer = self._begin()
            pieces = framer.pieces(chunk)
            size = sum(map(len, pieces))
            self.channel.put(Start(head, framer.mode, pieces, size))
        else:
            assert self.framer is not None
            pieces = self.framer.pieces(chunk)
            if pieces:
                self.channel.put(Data(pieces, sum(map(len, pieces)) + MESSAGE_COST))

    def _end(self) -> None:
        if self.phase is not SENT:
            head, framer = self._begin()
            self.channel.put(Start(head, framer.mode, end=self._closing(framer)), wait=False)
            return
        assert self.framer is not None
        self.channel.put(self._closing(self.framer), wait=False)

    def _send_all(self, chunks: list[bytes] | tuple[bytes, ...]) -> None:
        for chunk in chunks:
            if type(chunk) is not bytes and not isinstance(chunk, bytes):
                raise AppError(f"the application produced {type(chunk).__name__}, not bytes (PEP 3333)")
        if self.phase is SENT:  # the app used write() before returning
            for chunk in chunks:
                self._write(chunk)
            self._end()
            return
        head, framer = self._begin()
        # One chunk per item, as gunicorn frames them (and nothing copied to join them).
        if len(chunks) == 1:
            pieces = framer.pieces(chunks[0])
        else:
            pieces = tuple(piece for chunk in chunks for piece in framer.pieces(chunk))
        size = len(pieces[0]) if len(pieces) == 1 else sum(map(len, pieces))
        self.channel.put(Start(head, framer.mode, pieces, size, self._closing(framer)), wait=False)

    def _send_file(self, wrapper: FileWrapper) -> bool:
        head = self.head
        if head is None or self.phase is SENT or not self.server.can_sendfile:
            return False
        span = file_span(wrapper, head.content_length)
        if span is None:
            return False
        _fd, offset, count = span
        if head.content_length is None and framing(self.method, head.code, self.version, 0) is not NO_BODY:
            # We know the length: say it, rather than chunking a file.
            head.content_length = count
        head, framer = self._begin()
        if framer.mode is not NO_BODY and count:
            framer.remaining = (framer.remaining or 0) - count
            framer.sent = count
            self.channel.put(Start(head, framer.mode))
            self.channel.put(SendFile(wrapper.filelike, offset, count))
        else:
            self.channel.put(Start(head, framer.mode))
        self.channel.put(self._closing(framer), wait=False)
        self.channel.flush()  # the file must stay open until the loop has sent it
        return True

    def _closing(self, framer: BodyFramer) -> End:
        """The body's End, after logging a body longer or shorter than its Content-Length."""
        finished = framer.finish()
        end = (ENDS if self.last else WAITING_ENDS).get(finished) or End(*finished, self.last)
        if framer.overflow or not end.complete:
            self._report_overflow(framer, end.complete)
        return end

    def _report_overflow(self, framer: BodyFramer, complete: bool) -> None:
        if framer.overflow:
            self.server.log.warning(
                "%s %s: the application sent %d bytes past its Content-Length; dropped",
                self.method, self.req.uri, framer.overflow)
        if not complete:
            self.server.log.warning(
                "%s %s: the application sent fewer bytes than its Content-Length; closing",
                self.method, self.req.uri)
