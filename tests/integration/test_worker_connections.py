"""worker_connections with every slot open: idle kept-alive connections give way to a client
waiting for one (as nginx reuses its idle connections); connections mid-request never do.

In-loop: the real worker's listener and server on a loopback socket, real clients, no master.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import pytest
from inloop import serving, until

from gunicorn_aiowsgi.boundary import ConnState

pytestmark = pytest.mark.timeout(60)

# Far longer than any test here runs: a client answered at all was not waiting for a keep-alive
# connection to time out.
KEEPALIVE = 300
# Failure detection only (nothing here is timed): how long a step may take before the test fails.
WAIT = 10.0


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Answers with the body it was sent; /block waits for the test to release it."""
    if environ["PATH_INFO"] == "/block":
        environ["test.release"].wait(WAIT)
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


class Client:
    """One real client connection, reading Content-Length framed responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, **kw: Any) -> "Client":
        # A TLS client's handshake waits for the worker to accept it.
        return cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, **kw), WAIT))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body

    async def get(self, path: str = "/") -> tuple[int, dict[str, str], bytes]:
        self.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return await self.response()

    async def closed_by_server(self) -> bool:
        """The server ended the connection: EOF (what a keep-alive timeout gives) or a reset."""
        try:
            return await asyncio.wait_for(self.reader.read(), WAIT) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


def run(test: Callable[[], Any], loop_kind: str = "asyncio") -> None:
    if loop_kind == "uvloop":
        import uvloop  # a test dependency (pyproject's `test` extra): never skipped

        uvloop.run(test())
    else:
        asyncio.run(test())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_waiting_clients_are_answered_while_idle_keepalive_connections_hold_every_slot(loop_kind):
    # The reviewer's case: worker_connections 4, four clients each made a request and stay
    # idle; a fifth waited the whole keep-alive for one of them to time out.
    async def test() -> None:
        async with serving(app, worker_connections=4, threads=2, keepalive=KEEPALIVE) as (worker, port):
            idle = [await Client.open(port) for _ in range(4)]
            for client in idle:
                assert (await client.get())[1]["connection"] == "keep-alive"
            loop = asyncio.get_running_loop()
            answered_at = loop.time()
            # Idle times are the loop's clock: uvloop's moves in milliseconds, once a turn.
            await until(lambda: loop.time() > answered_at, "the loop's clock to move on")
            assert (await idle[0].get())[0] == 200  # now the one idle the shortest time
            waiting = [await Client.open(port) for _ in range(2)]
            for client in waiting:
                client.send(b"GET /new HTTP/1.1\r\nHost: t\r\n\r\n")
            for client in waiting:
                assert (await client.response())[0] == 200
            # One connection per waiting client, those idle longest, closed as at a keep-alive
            # timeout: their next request finds them closed. The others still serve.
            assert await idle[1].closed_by_server() and await idle[2].closed_by_server()
            for client in (idle[0], idle[3], *waiting):
                assert (await client.get())[0] == 200
            assert len(worker.server.conns) == 4
            for client in [*idle, *waiting]:
                client.close()

    run(test, loop_kind)


def test_over_tls_an_idle_connection_gives_way_once_its_client_answers_close_notify(tmp_path):
    # Closing a TLS connection sends close_notify; its socket (and slot) stays until the client
    # answers it, as a client reading its connection (asyncio's here) does at once.
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    pem = str(tmp_path / "server.pem")

    async def test() -> None:
        async with serving(app, worker_connections=2, keepalive=KEEPALIVE, certfile=pem,
                           keyfile=pem) as (worker, port):
            tls = {"ssl": context, "server_hostname": "localhost"}
            idle = [await Client.open(port, **tls) for _ in range(2)]
            for client in idle:
                assert (await client.get())[0] == 200
            newcomer = await Client.open(port, **tls)
            assert (await newcomer.get("/new"))[0] == 200
            assert await idle[0].closed_by_server()
            assert (await idle[1].get())[0] == 200
            for client in (*idle, newcomer):
                client.close()

    run(test)


def test_connections_mid_request_are_never_closed_for_a_waiting_client(monkeypatch):
    # Every slot holds a connection the worker must not close: a head arriving, a body
    # arriving, a request in the app, a new client that has not sent its first request (the
    # header timeout's to judge, not this). The waiting client waits; once one of them is
    # answered and idle, it gives way.
    release = threading.Event()

    def blocking(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ["test.release"] = release
        return app(environ, start_response)

    async def test() -> None:
        async with serving(blocking, worker_connections=4, threads=2,
                           keepalive=KEEPALIVE) as (worker, port):
            head, body, busy, fresh = [await Client.open(port) for _ in range(4)]
            head.send(b"GET /head HTTP/1.1\r\nHost: t\r\n")
            body.send(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc")
            busy.send(b"GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
            states = [ConnState.HEAD, ConnState.BODY, ConnState.APP, ConnState.IDLE]

            def now() -> list[ConnState]:
                return sorted((c.state for c in worker.server.conns), key=states.index)

            await until(lambda: now() == states, "a head, a body, a call and a new client")
            looks: list[int] = []  # what each look for a connection to close found
            reclaim = worker.server.reclaim_idle
            monkeypatch.setattr(worker.server, "reclaim_idle",
                                lambda: looks.append(reclaim()) or looks[-1])
            newcomer = await Client.open(port)
            newcomer.send(b"GET /new HTTP/1.1\r\nHost: t\r\n\r\n")
            await until(lambda: len(looks) >= 2, "the listener to look twice")
            assert looks == [0] * len(looks)
            assert now() == states and worker.listener.open == 4
            head.send(b"\r\n")  # its request completes: answered, it is idle and gives way
            assert (await head.response())[0] == 200
            assert (await newcomer.response())[0] == 200
            assert await head.closed_by_server()
            assert now() == [ConnState.BODY, ConnState.APP, ConnState.IDLE, ConnState.IDLE]
            release.set()
            body.send(b"def")
            assert (await busy.response())[0] == 200
            assert (await body.response())[2] == b"abcdef"
            for client in (head, body, busy, fresh, newcomer):
                client.close()

    try:
        run(test)
    finally:
        release.set()
