"""Responses written straight to a plain socket's descriptor: order kept, never after the close.

The connection writes to its socket itself while the transport holds nothing (os.write lets go
of the GIL; uvloop's transport.write does not). These tests give the in-memory connection a real
socket pair's descriptor and check where each response's bytes go.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from memory import FakeTransport, Harness

REQUEST = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


class BufferingTransport(FakeTransport):
    """A transport whose write buffer holds `buffered` bytes (0: empty)."""

    def __init__(self, buffered: int = 0) -> None:
        super().__init__()
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered


def read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    out = bytearray()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


@pytest.fixture
def pair():
    ours, client = socket.socketpair()
    ours.setblocking(False)
    yield ours, client
    ours.close()
    client.close()


def harness(app: Any, sock: socket.socket, buffered: int = 0) -> Harness:
    h = Harness(app)
    h.transport = BufferingTransport(buffered)
    h.conn.fd = sock.fileno()
    h.conn.connection_made(h.transport)
    return h


def sized(size: int) -> Any:
    body = bytes(range(256)) * (size // 256)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    return app


def test_response_goes_to_the_socket_when_the_transport_holds_nothing(pair):
    ours, client = pair
    h = harness(sized(1024), ours)
    h.feed(REQUEST)
    wire = read_all(client)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n") and wire.endswith(bytes(range(256)) * 4)
    assert h.transport.written == b""
    h.close()


def test_response_goes_to_the_transport_behind_bytes_it_holds(pair):
    ours, client = pair
    h = harness(sized(1024), ours, buffered=10)  # written later by the transport: keep order
    h.feed(REQUEST)
    assert read_all(client) == b""
    assert h.transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    h.close()


def test_what_the_socket_cannot_take_follows_through_the_transport_in_order(pair):
    ours, client = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h = harness(sized(4 << 20), ours)  # far more than the socket buffer takes at once
    h.feed(REQUEST)
    sent = read_all(client)
    assert 0 < len(sent) < 4 << 20 and len(h.transport.written) > 0
    wire = sent + bytes(h.transport.written)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == bytes(range(256)) * (4 << 12)
    h.close()


def test_nothing_is_written_to_the_descriptor_once_the_transport_is_closing(pair):
    ours, client = pair
    h = harness(sized(16), ours)
    h.transport.close()  # is_closing(): the descriptor may already belong to another socket
    with pytest.raises(ConnectionResetError):
        h.conn.write(b"late")
    assert read_all(client) == b"" and h.transport.written == b""
    h.close()


def test_a_socket_error_is_left_to_the_transport(pair):
    ours, client = pair
    client.close()  # the peer is gone: os.write fails with EPIPE
    h = harness(sized(16), ours)
    h.conn.write(b"to a closed peer")
    # The transport gets the bytes and meets the error itself, closing as it always does.
    assert h.transport.written == b"to a closed peer"
    h.close()
