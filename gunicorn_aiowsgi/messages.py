"""What crosses threads: the typed messages of a response (carried by bridge.Channel) and a pool job's state."""

from __future__ import annotations

import enum
from typing import Any


# What an app thread sends to the loop: one small class per message. `size` is the credit the
# message holds (body bytes in flight) until the loop releases it.
class Start:
    """The response head, with the first body pieces (already framed), and its End when the
    whole response is known at once (one message, one loop step for a small response)."""

    __slots__ = ("head", "mode", "pieces", "size", "end")

    def __init__(self, head: Any, mode: Any, pieces: tuple[bytes, ...] = (), size: int = 0,
                 end: "End | None" = None) -> None:
        self.head = head          # response.Head
        self.mode = mode          # response.Framing
        self.pieces = pieces
        self.size = size
        self.end = end


# The Python objects of one Data message beside its bytes (the message, its tuple, a chunk-size
# line, the deque's slot), in bytes: about 160 on Python 3.11, more on 3.13, rounded up. Counted
# in its credit, so that a stalled reader of small chunks (an event stream) holds about
# AIOWSGI_WRITE_BUFFER, not eight times it.
MESSAGE_COST = 256


class Data:
    """Framed body bytes, as pieces so that large chunks are never copied to frame them; its
    `size` (the credit it holds) is their length plus MESSAGE_COST."""

    __slots__ = ("pieces", "size")

    def __init__(self, pieces: tuple[bytes, ...], size: int) -> None:
        self.pieces = pieces
        self.size = size


class SendFile:
    """`count` bytes of a regular file from `offset`, sent with the loop's sendfile."""

    __slots__ = ("file", "offset", "count", "size")

    def __init__(self, file: Any, offset: int, count: int) -> None:
        self.file = file
        self.offset = offset
        self.count = count
        self.size = count


class End:
    """The body is done; `complete` False (a short Content-Length body) means close. `last`
    False: the app thread still has work that must end before the connection's next request
    (the iterable's close(), post_request), and says so with a CallDone."""

    __slots__ = ("tail", "complete", "last")
    size = 0

    def __init__(self, tail: bytes, complete: bool, last: bool = True) -> None:
        self.tail = tail
        self.complete = complete
        self.last = last


class CallDone:
    """The app thread is done with the call (close() and the hooks ran): as under gthread, the
    connection's next request may begin only now."""

    __slots__ = ()
    size = 0


class Fail:
    """Nothing was sent: answer with this error's page and close."""

    __slots__ = ("error",)
    size = 0

    def __init__(self, error: Any) -> None:
        self.error = error


class Abort:
    """The app failed after the head went out: close the connection (never a second response)."""

    __slots__ = ()
    size = 0


class Hints:
    """A 103 Early Hints response to send before the final one (RFC 8297)."""

    __slots__ = ("headers",)
    size = 0

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers


Message = Start | Data | SendFile | End | CallDone | Fail | Abort | Hints


class JobState(enum.Enum):
    """Where a pool job is. Only a QUEUED job can be cancelled, and a cancelled one never runs."""

    QUEUED = "queued"
    RUNNING = "running"     # a thread took it: it runs to its end (threads cannot be stopped)
    # Its client got the loop's answer (the request timeout's 504): cancelled if it was queued;
    # if it was running, it runs on and its own answer is discarded (and not logged as sent).
    ANSWERED = "answered"
    GONE = "gone"           # cancelled: its client disconnected while it waited


QUEUED, RUNNING, ANSWERED = JobState.QUEUED, JobState.RUNNING, JobState.ANSWERED  # globals: see response.py
