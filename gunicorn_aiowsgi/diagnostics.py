"""Operator diagnostics: app-thread stack dumps, the queue-depth warning, pool metrics through statsd."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import traceback
from typing import Any

from .messages import JobState

# The queue-depth warning repeats at most this often while the pool stays saturated (seconds).
QUEUE_WARNING_EVERY = 10.0
# Overload 503s are logged at most this often (seconds), with the queue depth.
OVERLOAD_LOG_EVERY = 1.0
# After a failed statsd send, the worker's own metrics pause this long (seconds)...
STATSD_PAUSE = 30.0
# ...and the failure is logged, one line, at most this often (seconds).
STATSD_WARN_EVERY = 600.0


def describe(call: Any, now: float) -> str:
    """'GET /path?q (3.2s)': what an app thread is serving and for how long."""
    return "%s %s (%.1fs)" % (call.method, call.req.uri, now - call.started)


def thread_stack(ident: int) -> str:
    frame = sys._current_frames().get(ident)
    if frame is None:
        return "  (thread finished)\n"
    return "".join(traceback.format_stack(frame))


def timed_out(pool: Any, call: Any, log: Any, timeout: float) -> None:
    """A call whose client is answered 504 (AIOWSGI_REQUEST_TIMEOUT): cancelled if still queued
    (a retrying client must not write twice), else marked ANSWERED (a running thread cannot be
    killed: its thread logs the 504, not its own late answer); logged with what it is doing."""
    if pool.cancel(call, JobState.ANSWERED):  # still queued: it will never run
        call.body.close()  # its body's memory or file now, not when a thread skips it
        stack = "  (still queued: no thread took it, and none will)\n"
    else:
        stack = next((thread_stack(ident) for ident, job in pool.jobs() if job is call),
                     "  (its thread has just finished it)\n")
        call.state = JobState.ANSWERED
    log.error("Request timed out after %ss: %s; its app thread is at:\n%s",
              timeout, describe(call, time.time()), stack)


def dump_stacks(pool: Any, log: Any, why: str) -> int:
    """Log every busy app thread's stack with the request it serves; returns how many."""
    now = time.time()
    jobs = pool.jobs()
    log.warning("%s: %d of %d app threads busy", why, len(jobs), pool.size)
    for ident, call in jobs:
        log.warning("App thread %s serving %s:\n%s", ident, describe(call, now), thread_stack(ident))
    return len(jobs)


class SendWatch(logging.Filter):
    """On the "gunicorn.error" logger: catches, on the thread making one of our sends only, the
    warning with a traceback gunicorn's Statsd logger writes for each send that fails."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        caught = getattr(self.local, "caught", None)
        if caught is None or not record.exc_info:
            return True
        caught.append(record)
        return False


WATCH = SendWatch()


class Metrics:
    """The worker's own statsd metrics, through gunicorn's Statsd logger (only it has `gauge` and
    `increment`). That logger logs every failed send as a warning with a traceback: with statsd
    unreachable, per-second gauges would fill the error log. A failed send of ours pauses our
    metrics for STATSD_PAUSE seconds and is logged once in STATSD_WARN_EVERY, one line."""

    def __init__(self, log: Any, clock: Any = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.gauge = getattr(log, "gauge", None)
        self.increment = getattr(log, "increment", None)
        self.paused_until = 0.0
        self.warned_at: float | None = None
        self.failures = 0
        if self.gauge is not None:
            logging.getLogger("gunicorn.error").addFilter(WATCH)  # one filter, however many adds

    def send(self, method: Any, name: str, value: int) -> bool:
        """Send one metric unless paused; False if it failed (or was not sent)."""
        now = self.clock()
        if method is None or now < self.paused_until:
            return False
        caught: list[logging.LogRecord] = []
        WATCH.local.caught = caught
        try:
            method(name, value)
            if caught and self.paused_until:
                # The first send since a pause: a connected UDP socket reports a refusal at
                # the next send, so this may be the one of a packet sent before the pause.
                caught.clear()
                method(name, value)
            self.paused_until = 0.0
            if caught:
                self.failed(caught[0], now)  # its own warning's statsd count is watched too
        finally:
            WATCH.local.caught = None
        return not caught

    def failed(self, record: logging.LogRecord, now: float) -> None:
        self.paused_until = now + STATSD_PAUSE
        self.failures += 1
        if self.warned_at is not None and now - self.warned_at < STATSD_WARN_EVERY:
            return
        self.warned_at = now
        exc = record.exc_info[1] if record.exc_info else None
        self.log.warning("Cannot send the worker's metrics to statsd (%s: %s): they pause for "
                         "%.0f s after each failed send; %d failed so far, said at most every "
                         "%.0f s", type(exc).__name__, exc, STATSD_PAUSE, self.failures,
                         STATSD_WARN_EVERY)


class Monitor:
    """Looked at once per heartbeat on the loop: statsd gauges (at most once a second) and
    waitress's queue-depth warning."""

    def __init__(self, pool: Any, server: Any, log: Any, pid: int) -> None:
        self.pool = pool
        self.server = server
        self.log = log
        self.prefix = f"aiowsgi.{pid}."
        self.saturated_since: float | None = None
        self.warned_at = 0.0
        self.overload_logged_at = 0.0
        self.metrics = Metrics(log)
        self.gauged_second: int | None = None

    def tick(self, now: float) -> None:
        """Each heartbeat; `now` is the loop's clock (seconds)."""
        pool, server = self.pool, self.server
        # Calls waiting for a thread, those whose client left (cancelled, still in the queue
        # until a thread skips them) not counted, those not yet handed over counted.
        queued, busy = server.ctx.queued, pool.busy
        second = math.floor(now)  # the gauges: at most once a second, whatever the heartbeat
        if self.metrics.gauge is not None and second != self.gauged_second:
            self.gauged_second = second
            gauge = self.metrics.gauge
            for name, value in (("busy_threads", busy), ("queued_requests", queued),
                                ("connections", len(server.conns))):
                if not self.metrics.send(gauge, self.prefix + name, value):
                    break  # failed or paused: the rest would fail too
        # Every thread busy and requests still waiting, two ticks in a row (a queue that "stays"
        # deeper than the idle threads). A queue seen while threads are idle is only jobs
        # handed over a moment ago, not yet picked up.
        if queued and busy >= pool.size:
            if self.saturated_since is None:
                self.saturated_since = now
            elif now - self.warned_at >= QUEUE_WARNING_EVERY:
                self.warned_at = now
                self.log.warning("Task queue depth is %d (%d of %d threads busy for %.0fs)",
                                 queued, busy, pool.size, now - self.saturated_since)
        else:
            self.saturated_since = None

    def count(self, name: str) -> None:
        self.metrics.send(self.metrics.increment, self.prefix + name, 1)

    def overloaded(self, queued: int, limit: int) -> None:
        self.count("overload_503")
        now = time.monotonic()
        if now - self.overload_logged_at >= OVERLOAD_LOG_EVERY:
            self.overload_logged_at = now
            self.log.warning("Overloaded: %d requests queued for %d threads (limit %d); answering 503",
                             queued, self.pool.size, limit)
