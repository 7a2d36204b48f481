"""The only place threads cross: the app thread pool, and the channel carrying responses to the loop."""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from typing import Any

from .errors import ClientDisconnected

log = logging.getLogger("gunicorn.error")

# What an app thread sends to the loop, as (kind, ...) tuples:
HEAD = 1    # (HEAD, head, framing, framed first bytes): the response starts
DATA = 2    # (DATA, framed bytes)
FILE = 3    # (FILE, file object, offset, count): sent with the loop's sendfile
END = 4     # (END, closing bytes, complete): the body is done; complete=False must close
ERROR = 5   # (ERROR, HTTPError): nothing was sent; answer with an error page and close
ABORT = 6   # (ABORT,): the app failed after the head went out; close the connection


class ThreadPool:
    """`size` daemon threads running jobs (objects with a `run()` method) from one SimpleQueue.

    Daemon threads, so an app thread stuck in a request never keeps the process alive after
    the worker decides to exit (gthread's pool does, and QUIT then waits for it). `current`
    maps each busy thread to its job, for stack dumps and the busy-threads gauge.
    """

    def __init__(self, size: int, name: str = "aiowsgi") -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.current: dict[int, Any] = {}
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Any) -> None:
        self._jobs.put(job)

    @property
    def queued(self) -> int:
        """Jobs waiting for a free thread (count)."""
        return self._jobs.qsize()

    @property
    def busy(self) -> int:
        """Threads running a job now (count)."""
        return len(self.current)

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            # One key per thread, written only by that thread: safe under the GIL.
            self.current[ident] = job
            try:
                job.run()
            except BaseException:  # a job must never kill its thread
                log.exception("Unhandled error in an app thread")
            finally:
                self.current.pop(ident, None)
            del job

    def jobs(self) -> list[tuple[int, Any]]:
        """A snapshot of (thread ident, job) for every busy thread."""
        return list(self.current.items())

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    def shutdown(self, timeout: float = 0.0) -> None:
        """Ask every thread to stop after its current job; wait at most `timeout` seconds."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)


class Channel:
    """Carries one response from an app thread to the loop, with credit-based backpressure.

    The app thread may have at most `limit` bytes in flight (queued here or not yet drained by
    the transport); past that it waits, so a fast generator to a slow reader holds a bounded
    buffer and the thread, not the loop, does the waiting. Items put while the loop has not
    yet woken up ride on the same wake-up: one call_soon_threadsafe per batch, not per chunk.
    """

    __slots__ = ("_loop", "_limit", "_cond", "_items", "_inflight", "_closed",
                 "_wake_pending", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[tuple[Any, ...]] = collections.deque()
        self._inflight = 0
        self._closed = False
        self._wake_pending = False
        self._waiter: asyncio.Future[None] | None = None

    # -- app thread side -------------------------------------------------------------------
    def put(self, item: tuple[Any, ...], size: int, wait: bool = True) -> None:
        """Queue an item for the loop; raises ClientDisconnected once the loop closed the channel."""
        with self._cond:
            while wait and self._inflight >= self._limit and not self._closed:
                self._cond.wait()
            if self._closed:
                raise ClientDisconnected()
            self._inflight += size
            self._items.append(item)
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: the worker is exiting
                raise ClientDisconnected() from None

    def flush(self) -> None:
        """Wait until the loop has written everything put so far (or the channel closed)."""
        with self._cond:
            while self._inflight and not self._closed:
                self._cond.wait()
            if self._closed:
                raise ClientDisconnected()

    # -- loop side -------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cond:
            self._wake_pending = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> list[tuple[Any, ...]]:
        """Everything queued so far, waiting for at least one item."""
        while True:
            with self._cond:
                if self._items:
                    batch = list(self._items)
                    self._items.clear()
                    return batch
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def release(self, size: int) -> None:
        """`size` bytes left the loop's hands; let the app thread produce more."""
        with self._cond:
            self._inflight -= size
            self._cond.notify()

    def close(self) -> None:
        """The client is gone (or the worker is exiting): the app thread's next put raises."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def loop_thread_only(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called on the loop's own thread (for assertions and tests)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
