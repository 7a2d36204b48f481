"""A connection's clocks: the deadline of the state it waits in, the send timeout while its output waits for the client, and how long a closed TLS connection waits for the client's close_notify.

The state deadlines (boundary.deadline: header, body, keep-alive, linger) share one timer per
connection. The send timeout is nginx's `send_timeout` (the time between two writes that the
client takes): armed when the transport pauses writing (its buffer is past the high-water mark)
or closes with output still to flush, cancelled when writing resumes; when it expires, a client
that took bytes since gets another period, one that took none for AIOWSGI_SEND_TIMEOUT is cut
off, which frees the app thread writing to it (its next write raises ClientDisconnected).
"""

from __future__ import annotations

from typing import Any, Callable

from .boundary import APP, BODY, IDLE, LINGER, ConnState, deadline
from .context import Context
from .listener import acknowledged, unread_bytes

# A closed TLS connection waits this long for the client's close_notify, then looks whether
# everything sent has reached the client; it is let go once two such looks in a row agree
# (seconds). asyncio alone waits 30 s.
TLS_CLOSE_WAIT = 1.0


class Timeouts:
    """The Connection's timer methods (a mixin: the connection holds the state they read)."""

    __slots__ = ()  # the connection's own slots hold the state (no __dict__ per connection)
    ctx: Context
    transport: Any
    peer: Any
    # Any, as bridge.Gated declares what it sets: mypy refuses a typed name assigned here
    # that is not in this class's (empty) __slots__. Connection gives their types.
    state: Any  # ConnState
    since: Any  # float
    requests: int
    timer: Any
    stall: Any
    held: bytes | bytearray
    reading: bool
    writable: bool
    _open: Callable[[], None]
    close: Callable[[], None]
    abort: Callable[[], None]

    # -- the state's deadline -------------------------------------------------------------
    def _enter(self, state: ConnState) -> None:
        self.state = state
        if state is APP:
            return  # no connection deadline while the app answers: a pending timer stands down
        self.since = self.ctx.clock()
        self._arm()

    def _arm(self) -> None:
        when = deadline(self.state, self.since, self.requests, self.ctx.settings)
        if when is None:
            return
        if self.timer is not None:
            if self.timer.when() <= when:
                return  # fires first, then re-arms itself for the later deadline
            # A shorter deadline than the pending one (keepalive 2 s after a 30 s header
            # timeout, say): the pending timer would close the idle connection far too late.
            self.timer.cancel()
        self.timer = self.ctx.call_at(when, self._expire)

    def _expire(self) -> None:
        self.timer = None
        when = deadline(self.state, self.since, self.requests, self.ctx.settings)
        if when is None or self.transport is None:
            return
        if self.ctx.clock() < when:  # the state moved on since: check again later
            self.timer = self.ctx.call_at(when, self._expire)
            return
        if self.state is IDLE and (self.held or not self.writable):
            # Answers still wait for the client to take them (the next requests, if any, wait
            # behind them): not idle. The send timeout watches the client.
            self.since = self.ctx.clock()
            self._arm()
            return
        if self.state is IDLE and unread_bytes(self.transport):
            # The next request is in the socket, not read yet: a head has begun, never close
            # (a reset would drop it). It has its header_timeout from now, a first one too.
            self._open()
            self.since = self.ctx.clock()
            self._arm()
            return
        if self.state is BODY and not self.reading:  # waiting for the disk, not the client
            self.since = self.ctx.clock()
            self._arm()
            return
        if self.state is BODY:
            self.ctx.log.debug("Closing %s: no request body bytes for %ss", self.peer,
                               self.ctx.settings.body_timeout)
            self.abort()
            return
        if self.state is LINGER:
            self.close()
            return
        if self.state is not IDLE:
            self.ctx.log.debug("Closing %s: request head not received within %ss",
                               self.peer, self.ctx.settings.header_timeout)
        self.close()  # idle, or a head that never came

    # -- a closed connection's close_notify (TLS) ----------------------------------------
    def await_close_notify(self, looked: int | None = None) -> None:
        """A TLS connection just closed (close() calls this): asyncio sends close_notify and
        keeps the socket, and the connection's worker_connections slot and a graceful stop with
        it, until the client answers, up to 30 s. A pooled client that does not read its idle
        connection never does, nor need a client that has read a closing answer, an error page
        or a response cut short (gthread just closes). Here the connection is let go
        TLS_CLOSE_WAIT after the last byte sent has reached the client; a client still reading
        is never cut off.

        Looks again in TLS_CLOSE_WAIT; `looked` is what the last look found (None: bytes still
        held). The state's timer slot: a closed connection has no other deadline.
        """
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.ctx.call_at(self.ctx.clock() + TLS_CLOSE_WAIT,
                                      self._close_notify_overdue, looked)

    def _close_notify_overdue(self, looked: int | None) -> None:
        """No close_notify from the client yet (connection_lost cancels this). Let the socket go
        once nothing we sent is held anywhere: two looks in a row, TLS_CLOSE_WAIT apart, find the
        TLS layer and the kernel's send queue empty and the client's acknowledged count
        unchanged, so the loop's own buffer under the TLS layer held nothing either
        (listener.acknowledged). Its slot is free then, as under gthread."""
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        now = acknowledged(transport)
        if now is None or now != looked:
            self.await_close_notify(now)
            return
        self.ctx.log.debug("Closing %s: no TLS close_notify from the client, which has "
                           "everything sent", self.peer)
        transport.abort()

    # -- the send timeout -----------------------------------------------------------------
    def _watch_send(self) -> None:
        """Output waits for the client: it has send_timeout to take some of it."""
        if self.stall is None and self.transport is not None:
            pending = self.transport.get_write_buffer_size()
            self.stall = self.ctx.call_at(self.ctx.clock() + self.ctx.settings.send_timeout,
                                          self._send_expired, pending)

    def _unwatch_send(self) -> None:
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _send_expired(self, pending: int) -> None:
        """send_timeout after the output began to wait (or after the client last took some)."""
        self.stall = None
        transport = self.transport
        if transport is None:
            return
        now = transport.get_write_buffer_size()
        if now == 0:
            return  # all taken: resume_writing or connection_lost is on its way
        if now < pending:
            # The client took bytes since (slowly: not yet below the low-water mark): it
            # gets another send_timeout from now.
            self.stall = self.ctx.call_at(self.ctx.clock() + self.ctx.settings.send_timeout,
                                          self._send_expired, now)
            return
        self.ctx.log.debug("Closing %s: no response bytes taken for %ss (%d waiting)", self.peer,
                           self.ctx.settings.send_timeout, now)
        self.ctx.monitor.count("send_timeouts")
        self.abort()  # connection_lost abandons the exchange: its app thread's next write raises
