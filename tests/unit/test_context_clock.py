"""Context.clock reads the loop's own clock: time.monotonic on asyncio's loops, loop.time elsewhere."""

from __future__ import annotations

import asyncio
import time

import pytest

from gunicorn_aiowsgi.context import loop_clock


class OwnClock(asyncio.SelectorEventLoop):
    """A loop whose clock is not asyncio's (as a test clock or an instrumented loop has)."""

    def time(self) -> float:
        return 1000.0


def test_asyncio_loops_read_monotonic_directly():
    loop = asyncio.new_event_loop()
    try:
        clock = loop_clock(loop)
        assert clock is time.monotonic
        before, now, after = loop.time(), clock(), loop.time()
        assert before <= now <= after  # the same clock as loop.time and loop.call_at
    finally:
        loop.close()


def test_a_loop_with_its_own_clock_is_asked():
    loop = OwnClock()
    try:
        assert loop_clock(loop)() == 1000.0
    finally:
        loop.close()


def test_uvloop_is_asked_through_loop_time():
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        clock = loop_clock(loop)
        assert clock is not time.monotonic
        before, now, after = loop.time(), clock(), loop.time()
        assert before <= now <= after
    finally:
        loop.close()
