"""The robustness tests' own client: replay raw bytes (whole, or in odd-sized pieces) and read
every response until the server closes. Generic helpers live in tests/server.py."""

from __future__ import annotations

import socket

from server import Conn, Gunicorn


def pieces(data: bytes) -> list[bytes]:
    sizes = (1, 7, 3, 64, 2, 512)
    out, at, i = [], 0, 0
    while at < len(data):
        out.append(data[at:at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    return out


def replay(server: Gunicorn, data: bytes, sender: str) -> tuple[list, tuple[str, int]]:
    """Send `data`, half-close, read responses until the server closes; (responses, our address)."""
    sock = server.connect(10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = sock.getsockname()[:2]
    with Conn(sock, 10) as conn:
        try:
            for part in ([data] if sender == "whole" else pieces(data)):
                conn.send(part)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused and closed before the rest was sent: read what came back
            pass
        responses = []
        while True:
            try:
                responses.append(conn.response())
            except ConnectionError:  # closed (EOF or reset) before another status line
                return responses, client
            except TimeoutError:
                raise AssertionError(f"connection hung after {responses}; worker log:\n"
                                     f"{server.log()[-3000:]}") from None
