"""The request record hooks and the access log read, shaped like gunicorn's http.Request."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from gunicorn.util import split_request_uri
from test_environ_core import TRICKY_TARGETS

from gunicorn_aiowsgi.application import AppCall
from gunicorn_aiowsgi.context import Context
from gunicorn_aiowsgi.environ import Peer, build_environ
from gunicorn_aiowsgi.records import RequestRecord, replace_fields
from gunicorn_aiowsgi.settings import Settings

TCP = Peer("10.0.0.7", "5555", "127.0.0.1", "8000", trusted=False)
TRUSTED = Peer("127.0.0.1", "5555", "127.0.0.1", "8000", trusted=True)
UNIX = Peer("/run/app.sock", None, None, None, trusted=True)


def record(uri: str = "/", peer: object = TCP, raw: tuple = ((b"Host", b"h"),),
           version: tuple[int, int] = (1, 1), settings: Settings | None = None) -> RequestRecord:
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": uri, "QUERY_STRING": uri.partition("?")[2],
               "wsgi.url_scheme": "http"}
    return RequestRecord(environ, version, raw, peer, 1, settings or Settings())


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


# -- header_map: req.headers holds what gunicorn's parser keeps --------------------------------
# gthread's req.headers (and so hooks and the access log's %({name}i)s atoms) never hold a field
# header_map dropped; the environ leaves it out by the same decision.
RAW = ((b"Host", b"h"), (b"X_Under", b"1"), (b"X-Under", b"2"), (b"Script_Name", b"/app"),
       (b"X-Forwarded-For", b"10.1.1.1"))
ALL = ["HOST", "X_UNDER", "X-UNDER", "SCRIPT_NAME", "X-FORWARDED-FOR"]
WITHOUT = ["HOST", "X-UNDER", "X-FORWARDED-FOR"]


@pytest.mark.parametrize("header_map, forwarders, peer, names", [
    ("drop", (), TRUSTED, WITHOUT),                                # gunicorn's default
    ("drop", ("SCRIPT_NAME",), TRUSTED, WITHOUT[:2] + ["SCRIPT_NAME", "X-FORWARDED-FOR"]),
    ("drop", ("SCRIPT_NAME",), TCP, WITHOUT),                      # not from an untrusted peer
    ("drop", ("SCRIPT_NAME",), UNIX, WITHOUT[:2] + ["SCRIPT_NAME", "X-FORWARDED-FOR"]),
    ("drop", ("*",), TRUSTED, ALL),
    ("dangerous", (), TCP, ALL),
    ("refuse", ("SCRIPT_NAME", "X_UNDER"), TRUSTED, ALL),          # the others: a 400, no record
], ids=["drop", "forwarder-trusted", "forwarder-untrusted", "forwarder-unix", "forwarder-star",
        "dangerous", "refuse-forwarders"])
def test_header_map_decides_the_records_headers_as_the_environs(header_map, forwarders, peer,
                                                                names):
    settings = Settings(header_map=header_map, forwarder_headers=frozenset(forwarders))
    req = record("/app/x", peer, RAW, settings=settings)
    assert [name for name, _ in req.headers] == names
    # One decision: the record's headers map to exactly the environ's header keys.
    environ, _ = build_environ({}, settings, peer, "GET", "/app/x", (1, 1), RAW)
    mapped = {"SCRIPT_NAME": settings.script_name}
    replace_fields(mapped, req.headers)
    assert {k: v for k, v in environ.items() if k.startswith("HTTP_")} == \
        {k: v for k, v in mapped.items() if k.startswith("HTTP_")}
    assert environ["SCRIPT_NAME"] == ("/app" if "SCRIPT_NAME" in names else "")


def test_a_dropped_field_is_never_read_by_the_access_log():
    """gunicorn's %({x_under}i)s atom looks the name up in req.headers: "-" once dropped."""
    req = record(raw=RAW)
    assert "X_UNDER" not in dict(req.headers) and dict(req.headers)["X-UNDER"] == "2"


class _Spools:
    def off_loop(self, fn, *args):
        fn(*args)


def test_both_records_filter_alike():
    """The app thread's record (AppCall) and the loop's own (Context.log_answer: a 503, 413,
    507) are built from the same settings: the same headers."""
    settings = Settings(forwarder_headers=frozenset({"SCRIPT_NAME"}))
    environ, _ = build_environ({}, settings, TRUSTED, "GET", "/app/x", (1, 1), RAW)
    environ["wsgi.input"] = None
    server = SimpleNamespace(access=None, post_request=None, settings=settings)
    call = AppCall(None, environ, None, (1, 1), server, 0.0, RAW, TRUSTED, 1)  # type: ignore[arg-type]
    logged = []
    ctx = object.__new__(Context)
    ctx.settings, ctx.spools = settings, _Spools()
    ctx.access = lambda resp, req, environ, elapsed: logged.append(req)
    exchange = SimpleNamespace(environ=environ, number=1, started=0.0,
                               request=SimpleNamespace(version=(1, 1), raw_headers=RAW),
                               conn=SimpleNamespace(peer=TRUSTED))
    ctx.log_answer(exchange, "503 Service Unavailable")
    assert logged[0].headers == call.req.headers
    assert [n for n, _ in call.req.headers] == ["HOST", "X-UNDER", "SCRIPT_NAME", "X-FORWARDED-FOR"]


# -- the record's own calls, as gunicorn's ----------------------------------------------------
def test_headers_can_be_assigned():
    req = record()
    req.headers = [("X-ONLY", "1")]
    assert req.headers == [("X-ONLY", "1")]


@pytest.mark.parametrize("version, fields, method, forced, closes", [
    ((1, 1), [], "GET", False, False),
    ((1, 1), [], "GET", True, True),                               # force_close()
    ((1, 1), [(b"Connection", b"close")], "GET", False, True),
    ((1, 1), [(b"Connection", b"Keep-Alive")], "GET", False, False),
    ((1, 0), [], "GET", False, True),
    ((1, 0), [(b"Connection", b"keep-alive")], "GET", False, False),
    ((1, 0), [(b"Connection", b"keep-alive")], "GET", True, True),
    # gunicorn reads the first Connection field only.
    ((1, 0), [(b"Connection", b"upgrade"), (b"Connection", b"keep-alive")], "GET", False, True),
    ((1, 1), [], "CONNECT", False, True),                          # a tunnel follows
])
def test_should_close_as_gunicorns(version, fields, method, forced, closes):
    req = record(raw=((b"Host", b"h"), *fields), version=version)
    req.method = method
    if forced:
        req.force_close()
    assert req.must_close is forced
    assert req.should_close() is closes
