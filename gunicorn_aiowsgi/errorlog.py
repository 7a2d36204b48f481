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
