"""TLS connections as the worker sets them up and ends them: the handshake's time limit, and
what a failed handshake leaves in the error log (as gthread logs it).

In-loop: the real worker's listener and server on a loopback socket, real TLS clients (Python's
ssl through asyncio), gunicorn's real logger writing to a file; no master.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any, Callable

import pytest
import trustme
from inloop import serving

pytestmark = pytest.mark.timeout(60)

# Failure detection only: how long a step may take before the test fails (seconds). Far below
# asyncio's own TLS handshake limit (60 s), which the worker no longer uses.
WAIT = 10.0
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
# The first bytes of a TLS ClientHello record, cut short: a client that stalls mid-handshake.
HELLO_PART = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


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


async def until(ready: Callable[[], Any], what: str) -> None:
    """Let the loop run until `ready()` (a state the worker reaches), or fail naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not ready():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


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
