"""In-memory tests of bridge.BodyFeed: a request body carried from the loop to the app thread reading it.

The loop side (put, end) is called from the test thread; readers are real threads where a read
must wait. A reader's "is it blocked?" is read from the feed's gate, so no assertion depends on
how fast a thread runs.
"""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from server import wait_until

from gunicorn_aiowsgi.bridge import PIECE_COST, BodyFeed, Inbox

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def feed_of(loop, chunks: list[bytes], limit: int = 1 << 20, end: bool = True,
            listener=lambda: None) -> BodyFeed:
    feed = BodyFeed(Inbox(loop), limit, listener)
    for chunk in chunks:
        feed.put(chunk)
    if end:
        feed.end()
    return feed


@pytest.mark.parametrize("chunks, reads, expected", [
    pytest.param([b"abc", b"defg"], [2, 2, 10, 1], [b"ab", b"cd", b"efg", b""], id="across-chunks"),
    pytest.param([b"abc", b"defg"], [7, 1], [b"abcdefg", b""], id="exactly-all"),
    pytest.param([b"a"] * 5, [3, 3], [b"aaa", b"aa"], id="many-small"),
    pytest.param([b"", b"xy", b""], [5, 5], [b"xy", b""], id="empty-chunks"),
    pytest.param([], [4], [b""], id="no-body"),
    pytest.param([b"x" * 100_000, b"y" * 100_000], [150_000, 60_000],
                 [b"x" * 100_000 + b"y" * 50_000, b"y" * 50_000], id="larger-than-the-read-buffer"),
])
def test_reads_return_every_byte_in_order_then_eof(loop, chunks, reads, expected):
    reader = io.BufferedReader(feed_of(loop, chunks), 64 * 1024)
    assert [reader.read(n) for n in reads] == expected


def test_readline_read_all_and_iteration(loop):
    chunks = [b"first li", b"ne\nsec", b"ond line\n", b"tail"]
    assert io.BufferedReader(feed_of(loop, chunks)).readline() == b"first line\n"
    assert io.BufferedReader(feed_of(loop, chunks)).read() == b"".join(chunks)
    assert list(io.BufferedReader(feed_of(loop, chunks))) == [
        b"first line\n", b"second line\n", b"tail"]


class Reader(threading.Thread):
    """An app thread reading the feed to its end (or its error); `raw`: straight from the feed,
    each read returning what has arrived (a BufferedReader's read(n) waits for all n)."""

    def __init__(self, feed: BodyFeed, size: int = 5, raw: bool = False) -> None:
        super().__init__(daemon=True)
        self.feed, self.size, self.raw = feed, size, raw
        self.data = bytearray()
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        reader = self.feed if self.raw else io.BufferedReader(self.feed, 64 * 1024)
        try:
            while piece := reader.read(self.size):
                self.data += piece
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc


def parked(feed: BodyFeed) -> bool:
    return feed._gate is not None


def test_a_waiting_reader_wakes_for_each_put_and_for_the_end(loop):
    feed = feed_of(loop, [], end=False)
    reader = Reader(feed, size=3)
    wait_until(lambda: parked(feed), 5, "the reader waiting for the first bytes")
    feed.put(b"abc")
    wait_until(lambda: reader.data == b"abc" and parked(feed), 5, "the reader back to waiting")
    feed.put(b"de")
    feed.end()
    reader.join(5)
    assert not reader.is_alive() and reader.error is None
    assert reader.data == b"abcde"


def test_a_waiting_reader_is_woken_per_batch_while_more_is_in_the_socket_and_at_once_when_not(loop):
    """put(more=True): the socket holds more of the body, so the reader waits for a quarter of the
    limit unread (one wake per batch, not per read); more=False (the client paused, maybe for an
    answer to what it sent) wakes it at once, whatever is unread. Unread counts each piece's
    PIECE_COST beside its bytes."""
    feed = feed_of(loop, [], limit=4 * (10 + 3 * PIECE_COST), end=False)
    reader = Reader(feed, size=100, raw=True)
    wait_until(lambda: parked(feed), 5, "the reader waiting for the first bytes")
    feed.put(b"a" * 4, more=True)
    feed.put(b"b" * 5, more=True)              # 9 bytes in 2 pieces: under a quarter
    assert parked(feed) and reader.data == b""
    feed.put(b"c", more=True)                  # 10 bytes in 3 pieces: a quarter, the reader is woken
    wait_until(lambda: len(reader.data) == 10 and parked(feed), 5, "the reader to take the batch")
    feed.put(b"d" * 3, more=True)
    assert parked(feed)
    feed.put(b"e", more=False)                 # 4 unread, and nothing more in the socket
    wait_until(lambda: len(reader.data) == 14 and parked(feed), 5, "the reader to take the rest")
    feed.put(b"f", more=True)
    feed.end()                                 # the end wakes it whatever is unread
    reader.join(5)
    assert not reader.is_alive() and reader.error is None
    assert bytes(reader.data) == b"aaaabbbbbc" + b"ddde" + b"f"


def test_end_with_an_error_wakes_the_reader_with_it_even_with_bytes_queued(loop):
    feed = feed_of(loop, [], end=False)
    reader = Reader(feed)
    wait_until(lambda: parked(feed), 5, "the reader waiting")
    feed.end(ConnectionResetError("cut short"))
    reader.join(5)
    assert isinstance(reader.error, ConnectionResetError)
    queued = feed_of(loop, [b"abc"], end=False)
    queued.end(ConnectionResetError("cut short"))
    with pytest.raises(ConnectionResetError):
        io.BufferedReader(queued).read(1)
    queued.end()  # a second end changes nothing
    with pytest.raises(ConnectionResetError):
        queued.read(1)


def test_put_says_stop_at_the_limit_and_the_read_that_halves_it_wakes_the_loop(loop):
    """Unread is bytes plus PIECE_COST a piece (the piece's objects), freed as each is taken."""
    woken = asyncio.Event()
    piece = 6 + PIECE_COST                     # what a 6-byte piece counts
    feed = feed_of(loop, [], limit=2 * piece, end=False, listener=woken.set)
    assert feed.put(b"x" * 6) is True          # one piece unread: below the limit
    assert feed.put(b"y" * 6) is False         # two: the limit, stop reading the socket
    assert feed.put(b"z") is False             # a read already under way still lands
    assert feed.readinto(bytearray(6)) == 6    # the first piece taken: not yet half the limit
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not woken.is_set()
    assert feed.readinto(bytearray(1)) == 1    # the second taken: half the limit, the loop is woken
    loop.run_until_complete(asyncio.wait_for(woken.wait(), 5))
    assert feed.put(b"w") is True              # room again


def test_no_wake_after_the_end(loop):
    woken = []
    feed = feed_of(loop, [b"x" * 20], limit=10, end=False, listener=lambda: woken.append(1))
    feed.end()
    assert feed.read(20) == b"x" * 20
    loop.run_until_complete(asyncio.sleep(0.01))
    assert woken == []  # the connection may already serve another request: no stray resume


@pytest.mark.parametrize("size", [1, 7, 1000, 64 * 1024])
def test_an_app_not_reading_holds_about_the_limit_whatever_the_size_of_the_reads(loop, size):
    """A body sent a byte per read costs a bytes object and a deque slot per byte: counted, so
    reading stops at about the limit of memory (bytes and pieces), not sixty times its bytes."""
    limit = 1 << 20
    feed = feed_of(loop, [], limit=limit, end=False)
    pieces = 0
    while feed.put(b"p" * size):
        pieces += 1
        assert pieces * (size + PIECE_COST) < limit
    pieces += 1                                # the read that said stop landed too
    assert limit <= pieces * (size + PIECE_COST) < limit + size + PIECE_COST
    # The cost is no guess: a piece's objects take no more than PIECE_COST beside its bytes.
    import sys
    assert sys.getsizeof(b"p" * size) - size + 8 <= PIECE_COST
    reader = io.BufferedReader(feed, 64 * 1024)
    assert reader.read(pieces * size) == b"p" * (pieces * size)
    assert feed.put(b"p") is True              # all read: room again
