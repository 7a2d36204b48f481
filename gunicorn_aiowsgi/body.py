"""Request bodies: in memory up to a limit, then spooled to a temporary file by the worker's writer thread; read as wsgi.input."""

from __future__ import annotations

import enum
import functools
import io
import tempfile
from typing import Any, Callable

from .bridge import SpoolWriter
from .errors import HTTPError, InsufficientStorage, PayloadTooLarge, Unavailable
from .settings import MIB, Settings
from .spool_disk import (
    SpoolFile,
    call,
    close_file,
    measure_free,
    open_file,
    rewind_file,
    storage_error,
    write_file,
)

# Read buffer of a spooled wsgi.input (bytes).
READ_BUFFER = 64 * 1024
# Once spooling, body bytes are held until this many, then handed to the writer in one job (bytes).
SPILL_BATCH = 1 * MIB
# Bytes of one body received but not yet on disk, past which the connection stops reading
# until the writer catches up (bytes): with body_memory_limit, the memory bound of an upload.
SPOOL_BACKLOG = 4 * MIB
# Unread bytes of a body an app thread reads while it arrives, past which the connection stops
# reading until the thread catches up (bytes): the memory bound of a streamed upload.
STREAM_BACKLOG = 4 * MIB
# Seconds a client refused for a full spool budget is told to wait (Retry-After, RFC 9110
# section 10.2.3), as for the loop's queue-full 503.
RETRY_AFTER = "1"

# The writer thread's jobs (bridge.SpoolWriter kinds).
OPEN, WRITE, REWIND, CLOSE, MEASURE, CALL = 1, 2, 3, 4, 5, 6


def check_length(settings: Settings, length: int | None) -> None:
    """413 before any body byte for a Content-Length over AIOWSGI_MAX_BODY_SIZE."""
    limit = settings.max_body_size
    if limit and length is not None and length > limit:
        raise PayloadTooLarge(f"Content-Length {length} is larger than {limit}")


def streamed(settings: Settings, length: int | None, streams: int, limit: int) -> bool:
    """Hand this body to an app thread while it arrives, rather than spool it first?

    Only a body too large for memory, of known length (a chunked one spools: its size is
    unknown until its end), and only while fewer than `limit` others stream: each holds a
    thread until its last byte, so a slow client can hold `limit` threads, never the pool.
    """
    return length is not None and length > settings.body_memory_limit and streams < limit


class SpoolFull(Unavailable):
    """The worker's spool budget is taken by other uploads: come back shortly (RFC 9110 section 15.6.4)."""

    retry_after = RETRY_AFTER
    label = "Spool budget full"
    metric = "spool_full_503"


class SpoolState(enum.Enum):
    MEMORY = "memory"        # held in memory, no file
    SPOOLING = "spooling"    # the writer thread creates and writes the file
    FINISHING = "finishing"  # the last writes and the rewind are queued
    DONE = "done"            # handed over as wsgi.input, which now owns the file
    FAILED = "failed"        # a disk error; the file is gone, the error stands
    CLOSED = "closed"        # abandoned; the file is gone


class SpoolStore:
    """Per worker: the writer thread, the spool budget and the spool directory's free space (loop side).

    `used` counts bytes of bodies on disk or on their way; a body's share comes back when its
    file is closed. `free` is the last statvfs (taken by the writer) minus what was written
    since; `promised` is what bodies of known length will still write.
    """

    def __init__(self, loop: Any, settings: Settings) -> None:
        self.budget = settings.spool_budget
        # Resolved now, at worker start: gettempdir() probes the disk the first time.
        self.directory = settings.tmp_upload_dir or tempfile.gettempdir()
        self.used = 0
        self.promised = 0
        self.free: int | None = None
        self.writer = SpoolWriter(loop, {OPEN: open_file, WRITE: write_file, REWIND: rewind_file,
                                         CLOSE: close_file, MEASURE: measure_free, CALL: call})
        self._measure()

    def _measure(self) -> None:
        self.writer.submit(MEASURE, self.directory, None, self._measured)

    def _measured(self, free: int | None, _error: BaseException | None) -> None:
        if free is not None:  # an error (directory gone) is reported by the next open
            self.free = free

    def charge(self, size: int) -> None:
        """Take `size` bytes of the budget for a body about to spool (or growing on disk)."""
        if self.budget:
            if size > self.budget:
                raise PayloadTooLarge(f"request body larger than the spool budget ({self.budget} bytes)")
            if self.used + size > self.budget:
                raise SpoolFull(f"spool budget in use ({self.used} of {self.budget} bytes)")
        self.used += size

    def check_room(self, length: int) -> None:
        """507 now, rather than a disk-full error after the client sent most of the body."""
        if self.free is not None and self.promised + length > self.free:
            self._measure()  # space may come back: the next upload is judged on a fresh figure
            raise InsufficientStorage(
                f"cannot spool request body: No space left on device ({self.free} bytes free in "
                f"{self.directory}, {self.promised} promised, {length} more asked)")

    def wrote(self, size: int) -> None:
        if self.free is not None:
            self.free -= size

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


class SpooledInput(io.RawIOBase):
    """A spooled body as the app reads it (under a BufferedReader); closing it, from any thread,
    hands the file to the writer thread, which frees the disk space and the budget."""

    def __init__(self, store: SpoolStore, target: SpoolFile, charged: int) -> None:
        super().__init__()
        assert target.file is not None
        self._file = target.file
        self._store = store
        self._target = target
        self._charged = charged

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._file.readinto(buffer)  # type: ignore[attr-defined]

    def readall(self) -> bytes:
        return self._file.readall()  # type: ignore[attr-defined]  # one read, not 8 KiB pieces

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._store.discard(self._target, self._charged)


class BodySpool:
    """Collects one request body on the loop: memory up to body_memory_limit, then the writer
    thread's file with at most SPOOL_BACKLOG bytes not yet written. Nothing here blocks."""

    __slots__ = ("settings", "store", "size", "length", "state", "_memory", "_buffered",
                 "_inflight", "_charged", "_promised", "_target", "_error", "_drained", "_done")

    def __init__(self, settings: Settings, store: SpoolStore) -> None:
        self.settings = settings
        self.store = store
        self.size = 0             # body bytes received (bytes)
        self.length: int | None = None  # Content-Length; None for a chunked body
        self.state = SpoolState.MEMORY
        self._memory: list[bytes] = []
        self._buffered = 0        # bytes in _memory (bytes)
        self._inflight = 0        # bytes handed to the writer, not yet written (bytes)
        self._charged = 0         # bytes of the store's budget this body holds (bytes)
        self._promised = 0        # bytes of the store's `promised` this body holds (bytes)
        self._target: SpoolFile | None = None
        self._error: HTTPError | None = None
        self._drained: list[Callable[[], None]] = []
        self._done: Callable[[Any], None] | None = None

    # -- receiving -----------------------------------------------------------------------
    def expect(self, length: int | None) -> None:
        """Before any body byte: refuse a body that can never be taken (413), not now (503), or
        not on this disk (507), so the client is answered without sending it."""
        check_length(self.settings, length)
        self.length = length
        if length is not None and length > self.settings.body_memory_limit:
            self.store.charge(length)
            self._charged = length
            try:
                self.store.check_room(length)
            except HTTPError:
                self.close()
                raise
            self._promised = length
            self.store.promised += length

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self.size += len(data)
        limit = self.settings.max_body_size
        if limit and self.size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        self._memory.append(data)
        self._buffered += len(data)
        if self.state is SpoolState.MEMORY:
            if self.size <= self.settings.body_memory_limit:
                return
            if self.length is None:  # chunked: the budget is taken as the body grows
                self.store.charge(self.size)
                self._charged = self.size
            self._open()
        elif self.length is None:
            self.store.charge(len(data))
            self._charged += len(data)
        if self._buffered >= SPILL_BATCH:
            self._spill()

    def _open(self) -> None:
        self._target = SpoolFile(self.store.directory)
        self.state = SpoolState.SPOOLING
        self.store.writer.submit(OPEN, self._target, self.length, self._written)

    def _spill(self) -> None:
        """Hand what is held to the writer: one job, one writev(2), no joining copy."""
        chunks, size = self._memory, self._buffered
        self._memory, self._buffered = [], 0
        self._inflight += size
        self.store.writer.submit(WRITE, self._target, chunks, self._written)

    @property
    def backlogged(self) -> bool:
        """Too much waits for the disk: stop reading the socket until on_drained."""
        return (self.state in (SpoolState.SPOOLING, SpoolState.FINISHING)
                and self._buffered + self._inflight >= SPOOL_BACKLOG)

    def on_drained(self, callback: Callable[[], None]) -> None:
        if self.backlogged:
            self._drained.append(callback)
        else:
            callback()

    def finish(self, callback: Callable[[Any], None]) -> None:
        """callback(wsgi.input at position 0, or the HTTPError) once every byte is written."""
        if self._error is not None:
            callback(self._error)
        elif self.state is SpoolState.MEMORY:
            self._release()  # a charge taken for a body that never needed the disk
            self.state = SpoolState.DONE
            memory, self._memory = self._memory, []
            callback(io.BytesIO(b"".join(memory) if len(memory) != 1 else memory[0]))
        elif self.state is SpoolState.SPOOLING:
            if self._memory:
                self._spill()
            self.state = SpoolState.FINISHING
            self._done = callback
            self.store.writer.submit(REWIND, self._target, None, self._rewound)

    @property
    def spooled(self) -> bool:
        return self._target is not None

    def close(self) -> None:
        """Abandon the body: its file (if any) is closed by the writer, its budget returned."""
        if self.state in (SpoolState.DONE, SpoolState.CLOSED):
            return
        self._release()
        self.state = SpoolState.CLOSED
        self._memory, self._buffered = [], 0
        self._drained, self._done = [], None

    def _release(self) -> None:
        self.store.promised -= self._promised
        self._promised = 0
        charged, self._charged = self._charged, 0
        if self._target is not None:
            self.store.discard(self._target, charged)
        else:
            self.store.used -= charged

    # -- the writer's answers (on the loop) -----------------------------------------------
    def _written(self, size: int | None, error: BaseException | None) -> None:
        """A write (or the open, size None) is done."""
        if error is not None:
            self._fail(error)
            return
        size = size or 0
        self.store.wrote(size)
        if self.state in (SpoolState.SPOOLING, SpoolState.FINISHING):
            self._inflight -= size
            promised = min(size, self._promised)
            self._promised -= promised
            self.store.promised -= promised
            if self._drained and not self.backlogged:
                self._wake()

    def _rewound(self, _result: Any, error: BaseException | None) -> None:
        if error is not None:
            self._fail(error)
        elif self.state is SpoolState.FINISHING:
            assert self._target is not None and self._done is not None
            self.state = SpoolState.DONE
            self.store.promised -= self._promised  # all written: nothing more is owed
            self._promised = 0
            raw = SpooledInput(self.store, self._target, self._charged)
            self._charged = 0  # the input owns the file and its share of the budget now
            done, self._done = self._done, None
            # Buffered for reading: readline() on a raw file would read a byte at a time.
            done(io.BufferedReader(raw, READ_BUFFER))

    def _fail(self, exc: BaseException) -> None:
        if self.state not in (SpoolState.SPOOLING, SpoolState.FINISHING):
            return  # abandoned already: nobody waits for the answer
        self._error = storage_error(exc)
        self._release()
        self.state = SpoolState.FAILED
        self._memory, self._buffered = [], 0
        done, self._done = self._done, None
        if done is not None:
            done(self._error)
        self._wake()  # a reader paused for the backlog resumes, and its next write raises

    def _wake(self) -> None:
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            callback()
