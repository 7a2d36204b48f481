"""What reaches gunicorn's error log besides gunicorn's own calls: wsgi.errors, and errors the event loop catches."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

# The context keys asyncio fills with a list of frames (debug mode): printed as a stack.
TRACEBACK_KEYS = ("source_traceback", "handle_traceback")
# Where asyncio's socket transport tears itself down: a second call there (asyncio's own, see
# double_connection_lost) finds its socket and protocol gone and raises AttributeError.
TEARDOWN = ("selector_events.py", "_call_connection_lost")


class WSGIErrors(io.RawIOBase):
    """wsgi.errors (PEP 3333 section "environ Variables"): what apps write goes to the streams of
    gunicorn's error log. gunicorn's WSGIErrorsWrapper (the same in 21.2 and 27), copied: it is
    not part of gunicorn's documented API, so a release may move or change it.

    One object serves every request of the worker (gunicorn makes one per request), so an app's
    close() must not end it for the requests after: it is a no-op.
    """

    def __init__(self, cfg: Any) -> None:
        self.to_stderr = cfg.errorlog == "-"

    @property
    def streams(self) -> list[Any]:
        """The handlers' streams now, not at start: USR1 (log rotation) replaces them, and
        gunicorn builds its wrapper per request for that reason."""
        handlers = logging.getLogger("gunicorn.error").handlers
        streams: list[Any] = []
        if self.to_stderr:
            # gunicorn's first handler then writes to stderr already: not twice.
            streams.append(sys.stderr)
            handlers = handlers[1:]
        for handler in handlers:
            if hasattr(handler, "stream"):
                streams.append(handler.stream)
        return streams

    def write(self, data: Any) -> None:
        for stream in self.streams:
            try:
                stream.write(data)
            except UnicodeError:
                stream.write(data.encode("UTF-8"))
            stream.flush()

    def close(self) -> None:
        """Left open: the streams are the error log's, and the next request writes here too."""


LoopHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]


def loop_exception_handler(log: Any) -> LoopHandler:
    """For loop.set_exception_handler: what asyncio catches (a callback that raised, a task's
    exception never retrieved) goes to gunicorn's error log, as ERROR with its traceback, not to
    asyncio's logger (which, unconfigured, prints to stderr: not --error-logfile, not syslog)."""

    def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = context.get("message") or "Unhandled exception in the event loop"
        exc = context.get("exception")
        if double_connection_lost(exc):
            log.debug("%s: %r (asyncio tore down a connection twice; harmless)", message, exc)
            return
        details = []
        for key, value in context.items():
            if key in ("message", "exception"):
                continue
            if key in TRACEBACK_KEYS:
                value = "".join(traceback.format_list(value)).rstrip()
            else:
                value = repr(value)
            details.append(f"\n{key}: {value}")
        exc_info = (type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None
        log.error("%s%s", message, "".join(details), exc_info=exc_info)

    return handle


def double_connection_lost(exc: Any) -> bool:
    """asyncio's socket transport (3.10 to 3.13 at least; CPython gh-156512) tears a connection
    down twice when the client resets it while its protocol resumes writing:
    _write_ready empties its buffer and calls protocol.resume_writing(); asyncio's own TLS layer
    writes from there, the write meets the reset and schedules _call_connection_lost; back in
    _write_ready, the now empty buffer of a closing transport calls it again, at once. The
    scheduled call then finds the socket and protocol gone: AttributeError ('connection_lost',
    then 'close'). Nothing of ours runs in between and the connection did close (once); only
    that exact error is told apart, every other one stays an ERROR."""
    if not isinstance(exc, AttributeError):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    return (last.filename.endswith(TEARDOWN[0]) and last.name == TEARDOWN[1]
            and "asyncio" in last.filename)
