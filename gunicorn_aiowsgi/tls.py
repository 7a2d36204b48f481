"""The TLS context new connections get: gunicorn's, rebuilt off the loop when its files change, or when an ssl_context hook's inputs may have.

gthread builds a context (gunicorn's sock.ssl_context, the hook included) for every connection,
so a renewed certificate, a CA taken out of `ca_certs` or a CRL the hook loads applies to the
next connection without a restart. Building one per handshake would cost the loop a file read
and a key parse each time; here the context is rebuilt when one of its files (certfile, keyfile,
ca_certs) changes, looked at once a second at most, and, with an ssl_context hook (whose inputs
are unknown), whenever it is TLS_HOOK_REFRESH old. A rebuild runs in a thread (the hook is the
user's code, and may take its time); a connection that arrives while one is due waits for it, up
to TLS_BUILD_WAIT, so the first connection after a change gets the new context. A rebuild that
fails (a file caught half-written, a hook that raises) keeps the last good context, and is said
once until one succeeds.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import os
import time
from collections.abc import Callable
from typing import Any

from .bridge import call_in_thread

# How often new connections look at the certificate, key and CA files (seconds).
TLS_RELOAD_CHECK = 1.0
# With an ssl_context hook: the age at which the context is rebuilt for the next connection
# (seconds). What the hook reads (a CRL, another CA file) is unknown; gthread runs it per
# connection. A rebuild takes about a millisecond (a key, a CA file and a CRL loaded), in a thread.
TLS_HOOK_REFRESH = 2.0
# Longest a new connection waits for a rebuild in progress; past it, the previous context
# serves it (seconds). A rebuild takes milliseconds; a hook stuck on the network must not
# hold every new client.
TLS_BUILD_WAIT = 2.0
# A rebuild still running this long is given up (seconds): said once, and the next change starts
# another (its thread may stay stuck; what it returns later is dropped). Without it one hook
# call that never returns (the network, an NFS mount) ended every later rebuild, silently.
TLS_BUILD_STUCK = 30.0


class TlsState(enum.Enum):
    """Whether the context serves new connections as it is."""

    READY = "ready"        # as it is
    BUILDING = "building"  # a rebuild runs in a thread: new connections wait (TLS_BUILD_WAIT)


def watched_files(cfg: Any) -> list[str]:
    """The files gunicorn's context is built from, as set: certfile, keyfile, ca_certs."""
    names = [name for name in ("certfile", "keyfile", "ca_certs") if name in cfg.settings]
    return [path for path in (getattr(cfg, name) for name in names) if path]


def hook_refresh(cfg: Any) -> float | None:
    """TLS_HOOK_REFRESH when an ssl_context hook is set (gunicorn 21+), else None: rebuilt
    only when a watched file changes."""
    if "ssl_context" not in cfg.settings:
        return None
    return None if cfg.ssl_context is cfg.settings["ssl_context"].default else TLS_HOOK_REFRESH


def gunicorn_context(cfg: Any) -> Any:
    """The context sync and gthread build (the ssl_context hook applied), offering HTTP/1.1
    only: HTTP/2 is not spoken here."""
    from gunicorn import sock

    context = sock.ssl_context(cfg)
    context.set_alpn_protocols(["http/1.1"])
    return context


class TlsContexts:
    """The context new connections get (current(), then fresh() while a rebuild is due)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, build: Callable[[], Any], paths: list[str],
                 log: Any, refresh: float | None = None) -> None:
        self.loop, self.build, self.log = loop, build, log
        self.paths = [p for p in paths if p]
        self.refresh = refresh      # seconds between hook rebuilds; None: only on file changes
        self.stamp = self._stamp()  # of the files the serving context was built from
        self.context = build()
        self.checked = self.tried = time.monotonic()  # last look at the files; last build started
        self.state = TlsState.READY
        self.done: asyncio.Future[None] | None = None  # the rebuild in progress, while BUILDING
        self.failed: tuple[Any, ...] | None = None  # the stamp a rebuild last failed on (said once)

    def _stamp(self) -> tuple[Any, ...]:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self.paths:
            try:
                info = os.stat(path)
                stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def current(self) -> Any:
        """The context for a new connection; None while a rebuild it should wait for runs."""
        now = time.monotonic()
        if self.state is TlsState.BUILDING and now - self.tried >= TLS_BUILD_STUCK:
            self._given_up()
        if self.state is TlsState.READY and now - self.checked >= TLS_RELOAD_CHECK:
            self.checked = now
            stamp = self._stamp()
            if stamp != self.stamp or (self.refresh is not None and now - self.tried >= self.refresh):
                self._start(stamp, now)
        if self.state is TlsState.BUILDING and now - self.tried < TLS_BUILD_WAIT:
            return None
        return self.context

    async def fresh(self) -> Any:
        """The context once the rebuild in progress is done (TLS_BUILD_WAIT after it began at
        most; the previous one if it failed or is still running)."""
        done = self.done
        if self.state is TlsState.BUILDING and done is not None:
            left = TLS_BUILD_WAIT - (time.monotonic() - self.tried)
            await asyncio.wait([done], timeout=max(0.0, left))
        return self.context

    def _start(self, stamp: tuple[Any, ...], now: float) -> None:
        self.state, self.tried = TlsState.BUILDING, now
        self.done = done = self.loop.create_future()
        built = functools.partial(self._built, stamp, done)
        try:
            call_in_thread(self.loop, self.build, built, "aiowsgi-tls")
        except RuntimeError as exc:  # no thread to be had: tried again at the next look
            built(None, exc)

    def _given_up(self) -> None:
        self.log.error("TLS context rebuild still running after %ss (the ssl_context hook or a "
                       "file read does not return); still serving the previous context, and "
                       "the next change starts another", TLS_BUILD_STUCK)
        self.state, self.done = TlsState.READY, None

    def _built(self, stamp: tuple[Any, ...], done: asyncio.Future[None], context: Any,
               error: BaseException | None) -> None:
        """On the loop: the rebuild's outcome. A success serves the next connections; a failure
        keeps the last good context, said once per state of the files."""
        if done is not self.done:  # a rebuild given up on (TLS_BUILD_STUCK): too late to serve
            return
        self.state = TlsState.READY
        if error is None:
            changed, recovered = stamp != self.stamp, self.failed is not None
            self.context, self.stamp, self.failed = context, stamp, None
            if changed or recovered:
                self.log.info("TLS context rebuilt (%s): new connections use it",
                              "files changed" if changed else "loadable again")
        elif stamp != self.failed:
            self.failed = stamp
            self.log.error("TLS context cannot be rebuilt (certificate, key or CA file changed, "
                           "or the ssl_context hook failed); still serving the previous one",
                           exc_info=(type(error), error, error.__traceback__))
        if not done.done():
            done.set_result(None)
