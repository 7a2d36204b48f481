"""Request bodies: in memory up to a limit (and within the worker's memory budget), else spooled to a temporary file by the worker's writer thread; read as wsgi.input."""

from __future__ import annotations

import enum
import functools
import io
from typing import Any, Callable

from .errors import HTTPError, PayloadTooLarge
from .settings import KIB, MIB, Settings
from .spool_disk import SpoolFile, storage_error
from .spool_store import OPEN, REWIND, WRITE, SpoolStore

# Read buffer of a spooled wsgi.input (bytes).
READ_BUFFER = 64 * 1024
# Once spooling, body bytes are held until this many, then handed to the writer in one job (bytes).
SPILL_BATCH = 1 * MIB
# A read shorter than this is copied onto the piece held before it while that stays within this
# size; a longer one is held as the bytes object it came in (bytes). See Gather.
PIECE = 64 * KIB
# Bytes of one body received but not yet on disk, past which the connection stops reading
# until the writer catches up (bytes): with body_memory_limit, the memory bound of an upload.
SPOOL_BACKLOG = 4 * MIB
# Unread bytes of a body an app thread reads while it arrives, past which the connection stops
# reading until the thread catches up (bytes): the memory bound of a streamed upload.
STREAM_BACKLOG = 4 * MIB


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


class SpoolState(enum.Enum):
    MEMORY = "memory"        # held in memory, no file
    DISK_BOUND = "disk-bound"  # to a file from its first byte (too large for memory, or no room)
    SPOOLING = "spooling"    # the writer thread creates and writes the file
    FINISHING = "finishing"  # the last writes and the rewind are queued
    DONE = "done"            # handed over as wsgi.input, which now owns the file
    FAILED = "failed"        # a disk error; the file is gone, the error stands
    CLOSED = "closed"        # abandoned; the file is gone


class Gather:
    """Body bytes in order, as few pieces: a read of PIECE bytes or more as it came (no copy),
    shorter ones copied together into bytearrays of up to PIECE bytes. Two pieces in a row hold
    more than PIECE, so a body sent in tiny reads costs its bytes plus a bytearray's slack (an
    eighth at most), not a bytes object and a list slot (about 56 bytes) per read."""

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes | bytearray] = []
        self.size = 0  # bytes held (bytes)

    def add(self, data: bytes) -> None:
        count = len(data)
        self.size += count
        pieces = self.pieces
        if count < PIECE and pieces:
            last = pieces[-1]
            if len(last) + count <= PIECE:
                if type(last) is not bytearray:  # the read before, kept as it came: ours now
                    last = pieces[-1] = bytearray(last)
                last += data
                return
        pieces.append(data)

    def take(self) -> tuple[list[bytes | bytearray], int]:
        """Every piece and their size; nothing is held after (the pieces are the taker's)."""
        pieces, size = self.pieces, self.size
        self.pieces, self.size = [], 0
        return pieces, size


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
    """Collects one request body on the loop: in memory while within body_memory_limit and the
    worker's body_memory_budget, else the writer thread's file with at most SPOOL_BACKLOG bytes
    not yet written. Nothing here blocks."""

    __slots__ = ("settings", "store", "size", "length", "state", "_memory", "_held",
                 "_inflight", "_charged", "_target", "_error", "_drained", "_done")

    def __init__(self, settings: Settings, store: SpoolStore) -> None:
        self.settings = settings
        self.store = store
        self.size = 0             # body bytes received (bytes)
        self.length: int | None = None  # Content-Length; None for a chunked body
        self.state = SpoolState.MEMORY
        self._memory = Gather()   # the body in memory, or bytes not yet handed to the writer
        self._held = 0            # bytes of the store's memory budget those hold (bytes)
        self._inflight = 0        # bytes handed to the writer, not yet written (bytes)
        self._charged = 0         # bytes of the store's spool budget this body holds (bytes)
        self._target: SpoolFile | None = None
        self._error: HTTPError | None = None
        self._drained: list[Callable[[], None]] = []
        self._done: Callable[[Any], None] | None = None

    # -- receiving -----------------------------------------------------------------------
    def expect(self, length: int | None) -> None:
        """Before any body byte: refuse a body that can never be taken (413), not now (503), or
        not on this disk (507), so the client is answered without sending it. Nothing is set
        aside: bytes are charged as they arrive (a client announcing much and sending little
        holds little)."""
        settings = self.settings
        check_length(settings, length)
        self.length = length
        if length is None:
            return  # in memory while it fits; its size is unknown until its end
        small = length <= settings.body_memory_limit
        if small and self.store.memory_room(length):
            return
        # Too large for memory, or the worker's memory budget has no room for it now.
        self.state = SpoolState.DISK_BOUND
        self.store.admit(length, small)

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        size = len(data)
        self.size += size
        limit = self.settings.max_body_size
        if limit and self.size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        state = self.state
        if state is SpoolState.MEMORY:
            if self.size <= self.settings.body_memory_limit and self.store.hold(size):
                self._held += size
                self._memory.add(data)
                return
            self._open()  # past the memory limit, or the worker's memory budget is used up
        elif state is SpoolState.DISK_BOUND:
            self._open()
        # Charged as the bytes arrive, whatever the framing: a body that runs out of budget
        # on the way is refused then (503; 413 once it alone is larger than the budget).
        self.store.charge(self.size - self._charged, self.size)
        self._charged = self.size
        self._memory.add(data)
        # A batch waiting for the writer is memory too: with no room for it, it goes now.
        if not self.store.hold(size):
            self._spill()
            return
        self._held += size
        if self._memory.size >= SPILL_BATCH:
            self._spill()

    def _open(self) -> None:
        """To disk: what is held in memory becomes the file's first batch."""
        self._target = SpoolFile(self.store.directory, self.store.fallback)
        self.state = SpoolState.SPOOLING
        self.store.writer.submit(OPEN, self._target, self.length, self._opened)

    def _spill(self) -> None:
        """Hand what is held to the writer: one job, one writev(2), no joining copy."""
        pieces, size = self._memory.take()
        self.store.let_go(self._held)
        self._held = 0
        self._inflight += size
        self.store.unwritten += size
        self.store.writer.submit(WRITE, self._target, pieces, functools.partial(self._wrote, size))

    @property
    def backlogged(self) -> bool:
        """Too much waits for the disk: stop reading the socket until on_drained."""
        return (self.state in (SpoolState.SPOOLING, SpoolState.FINISHING)
                and (self._memory.size + self._inflight >= SPOOL_BACKLOG or self.store.behind))

    def on_drained(self, callback: Callable[[], None]) -> None:
        if self.backlogged:
            self._drained.append(callback)
            self.store.paused[self] = None  # woken by any body's write, if not by its own
        else:
            callback()

    def resume(self) -> None:
        """The worker's writer backlog went down (SpoolStore.caught_up): read on, if room."""
        if self._drained:
            if self.backlogged:
                self.store.paused[self] = None
            else:
                self._wake()

    def finish(self, callback: Callable[[Any], None]) -> None:
        """callback(wsgi.input at position 0, or the HTTPError) once every byte is written."""
        if self._error is not None:
            callback(self._error)
        elif self.state is SpoolState.MEMORY or self.state is SpoolState.DISK_BOUND:
            # Its share of the memory budget stays taken till close(): the app holds the bytes.
            self.state = SpoolState.DONE
            pieces, _size = self._memory.take()
            callback(io.BytesIO(pieces[0] if len(pieces) == 1 else b"".join(pieces)))
        elif self.state is SpoolState.SPOOLING:
            if self._memory.size:
                self._spill()
            self.state = SpoolState.FINISHING
            self._done = callback
            self.store.writer.submit(REWIND, self._target, None, self._rewound)

    @property
    def spooled(self) -> bool:
        return self._target is not None

    def close(self) -> None:
        """Done with the body. Handed over (DONE): its share of the memory budget comes back
        (a spooled body's file and budget are its wsgi.input's). Else abandoned: its file (if
        any) is closed by the writer, and every byte it held comes back at once."""
        if self.state is SpoolState.CLOSED:
            return
        if self.state is SpoolState.DONE:
            self.store.let_go(self._held)
            self._held = 0
            return
        self._release()
        self.state = SpoolState.CLOSED
        self._memory = Gather()
        self._drained, self._done = [], None

    def _release(self) -> None:
        self.store.let_go(self._held)
        self._held = 0
        charged, self._charged = self._charged, 0
        # Back now, not once the writer has closed the file (next, after this body's backlog):
        # uploads meeting the full budget meanwhile would be refused too, maybe every one.
        self.store.used -= charged
        if self._target is not None:
            self.store.discard(self._target, 0)

    # -- the writer's answers (on the loop) -----------------------------------------------
    def _wrote(self, handed: int, size: int | None, error: BaseException | None) -> None:
        """A batch of `handed` bytes is done (written, skipped for an earlier error, or failed)."""
        self.store.unwritten -= handed
        self._written(size, error)
        self.store.caught_up()

    def _opened(self, _result: Any, error: BaseException | None) -> None:
        target = self._target
        if error is None and target is not None and target.directory != self.store.directory:
            self.store.moved(target.directory)  # created in the fallback directory
        self._written(None, error)

    def _written(self, size: int | None, error: BaseException | None) -> None:
        """A write (or the open, size None) is done."""
        if error is not None:
            self._fail(error)
            return
        size = size or 0
        self.store.wrote(size)
        if self.state in (SpoolState.SPOOLING, SpoolState.FINISHING):
            self._inflight -= size
            if self._drained and not self.backlogged:
                self._wake()

    def _rewound(self, _result: Any, error: BaseException | None) -> None:
        if error is not None:
            self._fail(error)
        elif self.state is SpoolState.FINISHING:
            assert self._target is not None and self._done is not None
            self.state = SpoolState.DONE
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
        self._memory = Gather()
        done, self._done = self._done, None
        if done is not None:
            done(self._error)
        self._wake()  # a reader paused for the backlog resumes, and its next write raises

    def _wake(self) -> None:
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            callback()
