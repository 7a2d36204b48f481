"""Writing one response's bytes: small pieces gathered into one transport write, large ones as they are, a file with sendfile."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from .response import COPY_LIMIT


class Output:
    """Bytes for one response gathered per batch: small pieces go out in one transport write
    (the head and a small body in one send, one syscall), large ones as they are, never copied
    (joining a large chunk costs more than the extra write)."""

    __slots__ = ("write", "pieces", "size")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write                 # the connection's write: raises once it is closed
        self.pieces: list[bytes] = []
        self.size = 0

    def add(self, *pieces: bytes) -> None:
        for piece in pieces:
            if len(piece) >= COPY_LIMIT:
                self.flush()
                self.write(piece)
            elif piece:
                self.pieces.append(piece)
                self.size += len(piece)
                if self.size >= COPY_LIMIT:
                    self.flush()

    def flush(self) -> None:
        if self.pieces:
            pieces = self.pieces
            self.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            self.pieces = []
            self.size = 0


async def send_file(loop: asyncio.AbstractEventLoop, transport: Any, file: Any, offset: int,
                    count: int) -> None:
    """file_wrapper's regular file with the loop's zero-copy sendfile (os.sendfile); a file that
    comes up short of `count` raises, and the connection must close (RFC 9112 section 6.3)."""
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the connection is closed")
    if await loop.sendfile(transport, file, offset, count) < count:
        raise OSError("the file shrank while it was sent: short of its Content-Length")
