"""Writing one response's bytes to its transport: small pieces gathered into one write, large ones as they are."""

from __future__ import annotations

from typing import Any

from .response import COPY_LIMIT


class Output:
    """Bytes for one response gathered per batch: small pieces go out in one transport write
    (the head and a small body in one send), large ones as they are, never copied."""

    __slots__ = ("writer", "pieces", "size")

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.pieces: list[bytes] = []
        self.size = 0

    def add(self, *pieces: bytes) -> None:
        for piece in pieces:
            if len(piece) >= COPY_LIMIT:
                self.flush()
                self._send(piece)
            elif piece:
                self.pieces.append(piece)
                self.size += len(piece)
                if self.size >= COPY_LIMIT:
                    self.flush()

    def flush(self) -> None:
        if self.pieces:
            pieces = self.pieces
            self._send(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            self.pieces = []
            self.size = 0

    def _send(self, data: bytes) -> None:
        transport = self.writer.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        self.writer.output_size += len(data)
        transport.write(data)
