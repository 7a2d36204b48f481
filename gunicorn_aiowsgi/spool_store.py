"""The worker's side of request bodies (on the loop): the memory budget, the spool budget, the writer thread and its backlog, the spool directory (its free space; the default one once tmp_upload_dir goes away)."""

from __future__ import annotations

import functools
import tempfile
from typing import Any, Callable

from .bridge import SpoolWriter
from .errors import InsufficientStorage, PayloadTooLarge, Unavailable
from .settings import MIB, Settings
from .spool_disk import (
    SpoolFile,
    call,
    close_file,
    measure_free,
    open_file,
    rewind_file,
    write_file,
)

# Bytes of every body handed to the writer and not yet on disk, past which each spooling
# connection stops reading until the writer catches up (bytes): many uploads at once must
# not queue SPOOL_BACKLOG each in memory while the disk is behind.
WRITER_BACKLOG = 16 * MIB
# Seconds a client refused for a full spool budget is told to wait (Retry-After, RFC 9110
# section 10.2.3), as for the loop's queue-full 503.
RETRY_AFTER = "1"

# The writer thread's jobs (bridge.SpoolWriter kinds).
OPEN, WRITE, REWIND, CLOSE, MEASURE, CALL = 1, 2, 3, 4, 5, 6


class SpoolFull(Unavailable):
    """The worker's spool budget is taken by other uploads: come back shortly (RFC 9110 section 15.6.4)."""

    retry_after = RETRY_AFTER
    label = "Spool budget full"
    metric = "spool_full_503"


class SpoolStore:
    """Per worker (loop side): the memory budget, the writer thread and its backlog, the spool
    budget and the spool directory's free space.

    `in_memory` counts body bytes the loop holds: bodies in memory (from their first byte to
    the end of their response) and spooled bytes not yet handed to the writer; `unwritten`,
    those handed to it and not yet written. `used` counts bytes on disk or on their way,
    charged as they arrive; they come back when the app closes its input (once the file is
    closed), or at once for a body abandoned. `free` is the last statvfs (taken by the writer)
    minus what was written since.
    """

    def __init__(self, loop: Any, settings: Settings) -> None:
        self.memory_budget = settings.body_memory_budget
        self.in_memory = 0
        self.budget = settings.spool_budget
        # Resolved now, at worker start: gettempdir() probes the disk the first time.
        default = tempfile.gettempdir()
        self.directory = settings.tmp_upload_dir or default
        # Where a body goes if tmp_upload_dir cannot take its file any more (None: nowhere).
        self.fallback = default if self.directory != default else None
        self.warn: Callable[..., None] = lambda *_args: None  # the worker's log.warning
        self.used = 0
        self.free: int | None = None
        self.unwritten = 0  # bytes handed to the writer, not yet written, every body (bytes)
        self.paused: dict[Any, None] = {}  # body.BodySpools waiting for the writer (WRITER_BACKLOG)
        self.writer = SpoolWriter(loop, {OPEN: open_file, WRITE: write_file, REWIND: rewind_file,
                                         CLOSE: close_file, MEASURE: measure_free, CALL: call})
        self._measure()

    def _measure(self) -> None:
        self.writer.submit(MEASURE, self.directory, None, self._measured)

    def _measured(self, free: int | None, _error: BaseException | None) -> None:
        if free is not None:  # an error (directory gone) is reported by the next open
            self.free = free

    # -- the memory budget -------------------------------------------------------------------
    def memory_room(self, size: int) -> bool:
        return not self.memory_budget or self.in_memory + size <= self.memory_budget

    def hold(self, size: int) -> bool:
        """Take `size` bytes of the memory budget for body bytes held; False: no room."""
        if self.memory_budget and self.in_memory + size > self.memory_budget:
            return False
        self.in_memory += size
        return True

    def let_go(self, size: int) -> None:
        self.in_memory -= size

    # -- the spool budget and the disk ---------------------------------------------------------
    def admit(self, length: int, small: bool) -> None:
        """Before any byte of a body of `length` bound for the disk: 413 if it could never fit in
        the budget (a `small` one, within the memory limit, could later: 503), 503 if it does not
        fit in what is free of it now, 507 if not in the disk's free space. Nothing is taken:
        the budget is charged as the bytes arrive."""
        budget = self.budget
        if budget:
            if length > budget and not small:
                raise PayloadTooLarge(f"request body larger than the spool budget ({budget} bytes)")
            if self.used + length > budget:
                raise SpoolFull(f"spool budget in use ({self.used} of {budget} bytes, "
                                f"{length} more announced)")
        self.check_room(length)

    def charge(self, size: int, total: int = 0) -> None:
        """Take `size` bytes of the budget for a body about to spool (or growing on disk), which
        then holds `total` in all: 413 once it alone is larger than the budget (a retry cannot
        help), 503 while others hold what it needs."""
        if self.budget:
            if max(size, total) > self.budget:
                raise PayloadTooLarge(f"request body larger than the spool budget ({self.budget} bytes)")
            if self.used + size > self.budget:
                raise SpoolFull(f"spool budget in use ({self.used} of {self.budget} bytes)")
        self.used += size

    def check_room(self, length: int) -> None:
        """507 now, rather than a disk-full error after the client sent most of the body."""
        if self.free is not None and length > self.free:
            self._measure()  # space may come back: the next upload is judged on a fresh figure
            raise InsufficientStorage(
                f"cannot spool request body: No space left on device ({self.free} bytes free in "
                f"{self.directory}, {length} asked)")

    def moved(self, directory: str) -> None:
        """The writer created a body's file in the fallback directory, the configured one being
        unusable: every body spools there from now on (this worker's life), said once."""
        if self.fallback is None or directory != self.fallback:
            return
        gone, self.directory, self.fallback = self.directory, directory, None
        self.free = None
        self._measure()
        self.off_loop(self.warn, "tmp_upload_dir %r cannot take request bodies any more: they "
                      "spool to %s from now on", gone, directory)

    def wrote(self, size: int) -> None:
        if self.free is not None:
            self.free -= size

    @property
    def behind(self) -> bool:
        """The writer has WRITER_BACKLOG or more to write: every spooling body stops reading."""
        return self.unwritten >= WRITER_BACKLOG

    def caught_up(self) -> None:
        """A write is done: bodies paused for the worker's writer backlog may read on."""
        if self.paused and self.unwritten < WRITER_BACKLOG:
            paused, self.paused = self.paused, {}
            for spool in paused:
                spool.resume()

    def discard(self, target: SpoolFile, charged: int) -> None:
        """Close a body's file on the writer thread, then give its bytes back. Any thread."""
        self.writer.submit(CLOSE, target, None, functools.partial(self._closed, charged))

    def _closed(self, charged: int, free: int | None, _error: BaseException | None) -> None:
        self.used -= charged
        self._measured(free, None)

    def off_loop(self, function: Callable[..., Any], *arguments: Any) -> None:
        """Run a blocking call (a log line's write) on the writer thread, not on the loop."""
        self.writer.submit(CALL, function, arguments)

    def shutdown(self, timeout: float = 0.0) -> None:
        self.writer.shutdown(timeout)
