"""BodySpool and SpoolStore on a real loop with the real writer thread: limits, budget, free space, backlog."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import threading
from typing import Any

import pytest
import server

from gunicorn_aiowsgi import spool_disk
from gunicorn_aiowsgi.body import SPOOL_BACKLOG, BodySpool, SpoolFull, SpoolStore
from gunicorn_aiowsgi.errors import HTTPError, InsufficientStorage, PayloadTooLarge
from gunicorn_aiowsgi.settings import GIB, MIB, Settings

pytestmark = pytest.mark.timeout(60)


def open_files(directory) -> list[str]:
    """This process's files under `directory` (spool files are unnamed: only fds show them)."""
    return server.open_files(os.getpid(), str(directory))


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def finished(spool: BodySpool) -> Any:
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    spool.finish(done.set_result)
    return await done


def run(settings: Settings, test) -> Any:
    """Run `test(store)` on a fresh loop with a fresh store; the writer thread is stopped after."""
    async def main() -> Any:
        store = SpoolStore(asyncio.get_running_loop(), settings)
        try:
            await until(lambda: store.free is not None, "the first free-space figure")
            return await test(store)
        finally:
            store.shutdown(timeout=5)
    return asyncio.run(main())


@pytest.mark.parametrize("chunks, length, memory_limit, spooled", [
    ([], 0, 10, False),
    ([b"abc"], 3, 10, False),
    ([b"abcde", b"fghij"], None, 10, False),
    ([b"abcde", b"fghijk"], 11, 10, True),
    ([b"abcde", b"fghijk"], None, 10, True),
    ([b"x" * 100], None, 10, True),
    ([bytes([n]) * 300_000 for n in range(10)], 3_000_000, 1000, True),
    ([bytes([n % 251]) * 7 for n in range(5000)], None, 1000, True),
    ([b"y" * (1 << 20), b"z"], None, 1000, True),
])
def test_memory_then_file_roundtrip(chunks, length, memory_limit, spooled, tmp_path):
    settings = Settings(body_memory_limit=memory_limit, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        spool = BodySpool(settings, store)
        spool.expect(length)
        for chunk in chunks:
            spool.write(chunk)
        stream = await finished(spool)
        assert spool.spooled is spooled
        assert isinstance(stream, io.BytesIO) is not spooled
        assert stream.read() == b"".join(chunks)
        assert spool.size == sum(map(len, chunks))
        assert store.used == (spool.size if spooled else 0)  # the open file holds its share
        stream.close()
        await until(lambda: store.used == 0, "the closed file's bytes back in the budget")
        assert open_files(tmp_path) == [] and os.listdir(tmp_path) == []

    run(settings, test)


@pytest.mark.parametrize("max_size, length, chunks, refused_at", [
    (5, 6, [], "expect"),                 # Content-Length says too much: before any byte
    (5, None, [b"12345", b"6"], 1),       # chunked: as soon as it passes the limit
    (5, None, [b"12345"], None),
    (0, 3 * GIB, [], None),               # 0: no limit (a 3 GiB length is fine to announce)
    (None, 3 * GIB, [], "expect"),        # the default limit: 1 GiB
    (None, GIB, [], None),
])
def test_max_body_size(max_size, length, chunks, refused_at, tmp_path):
    extra = {} if max_size is None else {"max_body_size": max_size}
    settings = Settings(tmp_upload_dir=str(tmp_path), spool_budget=0, **extra)

    async def test(store: SpoolStore) -> None:
        store.free = 1 << 62  # this case is about the limit, not about this disk's size
        spool = BodySpool(settings, store)
        if refused_at == "expect":
            with pytest.raises(PayloadTooLarge):
                spool.expect(length)
            return
        spool.expect(length)
        for index, chunk in enumerate(chunks):
            if index == refused_at:
                with pytest.raises(PayloadTooLarge) as info:
                    spool.write(chunk)
                assert info.value.status == 413
                return
            spool.write(chunk)
        assert refused_at is None
        spool.close()

    run(settings, test)


def test_budget_refuses_new_uploads_until_a_file_is_closed(tmp_path):
    settings = Settings(body_memory_limit=1000, spool_budget=10_000, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        first = BodySpool(settings, store)
        first.expect(6000)
        with pytest.raises(SpoolFull) as info:
            BodySpool(settings, store).expect(6000)
        assert info.value.status == 503 and info.value.retry_after == "1"
        small = BodySpool(settings, store)
        small.expect(900)  # stays in memory: never charged, never refused
        small.write(b"s" * 900)
        assert (await finished(small)).read() == b"s" * 900
        with pytest.raises(PayloadTooLarge):  # could never fit: 413, not a retry for ever
            BodySpool(settings, store).expect(10_001)
        first.write(b"f" * 6000)
        stream = await finished(first)
        with pytest.raises(SpoolFull):
            BodySpool(settings, store).expect(6000)  # still held by the app's open input
        stream.close()
        await until(lambda: store.used == 0, "budget back after close")
        again = BodySpool(settings, store)
        again.expect(6000)
        again.close()
        again.close()  # twice is harmless
        await until(lambda: store.used == 0, "budget back after abandon")

    run(settings, test)


def test_chunked_body_growing_past_the_budget_is_refused(tmp_path):
    settings = Settings(body_memory_limit=1000, spool_budget=10_000, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        spool = BodySpool(settings, store)
        spool.expect(None)
        spool.write(b"c" * 4000)
        assert store.used == 4000
        spool.write(b"c" * 6000)
        with pytest.raises(SpoolFull):
            spool.write(b"c")
        spool.close()
        await until(lambda: store.used == 0 and not open_files(tmp_path), "file and budget back")

    run(settings, test)


def test_free_space_checked_before_spooling(tmp_path):
    settings = Settings(body_memory_limit=1000, max_body_size=0, spool_budget=0,
                        tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        free = spool_disk.free_space(str(tmp_path))
        with pytest.raises(InsufficientStorage) as info:
            BodySpool(settings, store).expect(free + 64 * GIB)
        assert info.value.status == 507 and "No space left on device" in str(info.value)
        fits = BodySpool(settings, store)
        fits.expect(5000)
        assert store.promised == 5000
        fits.close()
        assert store.promised == 0

    run(settings, test)


def test_disk_error_answers_507_and_frees_everything(tmp_path, monkeypatch):
    def full(fd: int, chunks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_disk, "write_all", full)
    settings = Settings(body_memory_limit=0, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        spool = BodySpool(settings, store)
        spool.expect(4)
        spool.write(b"data")  # held until the batch fills or the body ends
        result = await finished(spool)
        assert isinstance(result, InsufficientStorage)
        with pytest.raises(InsufficientStorage):
            spool.write(b"more")
        await until(lambda: store.used == 0 and not open_files(tmp_path), "file and budget back")
        spool.close()

    run(settings, test)


def test_missing_directory_answers_500(tmp_path):
    where = tmp_path / "gone"
    where.mkdir()
    settings = Settings(body_memory_limit=0, tmp_upload_dir=str(where))

    async def test(store: SpoolStore) -> None:
        where.rmdir()
        spool = BodySpool(settings, store)
        spool.expect(None)
        spool.write(b"x")
        result = await finished(spool)
        assert type(result) is HTTPError and result.status == 500
        assert "No such file or directory" in str(result)

    run(settings, test)


def test_disk_work_runs_on_the_writer_thread_with_a_bounded_backlog(tmp_path, monkeypatch):
    """A slow disk: the loop only queues; past SPOOL_BACKLOG it says stop reading, then resumes."""
    gate = threading.Event()
    writers: set[int] = set()
    real_write = spool_disk.write_all

    def slow(fd: int, chunks: list[bytes]) -> None:
        writers.add(threading.get_ident())
        gate.wait(10)
        real_write(fd, chunks)

    monkeypatch.setattr(spool_disk, "write_all", slow)
    settings = Settings(body_memory_limit=MIB, tmp_upload_dir=str(tmp_path))
    piece = b"p" * (256 * 1024)

    async def test(store: SpoolStore) -> None:
        spool = BodySpool(settings, store)
        spool.expect(None)
        sent = 0
        while not spool.backlogged:
            spool.write(piece)
            sent += len(piece)
            assert sent <= MIB + SPOOL_BACKLOG + len(piece)  # the bound: memory, then backlog
        drained = asyncio.Event()
        spool.on_drained(drained.set)
        await asyncio.sleep(0.05)
        assert not drained.is_set()  # the disk has not moved: still backlogged
        gate.set()
        await asyncio.wait_for(drained.wait(), 10)
        spool.write(piece)
        sent += len(piece)
        stream = await finished(spool)
        assert stream.read() == piece * (sent // len(piece))
        stream.close()
        assert writers and threading.get_ident() not in writers

    run(settings, test)


def test_abandoned_while_finishing_closes_the_file(tmp_path):
    settings = Settings(body_memory_limit=10, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        spool = BodySpool(settings, store)
        spool.expect(None)
        spool.write(b"a" * 100)
        answers: list[Any] = []
        spool.finish(answers.append)
        spool.close()  # the connection went away while the last bytes were written
        await until(lambda: store.used == 0 and not open_files(tmp_path), "file and budget back")
        await asyncio.sleep(0.01)
        assert answers == []

    run(settings, test)


def test_write_all_many_small_chunks(tmp_path):
    from gunicorn_aiowsgi.spool_disk import IOV_BATCH, write_all
    chunks = [bytes([i % 256]) * (i % 7 + 1) for i in range(IOV_BATCH * 3 + 5)]
    with open(tmp_path / "f", "wb") as f:
        write_all(f.fileno(), chunks)
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
