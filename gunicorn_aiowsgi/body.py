"""Request bodies: held in memory up to a limit, spooled to a temporary file past it; read as wsgi.input."""

from __future__ import annotations

import errno
import io
import os
import tempfile
from typing import BinaryIO

from .errors import HTTPError, InsufficientStorage, PayloadTooLarge
from .settings import Settings

# Read buffer of a spooled wsgi.input (bytes).
READ_BUFFER = 64 * 1024
# Once spooling, body bytes are held until this many, then written in one go (bytes).
SPILL_BATCH = 1024 * 1024
# Buffers per writev(2) call, under every system's IOV_MAX (count).
IOV_BATCH = 512


def write_all(fd: int, chunks: list[bytes]) -> None:
    """Write every chunk to fd, in order, however short each writev(2) falls."""
    for start in range(0, len(chunks), IOV_BATCH):
        group = [memoryview(c) for c in chunks[start:start + IOV_BATCH]]
        while group:
            written = os.writev(fd, group)
            while group and written >= len(group[0]):
                written -= len(group[0])
                group.pop(0)
            if group and written:
                group[0] = group[0][written:]


class BodySpool:
    """Collects one request body; memory use is bounded by body_memory_limit whatever the size."""

    __slots__ = ("settings", "size", "_memory", "_buffered", "_file")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = 0
        self._memory: list[bytes] = []
        self._buffered = 0        # bytes in _memory (bytes)
        self._file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        limit = self.settings.max_body_size
        if limit and self.size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        self._memory.append(data)
        self._buffered += len(data)
        if self._file is None:
            if self.size <= self.settings.body_memory_limit:
                return
            self._file = self._open()
        if self._buffered >= SPILL_BATCH:
            self._spill()

    def _spill(self) -> None:
        """Write what is held to the file in one writev(2): few system calls, no joining copy."""
        assert self._file is not None
        try:
            write_all(self._file.fileno(), self._memory)
        except OSError as exc:
            self.close()
            raise _storage_error(exc) from exc
        self._memory = []
        self._buffered = 0

    def _open(self) -> BinaryIO:
        try:
            # Unbuffered: each chunk is one write(2), with no copy through a Python buffer.
            return tempfile.TemporaryFile(dir=self.settings.tmp_upload_dir, buffering=0)
        except OSError as exc:
            raise _storage_error(exc) from exc

    def finish(self) -> BinaryIO:
        """The body as a file positioned at its start: wsgi.input (PEP 3333 input stream)."""
        if self._file is None:
            return io.BytesIO(b"".join(self._memory) if len(self._memory) != 1 else self._memory[0])
        if self._memory:
            self._spill()
        self._file.seek(0)
        # Buffered for reading: readline() on a raw file would read a byte at a time.
        return io.BufferedReader(self._file, READ_BUFFER)  # type: ignore[type-var]

    @property
    def spooled(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._memory = []


def _storage_error(exc: OSError) -> HTTPError:
    # RFC 4918 section 11.5: 507 when the server cannot store the representation.
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"cannot spool request body: {exc}")
    return HTTPError(f"cannot spool request body: {exc}")
