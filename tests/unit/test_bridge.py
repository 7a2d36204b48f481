"""In-memory tests of the thread bridge: Channel credit, backpressure, flush and close; Inbox batching.

Real app threads, a real asyncio loop driven from the test with run_until_complete: no socket, no
master, and no sleeping on the loop side. A producer's "is it blocked?" is read from the channel's
gate (the lock it blocks on), so no assertion depends on how fast a thread runs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import pytest
from server import wait_until

from gunicorn_aiowsgi import bridge
from gunicorn_aiowsgi.bridge import Channel as BridgeChannel
from gunicorn_aiowsgi.bridge import Inbox, channels
from gunicorn_aiowsgi.errors import ClientDisconnected
from gunicorn_aiowsgi.messages import QUEUED

pytestmark = pytest.mark.timeout(30)

class Item:
    """A message of `size` bytes of credit (what the bridge's typed messages carry as `.size`)."""

    __slots__ = ("value", "size")

    def __init__(self, value: tuple, size: int) -> None:
        self.value = value
        self.size = size


class Channel:
    """A bridge Channel as the loop side uses it, with a get() coroutine for these tests: the
    channel's listener (what the relay is in the worker) wakes an asyncio.Event."""

    def __init__(self, inbox: Inbox, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.ready = asyncio.Event()
        self.channel = BridgeChannel(inbox, limit, self.ready.set)

    def put(self, item: tuple, size: int, wait: bool = True) -> None:
        self.channel.put(Item(item, size), wait=wait)

    async def get(self) -> list:
        while True:
            batch = self.channel.take()
            if batch:
                return [item.value for item in batch]
            self.ready.clear()
            await self.ready.wait()

    def __getattr__(self, name: str):
        return getattr(self.channel, name)


# A lost wake would leave the loop waiting forever; fail instead, and say so.
LOST_WAKE = 5.0


class CountingLoop(asyncio.SelectorEventLoop):
    """A real selector loop that counts the inbox's wakes: the bytes written to its pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0
        self._count_lock = threading.Lock()

    def count(self, fd: int, data: bytes) -> int:
        if data == b"\0":  # the inbox's wake byte (nothing else in these tests uses os.write)
            with self._count_lock:
                self.wakes += 1
        return REAL_WRITE(fd, data)


REAL_WRITE = os.write


@pytest.fixture
def loop(monkeypatch):
    loop = CountingLoop()
    monkeypatch.setattr(channels.os, "write", loop.count)
    yield loop
    loop.close()


def run(loop: asyncio.AbstractEventLoop, awaitable):
    """Drive the loop until `awaitable` is done (the loop-side half of every test)."""
    return loop.run_until_complete(asyncio.wait_for(awaitable, LOST_WAKE))


async def all_of(*awaitables):
    """asyncio.gather, started on the running loop (not the thread's default one)."""
    return await asyncio.gather(*awaitables)


def turn(loop: asyncio.AbstractEventLoop) -> None:
    """One pass of the loop: tasks created so far run up to their first await."""
    loop.run_until_complete(asyncio.sleep(0))


def waiting(channel: Channel) -> bool:
    """The producer is parked on the channel's gate (set just before it blocks, cleared on release)."""
    return channel._gate is not None


class Producer(threading.Thread):
    """An app thread: put() each size in turn, optionally flush(); records how far it got."""

    def __init__(self, channel: Channel, sizes: list[int], flush: bool = False) -> None:
        super().__init__(daemon=True)
        self.channel, self.sizes, self.do_flush = channel, sizes, flush
        self.returned: list[int] = []      # indices of the puts that returned
        self.flushed = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i, size in enumerate(self.sizes):
                self.channel.put(("item", i), size)
                self.returned.append(i)
            if self.do_flush:
                self.channel.flush()
                self.flushed = True
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc

    def finish(self) -> None:
        self.join(LOST_WAKE)
        assert not self.is_alive(), "the producer thread is still blocked"


def blocked(producer: Producer, what: str) -> None:
    """Wait until the producer is parked on its gate (or has finished, which the caller checks)."""
    wait_until(lambda: waiting(producer.channel) or not producer.is_alive(), 5, what)


# -- credit and backpressure -----------------------------------------------------------------

@pytest.mark.parametrize("limit, sizes, blocks_at, inflight", [
    pytest.param(10, [3, 3, 3], None, 9, id="below-limit-never-waits"),
    pytest.param(10, [4, 4, 4, 4], 3, 12, id="waits-once-inflight-reaches-limit"),
    pytest.param(8, [4, 4, 1], 2, 8, id="inflight-equal-to-limit-waits"),
    pytest.param(4, [100, 1], 1, 100, id="one-item-larger-than-limit-passes-then-waits"),
    pytest.param(1, [0, 0, 0], None, 0, id="zero-size-items-take-no-credit"),
])
def test_producer_waits_at_limit_bytes_in_flight(loop, limit, sizes, blocks_at, inflight):
    channel = Channel(Inbox(loop), loop, limit)
    producer = Producer(channel, sizes)
    producer.start()
    blocked(producer, "the producer to block or finish")
    if blocks_at is None:
        producer.finish()
        assert producer.returned == list(range(len(sizes))) and not waiting(channel)
    else:
        assert producer.is_alive() and waiting(channel)
        assert producer.returned == list(range(blocks_at)), "a put returned past the limit"
    assert channel.inflight == inflight
    channel.close()
    producer.finish()


def test_producer_resumes_only_when_half_the_limit_is_left_in_flight(loop):
    """Woken at half the limit, not at the first byte under it: a stream's thread wakes once per
    half-buffer instead of once per chunk."""
    channel = Channel(Inbox(loop), loop, 10)
    producer = Producer(channel, [4, 4, 4, 4])
    producer.start()
    blocked(producer, "the 4th put to block at 12 bytes in flight")

    async def loop_side() -> list:
        batch = await channel.get()
        channel.release(3)  # 9 in flight: below the limit, above half of it
        below_limit = waiting(channel)
        channel.release(3)  # 6 in flight: one byte above half
        above_half = waiting(channel)
        channel.release(1)  # 5 in flight: half the limit; the gate opens now, on the loop thread
        return [batch, below_limit, above_half, waiting(channel)]

    batch, below_limit, above_half, after = run(loop, loop_side())
    assert batch == [("item", 0), ("item", 1), ("item", 2)]
    assert below_limit and above_half, "more than half the limit in flight: still waiting"
    assert not after, "half the limit in flight: the gate must open on release()"
    producer.finish()
    assert producer.returned == [0, 1, 2, 3] and producer.error is None
    assert channel.inflight == 16 - 7


def test_bounded_in_flight_under_a_slow_consumer(loop):
    """Loop-side view of the rule: whenever the loop looks, at most limit-1+largest bytes wait."""
    limit, sizes = 16, [5, 1, 7, 3, 9, 2, 8, 4] * 25
    channel = Channel(Inbox(loop), loop, limit)
    producer = Producer(channel, sizes, flush=True)
    producer.start()

    async def consume() -> tuple[list, int]:
        got: list = []
        peak = 0
        while len(got) < len(sizes):
            batch = await channel.get()
            peak = max(peak, channel.inflight)
            for item in batch:
                got.append(item)
                channel.release(sizes[item[1]])  # one at a time: the producer refills as we go
        return got, peak

    got, peak = run(loop, consume())
    producer.finish()
    assert got == [("item", i) for i in range(len(sizes))], "items lost or reordered"
    assert peak <= limit - 1 + max(sizes)
    assert producer.flushed and channel.inflight == 0


# -- flush -------------------------------------------------------------------------------------

def test_flush_returns_at_once_when_nothing_in_flight(loop):
    channel = Channel(Inbox(loop), loop, 10)
    channel.flush()  # on this thread: would hang the test if it waited
    assert channel.inflight == 0


def test_flush_waits_until_everything_is_released(loop):
    channel = Channel(Inbox(loop), loop, 100)
    producer = Producer(channel, [4, 4], flush=True)
    producer.start()
    blocked(producer, "flush() to wait")
    assert producer.returned == [0, 1] and not producer.flushed

    async def loop_side() -> list:
        await channel.get()
        channel.release(4)
        partly = waiting(channel)
        channel.release(4)
        return [partly, waiting(channel)]

    partly, after = run(loop, loop_side())
    assert partly, "flush() returned with 4 bytes still in flight"
    assert not after
    producer.finish()
    assert producer.flushed and producer.error is None


# -- close -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes, flush", [
    pytest.param([8, 1], False, id="close-wakes-a-thread-waiting-in-put"),
    pytest.param([3], True, id="close-wakes-a-thread-waiting-in-flush"),
])
def test_close_wakes_a_waiting_thread_with_client_disconnected(loop, sizes, flush):
    channel = Channel(Inbox(loop), loop, 8)
    producer = Producer(channel, sizes, flush=flush)
    producer.start()
    blocked(producer, "the producer to wait")
    assert producer.is_alive() and waiting(channel)
    loop.call_soon(channel.close)  # close() is the loop's to call
    turn(loop)
    producer.finish()
    assert isinstance(producer.error, ClientDisconnected)
    assert producer.returned == list(range(len(sizes) - (0 if flush else 1)))
    assert not producer.flushed


@pytest.mark.parametrize("action", [
    pytest.param(lambda ch: ch.put(("item", 0), 1), id="put-after-close-raises"),
    pytest.param(lambda ch: ch.put(("item", 0), 0, wait=False), id="put-without-wait-after-close-raises"),
    pytest.param(lambda ch: ch.flush(), id="flush-after-close-raises"),
])
def test_after_close_the_thread_side_raises(loop, action):
    channel = Channel(Inbox(loop), loop, 8)
    channel.close()
    with pytest.raises(ClientDisconnected):
        action(channel)
    assert channel.inflight == 0


def test_put_without_wait_ignores_the_limit(loop):
    """END, ERROR and ABORT go with wait=False: a finished response never waits for credit."""
    channel = Channel(Inbox(loop), loop, 4)
    channel.put(("item", 0), 10)
    channel.put(("item", 1), 0, wait=False)  # would block forever on this thread if it waited
    assert channel.inflight == 10


# -- get ---------------------------------------------------------------------------------------

def test_get_waits_for_the_first_item_and_returns_the_whole_batch_in_order(loop):
    channel = Channel(Inbox(loop), loop, 100)
    task = loop.create_task(channel.get())
    turn(loop)
    assert not task.done(), "get() returned with nothing queued"
    producer = Producer(channel, [1, 2, 3])
    producer.start()
    producer.finish()  # all three queued before the loop turns again: one batch
    assert run(loop, task) == [("item", 0), ("item", 1), ("item", 2)]
    assert loop.wakes == 1, "one wake for a batch of puts on one channel"


def test_each_batch_after_get_posts_one_new_wake(loop):
    channel = Channel(Inbox(loop), loop, 100)
    for round_ in range(3):
        producer = Producer(channel, [1, 1])
        producer.start()
        producer.finish()
        assert run(loop, channel.get()) == [("item", 0), ("item", 1)]
        assert loop.wakes == round_ + 1


# -- Inbox batching ----------------------------------------------------------------------------

THREADS = 8
CHANNELS_PER_THREAD = 25


def test_concurrent_posts_while_the_loop_is_busy_make_one_wake_and_wake_every_channel(loop):
    inbox = Inbox(loop)
    channels = [Channel(inbox, loop, 100) for _ in range(THREADS * CHANNELS_PER_THREAD)]
    gets = [loop.create_task(ch.get()) for ch in channels]
    turn(loop)  # every get() now waits on its future
    start = threading.Barrier(THREADS)

    def post(mine: list[Channel]) -> None:
        start.wait()
        for ch in mine:
            ch.put(("from", threading.get_ident()), 1)

    # The loop does not turn while the threads post (it is "busy"): their posts share one wake.
    threads = [threading.Thread(target=post, args=(channels[i::THREADS],)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOST_WAKE)
    assert loop.wakes == 1, f"{loop.wakes} wakes for one batch"
    batches = run(loop, all_of(*gets))
    assert all(len(batch) == 1 for batch in batches), "a posted channel was not woken"


def test_many_threads_streaming_at_once_lose_no_item(loop):
    """Several real threads put and wait on their own channels while the loop drains all of them."""
    inbox = Inbox(loop)
    sizes = [3, 1, 4, 1, 5, 9, 2, 6] * 20
    channels = [Channel(inbox, loop, 12) for _ in range(THREADS)]
    producers = [Producer(ch, sizes, flush=True) for ch in channels]

    async def drain(channel: Channel) -> list:
        got: list = []
        while len(got) < len(sizes):
            for item in await channel.get():
                got.append(item)
                channel.release(sizes[item[1]])
        return got

    for p in producers:
        p.start()
    results = run(loop, all_of(*(drain(ch) for ch in channels)))
    for p in producers:
        p.finish()
        assert p.error is None and p.flushed
    expected = [("item", i) for i in range(len(sizes))]
    assert all(got == expected for got in results), "an item was lost or reordered"


def test_post_to_a_closed_loop_raises_client_disconnected():
    loop = asyncio.new_event_loop()
    channel = Channel(Inbox(loop), loop, 10)
    loop.close()  # the worker is exiting
    with pytest.raises(ClientDisconnected):
        channel.put(("item", 0), 1)


def test_the_wake_pipe_lives_as_long_as_its_loop():
    """The loop's reader holds the inbox; once the loop is closed and the inbox let go of, both
    ends of its pipe are closed (a worker's tests make many loops: no descriptor may leak)."""
    loop = asyncio.new_event_loop()
    inbox = Inbox(loop)
    fds = (inbox._rfd, inbox._wfd)
    del inbox
    gc.collect()
    assert all(os.fstat(fd) for fd in fds), "closed while its loop still runs"
    loop.close()
    gc.collect()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


# -- the pool's queue: what waits, and what a cancelled job still takes --------------------------

class Job:
    """A pool job (what AppCall is to the pool): a state, run() and skip(), each recorded."""

    def __init__(self, name: str, done: list, gate: threading.Event | None = None) -> None:
        self.name, self.done, self.gate = name, done, gate
        self.state = QUEUED

    def run(self) -> None:
        if self.gate is not None:
            self.gate.wait(LOST_WAKE)
        self.done.append(("ran", self.name))

    def skip(self) -> None:
        self.done.append(("skipped", self.name))


@pytest.mark.parametrize("waiting, cancelled, queued", [
    pytest.param(0, [], 0, id="idle"),
    pytest.param(3, [], 3, id="all-live"),
    pytest.param(3, [0, 2], 1, id="clients-left"),
    pytest.param(4, [0, 1, 2, 3], 0, id="all-gone"),
])
def test_queued_counts_live_jobs_and_held_counts_the_cancelled_still_in_the_queue(
        waiting, cancelled, queued):
    """One thread busy, `waiting` jobs behind it, those in `cancelled` cancelled (their clients
    left): `queued` (what AIOWSGI_QUEUE_LIMIT compares) leaves them out at once; `held` (what
    the queue still holds) counts them until the thread reaches them and skips them."""
    from gunicorn_aiowsgi.messages import JobState
    pool, done, gate = bridge.ThreadPool(1), [], threading.Event()
    try:
        pool.submit(Job("busy", done, gate))
        wait_until(lambda: pool.busy == 1, 5, "the thread to take the busy job")
        jobs = [Job(f"j{i}", done) for i in range(waiting)]
        for job in jobs:
            pool.submit(job)
        for index in cancelled:
            assert pool.cancel(jobs[index], JobState.GONE)
            assert not pool.cancel(jobs[index], JobState.GONE)  # once only: counted once
        assert (pool.queued, pool.held) == (queued, waiting)
        gate.set()
        wait_until(lambda: pool.inflight == 0, 5, "every job run or skipped")
        assert (pool.queued, pool.held) == (0, 0)
        assert sorted(done) == sorted(
            [("ran", "busy")] + [("skipped" if i in cancelled else "ran", f"j{i}")
                                 for i in range(waiting)])
        running = Job("late", done, threading.Event())
        pool.submit(running)
        wait_until(lambda: pool.busy == 1, 5, "the thread to take the late job")
        assert not pool.cancel(running, JobState.GONE) and pool.queued == 0  # running: not counted
        running.gate.set()
    finally:
        gate.set()
        pool.shutdown(1)


def test_a_writer_job_nobody_waits_for_is_logged_when_it_fails(caplog):
    # off_loop's access log line: no callback to hand the error to, so it is logged, not lost.
    loop = asyncio.new_event_loop()
    writer = bridge.SpoolWriter(loop, {1: lambda target, argument: target(*argument)})
    try:
        with caplog.at_level("ERROR", logger="gunicorn.error"):
            writer.submit(1, lambda: 1 / 0, ())
            writer.shutdown(timeout=5)
        failed = [r for r in caplog.records if r.getMessage() == "Spool writer job failed"]
        assert len(failed) == 1 and isinstance(failed[0].exc_info[1], ZeroDivisionError)
    finally:
        loop.close()
