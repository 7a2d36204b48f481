"""TLS connections as the worker sets them up and ends them: the handshake's time limit, what
a failed handshake leaves in the error log (as gthread logs it), and an idle connection let go
without the client's close_notify, never before everything sent has reached the client.

In-loop: the real worker's listener and server on a loopback socket, real TLS clients (Python's
ssl through asyncio), gunicorn's real logger writing to a file; no master.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import trustme
from inloop import serving, until

from gunicorn_aiowsgi import timeouts

pytestmark = pytest.mark.timeout(60)

# Failure detection only: how long a step may take before the test fails (seconds). Far below
# asyncio's own TLS handshake limit (60 s), which the worker no longer uses.
WAIT = 10.0
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
# The first bytes of a TLS ClientHello record, cut short: a client that stalls mid-handshake.
HELLO_PART = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


# A response far larger than what a client that is not reading lets the kernels hold (its
# receive buffer is set to RCVBUF), yet within what the worker's TLS transport takes before it
# pauses the app (a quarter of AIOWSGI_WRITE_BUFFER): the response completes and its connection
# goes idle while most of it still waits in the worker.
LARGE = 1 << 20
RCVBUF = 16 * 1024


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = b"x" * LARGE if environ["PATH_INFO"] == "/large" else b"ok"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    pem, ca_file = tmp / "server.pem", tmp / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_file))
    return {"ca": ca, "pem": str(pem), "ca_file": str(ca_file)}


def client_context(pki: dict[str, Any], cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki["ca"].configure_trust(context)
    if cert:
        pki["ca"].issue_cert("client@test").configure_cert(context)
    return context


def tls(pki: dict[str, Any], tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """serving() settings for TLS, with gunicorn's error log (debug level) in a file."""
    return {"certfile": pki["pem"], "keyfile": pki["pem"], "errorlog": str(tmp_path / "error.log"),
            "loglevel": "debug", **settings}


def error_log(tmp_path: Path) -> str:
    path = tmp_path / "error.log"
    return path.read_text() if path.exists() else ""


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """The worker ended the connection (EOF, or a reset) within WAIT."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT) == b""
    except ConnectionResetError:
        return True


def run(test: Callable[[], Any], loop_kind: str) -> None:
    if loop_kind == "uvloop":
        import uvloop  # a test dependency (pyproject's `test` extra): never skipped

        uvloop.run(test())
    else:
        asyncio.run(test())


# -- the handshake's time limit -----------------------------------------------------------------
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_client_that_never_completes_the_handshake_is_closed_at_the_header_timeout(
        loop_kind, pki, tmp_path, monkeypatch):
    # The handshake is the start of a request's head: AIOWSGI_HEADER_TIMEOUT bounds it, where
    # asyncio's default (60 s) let silent connections hold worker_connections slots that long.
    monkeypatch.setenv("AIOWSGI_HEADER_TIMEOUT", "1")

    async def test() -> None:
        async with serving(app, **tls(pki, tmp_path, worker_connections=3)) as (worker, port):
            silent = await asyncio.open_connection("127.0.0.1", port)
            stalled = await asyncio.open_connection("127.0.0.1", port)
            stalled[1].write(HELLO_PART)
            await until(lambda: worker.listener.open == 2, "both connections accepted")
            assert await closed_by_server(silent[0]) and await closed_by_server(stalled[0])
            await until(lambda: worker.listener.open == 0, "both slots given back")
            assert "Invalid request" not in error_log(tmp_path)  # timeouts are not warned about
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost")
            writer.write(REQUEST)
            assert (await asyncio.wait_for(reader.read(), WAIT)).startswith(b"HTTP/1.1 200 ")
            for _, w in (silent, stalled, (reader, writer)):
                w.close()

    run(test, loop_kind)


# -- failed handshakes in the error log --------------------------------------------------------
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_handshakes_the_client_got_wrong_are_warnings_as_gthread_logs_them(
        loop_kind, pki, tmp_path):
    async def test() -> None:
        settings = tls(pki, tmp_path, ca_certs=pki["ca_file"], cert_reqs=ssl.CERT_REQUIRED)
        async with serving(app, **settings) as (_worker, port):
            # No client certificate where one is required (TLS 1.3: the client's handshake
            # completes before the server judges its certificate).
            _r, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki), server_hostname="localhost")
            await until(lambda: "PEER_DID_NOT_RETURN_A_CERTIFICATE" in error_log(tmp_path),
                        "the missing certificate in the log")
            writer.close()
            # Plain HTTP on the TLS port; then bytes that are not TLS at all.
            for data, reason in ((REQUEST, "HTTP_REQUEST"), (b"\x16\x03\x09" + b"\0" * 64,
                                                             "WRONG_VERSION_NUMBER")):
                _r, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(data)
                await until(lambda r=reason: r in error_log(tmp_path), f"{reason} in the log")
                writer.close()
            # With a certificate, served.
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(pki, cert=True), server_hostname="localhost")
            writer.write(REQUEST)
            assert (await asyncio.wait_for(reader.read(), WAIT)).startswith(b"HTTP/1.1 200 ")
            writer.close()

    run(test, loop_kind)
    warnings = [line for line in error_log(tmp_path).splitlines() if "[WARNING]" in line]
    assert len(warnings) == 3, warnings
    for warning, reason in zip(warnings, ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "HTTP_REQUEST",
                                          "WRONG_VERSION_NUMBER")):
        assert f"Invalid request from ip=127.0.0.1: [SSL: {reason}]" in warning


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_clients_that_leave_before_or_during_the_handshake_stay_at_debug(loop_kind, pki, tmp_path):
    # Port scanners and TCP health checks: connect and close, or close after a partial hello.
    async def test() -> None:
        async with serving(app, **tls(pki, tmp_path)) as (worker, port):
            for data in (b"", HELLO_PART):
                _r, writer = await asyncio.open_connection("127.0.0.1", port)
                await until(lambda: worker.listener.open == 1, "the connection accepted")
                writer.write(data)
                writer.close()
                await until(lambda: worker.listener.open == 0, "the connection closed")

    run(test, loop_kind)
    log = error_log(tmp_path)
    assert log.count("Connection setup failed") == 2, log
    assert "[WARNING]" not in log and "[ERROR]" not in log, log


# -- an idle connection closed: its close_notify ---------------------------------------------------
def stalled_client(port: int, pki: dict[str, Any]) -> ssl.SSLSocket:
    """A blocking TLS client with a small receive buffer that asks for LARGE, keeps the
    connection alive and reads nothing yet."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    raw.settimeout(WAIT)
    raw.connect(("127.0.0.1", port))
    sock = client_context(pki).wrap_socket(raw, server_hostname="localhost")
    sock.sendall(b"GET /large HTTP/1.1\r\nHost: t\r\n\r\n")
    return sock


def read_response(sock: ssl.SSLSocket) -> bytes:
    """The response's body, read to its Content-Length (and not a byte past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        assert chunk, f"cut off after {len(body)} of {size} bytes"
        body += chunk
    return body


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_an_idle_tls_connection_is_let_go_only_once_everything_sent_reached_the_client(
        loop_kind, pki, tmp_path, monkeypatch):
    # The reason an earlier fix (asyncio's close_notify wait cut to 5 s for every connection) was
    # reverted: it cut off the end of responses slow clients were still reading. Here the
    # response is complete on the worker's side and its connection idle (keep-alive, then
    # retired) while the client reads nothing: the worker keeps looking and waits.
    monkeypatch.setattr(timeouts, "TLS_CLOSE_WAIT", 0.05)
    looks: list[int | None] = []
    acknowledged = timeouts.acknowledged
    monkeypatch.setattr(timeouts, "acknowledged",
                        lambda transport: looks.append(acknowledged(transport)) or looks[-1])

    async def test() -> None:
        loop = asyncio.get_running_loop()
        async with serving(app, **tls(pki, tmp_path, keepalive=1)) as (worker, port):
            sock = await loop.run_in_executor(None, stalled_client, port, pki)
            await until(lambda: len(looks) >= 5 or not worker.server.conns,
                        "the worker to look at the retired connection")
            assert worker.server.conns, "let go while bytes were still on their way"
            assert looks == [None] * len(looks)  # bytes still on their way each time
            body = await loop.run_in_executor(None, read_response, sock)
            assert body == b"x" * LARGE
            await until(lambda: not worker.server.conns, "the connection let go")
            # Let go while the client holds it open and has not read the close_notify: the
            # worker did not wait for the client's.
            assert select.select([sock], [], [], 0)[0]
            sock.close()

    run(test, loop_kind)
    assert "no TLS close_notify from the client" in error_log(tmp_path)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_an_idle_tls_connection_on_a_unix_socket_is_let_go_once_the_client_read_everything(
        loop_kind, pki, tmp_path, monkeypatch):
    """gunicorn's `unix:` bind: no TCP acknowledgements to count, but the socket's send queue
    holds what the client has not read; once that is empty (the close_notify read too), the
    retired connection is let go, without the 30 s wait for the client's own close_notify."""
    monkeypatch.setattr(timeouts, "TLS_CLOSE_WAIT", 0.05)
    where = tempfile.mkdtemp(prefix="tls-")  # a unix socket's path is short (108 bytes)
    path = os.path.join(where, "s")

    def client() -> ssl.SSLSocket:
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(path)
        sock = client_context(pki).wrap_socket(raw, server_hostname="localhost")
        sock.settimeout(WAIT)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # kept alive, then retired
        data = b""
        while chunk := sock.recv(65536):  # to the worker's close_notify (recv gives b"")
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nok")
        return sock  # held open: its own close_notify never sent

    async def test() -> None:
        loop = asyncio.get_running_loop()
        async with serving(app, unix=path, **tls(pki, tmp_path, keepalive=1)) as (worker, _):
            sock = await loop.run_in_executor(None, client)
            await until(lambda: not worker.server.conns, "the retired connection let go")
            sock.close()

    try:
        run(test, loop_kind)
    finally:
        shutil.rmtree(where)
    assert "no TLS close_notify from the client" in error_log(tmp_path)
