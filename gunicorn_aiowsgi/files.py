"""wsgi.file_wrapper (PEP 3333, "Optional Platform-Specific File Handling"): the wrapper, and how a wrapped file goes out."""

from __future__ import annotations

import enum
import io
import os
import stat
from typing import Any

from .errors import AppError


class FileWrapper:
    """wsgi.file_wrapper (PEP 3333): a real file goes out with the loop's sendfile, else iterated."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> "FileWrapper":
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


class FileKind(enum.Enum):
    """How a wsgi.file_wrapper body goes out (PEP 3333, "Optional Platform-Specific File Handling")."""

    SENDFILE = "sendfile"  # a file object whose descriptor holds exactly what read() gives
    ITERATE = "iterate"    # any other binary file object: read(blksize) chunks, in the app thread


# File objects whose fileno() holds exactly the bytes read() returns: only these may go out with
# sendfile. A GzipFile's descriptor is the compressed file, a codecs reader's is undecoded.
SENDFILE_TYPES = (io.FileIO, io.BufferedReader, io.BufferedRandom)


def file_kind(filelike: Any) -> FileKind:
    """Judge a wrapped file before the head goes out: AppError when it cannot be sent at all.

    PEP 3333: the body is bytes, and file_wrapper's object needs a read() giving them. A text
    file, a file not open for reading, or a closed one fails here, as a clean 500, instead of
    after the head (where only closing the connection is left).
    """
    mode = getattr(filelike, "mode", None)
    # A mode without "b" means text only outside io's binary classes: a zip member (a
    # BufferedIOBase) says "r", and reads bytes.
    if isinstance(filelike, io.TextIOBase) or (
            isinstance(mode, str) and "b" not in mode
            and not isinstance(filelike, (io.BufferedIOBase, io.RawIOBase))):
        raise AppError(f"wsgi.file_wrapper got a file in text mode ({mode!r}): PEP 3333 bodies are bytes")
    if not callable(getattr(filelike, "read", None)):
        raise AppError(f"wsgi.file_wrapper got a {type(filelike).__name__} without read()")
    readable = getattr(filelike, "readable", None)
    try:
        if callable(readable) and not readable():
            raise AppError(f"wsgi.file_wrapper got a file not open for reading ({mode!r})")
    except ValueError as exc:  # io's answer for a closed file
        raise AppError(f"wsgi.file_wrapper got an unusable file: {exc}") from exc
    return FileKind.SENDFILE if isinstance(filelike, SENDFILE_TYPES) else FileKind.ITERATE


def file_span(wrapper: FileWrapper, length: int | None) -> tuple[int, int, int] | None:
    """(fd, offset, count) when the wrapped object is a regular file sendfile can take."""
    try:
        fd = wrapper.filelike.fileno()
        info = os.fstat(fd)
        # The file object's position, not the descriptor's: a buffered reader reads ahead.
        offset = wrapper.filelike.tell()
    except (AttributeError, OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    available = max(0, info.st_size - offset)
    return fd, offset, available if length is None else min(length, available)
