"""Proxies, TLS and limits: decided as gunicorn (gthread) decides them, on the same requests."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest
import trustme
from gunicorn.config import Config
from server import Conn, listen_queue, needs, wait_until
from server import request as send_raw

from .helpers import marks, serve, tls_serve

AIOWSGI, GTHREAD = "gunicorn_aiowsgi.Worker", "gthread"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def exchange(server: Any, data: bytes, count: int = 1, wrap: Any = None) -> list[tuple[int, Any]]:
    """Send raw bytes on one connection and read `count` answers as (status, environ or body)."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    if wrap is not None:
        sock = wrap(sock)
    answers = []
    with Conn(sock) as conn:
        conn.send(data)
        for _ in range(count):
            status, _, body = conn.response()
            answers.append((status, json.loads(body) if status == 200 else None))
    return answers


def both(*args: str, **kwargs: Any) -> dict[str, Any]:
    """An aiowsgi and a gthread master with the same settings (caller stops them); gthread is
    the reference gunicorn's (server.REFERENCE_GUNICORN), whatever gunicorn is installed."""
    return {kind: serve(*args, worker_class=kind, wait_ready=kind == AIOWSGI,
                        reference=kind == GTHREAD, **kwargs)
            for kind in (AIOWSGI, GTHREAD)}


def same_answers(servers: dict[str, Any], data: bytes, count: int = 1, **kw: Any) -> list:
    """What both workers answer to `data`, asserted equal; returns it."""
    ours, theirs = ([(status, normal(environ))
                     for status, environ in exchange(servers[kind], data, count, **kw)]
                    for kind in (AIOWSGI, GTHREAD))
    assert ours == theirs
    return ours


def normal(environ: dict | None) -> dict | None:
    """Minus what differs by nature: ephemeral ports (the client's, each master's own)."""
    if not isinstance(environ, dict):
        return environ
    return {k: v for k, v in environ.items() if k not in ("REMOTE_PORT", "SERVER_PORT")}


def request(path: str = "/environ", headers: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode()


# -- forwarded headers --------------------------------------------------------------------
FORWARDED = [
    "X-Forwarded-Proto: https\r\n",
    "X-Forwarded-Ssl: on\r\n",
    "X-Forwarded-Protocol: ssl\r\n",
    "X-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n",   # contradictory: 400
    "X-Forwarded-For: 203.0.113.9\r\n",                        # never changes REMOTE_ADDR
    "X_Under_Score: dropped or kept\r\n",                      # header_map
    "SCRIPT_NAME: /mount\r\n",                                  # forwarder_headers
]


@pytest.mark.parametrize("args", [
    (),
    ("--forwarded-allow-ips", "192.0.2.1"),                    # the loopback client is untrusted
    pytest.param(("--forwarded-allow-ips", "*", "--header-map", "dangerous"),
                 marks=needs("header_map")),
    pytest.param(("--header-map", "refuse", "--forwarder-headers", "SCRIPT_NAME,X_UNDER_SCORE"),
                 marks=needs("header_map", "forwarder_headers")),
    pytest.param(("--forwarded-allow-ips", "127.0.0.0/8"), marks=needs("allow_networks")),
], ids=["defaults", "untrusted", "dangerous", "refuse", "network"])
def test_forwarded_headers_decide_like_gthread(args: tuple[str, ...]) -> None:
    servers = both(*args)
    try:
        for headers in FORWARDED:
            [(status, environ)] = same_answers(servers, request("/mount/environ", headers))
            if status == 200:
                assert environ["REMOTE_ADDR"] == "127.0.0.1"
    finally:
        for server in servers.values():
            server.stop()


# -- PROXY protocol -----------------------------------------------------------------------
def v1(client: str, port: int) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    target = "::1" if ":" in client else "127.0.0.1"
    return f"PROXY {family} {client} {target} {port} 8000\r\n".encode()


def v2(client: str, port: int) -> bytes:
    src, dst = ipaddress.ip_address(client), ipaddress.ip_address("10.0.0.2")
    block = src.packed + dst.packed + struct.pack("!HH", port, 8000)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


@pytest.fixture(scope="module")
def proxied() -> Any:
    servers = both("--proxy-protocol", "auto")
    yield servers
    for server in servers.values():
        server.stop()


@needs("proxy_modes")
@pytest.mark.parametrize("make, client, port", [(v1, "203.0.113.7", 4242), (v1, "2001:db8::7", 4243),
                                                (v2, "198.51.100.8", 5353)],
                         ids=["v1-ipv4", "v1-ipv6", "v2"])
def test_proxy_protocol_addresses_every_request_on_the_connection(proxied: Any, make: Any,
                                                                 client: str, port: int) -> None:
    preamble = make(client, port)
    ours = exchange(proxied[AIOWSGI], preamble + request() * 2, count=2)
    theirs = exchange(proxied[GTHREAD], preamble + request() * 2, count=2)
    assert [status for status, _ in ours] == [200, 200]
    for _, environ in ours:  # both requests: this preamble's client, not the proxy's address
        assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == (client, str(port))
        for key in ("PROXY_PROTOCOL", "PROXY_ADDR", "PROXY_PORT"):
            assert environ.get(key) == ours[0][1].get(key)  # the same for both requests
    # gthread gives the proxied address to the connection's first request.
    assert normal(ours[0][1]) == normal(theirs[0][1])
    assert ours[0][1]["REMOTE_PORT"] == theirs[0][1]["REMOTE_PORT"]


@needs("proxy_modes")
def test_proxy_protocol_from_a_peer_not_allowed_is_refused() -> None:
    servers = both("--proxy-protocol", "v1", "--proxy-allow-from", "192.0.2.1")
    try:
        assert same_answers(servers, v1("203.0.113.7", 4242) + request()) == [(403, None)]
    finally:
        for server in servers.values():
            server.stop()


@needs("proxy_modes")
def test_proxy_protocol_garbage_is_a_400(proxied: Any) -> None:
    assert same_answers(proxied, b"PROXY TCP4 nonsense\r\n" + request()) == [(400, None)]


# -- TLS ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client@contract.test")
    files = {"ca_file": tmp / "ca.pem", "cert": tmp / "server.pem", "key": tmp / "server.key"}
    ca.cert_pem.write_to_path(files["ca_file"])
    server_cert.cert_chain_pems[0].write_to_path(files["cert"])
    server_cert.private_key_pem.write_to_path(files["key"])
    return {"ca": ca, "client_cert": client_cert, **{k: str(v) for k, v in files.items()}}


def client_context(pki: dict, alpn: list[str] | None = None, with_cert: bool = False,
                   max_version: Any = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki["ca"].configure_trust(context)
    if alpn:
        context.set_alpn_protocols(alpn)
    if with_cert:
        pki["client_cert"].configure_cert(context)
    if max_version is not None:
        context.maximum_version = max_version
    return context


def tls_wrap(context: ssl.SSLContext) -> Any:
    return lambda sock: context.wrap_socket(sock, server_hostname="127.0.0.1")


def test_tls_serves_https_and_offers_only_http11(pki: dict) -> None:
    with tls_serve("--certfile", pki["cert"], "--keyfile", pki["key"]) as g:
        context = client_context(pki, alpn=["h2", "http/1.1"])
        sock = context.wrap_socket(socket.create_connection((g.host, g.port), timeout=10),
                                   server_hostname="127.0.0.1")
        assert sock.selected_alpn_protocol() == "http/1.1"
        with Conn(sock) as conn:
            conn.send(request("/info"))
            status, _, body = conn.response()
        assert status == 200 and json.loads(body)["scheme"] == "https"
        assert g.url.startswith("https://")


def test_tls_client_certificates_and_ciphers(pki: dict) -> None:
    with tls_serve("--certfile", pki["cert"], "--keyfile", pki["key"], "--ca-certs", pki["ca_file"],
               "--cert-reqs", str(int(ssl.CERT_REQUIRED)),
               "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256") as g:
        tls12 = ssl.TLSVersion.TLSv1_2
        context = client_context(pki, with_cert=True, max_version=tls12)
        sock = context.wrap_socket(socket.create_connection((g.host, g.port), timeout=10),
                                   server_hostname="127.0.0.1")
        assert sock.cipher()[0] in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256")
        with Conn(sock) as conn:
            conn.send(request("/pid"))
            assert conn.response()[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            exchange(g, request("/pid"), wrap=tls_wrap(client_context(pki)))  # no client cert


def test_tls_ssl_context_hook(pki: dict, tmp_path: Path) -> None:
    """The ssl_context server hook shapes the context, as with sync and gthread."""
    config = tmp_path / "tls_conf.py"
    config.write_text(
        "import json, os, ssl\n"
        "def ssl_context(conf, default_ssl_context_factory):\n"
        "    context = default_ssl_context_factory()\n"
        "    context.minimum_version = ssl.TLSVersion.TLSv1_3\n"
        "    with open(os.environ['CONTRACT_MARKS'], 'a') as f:\n"
        "        f.write(json.dumps({'hook': 'ssl_context', 'pid': os.getpid()}) + '\\n')\n"
        "    return context\n")
    marks_path = tmp_path / "marks"
    with tls_serve("--certfile", pki["cert"], "--keyfile", pki["key"], marks=marks_path,
               config=str(config)) as g:
        answer = exchange(g, request("/environ"), wrap=tls_wrap(client_context(pki)))
        assert answer[0][1]["wsgi.url_scheme"] == "https"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls12 = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
            exchange(g, request(), wrap=tls_wrap(tls12))
        assert g.worker_pid() in [m["pid"] for m in marks(marks_path, "ssl_context")]


def served_serial(g: Any, pki: dict) -> int:
    """The serial number of the certificate a new TLS connection gets (after a 200 on it)."""
    sock = client_context(pki).wrap_socket(socket.create_connection((g.host, g.port), timeout=10),
                                           server_hostname="127.0.0.1")
    serial = int(sock.getpeercert()["serialNumber"], 16)
    with Conn(sock) as conn:
        conn.send(request("/pid"))
        assert conn.response()[0] == 200
    return serial


def test_tls_a_renewed_certificate_serves_new_connections_without_a_restart(pki: dict,
                                                                            tmp_path: Path) -> None:
    """As certbot renews: the files are replaced, no signal is sent. gthread builds a context
    for every connection; ours is rebuilt when the files change (looked at once a second)."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(Path(pki["cert"]).read_bytes())
    key.write_bytes(Path(pki["key"]).read_bytes())
    with tls_serve("--certfile", str(cert), "--keyfile", str(key)) as g:
        worker, first = g.worker_pid(), served_serial(g, pki)
        renewed = pki["ca"].issue_cert("127.0.0.1", "localhost")
        renewed.private_key_pem.write_to_path(str(key))
        renewed.cert_chain_pems[0].write_to_path(str(cert))
        wait_until(lambda: served_serial(g, pki) != first, 10, "the renewed certificate")
        assert g.worker_pid() == worker  # no restart


# -- limits -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited() -> Any:
    servers = both("--limit-request-line", "200", "--limit-request-fields", "5",
                   "--limit-request-field_size", "100")
    yield servers
    for server in servers.values():
        server.stop()


@pytest.mark.parametrize("data, status", [
    (request("/environ?" + "a" * 300), 414),
    (request("/environ", "".join(f"X-{i}: v\r\n" for i in range(10))), 431),
    (request("/environ", "X-Big: " + "v" * 300 + "\r\n"), 431),
    (request("/environ?" + "a" * 100), 200),
], ids=["request-line", "fields", "field-size", "within"])
def test_limits_answer_like_gthread(limited: Any, data: bytes, status: int) -> None:
    [(got, _)] = same_answers(limited, data)
    assert got == status


def at_most(what: str, size: int) -> bytes:
    """A request whose `what` is `size`: request-target bytes, header fields (Host included) or
    bytes of one field line ("X-Big: vvv\r\n")."""
    if what == "line":
        return request("/pid?" + "a" * (size - len("/pid?")))
    if what == "fields":
        return request("/pid", "".join(f"X-{i}: v\r\n" for i in range(size - 1)))
    return request("/pid", "X-Big: " + "v" * (size - len("X-Big: \r\n")) + "\r\n")


# README: values above gunicorn's maxima mean those maxima, and so does 0 for the field count and
# size, as in gunicorn: 8190 bytes of request-target, 32768 fields, 8190 bytes of field line (0
# only). limit_request_line 0 is gunicorn's no limit: with AIOWSGI_MAX_HEAD_SIZE off, a request-
# target of 1 MiB at most (LINE_UNLIMITED, where gunicorn 27's own parser stops).
@pytest.mark.parametrize("args, line", [
    (("--limit-request-line", "0", "--limit-request-fields", "0", "--limit-request-field_size", "0"),
     1024 * 1024),
    (("--limit-request-line", "20000", "--limit-request-fields", "40000"), 8190),
], ids=["zero", "above-the-maximum"])
def test_limit_request_zero_or_above_the_maximum_means_the_maximum(args: tuple[str, ...],
                                                                   line: int) -> None:
    # 32768 fields make a 300 KiB head: AIOWSGI_MAX_HEAD_SIZE off, gunicorn's limits alone.
    with serve(*args, env={"AIOWSGI_MAX_HEAD_SIZE": "0"}) as g:
        answers = {(what, size): send_raw(g, at_most(what, size))[0]
                   for what, maximum in (("line", line), ("fields", 32768), ("field_size", 8190))
                   for size in (maximum, maximum + 1)}
    assert answers == {("line", line): 200, ("line", line + 1): 414,
                       ("fields", 32768): 200, ("fields", 32769): 431,
                       ("field_size", 8190): 200, ("field_size", 8191): 431}


def head_of(size: int) -> bytes:
    """A request head of exactly `size` bytes, its fields within gunicorn's default limits."""
    head = request("/pid")
    fields, left = "", size - len(head)
    for i in range(100):
        if left <= 0:
            break
        line = f"X-{i:02}: "
        take = min(8000, left)
        fields += line + "v" * (take - len(line) - 2) + "\r\n"
        left -= take
    data = request("/pid", fields)
    assert len(data) == size
    return data


def test_max_head_size_bounds_the_head_gunicorns_limits_allow() -> None:
    """gunicorn's defaults take 100 fields of 8190 bytes (800 KiB, which aiohttp's parser would
    keep twice); AIOWSGI_MAX_HEAD_SIZE (64 KiB) refuses a larger head with 431, and the next
    request on a new connection is served."""
    with serve() as g:
        assert send_raw(g, head_of(64 * 1024))[0] == 200
        assert send_raw(g, head_of(64 * 1024 + 1))[0] == 431
        assert send_raw(g, head_of(9 * 8000))[0] == 431  # gthread: 200
        assert send_raw(g, request("/pid"))[0] == 200
    with serve(env={"AIOWSGI_MAX_HEAD_SIZE": str(80 * 1024)}) as g:
        assert send_raw(g, head_of(9 * 8000))[0] == 200


def test_backlog_is_the_masters(tmp_path: Path) -> None:
    """aiohttp's own server would listen() again with 128; the worker never calls listen()."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    for backlog in (1000, 2048):
        with serve("--backlog", str(backlog)) as g:
            assert listen_queue(g.port)[1] == min(backlog, somaxconn)


# The warned settings with the flags that set them; each test run passes those the installed
# gunicorn has (feature detection): gunicorn 21 has only strip_header_spaces of these.
WARNED_FLAGS = {
    "permit_obsolete_folding": ("--permit-obsolete-folding",),
    "strip_header_spaces": ("--strip-header-spaces",),
    "permit_unconventional_http_method": ("--permit-unconventional-http-method",),
    "casefold_http_method": ("--casefold-http-method",),
    "http_parser": ("--http-parser", "python"),
}


def test_settings_aiohttp_cannot_honour_are_said_at_startup() -> None:
    names = [name for name in WARNED_FLAGS if name in Config().settings]
    with serve(*(flag for name in names for flag in WARNED_FLAGS[name])) as g:
        log = g.log()
        for name in names:
            assert f"[WARNING] {name} is set but not supported by gunicorn_aiowsgi: " in log
        # and they behave as the warning says
        assert exchange(g, request("/pid", "X-Folded: a\r\n b\r\n"))[0][0] == 400
        assert exchange(g, b"get /pid HTTP/1.1\r\nHost: test\r\n\r\n")[0][0] == 400
    with serve() as g:
        assert "not supported by gunicorn_aiowsgi" not in g.log()


def test_tls_large_upload_read_as_it_arrives_is_intact(pki: dict) -> None:
    """--threads 4: a 6 MiB body goes to its app thread as it arrives (one stream slot), through
    TLS; the feed's bound (4 MiB unread) pauses and resumes reading on the SSL transport."""
    with tls_serve("--certfile", pki["cert"], "--keyfile", pki["key"], "--threads", "4",
                   app="apps:router", env={"AIOWSGI_BODY_MEMORY_LIMIT": "65536"}) as g:
        data = os.urandom(6 * 1024 * 1024)
        sock = tls_wrap(client_context(pki))(socket.create_connection((g.host, g.port), timeout=20))
        with Conn(sock) as conn:
            conn.send(f"POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\n\r\n"
                      .encode() + data)
            status, _, body = conn.response()
        assert (status, body) == (200, f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
