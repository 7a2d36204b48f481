"""Request smuggling: framing the worker and a front proxy could read differently.

Each request is followed on the same connection by a canary request, and by a "smuggled" one
hidden where a lax parser would find a request. The worker must never desynchronise: either
the request is refused (400, connection closed, nothing after it served) or it is served
exactly once and then the canary, in order; /smuggled never reaches the app.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from server import Conn, has_setting

from gunicorn_aiowsgi.parser import Limits, Parser
from gunicorn_aiowsgi.settings import Settings
from robustness.conftest import WORKER_CONFIGS, check_log, module_server, worker_config
from robustness.helpers import replay

pytestmark = pytest.mark.timeout(60)

CANARY = b"GET /canary HTTP/1.1\r\nHost: t\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"


def post(headers: str, body: bytes) -> bytes:
    return f"POST /p HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode() + body


REFUSED = {
    # RFC 9112 section 2.3: the protocol name is HTTP (llhttp takes these as HTTP/1.0).
    "rtsp-request-line": b"GET /r RTSP/1.0\r\nHost: t\r\n\r\n",
    "ice-request-line": b"SOURCE /s ICE/1.0\r\nHost: t\r\n\r\n",
    # RFC 9110 section 9.3.6: CONNECT has no content; its bytes would be a tunnel's, not a body.
    "connect-with-content": (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\nContent-Length: 10\r\n\r\n"
                             b"0123456789"),
    "cl-te": post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te-cl": post("Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", b"0\r\n\r\n" + SMUGGLED),
    "two-cl-differ": post("Content-Length: 5\r\nContent-Length: 40\r\n", b"hello" + SMUGGLED),
    "two-cl-same": post("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
    "cl-list": post("Content-Length: 5, 5\r\n", b"hello"),
    "cl-plus": post("Content-Length: +5\r\n", b"hello"),
    "cl-hex": post("Content-Length: 0x5\r\n", b"hello"),
    "cl-space-inside": post("Content-Length: 5 0\r\n", b"hello"),
    "cl-huge": post("Content-Length: 99999999999999999999999\r\n", b"hello"),
    # 2^64-1: aiohttp's C parser takes it for "no body" while llhttp reads that many bytes.
    "cl-2^64-1": post("Content-Length: 18446744073709551615\r\n", b"hello"),
    "cl-2^64-1-no-body": b"GET /a HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551615\r\n\r\n",
    "cl-space-before-colon": post("Content-Length : 5\r\n", b"hello"),
    "te-chunked-then-identity": post("Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    "te-gzip-only": post("Transfer-Encoding: gzip\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te-two-lines": post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    "te-obs-fold": post("Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te-xchunked": post("Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te-chunked-vtab": post("Transfer-Encoding: chunked\x0b\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te-http10": b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "chunk-size-hex-prefix": post("Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-minus": post("Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-space": post("Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk-size-overflow": post("Transfer-Encoding: chunked\r\n",
                                b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-empty": post("Transfer-Encoding: chunked\r\n", b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-data-too-long": post("Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-bare-cr": post("Transfer-Encoding: chunked\r\n", b"5;a=b\rc\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-nul": post("Transfer-Encoding: chunked\r\n", b"5;a\x00\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-bare-lf": post("Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"),
    "chunk-data-bare-lf": post("Transfer-Encoding: chunked\r\n", b"5\r\nhello\n0\r\n\r\n"),
    "bare-lf-head": b"GET / HTTP/1.1\nHost: t\n\n" + SMUGGLED,
    "bare-lf-one-line": b"GET / HTTP/1.1\r\nHost: t\nX: y\r\n\r\n",
    "bare-cr-head": b"GET / HTTP/1.1\rHost: t\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
    "nul-in-name": b"GET / HTTP/1.1\r\nHost: t\r\nX\x00Y: a\r\n\r\n",
    "nul-in-target": b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: t\r\nHost: evil\r\n\r\n",
    "space-in-header-name": b"GET / HTTP/1.1\r\nHost: t\r\nX Y: a\r\n\r\n",
    # RFC 9112 section 3: one space between the request line's parts (llhttp takes runs).
    "two-spaces-before-target": b"GET  /x HTTP/1.1\r\nHost: t\r\n\r\n",
    "two-spaces-before-version": b"GET /x  HTTP/1.1\r\nHost: t\r\n\r\n",
    "space-before-method": b" GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
    "forbidden-trailer-cl": post("Transfer-Encoding: chunked\r\n",
                                 b"5\r\nhello\r\n0\r\nContent-Length: 40\r\n\r\n" + SMUGGLED),
    # llhttp skips its Transfer-Encoding checks for CONNECT; RFC 9110 section 9.3.6 still holds.
    "connect-with-te-identity": (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n"
                                 b"Transfer-Encoding: identity\r\n\r\n" + SMUGGLED),
    # RFC 9112 section 6.3: llhttp stops at an Upgrade head whose Transfer-Encoding is not
    # chunked (a tab after chunked included), and its body would be parsed as the next request.
    "upgrade-te-identity": post("Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                "Transfer-Encoding: identity\r\n", SMUGGLED),
    "upgrade-te-gzip": post("Connection: Upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: gzip\r\n",
                            SMUGGLED),
    "upgrade-te-chunked-tab": post("Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                   "Transfer-Encoding: chunked\t\r\n",
                                   b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)),
    # RFC 9112 section 2.2: a bare CR is invalid, before a request line too (llhttp skips it).
    "bare-cr-before-request-line": b"\rGET / HTTP/1.1\r\nHost: t\r\n\r\n",
    "lf-then-bare-cr-before-request-line": b"\n\rGET / HTTP/1.1\r\nHost: t\r\n\r\n",
}

# RFC 9112 section 6.1: a transfer coding the server does not understand, before chunked (the
# parser frames the body by the last coding alone): 501, as gunicorn answers, and closed.
NOT_IMPLEMENTED = {
    "te-unknown-then-chunked": post("Transfer-Encoding: foo, chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te-unknown-then-gzip-then-chunked": post("Transfer-Encoding: gzip, x-custom , chunked\r\n",
                                              b"0\r\n\r\n" + SMUGGLED),
}

# (request, the app calls it makes, in order): served exactly once, then the canary.
SERVED = {
    "cl-body": (post("Content-Length: 5\r\n", b"hello"), ["POST /p"]),
    "cl-body-holding-a-request": (post(f"Content-Length: {len(SMUGGLED)}\r\n", SMUGGLED),
                                  ["POST /p"]),
    "chunked-body": (post("Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), ["POST /p"]),
    "chunked-body-holding-a-request": (
        post("Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)),
        ["POST /p"]),
    "chunked-with-trailer": (post("Transfer-Encoding: chunked\r\n",
                                  b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), ["POST /p"]),
    "get-with-body": (b"GET /g HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", ["GET /g"]),
    # header_map "drop" (gunicorn's default): "Transfer_Encoding" is dropped; Content-Length frames.
    "te-underscore-dropped": (post("Transfer_Encoding: chunked\r\nContent-Length: 3\r\n", b"0\r\n"),
                              ["POST /p"]),
    "three-pipelined": (post("Content-Length: 1\r\n", b"a") + post("Content-Length: 2\r\n", b"bb"),
                        ["POST /p", "POST /p"]),
    # OWS after the value (RFC 9110 section 5.5), which aiohttp 3.13 keeps in it.
    "cl-trailing-space": (post("Content-Length: 5 \r\n", b"hello"), ["POST /p"]),
    "cl-zero-trailing-space": (post("Content-Length: 0 \r\n", b""), ["POST /p"]),
    # RFC 9110 section 7.8: an Upgrade request may have content; curl --http2 sends a POST so.
    "upgrade-h2c-body-holding-a-request": (
        post("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
             f"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: {len(SMUGGLED)}\r\n",
             SMUGGLED), ["POST /p"]),
}


def stops_at_head(data: bytes) -> bool:
    """Whether the installed aiohttp's parser stops at this request's head, reading none of its
    body (3.13 does at a websocket Upgrade head; 3.14 reads the body first)."""
    loop = asyncio.new_event_loop()
    try:
        head = data[:data.index(b"\r\n\r\n") + 4]
        requests, _tail = Parser(Limits(Settings()), loop).feed(head, line_done=True)
        return requests[0].stopped
    finally:
        loop.close()


# A websocket Upgrade request with a body: served (the body read as body) by a parser that reads
# it, refused by one that stops at the head; never is the body read as the next request.
WEBSOCKET = "Connection: Upgrade\r\nUpgrade: websocket\r\n"
for _name, _data in {
    "upgrade-websocket-cl-body": post(f"{WEBSOCKET}Content-Length: {len(SMUGGLED)}\r\n", SMUGGLED),
    "upgrade-websocket-chunked-body": post(f"{WEBSOCKET}Transfer-Encoding: chunked\r\n",
                                           b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)),
}.items():
    if stops_at_head(_data):
        REFUSED[_name] = _data
    else:
        SERVED[f"{_name}-holding-a-request"] = (_data, ["POST /p"])


REFUSED_EXAMPLE = post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")

# (request, statuses, app calls): a good request followed in the same read by something else.
# The connection feeds the parser one request at a time from a known boundary: the good one
# is answered, and what follows is judged only after it, as gunicorn does (never re-parsed).
FOLLOWED = {
    "then-garbage": (b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE\r\n\r\n", [200, 400], ["GET /a"]),
    "then-bad-request": (b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n" + REFUSED_EXAMPLE,
                         [200, 400], ["GET /a"]),
    "body-then-garbage": (post("Content-Length: 3\r\n", b"abc") + b"xyz\r\n\r\n", [200, 400],
                          ["POST /p"]),
    "http10-then-more": (b"GET /a HTTP/1.0\r\n\r\n" + SMUGGLED, [200], ["GET /a"]),
    "close-then-more": (b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + SMUGGLED,
                        [200], ["GET /a"]),
    "http10-then-stray-body": (b"GET /a HTTP/1.0\r\n\r\n" + b"a" * 2000, [200], ["GET /a"]),
    # RFC 9112 section 9.3: close among the options ends it, keep-alive beside it or not.
    "http10-keep-alive-and-close": (b"GET /a HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
                                    + SMUGGLED, [200], ["GET /a"]),
    "http10-close-then-keep-alive": (b"GET /a HTTP/1.0\r\nConnection: close\r\n"
                                     b"Connection: keep-alive\r\n\r\n" + SMUGGLED, [200], ["GET /a"]),
    # RFC 9112 section 2.2: a body one byte short of what follows it: a bare CR, then a request.
    "body-then-bare-cr": (post("Content-Length: 4\r\n", b"abcd") + b"\r" + SMUGGLED, [200, 400],
                          ["POST /p"]),
}


@pytest.fixture(scope="module", params=WORKER_CONFIGS)
def srv(tmp_path_factory, request):
    """Every worker configuration (conftest.WORKER_CONFIGS)."""
    worker_class, args, env = worker_config(request.param, {"AIOWSGI_BODY_TIMEOUT": "30"})
    server, calls = module_server(tmp_path_factory, "robustness.robust_apps:echo",
                                  "--keep-alive", "30", *args, env=env, worker_class=worker_class)
    yield server, calls
    server.stop()
    assert "Traceback" not in server.log(), server.log()
    check_log(server)


# Each refusal with its status: 400, or 501 for a transfer coding gunicorn does not know.
REFUSALS = {**{name: (data, 400) for name, data in REFUSED.items()},
            **{name: (data, 501) for name, data in NOT_IMPLEMENTED.items()}}


@pytest.mark.parametrize("sender", ["whole", "pieces"])
@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_ambiguous_framing_is_refused_and_nothing_after_it_served(srv, name, sender):
    server, calls = srv
    calls.reset()
    data, status = REFUSALS[name]
    responses, _client = replay(server, data + CANARY, sender)
    assert [r[0] for r in responses] == [status], (name, responses)
    assert responses[0][1]["connection"] == "close"
    assert calls.lines() == []


@pytest.mark.parametrize("sender", ["whole", "pieces"])
@pytest.mark.parametrize("name", sorted(SERVED))
def test_well_framed_requests_are_served_once_in_order(srv, name, sender):
    server, calls = srv
    calls.reset()
    data, expected = SERVED[name]
    responses, _client = replay(server, data + CANARY, sender)
    assert [r[0] for r in responses] == [200] * (len(expected) + 1)
    assert calls.lines() == expected + ["GET /canary"]
    bodies = [json.loads(r[2])["body"] for r in responses]
    assert bodies[-1] == ""
    if "underscore" in name and has_setting("header_map"):  # gunicorn 21 passes it (as a header)
        assert "HTTP_TRANSFER_ENCODING" not in json.loads(responses[0][2])
    if "holding-a-request" in name:  # the request-looking bytes were body, and only body
        assert bodies[0] == SMUGGLED.decode()


@pytest.mark.parametrize("sender", ["whole", "pieces"])
@pytest.mark.parametrize("name", sorted(FOLLOWED))
def test_good_request_followed_by_bad_bytes_is_still_answered_once(srv, name, sender):
    server, calls = srv
    calls.reset()
    data, statuses, expected = FOLLOWED[name]
    responses, _client = replay(server, data + CANARY, sender)
    assert [r[0] for r in responses] == statuses
    assert calls.lines() == expected  # and neither /smuggled nor the canary


def test_bad_trailer_after_the_body_began_is_answered_at_once(srv):
    """The trailer error reaches a handler already reading the body: 400 now, not a hang.

    (aiohttp's parser reports it to the connection only; the worker ends the body with it.)
    """
    server, calls = srv
    calls.reset()
    with Conn.to(server, timeout=10) as conn:
        conn.send(post("Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n", b""))
        assert conn.readline().startswith(b"HTTP/1.1 100")  # the worker is reading the body
        assert conn.readline() == b"\r\n"
        conn.send(b"5\r\nhello")
        conn.send(b"\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n")
        status, headers, _body = conn.response()
        assert status == 400 and headers["connection"] == "close"
        assert conn.closed_by_peer(5)
    assert calls.lines() == []
