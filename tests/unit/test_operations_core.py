"""The worker's operations in process, with gunicorn's real loggers: the heartbeat period, the pool
gauges' pace and an unreachable statsd, the descriptor plan, an upload with no descriptor left,
the loop's exception handler, and a wsgi.errors an app closed."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd
from memory import Log

from gunicorn_aiowsgi import diagnostics, fdlimit
from gunicorn_aiowsgi.errorlog import WSGIErrors, loop_exception_handler
from gunicorn_aiowsgi.errors import OutOfFiles
from gunicorn_aiowsgi.replies import error_reply
from gunicorn_aiowsgi.spool_disk import storage_error
from gunicorn_aiowsgi.worker import HEARTBEAT, heartbeat_period


@pytest.fixture
def error_log(tmp_path, monkeypatch):
    """gunicorn's loggers set up by a test write to this file; put back as they were after."""
    for name in ("gunicorn.error", "gunicorn.access"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)
    return tmp_path / "error.log"


def logger(error_log, cls=Logger, **values):
    cfg = Config()
    cfg.set("errorlog", str(error_log))
    for name, value in values.items():
        cfg.set(name, value)
    return cls(cfg)


def lines(path) -> list[str]:
    for handler in logging.getLogger("gunicorn.error").handlers:
        handler.flush()
    return path.read_text().splitlines() if path.exists() else []


# -- the heartbeat ---------------------------------------------------------------------------
@pytest.mark.parametrize("worker_timeout, period", [
    (15.0, HEARTBEAT),   # --timeout 30 (a worker gets half of it)
    (1.0, 0.5),          # --timeout 2: a quarter of it
    (0.5, 0.25),         # --timeout 1
    (0.01, 0.05),        # never busier than 20 a second
    (0.0, HEARTBEAT),    # --timeout 0: no master timeout, and not 20 beats a second
])
def test_heartbeat_period(worker_timeout, period):
    assert heartbeat_period(worker_timeout) == period


# -- the pool gauges through gunicorn's Statsd logger ---------------------------------------
def monitor(log) -> diagnostics.Monitor:
    pool = SimpleNamespace(queued=0, busy=1, size=4)
    return diagnostics.Monitor(pool, SimpleNamespace(conns={}, ctx=SimpleNamespace(queued=0)), log, 7)


def received(udp: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(udp.recv(65536).decode())
        except BlockingIOError:
            return out


def test_gauges_go_out_at_most_once_a_second_whatever_the_heartbeat(error_log):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        mon = monitor(logger(error_log, Statsd, statsd_host=f"127.0.0.1:{udp.getsockname()[1]}"))
        for beat in range(12):  # a 0.25 s heartbeat (--timeout 1) over three seconds
            mon.tick(100.0 + beat * 0.25)
        names = [datagram.split(":")[0] for datagram in received(udp)]
        assert names == ["aiowsgi.7.busy_threads", "aiowsgi.7.queued_requests",
                         "aiowsgi.7.connections"] * 3
        mon.tick(103.0)
        assert len(received(udp)) == 3


def test_an_unreachable_statsd_pauses_the_gauges_and_is_said_once(error_log):
    """gunicorn's Statsd logger logs each failed send with a traceback; ours are watched for it:
    the first failure is one warning line, the gauges pause STATSD_PAUSE seconds, and later
    failures stay quiet for STATSD_WARN_EVERY."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    udp.close()  # nobody there: a send comes back refused (ICMP), the next send raises
    mon = monitor(logger(error_log, Statsd, statsd_host=f"127.0.0.1:{port}"))
    clock = [1000.0]
    mon.metrics.clock = lambda: clock[0]
    for _ in range(20):  # the refusal reaches the socket by the second send, on loopback
        clock[0] += 1
        mon.tick(clock[0])
        if mon.metrics.failures:
            break
    assert mon.metrics.failures == 1
    log = lines(error_log)
    assert len(log) == 1 and "[WARNING] Cannot send the worker's metrics to statsd" in log[0]
    assert "ConnectionRefusedError" in log[0]
    failed_at = clock[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as back:  # statsd is back
        back.bind(("127.0.0.1", port))
        back.setblocking(False)
        received(back)
        while clock[0] < failed_at + diagnostics.STATSD_PAUSE - 1:
            clock[0] += 1
            mon.tick(clock[0])
            mon.count("overload_503")
        assert received(back) == []  # paused: neither gauges nor counters
        clock[0] = failed_at + diagnostics.STATSD_PAUSE
        mon.tick(clock[0])
        assert len(received(back)) == 3
    for _ in range(20):  # gone again: fails again, quietly
        clock[0] += diagnostics.STATSD_PAUSE
        mon.tick(clock[0])
        if mon.metrics.failures == 2:
            break
    assert mon.metrics.failures == 2 and len(lines(error_log)) == 1
    assert "Error sending message to statsd" not in error_log.read_text()


def test_without_statsd_nothing_is_sent_or_logged(error_log):
    mon = monitor(logger(error_log))
    mon.tick(1.0)
    mon.count("overload_503")
    assert mon.metrics.gauge is None and lines(error_log) == []


# -- file descriptors --------------------------------------------------------------------------
INF = resource.RLIM_INFINITY


@pytest.mark.parametrize("connections, soft, hard, planned", [
    (1000, 1024, 1048576, (2064, 2064, 0)),   # raised: the hard limit allows it
    (1000, 1024, INF, (2064, 2064, 0)),
    (1000, 1024, 1500, (2064, 1500, 564)),    # as far as the hard limit goes, still short
    (1000, 1024, 1024, (2064, 1024, 1040)),   # cannot be raised at all
    (1000, 4096, 4096, (2064, 4096, 0)),      # enough already: never lowered
    (1000, INF, INF, (2064, INF, 0)),
    (10, 50, 100, (84, 84, 0)),
])
def test_descriptor_plan(connections, soft, hard, planned):
    assert tuple(fdlimit.plan(connections, soft, hard)) == planned


@pytest.mark.parametrize("limit, connections", [(1024, 480), (256, 96), (64, 1), (2064, 1000)])
def test_connections_within_a_limit(limit, connections):
    assert fdlimit.connections_within(limit) == connections


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
def test_no_descriptor_for_a_spool_file_is_a_503_to_retry(code):
    error = storage_error(OSError(code, os.strerror(code)))
    assert isinstance(error, OutOfFiles) and error.status == 503
    reply = error_reply(error, "POST")
    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 1\r\n" in reply


# -- the loop's exception handler -------------------------------------------------------------
def test_an_exception_on_the_loop_goes_to_gunicorns_error_log(error_log):
    def raiser() -> None:
        raise RuntimeError("raised in a loop callback")

    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(loop_exception_handler(logger(error_log)))
        loop.call_soon(raiser)
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    text = error_log.read_text()
    assert "[ERROR] Exception in callback" in text and "\nhandle: <Handle" in text
    assert "Traceback (most recent call last):" in text
    assert "RuntimeError: raised in a loop callback" in text


class ResumeMeetsAReset(asyncio.Protocol):
    """Pauses on a large write; resuming, finds its client gone: as asyncio's TLS layer does when
    its write from resume_writing() meets a reset (here the transport is aborted directly)."""

    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []
        self.gone = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def resume_writing(self) -> None:
        self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.lost.append(exc)
        self.gone.set()


def test_asyncios_double_teardown_of_a_connection_is_not_an_error():
    # asyncio's socket transport (CPython gh-156512): a transport closed from resume_writing()
    # tears itself down twice, the second time with AttributeError in the loop's handler.
    async def scenario(log: Log) -> ResumeMeetsAReset:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(loop_exception_handler(log))
        ours, client = socket.socketpair()
        client.setblocking(False)
        transport, protocol = await loop.connect_accepted_socket(ResumeMeetsAReset, ours)
        transport.write(b"x" * (4 << 20))  # more than the socket takes: buffered, paused

        def read() -> None:
            try:
                while client.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass

        loop.add_reader(client.fileno(), read)
        await asyncio.wait_for(protocol.gone.wait(), 10)
        await asyncio.sleep(0)  # the teardown asyncio scheduled before the one that ran
        loop.remove_reader(client.fileno())
        client.close()
        return protocol

    log = Log()
    protocol = asyncio.run(scenario(log))
    assert protocol.lost == [None]  # the connection closed once, as far as its protocol knows
    assert [level for level, _ in log.lines] in ([], ["debug"])  # [] where asyncio is fixed
    assert all("_call_connection_lost" in line for _, line in log.lines)


def test_other_attribute_errors_on_the_loop_stay_errors():
    def broken() -> None:
        None.connection_lost  # type: ignore[attr-defined]  # noqa: B018 - raises AttributeError

    log = Log()
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(loop_exception_handler(log))
        loop.call_soon(broken)
        loop.run_until_complete(asyncio.sleep(0))  # the callback queued before runs first
    finally:
        loop.close()
    assert [level for level, _ in log.lines] == ["error"]


# -- wsgi.errors -----------------------------------------------------------------------------
def test_wsgi_errors_closed_by_an_app_stays_usable(monkeypatch, tmp_path):
    stream = open(tmp_path / "errors", "w")  # noqa: SIM115 - the handler's stream
    monkeypatch.setattr(logging.getLogger("gunicorn.error"), "handlers",
                        [logging.StreamHandler(stream)])
    cfg = Config()
    cfg.set("errorlog", str(tmp_path / "error.log"))  # not "-": every handler is written
    errors = WSGIErrors(cfg)
    errors.close()
    assert not errors.closed
    errors.write("after close\n")
    errors.writelines(["one\n", "two\n"])
    errors.flush()
    stream.close()
    assert (tmp_path / "errors").read_text() == "after close\none\ntwo\n"
