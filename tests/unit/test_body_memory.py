"""AIOWSGI_BODY_MEMORY_BUDGET through the connection, in memory: bodies held in memory are
counted per worker from their first byte to the end of their response, and past the budget a
body spools from its first byte (a fake transport per client, a real loop, the real writer)."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest
from memory import Harness, chunked, post

from gunicorn_aiowsgi.bridge import ThreadPool

pytestmark = pytest.mark.timeout(60)


def kind_digest(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers "KIND LENGTH SHA256": where the body was (BytesIO: memory) and what it held."""
    stream = environ["wsgi.input"]
    kind = type(getattr(stream, "raw", stream)).__name__
    body = stream.read()
    text = f"{kind} {len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    start_response("200 OK", [("Content-Length", str(len(text)))])
    return [text]


def answer(data: bytes, kind: str) -> bytes:
    return f"{kind} {len(data)} {hashlib.sha256(data).hexdigest()}".encode()


def status(client: Any) -> int | None:
    """The status of the first response written to a client (or the harness), None before."""
    written = bytes(client.transport.written)
    return int(written.split(b" ", 2)[1]) if written else None


@pytest.mark.parametrize("budget, steps, held", [
    # Four bodies of 999 fit in 4000: the six others go to disk from their first byte.
    pytest.param(4000, [999], 4, id="past-the-budget-to-disk-from-the-first-byte"),
    pytest.param(0, [999], 10, id="no-limit"),
    # Nothing is set aside for what is announced: ten bodies of a byte each are all in memory;
    # as 500 more of each come, seven fit, and three move to disk with what they held.
    pytest.param(4000, [1, 500], 7, id="announced-is-not-reserved"),
])
def test_incomplete_bodies_hold_at_most_the_budget_and_all_complete(budget, steps, held):
    """Ten clients each send part of a 1000-byte body (in `steps`) and stop (990 such clients
    took a worker from 30 MB to 1 GB): `held` of them wait in memory, the others on disk. Then
    each sends the rest and is answered in full, from where its body was."""
    count, sent = 10, sum(steps)
    h = Harness(kind_digest, body_memory_limit=1000, body_memory_budget=budget)
    try:
        bodies = [bytes([65 + n]) * 1000 for n in range(count)]
        clients = [h.connect() for _ in bodies]
        for client, data in zip(clients, bodies):
            client.feed(post("/up", data)[:-1000])
        start = 0
        for step in steps:
            for client, data in zip(clients, bodies):
                client.feed(data[start:start + step])
                assert h.spools.in_memory <= (budget or count * 1000)
            start += step
        assert h.spools.in_memory == held * sent
        h.until(lambda: h.spools.used == (count - held) * sent, "the spooled bytes charged")
        for client, data in zip(clients, bodies):
            client.feed(data[sent:])
            assert h.spools.in_memory <= (budget or count * 1000)
        h.until(lambda: all(status(client) for client in clients), "every answer")
        answers = [bytes(c.transport.written).rsplit(b"\r\n\r\n", 1)[1] for c in clients]
        # Where each body ends up, once the rest comes, depends on who answers first (a body
        # answered gives its share back); its bytes do not.
        assert [a.split(b" ", 1)[1] for a in answers] == [answer(d, "")[1:] for d in bodies]
        if len(steps) == 1:  # the last byte of each body in memory fits the room left
            assert [a.split(b" ", 1)[0] for a in answers] == (
                [b"BytesIO"] * held + [b"SpooledInput"] * (count - held))
        assert h.spools.in_memory == 0
        h.until(lambda: h.spools.used == 0, "every spool file closed")
    finally:
        h.close()


def test_a_body_in_memory_holds_its_share_until_its_response_ends():
    started, go = threading.Event(), threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        started.set()
        go.wait(10)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    pool = ThreadPool(1)
    h = Harness(app, pool=pool, threads=1, body_memory_limit=1000, body_memory_budget=1500)
    try:
        h.feed(chunked("/one", b"a" * 300, b"b" * 400))
        h.until(started.is_set, "the app reading its body")
        assert h.spools.in_memory == 700  # the app holds these bytes: still counted
        other = h.connect()
        other.feed(post("/two", b"c" * 900))  # 800 left: this one spools
        assert h.spools.in_memory == 700
        go.set()
        h.until(lambda: status(other) == 200 and h.responses(), "both answers")
        assert h.responses() == [(200, b"a" * 300 + b"b" * 400)]
        assert h.spools.in_memory == 0
        h.until(lambda: h.spools.used == 0, "the spooled body's file closed")
    finally:
        go.set()
        h.close()
        pool.shutdown(1)


@pytest.mark.parametrize("refused_at", ["head", "body"])
def test_a_refused_or_abandoned_body_gives_its_share_back(refused_at):
    h = Harness(kind_digest, body_memory_limit=1000, body_memory_budget=4000, max_body_size=800)
    try:
        if refused_at == "head":  # 413 before any byte: nothing was taken
            h.feed(post("/big", b"x" * 900)[:-900])
            assert status(h) == 413 and h.spools.in_memory == 0
        else:  # chunked, refused as it grows past the maximum
            h.feed(chunked("/big", b"x" * 700, b"y" * 200)[:-20])
            assert status(h) == 413 and h.spools.in_memory == 0
        gone = h.connect()
        gone.feed(chunked("/gone", b"z" * 600)[:-5])
        assert h.spools.in_memory == 600
        gone.conn.connection_lost(ConnectionResetError())
        assert h.spools.in_memory == 0
    finally:
        h.close()

