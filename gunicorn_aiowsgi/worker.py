"""The gunicorn worker: process lifecycle, signals, heartbeat, graceful and quick exits. The only module that ends the process."""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import sys
from typing import Any

from gunicorn.http.wsgi import WSGIErrorsWrapper
from gunicorn.workers import base

from . import diagnostics
from . import settings as settings_mod
from .bridge import ThreadPool
from .listener import Listener
from .server import Server

# Heartbeat period (seconds): at most this, and at most half of the master's timeout.
HEARTBEAT = 1.0


class Phase(enum.Enum):
    """The worker's life after boot."""

    SERVING = "serving"
    DRAINING = "draining"   # TERM, max_requests, master gone, reload: finish what is in flight
    QUITTING = "quitting"   # QUIT/INT: leave now


class Worker(base.Worker):
    """`gunicorn -k gunicorn_aiowsgi.Worker`: one asyncio loop, aiohttp's HTTP server, a thread pool."""

    # The signals the master handles; the child resets them so it does not inherit them.
    RESET = ("HUP", "USR2", "TTIN", "TTOU", "CHLD")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.phase = Phase.SERVING
        self.server: Server | None = None
        self.listener: Listener | None = None
        self.pool: ThreadPool | None = None
        self.settings: settings_mod.Settings | None = None
        self._wake: asyncio.Event | None = None

    # -- the event loop --------------------------------------------------------------------
    def new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def init_process(self) -> None:
        # After the fork, so preload_app never shares a loop (or a thread) with the master.
        self.loop = self.new_loop()
        asyncio.set_event_loop(self.loop)
        super().init_process()

    # -- signals (installed on the loop) ---------------------------------------------------
    def init_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for name in self.RESET:
            signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_DFL)
        assert self.loop is not None
        add = self.loop.add_signal_handler
        add(signal.SIGTERM, self.on_term)
        add(signal.SIGQUIT, self.on_quit)
        add(signal.SIGINT, self.on_quit)
        add(signal.SIGUSR1, self.log.reopen_files)
        add(signal.SIGURG, self.on_dump)
        # ABRT is what the master sends a worker that missed its heartbeat, which may mean the
        # loop is blocked: a plain handler still runs between bytecodes of the main thread.
        signal.signal(signal.SIGABRT, lambda _sig, _frame: self.on_abort())
        add(signal.SIGWINCH, lambda: self.log.debug("worker: SIGWINCH ignored."))

    def on_term(self) -> None:
        """Graceful: stop accepting, finish in-flight requests, exit by graceful_timeout."""
        self.alive = False
        self.drain("received TERM")

    def on_quit(self) -> None:
        """Quick: exit within a second even with requests in flight (after a TERM too)."""
        self.alive = False
        if self.phase is not Phase.QUITTING:
            self.phase = Phase.QUITTING
            self.cfg.worker_int(self)
        self._poke()

    def on_abort(self) -> None:
        """The master timed us out: say what every app thread was doing, worker_abort, exit."""
        self.alive = False
        self.dump_stacks("Worker timed out (SIGABRT)")
        self.cfg.worker_abort(self)
        sys.exit(1)

    def on_dump(self) -> None:
        """`kill -URG <worker pid>`: log every app thread's stack and request, keep serving."""
        self.dump_stacks("Stack dump requested (SIGURG)")

    def dump_stacks(self, why: str) -> int:
        """Also callable from hooks: `worker.dump_stacks("why")` in worker_abort, say."""
        if self.pool is None:
            return 0
        return diagnostics.dump_stacks(self.pool, self.log, why)

    def drain(self, why: str) -> None:
        if self.phase is not Phase.SERVING:
            return
        self.log.info("Worker draining (pid: %s): %s", self.pid, why)
        self.phase = Phase.DRAINING
        if self.server is not None:
            self.server.draining = True
            self.server.close_idle()
        if self.listener is not None:
            self.listener.stop()
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def request_done(self) -> None:
        """Counted per request on the loop; max_requests (with jitter) starts a graceful exit."""
        self.nr += 1
        if self.nr >= self.max_requests and self.phase is Phase.SERVING:
            self.log.info("Autorestarting worker after current request.")
            self.drain("max_requests reached")

    # -- running ---------------------------------------------------------------------------
    def run(self) -> None:
        # base.init_process set booted before calling us; we are booted once sockets are served,
        # so an error before that makes the master stop instead of respawning forever.
        self.booted = False
        assert self.loop is not None
        try:
            self.loop.run_until_complete(self.serve())
        finally:
            self.shutdown()

    def start(self) -> None:
        assert self.loop is not None
        self.settings = settings_mod.from_cfg(self.cfg)
        self.warn_unsupported()
        self.pool = ThreadPool(self.settings.threads)
        self.server = Server(self, self.settings, self.wsgi, self.pool, self.loop, self.log,
                             WSGIErrorsWrapper(self.cfg))
        ssl_context = self.ssl_context() if self.cfg.is_ssl else None
        self.listener = Listener(self.loop, self.sockets, self.server, ssl_context,
                                 self.settings.worker_connections, self.log)
        self.server.on_close = self.on_connection_closed
        self.listener.start()

    def on_connection_closed(self) -> None:
        assert self.listener is not None
        self.listener.closed_one()
        if self.phase is Phase.DRAINING and self.server is not None and not self.server.conns:
            self._poke()

    def ssl_context(self) -> Any:
        from gunicorn import sock

        context = sock.ssl_context(self.cfg)  # applies the ssl_context hook, as sync/gthread do
        context.set_alpn_protocols(["http/1.1"])  # HTTP/2 is not spoken here
        return context

    def warn_unsupported(self) -> None:
        """Settings aiohttp's parser cannot honour: said at startup, never silently ignored."""
        for name in ("permit_obsolete_folding", "strip_header_spaces",
                     "permit_unconventional_http_method", "permit_unconventional_http_version"):
            if getattr(self.cfg, name, False):
                self.log.warning("%s is set but not supported by gunicorn_aiowsgi: aiohttp's "
                                 "parser refuses such requests with 400", name)

    async def serve(self) -> None:
        self._wake = asyncio.Event()
        self.start()
        assert self.settings is not None and self.server is not None
        self.booted = True
        self.log.info("aiowsgi: serving with %d threads, %d connections max (pid: %s)",
                      self.settings.threads, self.settings.worker_connections, self.pid)
        period = min(HEARTBEAT, max(0.05, self.timeout / 2))
        while self.phase is Phase.SERVING:
            self.notify()
            self.server.monitor.tick(self.loop.time())  # type: ignore[union-attr]
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self.drain("master is gone")
            elif not self.alive:  # the reloader (or base code) asked us to stop
                self.drain("asked to stop")
            await self.wait(period)
        await self.finish_draining(period)

    async def wait(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def finish_draining(self, period: float) -> None:
        assert self.server is not None and self.loop is not None
        deadline = self.loop.time() + self.settings.graceful_timeout  # type: ignore[union-attr]
        while self.phase is Phase.DRAINING and self.server.conns and self.loop.time() < deadline:
            self.notify()  # the master must not kill a worker that is draining on time
            self.server.close_idle()
            await self.wait(min(period, max(0.0, deadline - self.loop.time())))
        if self.server.conns:
            self.log.info("Closing %d connections at exit", len(self.server.conns))
        self.server.close_all()

    def shutdown(self) -> None:
        """Close what the loop owns; app threads are daemons and do not hold the process."""
        loop = self.loop
        assert loop is not None
        if self.listener is not None:
            self.listener.stop()
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
        finally:
            # Exiting already: a further TERM (Heroku and honcho signal every process, the
            # master signals again) must not kill us with a signal status once the loop's
            # handlers are gone.
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            loop.close()
        if self.pool is not None:
            self.pool.shutdown(timeout=0)


class UVLoopWorker(Worker):
    """The same worker on uvloop (`pip install gunicorn-aiowsgi[uvloop]`)."""

    def new_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        return uvloop.new_event_loop()
