"""Table-driven cases for the pure environ builder."""

from __future__ import annotations

import pytest
from gunicorn.util import split_request_uri

from gunicorn_aiowsgi.environ import Peer, build_environ, make_peer, split_target
from gunicorn_aiowsgi.errors import BadRequest, ExpectationFailed, HTTPError
from gunicorn_aiowsgi.settings import Settings

TCP = Peer("10.0.0.7", "5555", "127.0.0.1", "8000", trusted=False)
TRUSTED = Peer("127.0.0.1", "5555", "127.0.0.1", "8000", trusted=True)
UNIX = Peer("", None, None, None, trusted=True, socket_path="/run/app.sock")


def env(target=b"/", headers=(), peer=TCP, method="GET", version=(1, 0), settings=None):
    """build_environ for an HTTP/1.0 request unless told: 1.1 requires Host (see test_host_rule)."""
    settings = settings or Settings()
    # The target as the parser hands it on: UTF-8, other bytes as surrogates.
    return build_environ({}, settings, peer, method, target.decode("utf-8", "surrogateescape"), version,
                         [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers])


@pytest.mark.parametrize("version, headers, refused", [
    ((1, 1), [], True),                         # RFC 9112 section 3.2: 400 without Host
    ((1, 1), [("Host", "h")], False),
    ((1, 1), [("Host", "")], False),            # an empty Host is allowed (no authority)
    ((1, 0), [], False),                        # HTTP/1.0 has no such rule
])
def test_host_rule(version, headers, refused):
    if refused:
        with pytest.raises(BadRequest, match="Host"):
            env(headers=headers, version=version)
    else:
        env(headers=headers, version=version)


@pytest.mark.parametrize("method, target, raw, path, query", [
    ("GET", b"/", "/", "/", ""),
    ("GET", b"/a/b?x=1&y", "/a/b?x=1&y", "/a/b", "x=1&y"),
    ("GET", b"/a#frag", "/a#frag", "/a", ""),
    ("GET", b"/a?q#frag", "/a?q#frag", "/a", "q"),
    ("GET", b"/a#frag?q", "/a#frag?q", "/a", ""),  # RFC 3986 3.5: all after "#" is the fragment
    ("GET", b"/a#?", "/a#?", "/a", ""),
    ("GET", b"//double/slash?q", "//double/slash?q", "//double/slash", "q"),
    ("GET", b"http://example.com/abs?q=1", "http://example.com/abs?q=1", "/abs", "q=1"),
    ("OPTIONS", b"*", "*", "*", ""),
    # authority-form: gunicorn's urlsplit reads "example.com" as a scheme; we mirror it.
    ("CONNECT", b"example.com:443", "example.com:443", "443", ""),
])
def test_split_target(method, target, raw, path, query):
    assert split_target(method, target.decode("utf-8", "surrogateescape")) == (raw, path, query)


@pytest.mark.parametrize("codings, known", [
    ("chunked", True), ("Chunked", True), ("gzip, chunked", True), ("identity,chunked", True),
    (", chunked", True),                                  # RFC 9110 5.6.1: empty items ignored
    ("foo, chunked", False), ("gzip, x-gzip, chunked", False), ("chunked2", False),
])
def test_transfer_codings_gunicorn_does_not_know_are_501(codings, known):
    headers = [("Host", "h"), ("Transfer-Encoding", codings)]
    if known:
        assert env(headers=headers, version=(1, 1))[0]["HTTP_TRANSFER_ENCODING"] == codings
    else:
        with pytest.raises(HTTPError) as info:
            env(headers=headers, version=(1, 1))
        assert info.value.status == 501


# Targets whose parts are easy to get wrong: gunicorn's own split must agree on each.
TRICKY_TARGETS = ["/", "/a?b", "/a#b?c", "/a?b#c?d", "/a#", "/a?", "//x/y?z#w", "/%41?%42#%43",
                  "http://h/p?q#f", "http://h", "https://h:8443/p;x?y", "*"]


@pytest.mark.parametrize("target", TRICKY_TARGETS)
def test_split_target_agrees_with_gunicorn(target):
    parts = split_request_uri(target)
    method = "OPTIONS" if target == "*" else "GET"
    assert split_target(method, target) == (target, parts.path or "", parts.query or "")


@pytest.mark.parametrize("method, target", [
    ("GET", b""), ("GET", b"*"), ("GET", b"relative"), ("GET", b"/sp ace"), ("GET", b"/caf\xc3\xa9"),
    ("GET", b"/\x00"), ("GET", b"/\x7f"), ("GET", b"/\xff"), ("GET", b"/tab\there"),
])
def test_split_target_refuses(method, target):
    with pytest.raises(BadRequest):
        split_target(method, target.decode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("target, path_info", [
    (b"/caf%C3%A9", "/caf\xc3\xa9"),
    (b"/a%2Fb", "/a/b"),
    (b"/%25", "/%"),
    (b"/plain", "/plain"),
    (b"/%ZZ", "/%ZZ"),
])
def test_path_info_latin1(target, path_info):
    environ, _ = env(target)
    assert environ["PATH_INFO"] == path_info


@pytest.mark.parametrize("headers, key, value", [
    ([("X-A", "1"), ("X-A", "2")], "HTTP_X_A", "1,2"),
    ([("content-type", "t/x")], "CONTENT_TYPE", "t/x"),
    ([("Content-Length", "5")], "CONTENT_LENGTH", "5"),
    ([("X-Sp", "  padded \t")], "HTTP_X_SP", "padded"),
    ([("X-L", "caf\xe9")], "HTTP_X_L", "caf\xe9"),
    ([("Host", "example.com:81")], "HTTP_HOST", "example.com:81"),
])
def test_header_mapping(headers, key, value):
    environ, _ = env(headers=headers)
    assert environ[key] == value


def test_underscore_header_dropped_by_default():
    environ, _ = env(headers=[("X-Forwarded-For", "1.1.1.1"), ("X_Forwarded_For", "6.6.6.6")])
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.1.1.1"


@pytest.mark.parametrize("header_map, trusted, expect", [
    ("drop", False, None), ("dangerous", False, "v"), ("drop", True, "v"),
])
def test_underscore_header_policies(header_map, trusted, expect):
    settings = Settings(header_map=header_map, forwarder_headers=frozenset({"X_CUSTOM"}))
    environ, _ = env(headers=[("X_Custom", "v")], settings=settings, peer=TRUSTED if trusted else TCP)
    assert environ.get("HTTP_X_CUSTOM") == expect


def test_underscore_header_refused():
    with pytest.raises(BadRequest):
        env(headers=[("X_Custom", "v")], settings=Settings(header_map="refuse"))


@pytest.mark.parametrize("headers", [
    [("Host", "a"), ("Host", "b")],
    [("Content-Length", "1"), ("Content-Length", "1")],
    [("Content-Type", "a"), ("Content-Type", "b")],
    [("Host", "a"), ("host", "b")],                 # one field however its name is spelled
    [("content-length", "1"), ("Content-Length", "1")],
    [("Transfer-Encoding", "chunked")],             # in HTTP/1.0 (RFC 9112 section 6.1)
    [("X-Bad", "a\x01b")],
])
def test_refused_headers(headers):
    with pytest.raises(BadRequest):
        env(headers=headers)


@pytest.mark.parametrize("peer, headers, scheme", [
    (TRUSTED, [("X-Forwarded-Proto", "https")], "https"),
    (TRUSTED, [("X-Forwarded-Proto", "http")], "http"),
    (TCP, [("X-Forwarded-Proto", "https")], "http"),     # untrusted peer: ignored
    (UNIX, [("X-Forwarded-Ssl", "on")], "https"),        # unix socket peers are trusted
    (TRUSTED, [], "http"),
])
def test_secure_scheme_headers(peer, headers, scheme):
    settings = Settings(secure_scheme_headers={"X-FORWARDED-PROTO": "https", "X-FORWARDED-SSL": "on"})
    environ, _ = env(headers=headers, peer=peer, settings=settings)
    assert environ["wsgi.url_scheme"] == scheme


def test_contradictory_scheme_headers():
    settings = Settings(secure_scheme_headers={"X-FORWARDED-PROTO": "https", "X-FORWARDED-SSL": "on"})
    with pytest.raises(BadRequest):
        env(headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "off")], peer=TRUSTED,
            settings=settings)


@pytest.mark.parametrize("version, headers, expect", [
    ((1, 1), [("Expect", "100-continue")], True),
    ((1, 1), [("Expect", "100-Continue")], True),
    ((1, 0), [("Expect", "100-continue")], False),   # RFC 9110 10.1.1: ignored for HTTP/1.0
    ((1, 1), [], False),
])
def test_expect(version, headers, expect):
    assert env(headers=[("Host", "h"), *headers], version=version)[1] is expect


def test_unknown_expectation():
    with pytest.raises(ExpectationFailed):
        env(headers=[("Expect", "magic")])


@pytest.mark.parametrize("peer, host, name, port", [
    (TCP, "example.com", "127.0.0.1", "8000"),
    (UNIX, "example.com", "example.com", "80"),
    (UNIX, "example.com:8080", "example.com", "8080"),
    (UNIX, "example.com:", "example.com", ""),
    # No Host (HTTP/1.0): the socket's path, no port, as gunicorn's http.wsgi.create gives.
    (UNIX, None, "/run/app.sock", ""),
])
def test_server_name_port(peer, host, name, port):
    headers = [("Host", host)] if host else []
    environ, _ = env(headers=headers, peer=peer)
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == (name, port)
    assert ("REMOTE_PORT" in environ) is (peer.remote_port is not None)


@pytest.mark.parametrize("script_name, target, path_info", [
    ("/app", b"/app/x", "/x"),
    ("/app", b"/app", ""),
])
def test_script_name(script_name, target, path_info):
    environ, _ = env(target, settings=Settings(script_name=script_name))
    assert environ["SCRIPT_NAME"] == script_name and environ["PATH_INFO"] == path_info


def test_path_outside_script_name():
    with pytest.raises(HTTPError) as info:
        env(b"/other", settings=Settings(script_name="/app"))
    assert info.value.status == 500


@pytest.mark.parametrize("method, ok", [("GET", True), ("PROPFIND", True), ("get", False),
                                        ("GE", False), ("G#T", False)])
def test_method_rules(method, ok):
    """Accepted methods are cached: the second look gives what the first gave, and a refused
    method is refused again (never cached)."""
    for _seen_before in (False, True):
        if ok:
            assert env(method=method)[0]["REQUEST_METHOD"] == method
        else:
            with pytest.raises(BadRequest):
                env(method=method)


def test_make_peer():
    from gunicorn.config import Config

    from gunicorn_aiowsgi.settings import from_cfg
    settings = from_cfg(Config(), environ={})
    assert make_peer(settings, ("127.0.0.1", 4000), ("127.0.0.1", 80)).trusted
    assert not make_peer(settings, ("10.1.1.1", 4000), ("127.0.0.1", 80)).trusted
    unix = make_peer(settings, "", "/tmp/sock")
    assert unix.remote_addr == "" and unix.trusted and unix.remote_port is None
    assert unix.socket_path == "/tmp/sock" and make_peer(settings, b"", b"/tmp/b").socket_path == "/tmp/b"


def test_peer_keys_are_the_connections_and_a_proxy_preamble_wins():
    """The addresses' keys are computed once per connection (Peer.keys); a PROXY preamble's
    client address replaces the socket's, and SERVER_* stay the listener's (gunicorn's
    proxy_environ)."""
    from types import SimpleNamespace

    from gunicorn_aiowsgi.environ import proxied_peer
    info = SimpleNamespace(client_addr="203.0.113.5", client_port=4321, proxy_addr="10.0.0.1",
                           proxy_port=443, protocol="TCP4")
    environ = env(peer=proxied_peer(TCP, info))[0]
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("203.0.113.5", "4321")
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (environ["PROXY_PROTOCOL"], environ["PROXY_ADDR"], environ["PROXY_PORT"]) == (
        "TCP4", "10.0.0.1", "443")
    plain = env()[0]
    assert (plain["REMOTE_ADDR"], plain["REMOTE_PORT"]) == ("10.0.0.7", "5555")
    assert "PROXY_PROTOCOL" not in plain
    unix = env(peer=UNIX, headers=[("Host", "example.com:8080")])[0]
    assert (unix["REMOTE_ADDR"], unix["SERVER_NAME"], unix["SERVER_PORT"]) == (
        "", "example.com", "8080")
    assert "REMOTE_PORT" not in unix


def test_header_names_map_alike_cached_or_not(monkeypatch):
    """Each name is mapped once (its kind decides its rules); a cached name gives what it gave."""
    from gunicorn_aiowsgi import environ as core
    monkeypatch.setattr(core, "_NAMES", {})
    headers = [("Host", "h"), ("X-A", "1"), ("x-a", "2"), ("content-type", "t/x"),
               ("Content-Length", "0"), ("Expect", "100-continue"), ("Transfer-Encoding", "chunked"),
               ("X_U", "u"), ("Script_Name", "/app")]
    settings = Settings(header_map="dangerous")
    first = env(b"/app/x", headers=headers, version=(1, 1), settings=settings)
    assert len(core._NAMES) == 9  # by their bytes: "X-A" and "x-a" apart
    assert env(b"/app/x", headers=headers, version=(1, 1), settings=settings) == first
    environ, expect = first
    assert expect is True
    assert {key: environ[key] for key in ("HTTP_HOST", "HTTP_X_A", "CONTENT_TYPE", "CONTENT_LENGTH",
                                          "HTTP_EXPECT", "HTTP_TRANSFER_ENCODING", "HTTP_X_U",
                                          "SCRIPT_NAME", "HTTP_SCRIPT_NAME", "PATH_INFO")} == {
        "HTTP_HOST": "h", "HTTP_X_A": "1,2", "CONTENT_TYPE": "t/x", "CONTENT_LENGTH": "0",
        "HTTP_EXPECT": "100-continue", "HTTP_TRANSFER_ENCODING": "chunked", "HTTP_X_U": "u",
        "SCRIPT_NAME": "/app", "HTTP_SCRIPT_NAME": "/app", "PATH_INFO": "/x"}
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ


@pytest.mark.parametrize("version, protocol", [
    ((1, 1), "HTTP/1.1"), ((1, 0), "HTTP/1.0"), ((1, 2), "HTTP/1.2"),
])
def test_server_protocol(version, protocol):
    assert env(headers=[("Host", "h")], version=version)[0]["SERVER_PROTOCOL"] == protocol


@pytest.mark.parametrize("version", [(2, 0), (0, 9)])
def test_only_http_1(version):
    with pytest.raises(BadRequest, match="Invalid HTTP Version"):
        env(headers=[("Host", "h")], version=version)


@pytest.mark.parametrize("peer, address", [(TCP, ("10.0.0.7", 5555)), (UNIX, "")])
def test_peer_address(peer, address):
    """gunicorn's req.peer_addr, made once per connection."""
    assert peer.address == address


@pytest.mark.parametrize("target, kept", [
    (b"/", True), (b"/a/b?x=1", True), (b"/%7E?q", True),
    (b"/x#frag", False), (b"//double", False), (b"*", False), (b"http://h/abs", False),
])
def test_targets_split_alike_cached_or_not(monkeypatch, target, kept):
    """Origin-form targets are split once (their split holds for any method); others never kept."""
    from gunicorn_aiowsgi import environ as core
    monkeypatch.setattr(core, "_TARGETS", {})
    first = env(target, method="OPTIONS")
    assert env(target, method="OPTIONS") == first
    assert list(core._TARGETS) == ([target.decode()] if kept else [])


@pytest.mark.parametrize("target", [b"/sp ace", b"/\x7f", b"/caf\xc3\xa9", b""])
def test_refused_targets_are_never_kept(monkeypatch, target):
    from gunicorn_aiowsgi import environ as core
    monkeypatch.setattr(core, "_TARGETS", {})
    for _again in (False, True):
        with pytest.raises(BadRequest):
            env(target)
    assert core._TARGETS == {}


def test_target_cache_is_bounded(monkeypatch):
    from gunicorn_aiowsgi import environ as core
    monkeypatch.setattr(core, "_TARGETS", {})
    for n in range(core.TARGET_CACHE_SIZE + 10):
        env(f"/{n}".encode())
    env(b"/" + b"a" * core.TARGET_CACHE_LENGTH)
    assert len(core._TARGETS) == core.TARGET_CACHE_SIZE
    assert env(b"/999?x")[0]["PATH_INFO"] == "/999"  # past the bound: split, not kept


@pytest.mark.parametrize("target, path, query", [
    ("/a/b?x=1", "/a/b", "x=1"), ("/a#f?x", "/a", ""), ("/a?x=1#f", "/a", "x=1"), ("*", "*", ""),
])
def test_refusal_environ_is_what_gunicorn_logs_a_refused_request_with(target, path, query):
    from gunicorn_aiowsgi.environ import base_environ, refusal_environ
    environ = refusal_environ(base_environ(Settings(), None, None), Settings(), TCP, "GET", target,
                              (1, 0))
    assert (environ["RAW_URI"], environ["PATH_INFO"], environ["QUERY_STRING"]) == (target, path, query)
    assert environ["REQUEST_METHOD"] == "GET" and environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert environ["REMOTE_ADDR"] == "10.0.0.7" and environ["wsgi.url_scheme"] == "http"
