"""BodySpool and SpoolStore on a real loop with the real writer thread: limits, budgets, free space, backlogs."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import tempfile
import threading
import tracemalloc
from typing import Any

import pytest
import server

from gunicorn_aiowsgi import body, spool_disk, spool_store
from gunicorn_aiowsgi.body import PIECE, SPOOL_BACKLOG, BodySpool, Gather, SpoolState
from gunicorn_aiowsgi.errors import HTTPError, InsufficientStorage, PayloadTooLarge
from gunicorn_aiowsgi.settings import GIB, MIB, Settings
from gunicorn_aiowsgi.spool_store import SpoolFull, SpoolStore

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


def test_budget_is_charged_as_bytes_arrive_and_a_head_refused_only_when_it_cannot_fit_now(tmp_path):
    settings = Settings(body_memory_limit=1000, spool_budget=10_000, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        first = BodySpool(settings, store)
        first.expect(6000)
        assert store.used == 0  # announced, not reserved: nothing has arrived
        second = BodySpool(settings, store)
        second.expect(6000)     # fits in what is free now, though the two would not
        first.write(b"f" * 6000)
        assert store.used == 6000
        with pytest.raises(SpoolFull) as info:  # 6000 of 10,000 taken: this one cannot fit now
            BodySpool(settings, store).expect(6000)
        assert info.value.status == 503 and info.value.retry_after == "1"
        small = BodySpool(settings, store)
        small.expect(900)  # stays in memory: never charged, never refused
        small.write(b"s" * 900)
        assert (await finished(small)).read() == b"s" * 900
        with pytest.raises(PayloadTooLarge):  # could never fit: 413, not a retry for ever
            BodySpool(settings, store).expect(10_001)
        second.write(b"x" * 4000)
        with pytest.raises(SpoolFull):   # out of budget on the way: 503, as a chunked body
            second.write(b"x")
        second.close()
        assert store.used == 6000        # its share back at once (its file closes next)
        stream = await finished(first)
        assert stream.read() == b"f" * 6000
        with pytest.raises(SpoolFull):
            BodySpool(settings, store).expect(6000)  # still held by the app's open input
        stream.close()
        await until(lambda: store.used == 0, "budget back after close")
        again = BodySpool(settings, store)
        again.expect(6000)
        again.write(b"a")
        assert store.used == 1
        again.close()
        again.close()  # twice is harmless
        assert store.used == 0
        await until(lambda: not open_files(tmp_path), "every file closed")

    run(settings, test)


def test_a_body_announced_and_never_sent_holds_no_budget(tmp_path):
    """One client announces the whole budget (Expect: 100-continue, then nothing, or a byte a
    minute): an upload beside it is taken and completes."""
    settings = Settings(body_memory_limit=1000, spool_budget=64 * 1024, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        hog = BodySpool(settings, store)
        hog.expect(64 * 1024)
        hog.write(b"h")  # a trickle holds what it sent
        upload = BodySpool(settings, store)
        upload.expect(32 * 1024)
        upload.write(b"u" * (32 * 1024))
        stream = await finished(upload)
        assert stream.read() == b"u" * (32 * 1024) and store.used == 32 * 1024 + 1
        stream.close()
        hog.close()
        await until(lambda: store.used == 0 and not open_files(tmp_path), "files and budget back")

    run(settings, test)


def test_uploads_past_the_budget_at_once_leave_one_to_finish(tmp_path):
    """Three uploads of 6000 announced on a 10,000 budget (each fits what is free at its head),
    sent in turns: whichever meets the full budget is refused, and its share is back at once,
    so the others go on; one finishes. (Were a refused body's share back only once the writer
    closed its file, every upload meeting the budget meanwhile would be refused: none would.)"""
    settings = Settings(body_memory_limit=1000, spool_budget=10_000, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        spools = [BodySpool(settings, store) for _ in range(3)]
        for spool in spools:
            spool.expect(6000)
        live, refused = list(spools), []
        for _ in range(6):
            for spool in list(live):
                try:
                    spool.write(b"b" * 1000)
                except SpoolFull:
                    spool.close()
                    live.remove(spool)
                    refused.append(spool)
        assert len(live) == 1 and len(refused) == 2
        stream = await finished(live[0])
        assert stream.read() == b"b" * 6000
        stream.close()
        await until(lambda: store.used == 0 and not open_files(tmp_path), "files and budget back")

    run(settings, test)


# Memory limit 1000, memory budget 4000 (what is held: column `held`), spool budget 10,000
# (`used`): where a body with this Content-Length (None: chunked) goes, or how it is refused,
# before any of it is sent.
@pytest.mark.parametrize("length, held, used, spool_budget, expected", [
    (None, 0, 0, 10_000, SpoolState.MEMORY),
    (None, 4000, 10_000, 10_000, SpoolState.MEMORY),   # chunked: judged as its bytes come
    (1000, 0, 0, 10_000, SpoolState.MEMORY),
    (1000, 3000, 0, 10_000, SpoolState.MEMORY),        # exactly the room left in memory
    (1000, 3001, 0, 10_000, SpoolState.DISK_BOUND),    # no room: to disk from its first byte
    (1001, 0, 0, 10_000, SpoolState.DISK_BOUND),       # too large for memory
    (10_000, 0, 0, 10_000, SpoolState.DISK_BOUND),     # the whole budget: fits an idle worker
    (5000, 0, 5000, 10_000, SpoolState.DISK_BOUND),    # exactly what is free
    (10_001, 0, 0, 10_000, PayloadTooLarge),           # could never fit
    (6000, 0, 5000, 10_000, SpoolFull),                # does not fit in what is free now
    (1000, 4000, 9500, 10_000, SpoolFull),             # no room in memory, nor on disk
    (900, 4000, 0, 500, SpoolFull),                    # within the memory limit: room may come
    (10**9, 0, 0, 0, SpoolState.DISK_BOUND),           # budget 0: no limit
])
def test_where_a_body_goes_at_its_head(length, held, used, spool_budget, expected, tmp_path):
    settings = Settings(body_memory_limit=1000, body_memory_budget=4000, spool_budget=spool_budget,
                        max_body_size=0, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        store.free = 1 << 62  # this case is about the budgets, not about this disk's size
        store.in_memory, store.used = held, used
        spool = BodySpool(settings, store)
        if isinstance(expected, type):
            with pytest.raises(expected):
                spool.expect(length)
            spool.close()
        else:
            spool.expect(length)
            assert spool.state is expected
            spool.close()
        assert (store.in_memory, store.used) == (held, used)  # a head takes nothing

    run(settings, test)


def test_memory_budget_sends_bodies_to_disk_past_it_and_gets_each_share_back(tmp_path):
    settings = Settings(body_memory_limit=1000, body_memory_budget=2500, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        first, second = BodySpool(settings, store), BodySpool(settings, store)
        first.expect(1000)
        first.write(b"1" * 1000)
        second.expect(None)
        second.write(b"2" * 1000)
        assert store.in_memory == 2000
        third = BodySpool(settings, store)
        third.expect(1000)                 # 500 left: to disk from its first byte
        assert third.state is SpoolState.DISK_BOUND
        third.write(b"3" * 1000)
        assert store.in_memory == 2000 and store.used == 1000
        chunked = BodySpool(settings, store)
        chunked.expect(None)
        chunked.write(b"c" * 400)          # in memory while there is room
        assert store.in_memory == 2400 and chunked.state is SpoolState.MEMORY
        chunked.write(b"C" * 200)          # none left: to disk, with what it held
        assert chunked.state is SpoolState.SPOOLING
        assert store.in_memory == 2000 and store.used == 1600
        streams = [await finished(spool) for spool in (first, second, third, chunked)]
        assert [type(stream) is io.BytesIO for stream in streams] == [True, True, False, False]
        assert [stream.read() for stream in streams] == [
            b"1" * 1000, b"2" * 1000, b"3" * 1000, b"c" * 400 + b"C" * 200]
        assert store.in_memory == 2000     # the apps hold the bytes until their responses end
        first.close()                      # (the exchange closes its spool then)
        second.close()
        assert store.in_memory == 0
        for stream in streams:
            stream.close()
        for spool in (third, chunked):
            spool.close()
        await until(lambda: store.used == 0 and not open_files(tmp_path), "files and budget back")
        abandoned = BodySpool(settings, store)
        abandoned.expect(None)
        abandoned.write(b"a" * 700)
        abandoned.close()                  # a client gone mid-body
        assert store.in_memory == 0

    run(settings, test)


def test_a_spool_batch_goes_to_the_writer_at_once_when_memory_has_no_room(tmp_path, monkeypatch):
    """Bytes waiting for the writer count in the memory budget: a body trickling into its batch
    cannot hold SPILL_BATCH of memory each once the budget is used up."""
    written: list[int] = []
    real_write = spool_disk.write_all

    def counting(fd: int, chunks: list[bytes]) -> None:
        written.append(sum(map(len, chunks)))
        real_write(fd, chunks)

    monkeypatch.setattr(spool_disk, "write_all", counting)
    settings = Settings(body_memory_limit=100, body_memory_budget=1000, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        spool = BodySpool(settings, store)
        spool.expect(10_000)
        for _ in range(10):
            spool.write(b"x" * 100)
        assert store.in_memory == 1000 and written == []   # a batch, held within the budget
        spool.write(b"y" * 100)                             # no room: everything goes now
        assert store.in_memory == 0
        spool.write(b"z" * 100)                             # room again: held
        assert store.in_memory == 100
        stream = await finished(spool)
        assert written == [1100, 100] and store.in_memory == 0
        assert stream.read() == b"x" * 1000 + b"y" * 100 + b"z" * 100
        stream.close()
        spool.close()
        await until(lambda: store.used == 0 and not open_files(tmp_path), "the file closed")

    run(settings, test)


def test_chunked_body_growing_past_the_budget_is_refused(tmp_path):
    settings = Settings(body_memory_limit=1000, spool_budget=10_000, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        spool = BodySpool(settings, store)
        spool.expect(None)
        spool.write(b"c" * 4000)
        assert store.used == 4000
        spool.write(b"c" * 6000)
        with pytest.raises(PayloadTooLarge):  # alone past the whole budget: 413, no retry helps
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
        # Judged on what is free now; nothing is set aside for what is announced.
        for _ in range(2):
            BodySpool(settings, store).expect(free * 3 // 4)
        assert store.used == 0

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
        await until(lambda: store.used == 0 and store.unwritten == 0 and not open_files(tmp_path),
                    "file, budget and the writer's backlog back")
        spool.close()

    run(settings, test)


def test_a_spool_directory_gone_while_serving_moves_bodies_to_the_default_one(tmp_path):
    """tmp_upload_dir removed under a running worker: the next body's file is created in the
    default temporary directory by the writer thread, said once; the bodies after it go there
    at once. Before: every body over the memory limit got 500."""
    where = tmp_path / "gone"
    where.mkdir()
    settings = Settings(body_memory_limit=0, tmp_upload_dir=str(where))
    default = tempfile.gettempdir()
    said: list[str] = []

    async def test(store: SpoolStore) -> None:
        store.warn = lambda fmt, *args: said.append(fmt % args)
        assert (store.directory, store.fallback) == (str(where), default)
        where.rmdir()
        for n in range(2):
            spool = BodySpool(settings, store)
            spool.expect(None)
            spool.write(b"body %d" % n)
            stream = await finished(spool)
            assert stream.read() == b"body %d" % n
            assert (store.directory, store.fallback) == (default, None)
            stream.close()
        await until(lambda: said, "the warning, written by the writer thread")
        assert said == [f"tmp_upload_dir {str(where)!r} cannot take request bodies any more: "
                        f"they spool to {default} from now on"]
        await until(lambda: store.used == 0 and store.free is not None, "the files closed")

    run(settings, test)


def test_with_nowhere_else_to_go_a_missing_directory_answers_500(tmp_path):
    where = tmp_path / "gone"
    where.mkdir()
    settings = Settings(body_memory_limit=0, tmp_upload_dir=str(where))

    async def test(store: SpoolStore) -> None:
        store.fallback = None  # tmp_upload_dir is the default directory itself
        where.rmdir()
        spool = BodySpool(settings, store)
        spool.expect(None)
        spool.write(b"x")
        result = await finished(spool)
        assert type(result) is HTTPError and result.status == 500
        assert "No such file or directory" in str(result)

    run(settings, test)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EMFILE])
def test_only_a_directory_error_moves_a_body_elsewhere(error, tmp_path, monkeypatch):
    """A full disk (507) or no descriptor left (503) is not the directory's fault: the body is
    refused as before, and the directory stays."""
    def fail(**_kwargs: Any) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(spool_disk.tempfile, "TemporaryFile", fail)
    target = spool_disk.SpoolFile(str(tmp_path), fallback=tempfile.gettempdir())
    with pytest.raises(OSError) as info:
        spool_disk.open_file(target, None)
    assert info.value.errno == error
    assert (target.directory, target.broken) == (str(tmp_path), True)


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


# -- what a body held in memory costs, whatever the size of its reads ---------------------------
@pytest.mark.parametrize("sizes", [
    pytest.param([1] * 200_000, id="a-byte-per-read"),
    pytest.param([3, 1, 7] * 30_000, id="small-reads"),
    pytest.param([PIECE] * 5, id="full-pieces"),
    pytest.param([PIECE - 1, 1, 1, PIECE - 1], id="just-under"),
    pytest.param([1, 300_000, 1, 1, 300_000], id="large-between-small"),
    pytest.param([40_000] * 10, id="two-do-not-fit-one-piece"),
    pytest.param([], id="nothing"),
])
def test_gather_holds_few_pieces_in_order(sizes):
    gather = Gather()
    reads = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    for data in reads:
        gather.add(data)
    pieces, size = gather.take()
    assert b"".join(pieces) == b"".join(reads) and size == sum(sizes)
    assert gather.take() == ([], 0)  # nothing held after
    # Two pieces in a row always hold more than PIECE: few pieces, whatever the reads.
    assert all(len(a) + len(b) > PIECE for a, b in zip(pieces, pieces[1:]))
    # A read of PIECE or more is held as it came: no copy.
    large = [data for data in reads if len(data) >= PIECE]
    assert all(any(piece is data for piece in pieces) for data in large)


def held_memory(build) -> int:
    """Bytes allocated by build() and still held when it returns (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        held = tracemalloc.get_traced_memory()[0] - before
        del kept
    finally:
        tracemalloc.stop()
    return held


@pytest.mark.parametrize("read", [1, 2, 10, 1000])
def test_a_body_in_memory_costs_about_its_bytes_whatever_its_reads(read, tmp_path):
    """100 KB in reads of `read` bytes: each read was held as it came, a bytes object (35 bytes
    and more beside a 2-byte one) and a list slot, until the body ended: 2.2 MB for 2-byte
    reads. Now its bytes and a bytearray's slack."""
    settings = Settings(body_memory_limit=MIB, tmp_upload_dir=str(tmp_path))
    total = 100_000

    async def test(store: SpoolStore) -> None:
        def build() -> BodySpool:
            spool = BodySpool(settings, store)
            spool.expect(None)
            for _ in range(total // read):
                spool.write(b"r" * read)  # a new object per read, as the socket gives them
            return spool

        held = held_memory(build)
        assert held < total * 1.2 + 4096, held
        assert store.in_memory == total  # what the memory budget counts: its bytes

    run(settings, test)


def stall_writes(monkeypatch) -> threading.Event:
    """The writer thread's writes wait (a stalled disk) until the returned event is set."""
    gate = threading.Event()
    real_write = spool_disk.write_all

    def stalled(fd: int, chunks: list[bytes]) -> None:
        gate.wait(10)
        real_write(fd, chunks)

    monkeypatch.setattr(spool_disk, "write_all", stalled)
    return gate


def test_a_batch_waiting_for_the_writer_costs_about_its_bytes_whatever_its_reads(tmp_path, monkeypatch):
    """The same for a spooled body's bytes not yet handed to the writer, and for those it was
    handed while the disk is stalled (the backlog), two bytes per read."""
    gate = stall_writes(monkeypatch)
    monkeypatch.setattr(body, "SPILL_BATCH", 16 * 1024)
    monkeypatch.setattr(body, "SPOOL_BACKLOG", 64 * 1024)
    settings = Settings(body_memory_limit=0, tmp_upload_dir=str(tmp_path))

    async def test(store: SpoolStore) -> None:
        spool = BodySpool(settings, store)
        spool.expect(None)

        def build() -> int:
            sent = 0
            while not spool.backlogged:
                spool.write(b"bb")
                sent += 2
            return sent

        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            sent = build()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert sent == 64 * 1024
        assert held < sent * 1.2 + 8 * 1024, held
        gate.set()
        stream = await finished(spool)
        assert stream.read() == b"bb" * (sent // 2)
        stream.close()
        await until(lambda: store.used == 0 and not open_files(tmp_path), "file and budget back")

    run(settings, test)


def test_uploads_at_once_stop_reading_past_the_workers_writer_backlog(tmp_path, monkeypatch):
    """A stalled disk and several uploads: past WRITER_BACKLOG handed to the writer in all,
    every spooling body says stop reading (not only the one past its own SPOOL_BACKLOG), and
    each is woken once the writer catches up; the count comes back to 0 whatever ends them."""
    gate = stall_writes(monkeypatch)
    monkeypatch.setattr(body, "SPILL_BATCH", 64 * 1024)
    monkeypatch.setattr(spool_store, "WRITER_BACKLOG", 256 * 1024)
    settings = Settings(body_memory_limit=0, body_memory_budget=1, tmp_upload_dir=str(tmp_path))
    piece = b"w" * (64 * 1024)

    async def test(store: SpoolStore) -> None:
        first, second, third = (BodySpool(settings, store) for _ in range(3))
        for spool in (first, second, third):
            spool.expect(None)
        for _ in range(4):
            first.write(piece)
        assert store.unwritten == 256 * 1024 and first.backlogged  # 256 KiB of its 4 MiB
        second.write(piece)
        assert second.backlogged           # nothing of its own written yet: the worker's backlog
        third.write(piece)
        woken: list[str] = []
        for name, spool in (("first", first), ("second", second)):
            spool.on_drained(lambda name=name: woken.append(name))
        third.close()                      # abandoned with a batch in the writer's queue
        await asyncio.sleep(0.02)
        assert woken == []
        gate.set()
        await until(lambda: sorted(woken) == ["first", "second"], "both woken")
        streams = [await finished(spool) for spool in (first, second)]
        assert [stream.read() for stream in streams] == [piece * 4, piece]
        for stream in streams:
            stream.close()
        await until(lambda: store.unwritten == 0 and store.used == 0 and not open_files(tmp_path),
                    "every batch counted back, every file closed")

    run(settings, test)
