"""The gunicorn worker: process lifecycle, signals, heartbeat, graceful and quick exits. The only module that ends the process."""

from __future__ import annotations

import asyncio
import enum
import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers import base

from . import diagnostics, fdlimit, startup
from . import settings as settings_mod
from .bridge import ThreadPool
from .errorlog import WSGIErrors, loop_exception_handler
from .listener import Listener
from .server import Server
from .tls import TlsContexts, gunicorn_context, hook_refresh, watched_files

# Heartbeat period (seconds): at most this, and at most a quarter of gunicorn's --timeout
# (self.timeout, as gunicorn gives it to a worker, is half of it); this with --timeout 0.
HEARTBEAT = 1.0
# The shortest heartbeat period, whatever --timeout says (seconds).
HEARTBEAT_MIN = 0.05
# The master SIGKILLs a worker graceful_timeout after its TERM. A drain ends this much earlier,
# so closing connections, cancelling tasks and the worker_exit hook run before that: at least
# EXIT_MARGIN seconds, or EXIT_MARGIN_SHARE of graceful_timeout if longer, never more than half.
EXIT_MARGIN = 1.0
EXIT_MARGIN_SHARE = 0.1
# At exit, how long the loop waits for its cancelled tasks (seconds): well inside EXIT_MARGIN.
EXIT_TASKS_WAIT = 0.5
def drain_budget(graceful_timeout: float) -> float:
    """Seconds a graceful drain may last: graceful_timeout less the exit margin."""
    margin = max(EXIT_MARGIN, graceful_timeout * EXIT_MARGIN_SHARE)
    return max(0.0, graceful_timeout - min(margin, graceful_timeout / 2))


def heartbeat_period(timeout: float) -> float:
    """Seconds between two notifications of the master, from the worker's self.timeout (half of
    --timeout). --timeout 0 turns the master's check off (Arbiter.murder_workers returns at
    once): the loop still looks at its parent and its phase, once per HEARTBEAT, as gthread
    does."""
    if timeout <= 0:
        return HEARTBEAT
    return min(HEARTBEAT, max(HEARTBEAT_MIN, timeout / 2))


def gil_enabled() -> bool:
    """Whether this interpreter runs with the GIL: False only on a free-threaded build (3.13t+)
    that runs with it off. The one probe the start-up check calls (tests replace it)."""
    probe = getattr(sys, "_is_gil_enabled", None)  # documented since 3.13; absent before
    return True if probe is None else bool(probe())


def refuse_without_gil() -> None:
    """Refuse to start where the GIL is off: the thread bridge (bridge/) hands work between
    the loop and app threads without locks, which is only safe while the GIL serialises them."""
    if not gil_enabled():
        raise settings_mod.SettingsError(
            "gunicorn_aiowsgi needs the GIL, and this free-threaded Python runs without it: its "
            "thread bridge is not safe there yet. Start gunicorn with the GIL on: PYTHON_GIL=1 "
            "in the environment, or python -X gil=1 -m gunicorn ...")


def _do_nothing(_signum: int, _frame: Any) -> None:
    pass


class WorkerPhase(enum.Enum):
    """The worker's life after boot."""

    SERVING = "serving"
    DRAINING = "draining"   # TERM, max_requests, master gone, reload: finish what is in flight
    QUITTING = "quitting"   # QUIT/INT: leave now


class Worker(base.Worker):
    """`gunicorn -k gunicorn_aiowsgi.Worker`: one asyncio loop, aiohttp's C request parser, a thread pool."""

    # The signals the master handles; the child resets them so it does not inherit them, as
    # gunicorn's base worker does.
    RESET = ("HUP", "USR2", "CHLD")
    # The master's too (one worker more or less), but their default action stops a process:
    # one sent to every process (`systemctl kill -s TTIN`, `pkill -TTIN -f gunicorn`) would
    # freeze the worker until the master killed it for a missed heartbeat. gunicorn's workers
    # keep the master's handler for them; ours does nothing.
    IGNORED = ("TTIN", "TTOU")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.phase = WorkerPhase.SERVING
        self.server: Server | None = None
        self.listener: Listener | None = None
        self.pool: ThreadPool | None = None
        self.settings: settings_mod.Settings | None = None
        self._wake: asyncio.Event | None = None
        self._on_loop: dict[int, Callable[[], None]] = {}
        self._drain_started: float | None = None  # loop time of the TERM (or other cause)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """In the master, before any worker is forked (gunicorn's Arbiter.start calls it, with
        raw_env in os.environ): a setting no worker could start with stops gunicorn here, in one
        line of the error log and exit status 1, as gunicorn stops for an address it cannot
        bind; not each worker with a traceback, then the master."""
        try:
            refuse_without_gil()
            startup.check_in_master(cfg)
        except settings_mod.SettingsError as exc:
            log.error("gunicorn_aiowsgi cannot start: %s", exc)
            sys.exit(1)

    # -- the event loop --------------------------------------------------------------------
    def new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def init_process(self) -> None:
        # After the fork, so preload_app never shares a loop (or a thread) with the master.
        self.loop = self.new_loop()
        # What asyncio catches (a signal's callback or a hook that raised) goes to the error log.
        self.loop.set_exception_handler(loop_exception_handler(self.log))
        asyncio.set_event_loop(self.loop)
        super().init_process()

    # -- signals: the work runs on the loop ------------------------------------------------
    def init_signals(self) -> None:
        """Each signal's work runs as a loop callback, between two other callbacks.

        Not loop.add_signal_handler: closing a loop resets every signal it handled to SIG_DFL,
        and a TERM in that window (Heroku and honcho signal every process, and the master
        signals again) would kill an exiting worker with a signal status. These Python-level
        handlers only forward to the loop, and once it is closed they do nothing.
        """
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for name in self.RESET:
            signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_DFL)
        for name in self.IGNORED:
            # A handler, not SIG_IGN: a program the app runs gets the default back at exec.
            sig = getattr(signal, f"SIG{name}")
            signal.signal(sig, _do_nothing)
            signal.siginterrupt(sig, False)
        self._on_loop = {
            signal.SIGTERM: self.on_term,
            signal.SIGQUIT: self.on_quit,
            signal.SIGINT: self.on_quit,
            signal.SIGUSR1: self.log.reopen_files,
            signal.SIGURG: self.on_dump,
            signal.SIGWINCH: lambda: self.log.debug("worker: SIGWINCH ignored."),
        }
        for sig in self._on_loop:
            signal.signal(sig, self._forward)
        # ABRT is what the master sends a worker that missed its heartbeat, which may mean the
        # loop is blocked: a plain handler still runs between bytecodes of the main thread.
        signal.signal(signal.SIGABRT, lambda _sig, _frame: self.on_abort())
        # As gunicorn's base worker does for TERM and USR1, for every signal forwarded to the
        # loop: one landing on an app thread must not fail its blocking C call (a read, a
        # database driver's wait) with EINTR; SA_RESTART resumes it instead. Not ABRT: the
        # worker exits on it anyway, and a loop blocked in a restartable call (a blocking
        # socket read) must still be interrupted for the handler to run.
        for sig in self._on_loop:
            signal.siginterrupt(sig, False)

    def _forward(self, signum: int, _frame: Any) -> None:
        loop, callback = self.loop, self._on_loop.get(signum)
        if loop is None or loop.is_closed() or callback is None:
            return  # exiting already: nothing is left for the signal to do
        # Queued before the loop runs (a TERM during a slow app import), it runs first thing.
        loop.call_soon_threadsafe(callback)

    def on_term(self) -> None:
        """Graceful: stop accepting, finish in-flight requests, exit by graceful_timeout."""
        self.drain("received TERM")

    def on_quit(self) -> None:
        """Quick: exit within a second even with requests in flight (after a TERM too)."""
        self.alive = False
        try:
            if self.phase is not WorkerPhase.QUITTING:
                self.phase = WorkerPhase.QUITTING
                self.cfg.worker_int(self)
        except Exception:  # noqa: BLE001 - the hook's error is logged; the worker still quits
            self.log.exception("Exception in worker_int hook")
        finally:
            self._poke()

    def on_abort(self) -> None:
        """The master timed us out: say what every app thread was doing, worker_abort, exit."""
        self.alive = False
        try:
            self.dump_stacks("Worker timed out (SIGABRT)")
            self.cfg.worker_abort(self)
        except Exception:  # noqa: BLE001 - logged; the exit must happen whatever the hook did
            self.log.exception("Exception in worker_abort hook")
        finally:
            sys.exit(1)

    def on_dump(self) -> None:
        """`kill -URG <worker pid>`: log every app thread's stack and request, keep serving."""
        self.dump_stacks("Stack dump requested (SIGURG)")

    def dump_stacks(self, why: str) -> int:
        """Also callable from hooks: `worker.dump_stacks("why")` in worker_abort, say."""
        if self.pool is None:
            return 0
        return diagnostics.dump_stacks(self.pool, self.log, why)

    # -- draining --------------------------------------------------------------------------
    def drain(self, why: str) -> None:
        """Stop accepting, close idle connections, answer the rest with Connection: close."""
        self.alive = False
        if self.phase is not WorkerPhase.SERVING:
            return
        self.log.info("Worker draining (pid: %s): %s", self.pid, why)
        self.phase = WorkerPhase.DRAINING
        if self.loop is not None:
            self._drain_started = self.loop.time()
        if self.pool is not None and self.loop is not None:
            # The drain waits for app calls too: wake it when the last one finishes.
            self.pool.wake_when_idle(self.loop, self._poke)
        if self.listener is not None:
            self.listener.stop()
        if self.server is not None:
            self.server.draining = True
            self.server.close_idle()
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def request_started(self) -> None:
        """Counted per request on the loop, before it is answered, so that the request that
        reaches max_requests (with jitter) is answered with Connection: close."""
        self.nr += 1
        if self.nr >= self.max_requests and self.phase is WorkerPhase.SERVING:
            self.log.info("Autorestarting worker after current request.")
            self.drain("max_requests reached")

    # -- running ---------------------------------------------------------------------------
    def run(self) -> None:
        # The master checked the settings and TLS files before forking (check_config). Anything
        # else start() meets later (a certificate caught half-written when a worker recycles, a
        # thread that cannot start) is a crash, as base.init_process has it (booted): logged, and
        # the master starts another worker, which heals once the cause is gone.
        assert self.loop is not None
        try:
            self.loop.run_until_complete(self.serve())
        except settings_mod.SettingsError as exc:
            # Settings the master never saw: a reload (HUP) brought them, and gunicorn does not
            # call check_config again. The worker cannot boot, and the master stops, as it does
            # when a HUP brings an app that fails to import (gunicorn's boot error).
            self.log.error("gunicorn_aiowsgi cannot start: %s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        finally:
            self.shutdown()

    def start(self) -> None:
        assert self.loop is not None
        refuse_without_gil()
        self.settings = startup.usable_spool_dir(settings_mod.from_cfg(self.cfg), self.log)
        self.warn_unsupported()
        fdlimit.ensure(self.settings.worker_connections, self.log)
        self.pool = ThreadPool(self.settings.threads)
        self.server = Server(self, self.settings, self.wsgi, self.pool, self.loop, self.log,
                             WSGIErrors(self.cfg))
        loop = self.loop
        tls = (startup.readable_as_worker(lambda: TlsContexts(
            loop, self.ssl_context, watched_files(self.cfg), self.log, hook_refresh(self.cfg)))
            if self.cfg.is_ssl else None)
        self.listener = Listener(self.loop, self.sockets, self.server, tls,
                                 self.settings.worker_connections, self.log,
                                 self.settings.header_timeout)
        self.server.on_close = self.on_connection_closed
        self.server.spools.warn = self.log.warning
        if self.phase is WorkerPhase.SERVING:  # a TERM during boot: never take a connection
            self.listener.start()

    def on_connection_closed(self) -> None:
        assert self.listener is not None
        self.listener.closed_one()
        if self.phase is WorkerPhase.DRAINING and self.server is not None and not self.server.conns:
            self._poke()

    def ssl_context(self) -> Any:
        """The TLS context, as sync and gthread build it (the ssl_context hook applied); run in
        a thread when rebuilt (tls.py)."""
        return gunicorn_context(self.cfg)

    def warn_unsupported(self) -> None:
        startup.warn_unsupported(self.cfg, self.log)

    async def serve(self) -> None:
        self._wake = asyncio.Event()
        self.start()
        assert self.settings is not None and self.server is not None and self.loop is not None
        self.booted = True
        # Everything alive now (the app, its imports, the server) lives as long as the worker:
        # keep it out of the garbage collector's full passes, which otherwise walk it all and
        # pause the loop for tens of milliseconds (what gc.freeze is for).
        gc.freeze()
        self.log.info("aiowsgi: serving with %d threads, %d connections max (pid: %s)",
                      self.settings.threads, self.settings.worker_connections, self.pid)
        period = heartbeat_period(self.timeout)
        while self.phase is WorkerPhase.SERVING:
            self.notify()
            self.server.monitor.tick(self.loop.time())
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self.drain("master is gone")
            elif not self.alive:  # the reloader (or base code) asked us to stop
                self.drain("asked to stop")
            else:
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
        """Wait for open connections and for every app call in progress (queued or running,
        its client there or not), as gthread does, until just before the master's SIGKILL."""
        server, pool, loop = self.server, self.pool, self.loop
        assert server is not None and pool is not None and loop is not None
        assert self.settings is not None
        started = self._drain_started if self._drain_started is not None else loop.time()
        deadline = started + drain_budget(self.settings.graceful_timeout)
        while (self.phase is WorkerPhase.DRAINING and (server.conns or pool.inflight)
               and loop.time() < deadline):
            self.notify()  # the master must not kill a worker that is draining on time
            server.close_idle()
            await self.wait(min(period, max(0.0, deadline - loop.time())))
        if server.conns:
            self.log.info("Closing %d connections at exit", len(server.conns))
        if pool.inflight:
            self.log.warning("Exiting with %d app calls unfinished (queued or running)",
                             pool.inflight)
        server.close_all()

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
                loop.run_until_complete(asyncio.wait(pending, timeout=EXIT_TASKS_WAIT))
        finally:
            loop.close()
            # Our forwarding handlers are no-ops from here; SIG_IGN also survives interpreter
            # finalization, which resets Python-level handlers to SIG_DFL at the very end.
            for sig in self._on_loop:
                signal.signal(sig, signal.SIG_IGN)
        if self.pool is not None:
            self.pool.shutdown(timeout=0)
        if self.server is not None:
            self.server.spools.shutdown(timeout=0)


class UVLoopWorker(Worker):
    """The same worker on uvloop (`pip install gunicorn-aiowsgi[uvloop]`)."""

    def new_loop(self) -> asyncio.AbstractEventLoop:
        import uvloop

        return uvloop.new_event_loop()
