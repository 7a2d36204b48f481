"""The request record hooks and the access log read, shaped like gunicorn's http.Request."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from gunicorn.util import split_request_uri
from test_environ_core import TRICKY_TARGETS

from gunicorn_aiowsgi.environ import Peer
from gunicorn_aiowsgi.records import RequestRecord

TCP = Peer("10.0.0.7", "5555", "127.0.0.1", "8000", trusted=False)
UNIX = Peer("/run/app.sock", None, None, None, trusted=True)


def record(uri: str = "/", peer: object = TCP) -> RequestRecord:
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": uri, "QUERY_STRING": uri.partition("?")[2],
               "wsgi.url_scheme": "http"}
    return RequestRecord(environ, (1, 1), ((b"Host", b"h"),), peer, 1)


@pytest.mark.parametrize("uri, path, fragment", [
    ("/", "/", ""),
    ("/a/b", "/a/b", ""),
    ("/a?q=1", "/a", ""),
    ("/a#frag", "/a", "frag"),
    ("/a?q#frag", "/a", "frag"),
    ("*", "*", ""),
    ("/a#frag?not-a-query", "/a", "frag?not-a-query"),
    ("//a/b?q", "//a/b", ""),
    ("http://example.com/x?y", "/x", ""),                 # gunicorn's req.path
    ("http://example.com/x#f", "/x", "f"),
])
def test_path_and_fragment(uri, path, fragment):
    req = record(uri)
    assert (req.uri, req.path, req.fragment) == (uri, path, fragment)


@pytest.mark.parametrize("uri", TRICKY_TARGETS)
def test_path_and_fragment_agree_with_gunicorn(uri):
    parts = split_request_uri(uri)
    req = record(uri)
    assert (req.path, req.fragment) == (parts.path or "", parts.fragment or "")


@pytest.mark.parametrize("peer, peer_addr", [
    (TCP, ("10.0.0.7", 5555)),                                       # accept()'s address
    (UNIX, "/run/app.sock"),
    (SimpleNamespace(remote_addr="192.0.2.1", remote_port="80"), ("192.0.2.1", 80)),
    (SimpleNamespace(remote_addr="", remote_port=None), ""),
    (None, None),
])
def test_peer_addr(peer, peer_addr):
    req = record(peer=peer)
    assert req.peer_addr == req.remote_addr == peer_addr
