"""The spool writer thread's work on one request body's file (create, write, rewind, close): the worker's only disk I/O."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any, BinaryIO

from .errors import HTTPError, InsufficientStorage, OutOfFiles

# Buffers per writev(2) call, under every system's IOV_MAX (count).
IOV_BATCH = 512
# Why creating a file can fail because of the directory itself (gone, replaced, not ours to
# write, remounted read-only), not because of the disk's space or the process's descriptors.
DIRECTORY_ERRORS = frozenset((errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS))


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


def free_space(directory: str) -> int:
    """Bytes an unprivileged process may still write in `directory`'s file system."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


class SpoolFile:
    """One body's file. Only the writer thread touches `file`, until the rewind hands it over.
    `fallback`: where to create it if `directory` cannot take it (None: nowhere else)."""

    __slots__ = ("directory", "fallback", "file", "broken")

    def __init__(self, directory: str, fallback: str | None = None) -> None:
        self.directory = directory
        self.fallback = fallback
        self.file: BinaryIO | None = None
        self.broken = False  # a job failed: later writes are pointless (their error is out)


# -- the writer thread's actions (target, argument) -> result ------------------------------------
def open_file(target: SpoolFile, length: int | None) -> None:
    try:
        try:
            _create(target, length)
        except OSError as exc:
            if target.fallback is None or exc.errno not in DIRECTORY_ERRORS:
                raise
            # tmp_upload_dir went away (or out of reach) under a running worker: gunicorn's doc
            # says it may, and gthread, which never uses it, serves on. So does this upload.
            target.directory, target.fallback = target.fallback, None
            _create(target, length)
    except OSError:
        target.broken = True
        raise


def _create(target: SpoolFile, length: int | None) -> None:
    if length is not None and free_space(target.directory) < length:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target.directory)
    # Unbuffered: each batch is one writev(2), with no copy through a Python buffer.
    target.file = tempfile.TemporaryFile(dir=target.directory, buffering=0)


def write_file(target: SpoolFile, chunks: list[bytes]) -> int:
    if target.broken or target.file is None:
        return 0
    try:
        # Looked up per call: a module attribute, so a test can put a slow disk here.
        write_all(target.file.fileno(), chunks)
    except OSError:
        target.broken = True
        raise
    return sum(map(len, chunks))


def rewind_file(target: SpoolFile, _argument: Any) -> None:
    if target.broken or target.file is None:
        raise OSError(errno.EIO, "the spool file was not written")
    target.file.seek(0)


def close_file(target: SpoolFile, _argument: Any) -> int:
    """Close (an unnamed file's blocks are freed now, which can take a while); say what is free."""
    if target.file is not None:
        target.file.close()
        target.file = None
    return free_space(target.directory)


def measure_free(directory: str, _argument: Any) -> int:
    return free_space(directory)


def storage_error(exc: BaseException) -> HTTPError:
    # RFC 4918 section 11.5: 507 when the server cannot store the representation.
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"cannot spool request body: {exc}")
    # No descriptor for the file: load (connections and other uploads hold them), not a fault.
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return OutOfFiles(f"cannot spool request body: {exc}")
    return HTTPError(f"cannot spool request body: {exc}")


def call(function: Any, arguments: tuple[Any, ...]) -> Any:
    """Any other blocking call the loop must not make itself (the access log of its answers)."""
    return function(*arguments)
