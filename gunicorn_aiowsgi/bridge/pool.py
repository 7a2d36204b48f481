"""The worker's threads and their job queues: the app thread pool and the spool writer thread; a thread of its own for a rare call that may block long."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Callable

from ..messages import QUEUED, RUNNING, JobState

log = logging.getLogger("gunicorn.error")


class ThreadPool:
    """`size` daemon threads running jobs from one SimpleQueue.

    A job has a `state` (JobState, QUEUED when submitted), a `run()` method, and a `skip()`
    method called instead of `run()` when it was cancelled before a thread took it.

    Daemon threads: one stuck in a request never keeps the exiting process alive (gthread's
    do, and QUIT waits). `current` maps busy threads to jobs (stack dumps, busy gauge);
    `inflight` counts jobs not finished, so a graceful drain waits for every app call;
    `queued` counts jobs still waiting for a thread, those cancelled not included (a cancelled
    job stays in the queue until a thread reaches it and skips it: `held` counts those too).
    """

    def __init__(self, size: int, name: str = "aiowsgi") -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.current: dict[int, Any] = {}
        self._idle_waker: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None
        self._submitted = 0     # written by the submitting (loop) thread only
        self._cancelled = 0     # jobs cancelled while queued: written by the loop only (cancel)
        # Jobs started and jobs finished, one count per thread, each written by its own thread
        # only: no lock. A job leaves QUEUED once, under _lock: taken (started) or cancelled.
        self._started = [0] * size
        self._finished = [0] * size
        # Guards a job's QUEUED -> RUNNING / cancelled transition (a thread taking it against
        # the loop cancelling it); held for a few bytecodes only.
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}",
                                          daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Any) -> None:
        self._submitted += 1
        self._jobs.put(job)

    def wake_when_idle(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """From now on, run `callback` on `loop` whenever `inflight` drops to zero.

        Set only while draining: serving does not need a loop wake-up per idle moment.
        """
        self._idle_waker = (loop, callback)

    def cancel(self, job: Any, state: JobState) -> bool:
        """Mark a job no thread has taken yet as cancelled (`state`); False if it already runs.
        On the loop only. One cancelled before its submit (in Context.pending) makes `queued`
        read one low till then: Context.queued adds that list, and stays exact."""
        with self._lock:
            if job.state is not QUEUED:
                return False
            job.state = state
            self._cancelled += 1
            return True

    @property
    def queued(self) -> int:
        """Jobs waiting for a free thread (count), not those cancelled while they waited."""
        return self._submitted - self._cancelled - sum(self._started)

    @property
    def held(self) -> int:
        """Jobs in the queue (count), cancelled ones a thread has not skipped yet included."""
        return self._jobs.qsize()

    @property
    def busy(self) -> int:
        """Threads running a job now (count)."""
        return len(self.current)

    @property
    def inflight(self) -> int:
        """Jobs submitted and not finished yet, queued or running (count)."""
        return self._submitted - sum(self._finished)

    def _work(self, index: int) -> None:
        ident, lock, started = threading.get_ident(), self._lock, self._started
        while True:
            job = self._jobs.get()
            if job is None:
                return
            # acquire/release, not `with`: a third of the cost on CPython 3.11, once per job.
            lock.acquire()
            try:
                start = job.state is QUEUED
                if start:
                    job.state = RUNNING
                    started[index] += 1
                    # One key per thread, written only by that thread: safe under the GIL.
                    self.current[ident] = job
            finally:
                lock.release()
            try:
                if start:
                    job.run()
                else:
                    job.skip()
            except BaseException:  # a job must never kill its thread
                log.exception("Unhandled error in an app thread")
            finally:
                self.current.pop(ident, None)
                self._done(index)
            del job

    def _done(self, index: int) -> None:
        self._finished[index] += 1
        waker = self._idle_waker
        # Counted before summed: the last to finish sees the total (two may; the callback re-checks).
        if waker is not None and sum(self._finished) == self._submitted:
            try:
                waker[0].call_soon_threadsafe(waker[1])
            except RuntimeError:  # the loop is closed: the worker is exiting
                pass

    def jobs(self) -> list[tuple[int, Any]]:
        """A snapshot of (thread ident, job) for every busy thread."""
        return list(self.current.items())

    def shutdown(self, timeout: float = 0.0) -> None:
        """Ask every thread to stop after its current job; wait at most `timeout` seconds."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)


class SpoolWriter:
    """One thread per worker doing the request-body spools' disk work, so the loop never blocks on a disk.

    A queue of typed jobs, `(kind, target, argument, done)`: the thread runs
    `actions[kind](target, argument)`, jobs strictly in order (a body's file is created before
    its first write, written before it is rewound, closed last), then posts
    `done(result, error)` to the loop with call_soon_threadsafe. `submit` may be called from any
    thread: an app thread closing its wsgi.input hands the close to this thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, actions: dict[int, Any],
                 name: str = "aiowsgi-spool") -> None:
        self._loop = loop
        self._actions = actions
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # A daemon, like the app threads: a disk that hangs must not keep the process alive.
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, kind: int, target: Any, argument: Any = None, done: Any = None) -> None:
        self._jobs.put((kind, target, argument, done))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, target, argument, done = job
            result, error = None, None
            try:
                result = self._actions[kind](target, argument)
            except Exception as exc:  # the loop decides what it means; the thread lives on
                error = exc
            if done is not None:
                try:
                    self._loop.call_soon_threadsafe(done, result, error)
                except RuntimeError:  # the loop is closed: the worker is exiting
                    pass
            elif error is not None:  # nobody waits for it (the access log's off_loop line)
                log.error("Spool writer job failed", exc_info=error)
            del job, target, argument, done, result, error

    def shutdown(self, timeout: float = 0.0) -> None:
        """Stop after the jobs already queued (files still open get closed); wait at most `timeout`."""
        self._jobs.put(None)
        self._thread.join(timeout)


def call_in_thread(loop: asyncio.AbstractEventLoop, function: Callable[[], Any],
                   done: Callable[[Any, BaseException | None], None], name: str) -> None:
    """Run `function()` in a new daemon thread, then `done(result, error)` on `loop` (not if the
    loop has closed meanwhile: the worker is exiting). For a rare call that may block for long,
    the TLS context's rebuild (it runs the user's ssl_context hook): neither the app threads nor
    the spool writer ever wait behind it. Raises RuntimeError if no thread can be started."""

    def run() -> None:
        result, error = None, None
        try:
            result = function()
        except BaseException as exc:  # noqa: BLE001 - `done` decides (a hook's SystemExit too)
            error = exc
        try:
            loop.call_soon_threadsafe(done, result, error)
        except RuntimeError:  # the loop is closed: the worker is exiting
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
