"""Operator diagnostics: app-thread stack dumps, the queue-depth warning, pool metrics through statsd."""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any

# The queue-depth warning repeats at most this often while the pool stays saturated (seconds).
QUEUE_WARNING_EVERY = 10.0
# Overload 503s are logged at most this often (seconds), with the queue depth.
OVERLOAD_LOG_EVERY = 1.0


def describe(call: Any, now: float) -> str:
    """'GET /path?q (3.2s)': what an app thread is serving and for how long."""
    return "%s %s (%.1fs)" % (call.method, call.req.uri, now - call.started)


def thread_stack(ident: int) -> str:
    frame = sys._current_frames().get(ident)
    if frame is None:
        return "  (thread finished)\n"
    return "".join(traceback.format_stack(frame))


def dump_stacks(pool: Any, log: Any, why: str) -> int:
    """Log every busy app thread's stack with the request it serves; returns how many."""
    now = time.time()
    jobs = pool.jobs()
    log.warning("%s: %d of %d app threads busy", why, len(jobs), pool.size)
    for ident, call in jobs:
        log.warning("App thread %s serving %s:\n%s", ident, describe(call, now), thread_stack(ident))
    return len(jobs)


class Monitor:
    """Looked at once per heartbeat on the loop: statsd gauges and waitress's queue-depth warning."""

    def __init__(self, pool: Any, server: Any, log: Any, pid: int) -> None:
        self.pool = pool
        self.server = server
        self.log = log
        self.prefix = f"aiowsgi.{pid}."
        self.saturated_since: float | None = None
        self.warned_at = 0.0
        self.overload_logged_at = 0.0
        self.gauge = getattr(log, "gauge", None)          # only gunicorn's Statsd logger has it
        self.increment = getattr(log, "increment", None)

    def tick(self, now: float) -> None:
        pool, server = self.pool, self.server
        # Calls waiting for a thread, those whose client left (cancelled, still in the queue
        # until a thread skips them) not counted, those not yet handed over counted.
        queued, busy = server.ctx.queued, pool.busy
        if self.gauge is not None:
            self.gauge(self.prefix + "busy_threads", busy)
            self.gauge(self.prefix + "queued_requests", queued)
            self.gauge(self.prefix + "connections", len(server.conns))
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
        if self.increment is not None:
            self.increment(self.prefix + name, 1)

    def overloaded(self, queued: int, limit: int) -> None:
        self.count("overload_503")
        now = time.monotonic()
        if now - self.overload_logged_at >= OVERLOAD_LOG_EVERY:
            self.overload_logged_at = now
            self.log.warning("Overloaded: %d requests queued for %d threads (limit %d); answering 503",
                             queued, self.pool.size, limit)
