"""wsgi.early_hints (gunicorn 27): a 103 Early Hints response goes out before the final one."""

from __future__ import annotations

import socket

import pytest
from server import Gunicorn

LINK = b"Link: </style.css>; rel=preload; as=style\r\n"


@pytest.fixture(scope="module")
def srv():
    with Gunicorn("apps:hints") as server:
        yield server


def exchange(server: Gunicorn, request: bytes) -> bytes:
    """Everything the server sends for one request, up to its closing the connection."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_client_reads_the_103_then_the_response(srv):
    data = exchange(srv, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    hint, sep, final = data.partition(b"\r\n\r\n")
    assert hint.startswith(b"HTTP/1.1 103 Early Hints\r\n") and hint.endswith(LINK.rstrip(b"\r\n"))
    assert final.startswith(b"HTTP/1.1 200 OK\r\n") and final.endswith(b"\r\n\r\nhello")


def test_no_103_for_http10_clients(srv):
    data = exchange(srv, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.0 200 OK\r\n") and b" 103 " not in data


def test_hints_after_the_response_began_are_ignored(srv):
    data = exchange(srv, b"GET /?late=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"103" not in data
    assert data.endswith(b"hello")
