"""The channels between the loop and an app thread: the inbox that wakes the loop, a response's
channel (credit-based backpressure), a streamed request body's feed."""

from __future__ import annotations

import asyncio
import collections
import io
import os
import threading
import weakref
from typing import Any, Callable

from ..errors import ClientDisconnected
from ..messages import Message


class Inbox:
    """Wakes the loop for channels with news: a byte on its own pipe (no Handle per wake, unlike
    call_soon_threadsafe) per batch of ready channels. Lock-free under the GIL: a thread appends,
    then wakes only if no wake is pending; the loop clears the flag before draining (none lost)."""

    __slots__ = ("_loop_closed", "_rfd", "_wfd", "_ready", "_pending", "lock", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_closed = loop.is_closed
        self._rfd, self._wfd = os.pipe()
        for fd in (self._rfd, self._wfd):
            os.set_blocking(fd, False)
            weakref.finalize(self, os.close, fd)  # the loop's reader holds us until it closes
        loop.add_reader(self._rfd, self._drain)
        self._ready: collections.deque[Channel] = collections.deque()
        self._pending = False
        self.lock = threading.Lock()  # the channels' mutex: only to wait for credit or open a gate

    def post(self, channel: "Channel") -> None:
        self._ready.append(channel)
        if not self._pending:
            self._pending = True
            if self._loop_closed():  # the worker is exiting: nothing will read the channel
                raise ClientDisconnected()
            os.write(self._wfd, b"\0")  # a byte per racing thread at most: never fills the pipe

    def _drain(self) -> None:
        os.read(self._rfd, 64)  # the wake byte: the loop calls us only when the pipe has one
        self._pending = False
        ready = self._ready
        while ready:
            listener = ready.popleft()._listener  # None once the loop closed the channel
            if listener is not None:
                listener()


class Gated:
    """An app thread waits on a held lock (the gate) until the loop, which never waits, opens it."""

    __slots__ = ()
    _inbox: Inbox
    _gate: Any

    _ready: Callable[[], bool]  # may the waiting thread go on? (each channel's own rule)

    def _block(self) -> None:
        gate = threading.Lock()
        gate.acquire()
        with self._inbox.lock:
            # Set the gate, then look again: either we see the loop's progress here, or the
            # loop (which updates its counters before looking for a gate) sees our gate.
            self._gate = gate
            if self._ready():
                self._gate = None
                return
        gate.acquire()

    def _open_gate(self) -> None:
        with self._inbox.lock:
            gate = self._gate
            if gate is not None and self._ready():
                self._gate = None
                gate.release()


class Channel(Gated):
    """Carries one response from an app thread to the loop, with credit-based backpressure.

    The app thread may have at most `limit` bytes in flight (produced but not yet taken by the
    transport); past that it waits till half are taken, so a fast generator to a slow reader holds
    a bounded buffer and the thread, not the loop, does the waiting. Counters have one writer each
    (`_produced`: the thread, `_consumed`: the loop); the thread only takes a lock and a gate
    when it must actually wait.
    """

    __slots__ = ("_inbox", "_limit", "_items", "_produced", "_consumed", "_closed",
                 "_wake_pending", "_listener", "_gate", "_room")

    def __init__(self, inbox: Inbox, limit: int, listener: Callable[[], None]) -> None:
        self._inbox = inbox
        self._limit = limit
        self._items: collections.deque[Message] = collections.deque()
        self._produced = 0        # bytes put by the app thread (written by the thread only)
        self._consumed = 0        # bytes released by the loop (written by the loop only)
        self._closed = False
        self._wake_pending = False
        self._listener: Callable[[], None] | None = listener  # runs on the loop when items arrive
        self._gate: Any = None    # a held lock a waiting thread blocks on till in flight < _room

    # -- app thread side -------------------------------------------------------------------
    def put(self, item: Message, wait: bool = True) -> None:
        """Queue a message for the loop; raises ClientDisconnected once the loop closed the channel."""
        while wait and not self._closed and self._produced - self._consumed >= self._limit:
            # Woken at half, not at the limit: a stream's thread then wakes once per half-buffer,
            # not once per chunk (each wake costs futex calls and GIL hand-offs).
            self._wait_below(self._limit // 2 + 1)
        if self._closed:
            raise ClientDisconnected()
        self._produced += item.size
        self._items.append(item)
        if not self._wake_pending:
            self._wake_pending = True
            self._inbox.post(self)

    def flush(self) -> None:
        """Wait until the loop has written everything put so far (or the channel closed)."""
        while not self._closed and self._produced - self._consumed > 0:
            self._wait_below(1)
        if self._closed:
            raise ClientDisconnected()

    def _wait_below(self, room: int) -> None:
        self._room = room
        self._block()

    def _ready(self) -> bool:
        return self._closed or self._produced - self._consumed < self._room

    # -- loop side -------------------------------------------------------------------------
    def take(self) -> list[Message]:
        """Everything queued so far (maybe nothing); a later put wakes the listener again."""
        self._wake_pending = False  # cleared before looking: a put we miss posts a new wake
        items = self._items
        batch = list(items)
        for _ in batch:
            items.popleft()
        return batch

    def release(self, size: int) -> None:
        """`size` bytes left the loop's hands; let the app thread produce more."""
        self._consumed += size
        if self._gate is not None:  # a thread waits for credit (checked here: a call costs more)
            self._open_gate()

    def close(self) -> None:
        """The client is gone (or the worker is exiting): the app thread's next put raises."""
        self._closed, self._listener = True, None
        if self._gate is not None:
            self._open_gate()

    @property
    def inflight(self) -> int:
        return self._produced - self._consumed


# The Python objects of a streamed body's piece beside its bytes (a bytes object's header, the
# allocator's rounding, a deque slot): about 56 bytes on Python 3.11, rounded up. Counted with
# the bytes unread, so a body sent in tiny reads to an app not reading holds about the limit.
PIECE_COST = 64


class BodyFeed(Gated, io.RawIOBase):
    """Carries one request body from the loop to the app thread reading it (wsgi.input, under a
    BufferedReader) while it arrives. Past `limit` unread (bytes, plus PIECE_COST a piece), `put`
    says stop reading the socket; the read that halves it wakes the loop (`_listener`, through
    the inbox). Counters have one writer each (`received` and `_queued`: the loop; `_freed`: the
    thread)."""

    def __init__(self, inbox: Inbox, limit: int, listener: Callable[[], None]) -> None:
        super().__init__()
        self._inbox = inbox
        self._limit = limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head = memoryview(b"")  # what is left of the chunk being read
        self.received = 0             # body bytes put by the loop (bytes)
        self._queued = 0              # what the loop put, as memory: bytes + PIECE_COST a piece
        self._freed = 0               # the same measure of what the thread has read
        self.ended = False            # no more bytes will come
        self._error: BaseException | None = None
        self._full = False            # the loop stopped reading until the thread makes room
        self._gate: Any = None        # a held lock the reading thread blocks on till news
        self._listener: Callable[[], None] | None = listener

    # -- loop side -------------------------------------------------------------------------
    def put(self, data: bytes, more: bool = False) -> bool:
        """Queue body bytes; False: stop reading the socket until the listener runs. `more`: the
        socket holds more already, so a waiting reader is woken at a quarter of `limit` unread
        (a wake per batch, not per read); else at once (the client may wait for an answer)."""
        self._chunks.append(data)
        self.received += len(data)
        self._queued += len(data) + PIECE_COST
        if self._gate is not None and (not more or self._queued - self._freed >= self._limit // 4):
            self._open_gate()
        if self._queued - self._freed >= self._limit:
            self._full = True  # set, then look again: the thread sees the flag or we see its read
            self._full = self._queued - self._freed >= self._limit
        return not self._full

    def end(self, error: BaseException | None = None) -> None:
        """No more bytes: the reader gets the rest then EOF, or `error` at its next read."""
        if self.ended:
            return
        self._error, self.ended, self._listener = error, True, None
        if self._gate is not None:
            self._open_gate()

    # -- app thread side -------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Copy what has arrived (at least a byte, waiting for it), 0 at the end of the body."""
        view = memoryview(buffer).cast("B")
        while True:
            if self._error is not None:
                raise self._error
            filled, pieces = self._copy(view)
            if filled:
                self._freed += filled + pieces * PIECE_COST
                if self._full and self._queued - self._freed <= self._limit // 2:
                    self._full = False
                    self._inbox.post(self)  # type: ignore[arg-type]  # the loop reads again
                return filled
            if self.ended:
                return 0
            self._block()

    def _copy(self, view: memoryview) -> tuple[int, int]:
        """(bytes copied into `view`, pieces taken off the queue for it)."""
        filled, pieces, size, head, chunks = 0, 0, len(view), self._head, self._chunks
        while filled < size:
            if not head:
                if not chunks:
                    break
                head = memoryview(chunks.popleft())
                pieces += 1
            count = min(len(head), size - filled)
            view[filled:filled + count] = head[:count]
            head, filled = head[count:], filled + count
        self._head = head
        return filled, pieces

    def _ready(self) -> bool:
        return bool(self._chunks) or self.ended
