"""The connection in memory (h11-style): bytes in through a fake transport, responses out; no socket, no master."""

from __future__ import annotations

import ast
import pathlib
import socket
import threading

import pytest
from memory import Harness, chunked, get, post, splits

from gunicorn_aiowsgi.boundary import ConnState, deadline, protocol_ok
from gunicorn_aiowsgi.bridge import ThreadPool
from gunicorn_aiowsgi.listener import tune
from gunicorn_aiowsgi.parser import SPARE_HEAD, SPARE_PARSERS

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "gunicorn_aiowsgi"


HARNESSES: list[Harness] = []


@pytest.fixture(autouse=True)
def close_harnesses():
    yield
    while HARNESSES:
        HARNESSES.pop().close()


def run(*reads: bytes, eof: bool = False, **settings) -> Harness:
    h = Harness(**settings)
    HARNESSES.append(h)
    h.feed(*reads)
    if eof:
        h.eof()
    return h


PIPELINE = get("/one") + post("/two", b"hello") + chunked("/three", b"ab", b"\r\n\r\n", b"c") + get("/four")
PIPELINE_ANSWERS = [(200, b"GET /one "), (200, b"POST /two hello"), (200, b"POST /three ab\r\n\r\nc"),
                    (200, b"GET /four ")]


@pytest.mark.parametrize("reads", splits(PIPELINE), ids=lambda r: f"split-{len(r[0])}")
def test_pipelined_sequence_split_anywhere_is_answered_in_order(reads):
    h = run(*reads)
    assert h.responses() == PIPELINE_ANSWERS
    assert h.conn.state is ConnState.IDLE and not h.transport.closed


@pytest.mark.parametrize("reads", splits(post("/up", b"0123456789") + get("/next")),
                         ids=lambda r: f"split-{len(r[0])}")
def test_body_split_anywhere(reads):
    assert run(*reads).responses() == [(200, b"POST /up 0123456789"), (200, b"GET /next ")]


@pytest.mark.parametrize("reads", splits(chunked("/c", b"abc", b"0\r\n\r\nGET /x HTTP/1.1") + get("/n")),
                         ids=lambda r: f"split-{len(r[0])}")
def test_chunked_body_split_anywhere_never_leaks_into_the_next_request(reads):
    assert run(*reads).responses() == [(200, b"POST /c abc0\r\n\r\nGET /x HTTP/1.1"), (200, b"GET /n ")]


class SlowClose:
    """An iterable whose close() (a transaction's commit, a span's end) waits for `release`."""

    def __init__(self, release: threading.Event, seen: list) -> None:
        self.release, self.seen = release, seen

    def __iter__(self):
        yield b"ok"

    def close(self) -> None:
        self.release.wait(5)
        self.seen.append("closed")


@pytest.mark.parametrize("pipelined", [False, True], ids=["after-the-response", "pipelined"])
def test_the_next_request_on_a_connection_waits_for_the_iterable_close(pipelined):
    # gthread reads a connection's next request only after close() (and post_request) ran: an
    # app may rely on it (its teardown done before the same client's next call).
    release, seen = threading.Event(), []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "2")])
        return SlowClose(release, seen)

    pool = ThreadPool(2)
    try:
        h = Harness(app, pool=pool, threads=2)
        HARNESSES.append(h)
        h.feed(get("/one") + get("/two") if pipelined else get("/one"))
        h.until(lambda: len(h.responses()) == 1, "the first response")
        if not pipelined:
            h.feed(get("/two"))
        h.wait(0.1)  # a free thread could take /two now if the connection read on
        assert seen == ["/one"] and h.conn.state is ConnState.APP
        release.set()
        h.until(lambda: len(h.responses()) == 2, "the second response")
        assert seen[:3] == ["/one", "closed", "/two"] and h.responses() == [(200, b"ok")] * 2
    finally:
        release.set()
        pool.shutdown(1)


# An Upgrade offer the app answers is declined (RFC 9110 section 7.8): the connection stays, and
# its next request starts after the offer's body, whatever that body's framing.
UPGRADE_OFFERS = {
    "h2c": (b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", b"GET /a "),
    "websocket": (b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                  b"GET /a "),
    "with-length": (b"POST /a HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: x\r\n"
                    b"Content-Length: 13\r\n\r\nGET /x HTTP/1", b"POST /a GET /x HTTP/1"),
    "chunked": (b"POST /a HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n", b"POST /a abc"),
}


@pytest.mark.parametrize("offer, answer", UPGRADE_OFFERS.values(), ids=UPGRADE_OFFERS.keys())
def test_an_upgrade_offer_is_answered_and_the_connection_kept_split_anywhere(offer, answer):
    for reads in splits(offer + get("/canary")):
        h = run(*reads)
        assert h.responses() == [(200, answer), (200, b"GET /canary ")], reads
        assert not h.transport.closed and b"Connection: close" not in bytes(h.transport.written)


def test_after_a_connect_nothing_is_read_as_a_request():
    h = run(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n" + get("/canary"))
    assert [status for status, _ in h.responses()] == [200]
    assert h.transport.closed or h.conn.state is ConnState.LINGER


def test_a_relay_with_nothing_queued_leaves_the_response_alone():
    # resume_writing (the client took bytes) relays whatever is queued: maybe nothing yet.
    release = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "4")])
        yield b"ab"
        release.wait(5)
        yield b"cd"

    pool = ThreadPool(1)
    try:
        h = Harness(app, pool=pool, threads=1)
        HARNESSES.append(h)
        h.feed(get("/stream"))
        h.until(lambda: bytes(h.transport.written).endswith(b"ab"), "the first chunk")
        h.conn.resume_writing()
        release.set()
        h.until(lambda: h.responses() == [(200, b"abcd")], "the whole response")
        assert not h.transport.closed and not [line for line in h.log.lines if line[0] == "error"]
    finally:
        release.set()
        pool.shutdown(1)


# Blank lines where a lax server would cut: inside chunk data, and before a request line.
BLANK_LINES = chunked("/c", b"\r\n\r\n" * 4, b"0\r\n\r\n") + b"\r\n" * 6 + get("/n")


@pytest.mark.parametrize("reads", splits(BLANK_LINES), ids=lambda r: f"split-{len(r[0])}")
def test_blank_lines_in_chunk_data_and_before_a_request_split_anywhere(reads):
    assert run(*reads).responses() == [(200, b"POST /c " + b"\r\n\r\n" * 4 + b"0\r\n\r\n"),
                                       (200, b"GET /n ")]


def test_a_read_of_many_blank_lines_in_chunk_data_reaches_the_app_whole():
    data = b"\r\n\r\n" * 50_000
    assert run(chunked("/c", data) + get("/n")).responses() == [(200, b"POST /c " + data),
                                                                  (200, b"GET /n ")]


def test_many_empty_lines_before_a_request_are_skipped():
    h = run(b"\r\n" * 100_000 + get("/n"))
    assert h.responses() == [(200, b"GET /n ")]


def holds_nothing(h: Harness) -> bool:
    """An idle connection keeps no parser, request line or held bytes (what each idle one costs)."""
    return h.conn.parser is None and h.conn.bound is None and h.conn.held == b""


@pytest.mark.parametrize("reads", splits(post("/two", b"hello")), ids=lambda r: f"split-{len(r[0])}")
def test_an_idle_connection_holds_no_parser_and_serves_the_next_request(reads):
    h = run()
    assert holds_nothing(h)  # accepted, no byte yet
    h.feed(get("/one"))
    assert h.conn.state is ConnState.IDLE and holds_nothing(h)
    h.feed(*reads)
    assert h.responses() == [(200, b"GET /one "), (200, b"POST /two hello")]
    assert h.conn.state is ConnState.IDLE and holds_nothing(h)


# A connection's request, and whether the parser that read it is reused by the worker's next
# head (on any connection): only one that read whole requests, kept alive, none with a body,
# chunked or upgraded. (A Content-Length body is counted by the connection, never parsed: its
# parser is left expecting it.)
REUSE = [
    ("get", get("/one"), True),
    ("post without a body", post("/one", b""), True),
    ("http/1.0 keep-alive", b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ("body", post("/one", b"hello"), False),
    # The parser stops at an Upgrade head and is made anew there (Parser.reset): what is kept is new.
    ("upgrade", get("/one", "Connection: upgrade\r\nUpgrade: websocket\r\n"), True),
    ("upgrade with a body", b"PUT /one HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\n"
     b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello", False),
    ("chunked", chunked("/one", b"ab"), False),
    ("chunked, no chunk", chunked("/one"), False),
    ("trailer", chunked("/one", b"abc")[:-2] + b"X-Leak: secret\r\n\r\n", False),
    ("connection close", get("/one", "Connection: close\r\n"), False),
    ("http/1.0", b"GET /one HTTP/1.0\r\n\r\n", False),
    ("http/1.0 keep-alive, close", b"GET /one HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
     False),
    ("malformed", b"GET /one HTTP/1.1\r\nHost: t\r\nBad Field: x\r\n\r\n", False),
    ("content-length 2^64-1", b"GET /one HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551615\r\n"
     b"\r\n", False),
    ("content-length 000", b"GET /one HTTP/1.1\r\nHost: t\r\nContent-Length: 000\r\n\r\n", True),
    ("duplicate content-length", b"GET /one HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n"
     b"Content-Length: 0\r\n\r\n", False),
]


@pytest.mark.parametrize(("first", "reused"), [case[1:] for case in REUSE], ids=[case[0] for case in REUSE])
def test_a_parser_is_reused_only_after_whole_requests_neither_chunked_nor_upgraded(first, reused):
    h = Harness()
    HARNESSES.append(h)
    h.feed(first[:1])
    parser = h.conn.parser  # built on the first byte
    h.feed(first[1:])
    assert h.responses(), "the first request is answered (or refused)"
    other = h.connect()
    other.feed(b"G")
    assert (other.conn.parser is parser) is reused
    other.feed(get("/next")[1:])
    assert other.responses() == [(200, b"GET /next ")]


def test_spare_parsers_kept_are_bounded():
    """A burst of heads in progress at once leaves at most SPARE_PARSERS parsers kept."""
    h = Harness()
    HARNESSES.append(h)
    clients = [h.connect() for _ in range(SPARE_PARSERS + 6)]
    for client in clients:
        client.feed(b"GET /one HTTP/1.1\r\n")
    assert len(h.ctx.parsers) == 0
    for client in clients:
        client.feed(b"Host: t\r\n\r\n")
        assert client.responses() == [(200, b"GET /one ")]
    assert len(h.ctx.parsers) == SPARE_PARSERS


@pytest.mark.parametrize("size, kept", [(SPARE_HEAD, True), (SPARE_HEAD + 1, False)])
def test_a_parser_is_kept_only_after_a_head_no_larger_than_spare_head(size, kept):
    """A spare holds its last head's fields until it parses another: a large head's parser
    (cookies of 60 KiB, say) is let go, so the spares stay small whatever heads may be."""
    h = Harness()
    HARNESSES.append(h)
    head = get("/one", "X-Pad: \r\n")
    data = head.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (size - len(head)))
    assert len(data) == size
    h.feed(data)
    assert h.responses() == [(200, b"GET /one ")]
    assert len(h.ctx.parsers) == (1 if kept else 0)


FIELDS = "X-Secret: a\r\nContent-Encoding: gzip\r\nCookie: s=1\r\nExpect: 100-continue\r\n"
FIRSTS = {"get": (get("/one", FIELDS), b""),
          "post": (post("/one", b"\x1f\x8b\x08 gzip").replace(b"\r\n\r\n", ("\r\n" + FIELDS + "\r\n").encode(), 1),
                   b"\x1f\x8b\x08 gzip")}
NEXT = post("/two", b"\x1f\x8b\x08 not gzip")


@pytest.mark.parametrize(("first", "at"), [(name, at) for name, (data, _) in FIRSTS.items()
                                           for at in range(1, len(data))])
def test_a_reused_parser_gives_another_clients_head_only_its_own_fields(first, at):
    """Nothing of one client's head reaches the next one parsed by the same parser: not a
    field, not its Content-Encoding (the body arrives as sent), whatever the reads. (A parser
    that read a head with a body is not reused: the next head gets a parser of its own.)"""
    seen = []

    def app(environ, start_response):
        seen.append(({k for k in environ if k.startswith("HTTP_")}, environ["wsgi.input"].read()))
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    h = Harness(app)
    HARNESSES.append(h)
    data, body = FIRSTS[first]
    h.feed(data[:at])
    parser = h.conn.parser
    h.feed(data[at:])
    other = h.connect()
    cut = min(at, len(NEXT) - 1)
    other.feed(NEXT[:cut])
    assert (other.conn.parser is parser) is (not body)
    other.feed(NEXT[cut:])
    assert seen == [({"HTTP_HOST", "HTTP_X_SECRET", "HTTP_CONTENT_ENCODING", "HTTP_COOKIE",
                      "HTTP_EXPECT"}, body), ({"HTTP_HOST"}, b"\x1f\x8b\x08 not gzip")]


@pytest.mark.parametrize("reads", splits(chunked("/c", b"abc")[:-2] + b"X-Leak: secret\r\n\r\n"
                                         + get("/next")), ids=lambda r: f"split-{len(r[0])}")
def test_a_chunked_bodys_trailer_field_never_reaches_the_next_request(reads):
    """aiohttp's parser keeps a chunked body's last trailer field past the message's end and
    reads it as the next head's first field: a parser reused for the next request would hand
    one request's trailer to the next (another client's, were parsers shared)."""
    seen = []

    def app(environ, start_response):
        seen.append(environ.get("HTTP_X_LEAK"))
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    h = Harness(app)
    HARNESSES.append(h)
    h.feed(*reads)
    assert seen == [None, None] and len(h.responses()) == 2


def test_a_request_waiting_in_the_socket_at_keepalive_expiry_is_parsed_from_a_new_parser():
    """The keep-alive timer sees the next request unread in the socket: a head has begun."""
    h = run(get("/one"), keepalive=0.05)
    ours, client = socket.socketpair()
    try:
        client.sendall(get("/two"))
        h.transport.sock = ours
        h.wait(0.12)
        assert h.conn.state is ConnState.HEAD and not h.transport.closed
        h.feed(ours.recv(1024))
    finally:
        ours.close()
        client.close()
    assert h.responses() == [(200, b"GET /one "), (200, b"GET /two ")]
    assert holds_nothing(h)


def test_an_accepted_tcp_socket_gets_nodelay_and_keepalive():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        tune(accepted)
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    finally:
        for sock in (accepted, client, server):
            sock.close()


BAD = b"GET /bad HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n"


@pytest.mark.parametrize("reads", splits(get("/ok") + BAD + get("/canary")),
                         ids=lambda r: f"split-{len(r[0])}")
def test_valid_then_malformed_answers_the_first_and_refuses_the_rest(reads):
    h = run(*reads)
    assert h.responses()[0] == (200, b"GET /ok ")
    assert [status for status, _ in h.responses()] == [200, 400]
    assert h.transport.closed or h.conn.state is ConnState.LINGER


SMUGGLE = [get("/a") + b"GET /b HTTP/1.1\r\nHost: t\r\nX-Junk: 1\r\n", b"GET /admin HTTP/1.1\r\nHost: t\r\n\r\n"]


@pytest.mark.parametrize("reads", splits(SMUGGLE[1] + get("/canary")),
                         ids=lambda r: f"split-{len(r[0])}")
def test_a_continuation_line_is_never_a_request(reads):
    """A line inside /b's head that looks like a request line must not be served (issue: _recover).

    It is a field line without a colon inside /b's head: 400 at its first space (the end of the
    field name), however it is split, since every byte of it arrives; nothing after it is read.
    """
    h = run(SMUGGLE[0], *reads)
    assert h.responses()[0] == (200, b"GET /a ")  # /b never completes; /admin is a line in its head
    assert [status for status, _ in h.responses()] == [200, 400] and h.worker.served == 1
    assert h.conn.state is ConnState.LINGER and h.transport.eof_written


@pytest.mark.parametrize("line, ok", [
    (b"GET / HTTP/1.1", True), (b"GET / HTTP/1.0\r", True), (b"GET / RTSP/1.0", False),
    (b"SOURCE / ICE/1.0", False), (b"GET / http/1.1", False),
])
def test_protocol_name_must_be_http(line, ok):
    assert protocol_ok(line) is ok


@pytest.mark.parametrize("request_line", [b"GET / RTSP/1.0", b"SOURCE / ICE/1.0", b"DESCRIBE / RTSP/1.0"])
def test_other_protocols_are_refused(request_line):
    h = run(request_line + b"\r\nHost: t\r\n\r\n")
    assert [status for status, _ in h.responses()] == [400]


def test_connect_with_content_is_refused_and_without_is_answered_then_closed():
    h = run(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nContent-Length: 10\r\n\r\n0123456789" + get("/x"))
    assert [status for status, _ in h.responses()] == [400]
    h = run(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n" + get("/x"))
    assert [status for status, _ in h.responses()] == [200]  # and /x is never parsed:
    assert h.transport.closed  # the parser stops at CONNECT (a tunnel), so the connection ends


def test_half_close_after_complete_requests_answers_them_then_closes():
    h = run(get("/one") + get("/two"), eof=True)
    assert h.responses() == [(200, b"GET /one "), (200, b"GET /two ")]
    assert h.transport.closed


def test_half_close_inside_a_body_is_refused_without_calling_the_app():
    h = run(post("/p", b"0123456789")[:-3], eof=True)
    assert [status for status, _ in h.responses()] == [400]
    assert h.worker.served == 0


def test_pipelined_bytes_past_the_limit_pause_reading():
    h = run()
    h.conn.state = ConnState.APP  # a request is being answered
    h.conn.data_received(get("/x") * 5000)  # about 90 KiB
    assert not h.transport.reading


def deadline_of(conn) -> float | None:
    """When the connection's current state times out (boundary.deadline), as its timer uses."""
    return deadline(conn.state, conn.since, conn.requests, conn.ctx.settings)


@pytest.mark.parametrize("reads, state, setting", [
    ([], ConnState.IDLE, "header_timeout"),                   # nothing yet: the header timeout
    ([b"GET / HT"], ConnState.HEAD, "header_timeout"),         # a head begun
    ([post("/p", b"abcdef")[:-3]], ConnState.BODY, "body_timeout"),  # a body begun
    ([get("/x")], ConnState.IDLE, "keepalive"),                # answered: keep-alive
])
def test_every_waiting_state_times_out(reads, state, setting):
    h = run(*reads, header_timeout=0.05, body_timeout=0.05, keepalive=0.05)
    assert h.conn.state is state
    assert deadline_of(h.conn) == pytest.approx(h.conn.since + 0.05)
    h.wait(0.12)
    assert h.transport.closed, f"{state} did not time out after {setting}"


def test_proxy_preamble_state_times_out():
    h = run(b"PROXY TCP4 1.2.3.4", proxy_protocol="v1", proxy_allow_ips=("*",), header_timeout=0.05)
    assert h.conn.state is ConnState.PREAMBLE
    h.wait(0.12)
    assert h.transport.closed


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PREAMBLES = {  # a preamble, well formed or not, then a request
    "v1": b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 80\r\n",
    "v1-malformed": b"PROXY TCP4 nonsense\r\n",
    "v1-oversized": b"PROXY TCP4 " + b"1" * 200 + b"\r\n",
    "v2-udp": V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),
}


@pytest.mark.parametrize("name", PREAMBLES)
def test_a_preamble_from_a_peer_not_allowed_is_403_whatever_it_holds(name):
    """As gunicorn: the peer is judged once the signature is recognised, before the rest is
    parsed, so a malformed preamble from it is a 403 too, and none of its bytes are logged."""
    h = run(PREAMBLES[name] + get("/x"), proxy_protocol="auto", proxy_allow_ips=("192.0.2.1",))
    assert [status for status, _ in h.responses()] == [403]
    assert h.worker.served == 0
    assert [text for _level, text in h.log.lines] == [
        "Invalid request from ip=127.0.0.1: Request forbidden"]


@pytest.mark.parametrize("name", [name for name in PREAMBLES if name != "v1"])
def test_a_malformed_preamble_from_an_allowed_peer_is_400(name):
    h = run(PREAMBLES[name] + get("/x"), proxy_protocol="auto", proxy_allow_ips=("*",))
    assert [status for status, _ in h.responses()] == [400]
    assert h.worker.served == 0


def test_a_request_being_answered_has_no_connection_deadline():
    h = run(header_timeout=0.05)
    h.conn.state = ConnState.APP
    assert deadline_of(h.conn) is None


def test_error_answer_lingers_then_closes():
    h = run(BAD)
    assert h.conn.state is ConnState.LINGER and h.transport.eof_written
    h.feed(b"more bytes the client still sends")
    assert [status for status, _ in h.responses()] == [400]


# -- the aiohttp boundary ---------------------------------------------------------------------
def _imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_only_the_adapter_imports_aiohttp():
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if any(module.split(".")[0] == "aiohttp" for module, _ in _imports(path)))
    assert importers == ["parser.py"]


def test_no_private_aiohttp_name_is_used():
    for module, names in _imports(PACKAGE / "parser.py"):
        if module.startswith("aiohttp"):
            assert not any(part.startswith("_") for part in module.split(".")), module
            assert not any(name.startswith("_") for name in names), (module, names)
    source = (PACKAGE / "parser.py").read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            assert not (isinstance(owner, ast.Name) and owner.id in ("aiohttp", "payload", "message")), \
                node.attr


def test_a_body_refused_on_the_way_in_ends_the_request_once():
    """A chunked body past AIOWSGI_MAX_BODY_SIZE: 413 while it arrives, the app never called."""
    h = run(chunked("/big", b"x" * 40, b"y" * 40) + get("/next"), max_body_size=50)
    assert [status for status, _ in h.responses()] == [413]
    assert h.worker.served == 0 and h.conn.state is ConnState.LINGER


def test_the_adapter_checks_the_range_pyproject_declares():
    from gunicorn_aiowsgi import parser

    deps = (PACKAGE.parent / "pyproject.toml").read_text()
    assert f'"{parser.SUPPORTED}"' in deps
    assert parser._version("3.13.4") == (3, 13, 4) and parser._version("3.14.0rc1") == (3, 14, 0)


# aiohttp's parser names the bad bytes on lines of their own, a caret under them; gunicorn's
# warning and 400 page say it on one line, which log shippers read as one event.
PARSER_ERRORS = {
    "header-without-colon": (b"GET / HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n",
                             "Invalid header token"),
    "control-char-in-target": (b"GET /\x01 HTTP/1.1\r\nHost: t\r\n\r\n",
                               "Invalid char in url path: b'GET /\\x01 HTTP/1.1'"),
    "control-char-in-value": (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n",
                              "Invalid header value char in field 'X'"),
    "bad-method": (b"G@T / HTTP/1.1\r\n\r\n", "Invalid method encountered: b'G@T / HTTP/1.1'"),
}


# A header field's value is never said (a secret may be in it), in the log or on the page:
# its name is, as gunicorn names it; a request line is shown, as gunicorn shows it.
SECRET_FIELDS = {
    "bad-char-in-authorization": (b"Authorization: Bearer SECRET\x01x\r\n", 400,
                                  "Invalid header value char in field 'Authorization'"),
    "cookie-too-long": (b"Cookie: id=SECRET" + b"A" * 9000 + b"\r\n", 431,
                        "Got more than 8186 bytes when reading"),
    "bad-name-after-authorization": (b"Authorization: Bearer SECRET\r\nX-B\x7fd: 1\r\n", 400,
                                     "Invalid header token"),
    "field-shaped-like-a-request-line": (b"X Auth: TOKEN/1-SECRET\r\n", 400, "Invalid header token"),
    "bad-content-length": (b"X-Token: SECRET\r\nContent-Length: 1SECRET\r\n", 400,
                           "Invalid character in Content-Length in field 'Content-Length'"),
}


@pytest.mark.parametrize("fields, code, message", SECRET_FIELDS.values(), ids=SECRET_FIELDS.keys())
def test_a_refused_header_fields_value_is_never_logged_or_shown(fields, code, message):
    h = run(b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n" + get("/canary"))
    assert [status for status, _ in h.responses()] == [code]
    warnings = [text for level, text in h.log.lines if level == "warning"]
    assert warnings == [f"Invalid request from ip=127.0.0.1: {message}"]
    assert b"SECRET" not in bytes(h.transport.written)


@pytest.mark.parametrize("request_bytes, message", PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
def test_a_parser_refusal_is_said_on_one_line(request_bytes, message):
    h = run(request_bytes + get("/canary"))
    assert [status for status, _ in h.responses()] == [400]  # the canary behind it: never read
    assert h.transport.closed or h.conn.state is ConnState.LINGER
    page = bytes(h.transport.written).decode("latin-1")
    assert message.replace("'", "&#x27;") in page and "^" not in page
    warnings = [text for level, text in h.log.lines if level == "warning"]
    assert warnings == [f"Invalid request from ip=127.0.0.1: {message}"]


def test_a_chunked_body_larger_than_the_spool_budget_alone_is_413_not_a_retry():
    # Charged as it arrives: it is refused when it outgrows the budget by itself, which no retry
    # mends (413, as a Content-Length one gets at its head), not a 503 with Retry-After.
    h = Harness(body_memory_limit=1000, spool_budget=4000)
    HARNESSES.append(h)
    data = chunked("/big", *[b"z" * 500] * 20)
    for start in range(0, len(data), 600):
        h.feed(data[start:start + 600])
    written = bytes(h.transport.written)
    assert [status for status, _ in h.responses()] == [413] and b"Retry-After" not in written
    h.until(lambda: h.spools.used == 0, "the budget back")
