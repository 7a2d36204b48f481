"""Upload limits through a real master: the default maximum (413), the spool budget (503), free space (507)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading

import pytest
from server import Conn, Gunicorn, free_bytes, open_files, unread_bytes_on, wait_until
from sysinfo import rss_kib

pytestmark = pytest.mark.timeout(90)

MIB = 1024 * 1024
GIB = 1024 * MIB


def head(length: int, expect: bool = False) -> bytes:
    return (f"POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n"
            + ("Expect: 100-continue\r\n" if expect else "") + "\r\n").encode()


def spool_conf(tmp_path) -> tuple[str, str]:
    """A gunicorn.conf.py with tmp_upload_dir in a fresh directory; returns (conf, directory)."""
    where = tmp_path / "spool"
    where.mkdir(parents=True)
    conf = tmp_path / "spool.conf.py"
    conf.write_text(f"tmp_upload_dir = {str(where)!r}\n")
    return str(conf), str(where)


def test_default_limit_refuses_3_gib_before_reading_and_a_raised_one_takes_it(tmp_path):
    """No setting: 413 at once, though not a byte of the body (nor 100-continue) went out.
    Raised maximum and budget: the same 3 GiB body is wanted (100 Continue)."""
    conf, where = spool_conf(tmp_path)
    with Gunicorn("apps:router", config=conf) as g:
        for expect in (False, True):
            with Conn.to(g, timeout=5) as conn:
                conn.send(head(3 * GIB, expect))
                status, headers, body = conn.response()  # times out if the body is awaited
                assert status == 413, body
                assert headers["connection"] == "close"
                assert conn.closed_by_peer(5)
        # The app never ran: the access log holds the loop's two 413s, nothing else.
        wait_until(lambda: g.access().count("POST /digest") == 2, 10, "two access lines")
        assert g.access().count('" 413 ') == 2, g.access()
        assert open_files(g.worker_pid(), where) == [] and os.listdir(where) == []
    assert free_bytes(where) > 4 * GIB, "this test needs 4 GiB free in the temp directory"
    env = {"AIOWSGI_MAX_BODY_SIZE": str(4 * GIB), "AIOWSGI_SPOOL_BUDGET": str(4 * GIB)}
    with Gunicorn("apps:router", config=conf, env=env) as g:
        with Conn.to(g, timeout=10) as conn:
            conn.send(head(3 * GIB, expect=True))
            assert conn.readline() == b"HTTP/1.1 100 Continue\r\n"
        with Conn.to(g, timeout=10) as conn:  # and a real upload under the raised limits works
            data = os.urandom(3 * MIB)
            conn.send(head(len(data)) + data)
            status, _headers, body = conn.response()
            assert (status, body) == (200, f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())


def test_body_that_cannot_fit_on_disk_gets_507_before_reading(tmp_path):
    conf, where = spool_conf(tmp_path)
    env = {"AIOWSGI_MAX_BODY_SIZE": "0", "AIOWSGI_SPOOL_BUDGET": "0"}
    with Gunicorn("apps:router", config=conf, env=env) as g:
        length = free_bytes(where) + 64 * GIB
        with Conn.to(g, timeout=5) as conn:
            conn.send(head(length, expect=True))
            status, _headers, _body = conn.response()
            assert status == 507
        assert "No space left on device" in g.wait_log("cannot spool request body")
        # The app never ran: the access log holds the loop's 507, nothing else.
        wait_until(lambda: "POST /digest" in g.access(), 10, "the access line")
        assert g.access().count("POST /digest") == 1 and '" 507 ' in g.access(), g.access()


def upload(g: Gunicorn, data: bytes) -> int:
    """One upload on a new connection: the status of its answer."""
    with Conn.to(g, timeout=30) as conn:
        try:
            conn.send(head(len(data)) + data)
        except OSError:  # refused and closed before the body went out
            pass
        return conn.response()[0]


def held_uploads(g: Gunicorn, bodies: list[bytes]) -> list[Conn]:
    """Each upload's head and its body but the last byte, one after another: none can end before
    the test sends the last bytes, so all are in progress at once, however slow the machine."""
    conns = []
    for data in bodies:
        conn = Conn.to(g, timeout=30)
        try:
            conn.send(head(len(data)) + data[:-1])
        except OSError:  # refused at its head and closed before its body went out
            pass
        conns.append(conn)
    return conns


def check_uploads(tmp_path, budget: int, refused: bool) -> None:
    """8 uploads of 3 MiB held at once (--threads 4: one is read by an app thread as it
    arrives, seven spool). Refused: two cannot spool together in `budget`, so six or more get
    503 and Retry-After while the others still hold their part of it; then the others end."""
    conf, where = spool_conf(tmp_path)
    with Gunicorn("apps:router", "--threads", "4", config=conf,
                  env={"AIOWSGI_SPOOL_BUDGET": str(budget)}) as g:
        pid = g.worker_pid()
        bodies = [os.urandom(3 * MIB) for _ in range(8)]
        conns = held_uploads(g, bodies)
        try:
            if refused:
                wait_until(lambda: sum(conn.answered() for conn in conns) >= 6, 30,
                           "six uploads refused while the others are held")
            else:
                wait_until(lambda: len(open_files(pid, where)) == 7, 30, "seven spooling at once")
            early = [conn.answered() for conn in conns]  # before any upload could end
            for conn, data, done in zip(conns, bodies, early):
                if not done:
                    try:
                        conn.send(data[-1:])
                    except OSError:  # refused meanwhile: its 503 is read below
                        pass
            results = [conn.response() for conn in conns]
        finally:
            for conn in conns:
                conn.close()
        statuses = []
        for data, (status, headers, body) in zip(bodies, results):
            statuses.append(status)
            if status == 200:
                assert body == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
            else:
                assert status == 503, body
                assert headers["retry-after"] == "1" and headers["connection"] == "close"
        if refused:
            # The one read as it arrives is never charged; of the seven spooling, one at most fits.
            assert all(status == 503 for status, done in zip(statuses, early) if done), statuses
            assert statuses.count(200) in (1, 2), statuses
            assert "Spool budget full" in g.log()
        else:
            assert statuses == [200] * 8 and not any(early), statuses
        # The budget comes back as each file is closed (by the app thread, just after the
        # response): one after another, every upload fits, at most after a retry.
        for data in bodies[:3]:
            wait_until(lambda data=data: upload(g, data) == 200, 10,
                       "the budget back for a new upload")
        wait_until(lambda: open_files(pid, where) == [], 10, "every spool file closed")
        assert os.listdir(where) == []


def test_spool_budget_refuses_new_uploads_with_503_and_can_be_raised(tmp_path):
    """8 uploads of 3 MiB held at once: a 4 MiB budget spools one at a time (six or more 503
    and Retry-After while the others are held); a budget the user raised to 32 MiB spools all
    seven at once. Nothing stays on disk."""
    check_uploads(tmp_path / "small", 4 * MIB, refused=True)
    check_uploads(tmp_path / "raised", 32 * MIB, refused=False)


def test_an_upload_announced_and_not_sent_holds_only_what_it_sent(tmp_path):
    """A client announces the whole spool budget with Expect: 100-continue, is told to go on,
    and sends one byte: a 2 MiB upload beside it is taken (it was refused 503 when the
    announced length was set aside). A head that cannot fit in what is free now, or ever, is
    still refused before its body is sent."""
    conf, where = spool_conf(tmp_path)
    budget = 8 * MIB
    with Gunicorn("apps:router", config=conf, env={"AIOWSGI_SPOOL_BUDGET": str(budget)}) as g:
        with Conn.to(g, timeout=10) as hog:
            hog.send(head(budget, expect=True))
            assert hog.readline() == b"HTTP/1.1 100 Continue\r\n"
            hog.send(b"h")
            wait_until(lambda: len(open_files(g.worker_pid(), where)) == 1, 10, "the hog's file")
            data = os.urandom(2 * MIB)
            with Conn.to(g, timeout=10) as conn:
                conn.send(head(len(data)) + data)
                status, _headers, body = conn.response()
                assert (status, body) == (200, f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
            for length, refused in ((budget, 503), (budget + 1, 413)):
                with Conn.to(g, timeout=10) as conn:
                    conn.send(head(length, expect=True))
                    status, headers, _body = conn.response()  # no 100 Continue before it
                    assert status == refused
                    assert (headers.get("retry-after") == "1") is (refused == 503)
        wait_until(lambda: open_files(g.worker_pid(), where) == [], 10, "every spool file closed")


def test_chunked_upload_alone_past_the_budget_gets_413(tmp_path):
    """Charged as it arrives, it is refused once it alone outgrows the budget: 413, as a body
    announcing that length gets at its head (a 503's Retry-After would be retried for ever)."""
    conf, where = spool_conf(tmp_path)
    with Gunicorn("apps:router", config=conf, env={"AIOWSGI_SPOOL_BUDGET": str(2 * MIB)}) as g:
        with Conn.to(g, timeout=10) as conn:
            conn.send(b"POST /digest HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"c" * 65536
            try:
                for _ in range(64):  # 4 MiB, twice the budget
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:  # refused and closed mid-body
                pass
            status, headers, _body = conn.response()
        assert status == 413 and "retry-after" not in headers
        wait_until(lambda: open_files(g.worker_pid(), where) == [], 10, "the spool file closed")


def spooled_bytes(pid: int, where: str) -> int:
    """Bytes in the spool files process `pid` holds open under `where`."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(where):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:  # closed while we looked
            pass
    return total


def test_many_bodies_held_unfinished_take_the_memory_budget_then_the_disk(tmp_path):
    """48 clients each send 1 MiB - 1 byte of a 1 MiB body and wait (990 of them took a worker
    from 30 MB to 1 GB): with AIOWSGI_BODY_MEMORY_BUDGET at 8 MiB, eight wait in memory and
    the others on disk from their first byte, so the worker grows by about 8 MiB, not 48. Then
    each sends its last byte and is answered in full."""
    conf, where = spool_conf(tmp_path)
    count, body, budget = 48, MIB, 8 * MIB
    with Gunicorn("apps:router", "--threads", "2", config=conf, access_log=False,
                  env={"AIOWSGI_BODY_MEMORY_BUDGET": str(budget)}) as g:
        pid = g.worker_pid()
        for _ in range(20):
            with Conn.to(g) as conn:
                conn.send(head(10) + b"warm-up 10")
                assert conn.response()[0] == 200
        base = rss_kib(pid)
        bodies = [bytes([65 + n % 26]) * body for n in range(count)]
        conns = [Conn.to(g, timeout=10) for _ in bodies]
        try:
            for conn, data in zip(conns, bodies):
                conn.send(head(body) + data[:-1])
                # Read by the worker before the next: the writer never has more than one
                # body's bytes to catch up with, so what is measured is what stays held.
                wait_until(lambda: unread_bytes_on(g.port) == 0, 10, "the body read")
            sent = count * (body - 1)
            wait_until(lambda: spooled_bytes(pid, where) >= sent - budget, 10,
                       "all but the budget's worth on disk")
            growth = rss_kib(pid) - base
            print(f"RSS growth with {count} bodies of 1 MiB held: {growth / 1024:.1f} MiB "
                  f"({spooled_bytes(pid, where) / MIB:.1f} MiB on disk)")
            assert growth < 20 * 1024, f"{growth} KiB"  # the budget and a margin, not 48 MiB
            for conn, data in zip(conns, bodies):
                conn.send(data[-1:])
            for conn, data in zip(conns, bodies):
                status, _headers, answer = conn.response()
                assert (status, answer) == (200, f"{body} {hashlib.sha256(data).hexdigest()}".encode())
        finally:
            for conn in conns:
                conn.close()
        wait_until(lambda: open_files(pid, where) == [], 10, "every spool file closed")


# -- item 6: the loop never waits for the disk -------------------------------------------------
def test_slow_spool_writes_never_stall_other_connections(tmp_path, monkeypatch):
    """In-loop, with a disk that holds every write: other connections are answered while a
    write is in progress (impossible if the write ran on the loop), then the upload completes."""
    import asyncio
    import time

    from apps import router
    from inloop import fetch, serving

    from gunicorn_aiowsgi import spool_disk

    real_write, gate, entered = spool_disk.write_all, threading.Event(), threading.Event()
    in_write = [0]

    def slow_write(fd: int, chunks: list[bytes]) -> None:
        in_write[0] += 1
        entered.set()
        gate.wait(5)  # a stalled disk, until the test lets it go
        real_write(fd, chunks)
        in_write[0] -= 1

    monkeypatch.setattr(spool_disk, "write_all", slow_write)
    monkeypatch.setenv("AIOWSGI_BODY_MEMORY_LIMIT", "65536")
    data = os.urandom(6 * MIB)
    latencies: list[float] = []

    async def upload(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(len(data)).replace(b"Host: t", b"Host: t\r\nConnection: close") + data)
        await writer.drain()  # waits while the server, backlogged, stops reading
        answer = await reader.read()
        writer.close()
        return answer

    async def run() -> bytes:
        async with serving(router, threads=2, tmp_upload_dir=str(tmp_path)) as (worker, port):
            try:
                task = asyncio.ensure_future(upload(port))
                while not entered.is_set():
                    await asyncio.sleep(0.005)
                for _ in range(20):
                    started = time.monotonic()
                    answer = await fetch(port, b"GET /hello HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                    latencies.append(time.monotonic() - started)
                    assert answer.startswith(b"HTTP/1.1 200 OK")
                    assert in_write[0] == 1  # answered while the disk still held a write
                assert not task.done()
                gate.set()
                return await asyncio.wait_for(task, 30)
            finally:
                gate.set()
                spools = getattr(worker.server, "spools", None)
                if spools is not None:  # the writer thread: stopped, not left to the process
                    spools.shutdown(timeout=5)

    answer = asyncio.run(run())
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
    assert os.listdir(tmp_path) == []
    print(f"GET latency while a spool write is stalled: max {max(latencies) * 1000:.1f} ms, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms")


@pytest.mark.parametrize("worker_class", ["gunicorn_aiowsgi.Worker", "gunicorn_aiowsgi.UVLoopWorker"])
def test_stalled_uploads_hold_no_more_threads_than_the_stream_slots(tmp_path, worker_class):
    """--threads 4: one large body at a time may be read by an app thread as it arrives. Four
    uploads stall mid-body: one holds a thread, three wait on the loop (spooling, no thread), so a
    GET is answered at once; then each upload completes and is answered in full."""
    conf, where = spool_conf(tmp_path)
    with Gunicorn("apps:router", "--threads", "4", config=conf, worker_class=worker_class,
                  env={"AIOWSGI_BODY_MEMORY_LIMIT": str(64 * 1024)}) as g:
        pid = g.worker_pid()
        bodies = [os.urandom(MIB) for _ in range(4)]
        first = 256 * 1024  # past the memory limit: a stream slot, or the spool
        conns = [Conn.to(g, timeout=10) for _ in bodies]
        try:
            for conn, data in zip(conns, bodies):
                conn.send(head(len(data)) + data[:first])
            # Every upload has been read as far as it goes: three spool files, the fourth streams.
            wait_until(lambda: len(open_files(pid, where)) == 3, 10, "three uploads spooling")
            with Conn.to(g, timeout=5) as probe:  # with four threads held, this would time out
                probe.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert probe.response()[0] == 200
            assert len(open_files(pid, where)) == 3
            for conn, data in zip(conns, bodies):
                conn.send(data[first:])
            for conn, data in zip(conns, bodies):
                status, _headers, body = conn.response()
                assert (status, body) == (200, f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
        finally:
            for conn in conns:
                conn.close()
        wait_until(lambda: open_files(pid, where) == [], 10, "every spool file closed")


@pytest.mark.parametrize("worker_class", ["gunicorn_aiowsgi.Worker", "gunicorn_aiowsgi.UVLoopWorker"])
def test_a_streamed_body_read_as_it_comes_answers_a_client_that_waits_for_each_answer(worker_class):
    """A duplex client sends a part of the body, then waits for the app's answer to it before
    it sends the next. The reading thread is woken for bytes that are in, even when far fewer
    than a batch: nothing more is in the socket, so none is coming until the client hears back."""
    part, parts = 256 * 1024, 4
    with Gunicorn("apps:router", "--threads", "4", worker_class=worker_class,
                  env={"AIOWSGI_BODY_MEMORY_LIMIT": str(64 * 1024)}) as g:
        with Conn.to(g, timeout=10) as conn:
            conn.send(b"POST /duplex?part=%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                      % (part, part * parts))
            seen = b""
            for number in range(1, parts + 1):
                conn.send(os.urandom(part))
                while seen.count(b"%d\n" % part) < number:  # the answer to this part, chunked
                    data = conn.sock.recv(65536)
                    assert data, f"closed before the answer to part {number}: {seen!r}"
                    seen += data
            assert seen.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in seen


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_streamed_upload_cut_short_is_the_clients_doing_and_the_worker_serves_on(tmp_path, how):
    """The app's read raises (an OSError, as gunicorn's NoMoreData); uncaught, it is logged as a
    client that went away (debug, as gunicorn's "Ignored premature client disconnection"), not
    as an app error; the next upload is served."""
    conf, where = spool_conf(tmp_path)
    with Gunicorn("apps:router", "--threads", "4", "--log-level", "debug", config=conf,
                  env={"AIOWSGI_BODY_MEMORY_LIMIT": str(64 * 1024)}) as g:
        with Conn.to(g, timeout=10) as conn:
            conn.send(head(MIB) + os.urandom(256 * 1024))
            if how == "half-close":
                conn.sock.shutdown(socket.SHUT_WR)
                assert conn.closed_by_peer(10)  # closed with no answer: the app had the request
        # The app's read raised; or, gone before a thread took the call, the app never ran.
        g.wait_log(re.compile(r"Client went away during POST /digest|Skipped POST /digest"))
        assert "Error handling request" not in g.log()
        data = os.urandom(MIB)
        with Conn.to(g, timeout=10) as conn:
            conn.send(head(len(data)) + data)
            status, _headers, body = conn.response()
            assert (status, body) == (200, f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
        assert open_files(g.worker_pid(), where) == []
