"""Writing one response's bytes: small pieces gathered into one transport write, large ones as they are."""

from __future__ import annotations

from typing import Callable

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
