"""The small context every connection and request gets from its worker: settings, loop, pool, log, hooks."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from datetime import timedelta
from typing import Any, Callable

from gunicorn.glogging import Logger

from .bridge import Inbox, ThreadPool
from .diagnostics import Monitor
from .environ import refusal_environ
from .parser import Limits, Parsers
from .records import RequestRecord, ResponseRecord
from .replies import HttpDate
from .settings import Settings, gunicorn_setting


class Context:
    """What one worker's connections share; built once by the Server, read on the loop thread.

    Connections never see the Server (no import cycle, and nothing they should not touch):
    `opened`/`closed` report to the registry, `draining` says that keep-alive is over.
    """

    __slots__ = ("settings", "loop", "log", "pool", "inbox", "wsgi", "base", "worker", "monitor",
                 "spools", "can_sendfile", "date", "draining", "opened", "closed", "pending",
                 "queue_limit", "hold_limit", "streams", "stream_limit", "limits", "parsers",
                 "timer_context",
                 "pre_request", "post_request", "access", "clock")

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, log: Any,
                 pool: ThreadPool, wsgi: Callable[..., Any], base: dict[str, Any], worker: Any,
                 monitor: Monitor, spools: Any) -> None:
        self.settings = settings
        self.loop = loop
        self.clock = loop_clock(loop)       # loop.time, read without a method call where it can be
        self.log = log
        self.pool = pool
        self.inbox = Inbox(loop)
        self.wsgi = wsgi
        self.base = base                    # the environ keys every request shares
        self.worker = worker                # gunicorn's worker: cfg hooks, max_requests
        self.monitor = monitor
        self.spools = spools                # the body budgets and writer (spool_store.SpoolStore)
        # Zero-copy file_wrapper: plain sockets on asyncio's own loops (uvloop has no sendfile).
        self.can_sendfile = (settings.sendfile and not settings.is_ssl
                             and isinstance(loop, asyncio.BaseEventLoop))
        self.date = HttpDate()
        self.draining = False
        self.opened: Callable[[Any], None] = lambda conn: None
        self.closed: Callable[[Any], None] = lambda conn: None
        self.queue_limit = settings.effective_queue_limit  # read per request: resolved once
        # A call whose client left while it waited is cancelled, not counted in the queue, yet
        # stays in it (its environ with it) until a thread reaches it and skips it: while the
        # threads are stuck, at most worker_connections of those besides the live ones.
        self.hold_limit = self.queue_limit + settings.worker_connections
        self.stream_limit = settings.effective_streamed_bodies
        self.streams = 0                    # bodies read by app threads while they arrive (count)
        self.limits = Limits(settings)      # every request parser's limits (parser.py)
        self.parsers = Parsers(self.limits, loop)  # spare parsers for the next heads
        # The hooks and the access log each request calls, resolved once; None: nothing to call.
        self.pre_request, self.post_request, self.access = request_hooks(worker.cfg, log)
        self.pending: list[Any] = []        # app calls parsed in this loop turn, not yet handed over
        # The context every connection timer runs in: one for all instead of a copy per timer
        # (each idle connection has one timer; a copy costs ~55 bytes on asyncio, ~115 on uvloop).
        # Safe to share: the loop thread never sets a context variable.
        self.timer_context = contextvars.copy_context()

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Any:
        """A connection timer: loop.call_at in the shared timer context."""
        return self.loop.call_at(when, callback, *args, context=self.timer_context)

    def submit(self, call: Any) -> None:
        """Hand an app call to the pool at the end of this loop turn, with the others parsed in it.

        Waking an app thread at once would make it fight the loop for the GIL at every syscall
        of the reads still to parse in this turn; handed over together, the threads start when
        the loop goes back to waiting (futex calls per request: about 6 before, under 1 after).
        """
        pending = self.pending
        if not pending:  # the first of this turn: the hand-over is due at its end
            self.loop.call_soon(self._hand_over)
        pending.append(call)

    def _hand_over(self) -> None:
        pending, self.pending = self.pending, []
        submit = self.pool.submit
        for call in pending:
            submit(call)

    @property
    def queued(self) -> int:
        """App calls waiting for a thread (count), those not yet handed over included, those
        cancelled (their client left, or was answered 504) not."""
        return self.pool.queued + len(self.pending)

    def queue_full(self) -> bool:
        """AIOWSGI_QUEUE_LIMIT calls wait for a thread (or the queue holds too many cancelled
        ones besides): a new one is answered 503, and the health path may say so."""
        limit = self.queue_limit
        if not limit:
            return False
        pool, pending = self.pool, len(self.pending)
        return pool.queued + pending >= limit or pool.held + pending >= self.hold_limit

    def log_answer(self, exchange: Any, status: str) -> None:
        """The access log (and statsd) line of an answer the loop gave instead of the app (a
        503, 413, 507), as gunicorn logs the error pages it writes; written off the loop."""
        if self.access is None:
            return
        request = exchange.request
        # Refused while its environ was built (a repeated Host, a path outside SCRIPT_NAME):
        # logged with what gunicorn's handle_error logs such a request with.
        environ = exchange.environ or refusal_environ(self.base, self.settings, exchange.conn.peer,
                                                      request.method, request.target, request.version)
        resp = ResponseRecord()
        resp.status, resp.status_code = status, int(status[:3])
        req = RequestRecord(environ, request.version, request.raw_headers, exchange.conn.peer,
                            exchange.number, self.settings)
        elapsed = timedelta(0, max(0.0, time.time() - exchange.started))
        self.spools.off_loop(self.access, resp, req, environ, elapsed)

    def log_client_error(self, peer: Any, error: Any) -> None:
        """gunicorn's handle_error: the client's fault is a warning with its address, ours an error."""
        if error.client_error:
            self.log.warning("Invalid request from ip=%s: %s", peer.remote_addr if peer else "", error)
        else:
            self.log.error("Error handling request: %s", error)


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """What reads the loop's clock (seconds, as loop.time and loop.call_at count them).

    asyncio's own loops read time.monotonic() in BaseEventLoop.time: calling it directly spares
    a Python method call per read. A loop with a clock of its own (uvloop's, a subclass that
    overrides time) is asked through loop.time.
    """
    if getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


def request_hooks(cfg: Any, log: Any) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None,
                                                Callable[..., Any] | None]:
    """(pre_request, post_request, access log) for every request; None where calling would do nothing.

    gunicorn's workers call all three per request. Its default post_request does nothing, its
    default pre_request only logs at debug level, and its Logger.access returns at once unless
    an access log is configured (access_logged). Those calls are skipped; a hook set by the
    user, a logger_class that overrides access (the statsd logger times every request there) or
    debug, and a debug log level keep every call.
    """
    settings = getattr(cfg, "settings", {})

    def configured(name: str, idle: bool) -> Callable[..., Any] | None:
        hook = getattr(cfg, name)
        default = settings[name].default if name in settings else None
        return None if idle and hook is default else hook

    debug = getattr(log, "error_log", None)
    quiet = (getattr(type(log), "debug", None) is Logger.debug and isinstance(debug, logging.Logger)
             and not debug.isEnabledFor(logging.DEBUG))
    own = type(log)
    idle_access = getattr(own, "access", None) is Logger.access and not access_logged(cfg, log)
    return (configured("pre_request", quiet), configured("post_request", True),
            None if idle_access else log.access)


# The settings that give gunicorn's Logger.access somewhere to write a line (besides syslog).
ACCESS_LOG_SETTINGS = ("accesslog", "logconfig", "logconfig_dict", "logconfig_json")


def access_logged(cfg: Any, log: Any) -> bool:
    """Whether gunicorn's own Logger.access writes lines. gunicorn 27 computes it once, in setup()
    (access_log_enabled); gunicorn 21 to 26 ask the same of cfg in every access() call, and a
    request paid for its records and that call (about 5 us of app-thread time) to learn no."""
    if getattr(type(log), "access_log_enabled", None) is not None:
        return bool(log.access_log_enabled)
    if any(gunicorn_setting(cfg, name) for name in ACCESS_LOG_SETTINGS):
        return True
    return bool(gunicorn_setting(cfg, "syslog")
                and not gunicorn_setting(cfg, "disable_redirect_access_to_syslog"))
