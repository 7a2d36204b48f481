"""Request bodies: held in memory up to a limit, spooled to a temporary file past it; read as wsgi.input."""

from __future__ import annotations

import errno
import io
import tempfile
from typing import BinaryIO

from .errors import HTTPError, InsufficientStorage, PayloadTooLarge
from .settings import Settings


# Read buffer of a spooled wsgi.input (bytes).
READ_BUFFER = 64 * 1024


class BodySpool:
    """Collects one request body; memory use is bounded by body_memory_limit whatever the size."""

    __slots__ = ("settings", "size", "_memory", "_file")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = 0
        self._memory: list[bytes] = []
        self._file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        limit = self.settings.max_body_size
        if limit and self.size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        if self._file is None:
            self._memory.append(data)
            if self.size <= self.settings.body_memory_limit:
                return
            self._file = self._open()
            data = b"".join(self._memory)
            self._memory = []
        try:
            self._file.write(data)
        except OSError as exc:
            self.close()
            raise _storage_error(exc) from exc

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
        self._file.seek(0)
        # Buffered for reading: readline() on a raw file would read a byte at a time.
        return io.BufferedReader(self._file, READ_BUFFER)  # type: ignore[arg-type]

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
