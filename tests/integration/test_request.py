"""The request side through a real master: environ, paths, wsgi.input, bodies, 413, 100-continue."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest
from server import Conn, Gunicorn, get, has_setting, request

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def srv():
    with Gunicorn("apps:validated", "--threads", "4",
                  env={"AIOWSGI_BODY_MEMORY_LIMIT": "65536", "AIOWSGI_MAX_BODY_SIZE": "8388608"}) as g:
        yield g


def get_json(srv, path, **kwargs):
    status, _, data = get(srv, path, **kwargs)
    assert status == 200, (status, data)
    return json.loads(data)


def test_environ_keys_and_types(srv):
    env = get_json(srv, "/environ/x?a=1&b=%20",
                   headers={"Host": f"{srv.host}:{srv.port}", "X-Custom": "v", "Content-Type": "text/x"})
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/environ/x"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["RAW_URI"] == "/environ/x?a=1&b=%20"
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(srv.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"].isdigit()
    assert env["CONTENT_TYPE"] == "text/x"
    assert "HTTP_CONTENT_TYPE" not in env
    assert env["HTTP_X_CUSTOM"] == "v"
    assert env["HTTP_HOST"] == f"{srv.host}:{srv.port}"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["SERVER_SOFTWARE"].startswith("gunicorn")
    types = env["_types"]
    assert types["wsgi.input"] == "InputWrapper"  # wsgiref's validator wraps ours
    assert types["wsgi.errors"] == "ErrorWrapper"
    assert types["wsgi.file_wrapper"] == "type"
    for key in ("SERVER_PORT", "REMOTE_PORT", "PATH_INFO", "QUERY_STRING"):
        assert types[key] == "str"


@pytest.mark.parametrize("raw, path_info", [
    (b"/environ/caf%C3%A9", "/environ/caf\xc3\xa9"),
    (b"/environ/a%2Fb", "/environ/a/b"),
    (b"/environ/sp%20ace", "/environ/sp ace"),
    (b"/environ//double", "/environ//double"),
    (b"/environ/%E2%82%AC?x=%E2%82%AC", "/environ/\xe2\x82\xac"),
])
def test_path_info_is_latin1_of_decoded_bytes(srv, raw, path_info):
    status, _, body = request(srv, b"GET " + raw + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status == 200
    env = json.loads(body)
    assert env["PATH_INFO"] == path_info
    assert env["RAW_URI"] == raw.decode()


def test_repeated_headers_join_and_underscore_dropped(srv):
    status, _, body = request(srv, b"GET /environ HTTP/1.1\r\nHost: h\r\nX-Multi: a\r\nX-Multi: b\r\n"
                                   b"X-Forwarded-For: 1.2.3.4\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n")
    env = json.loads(body)
    assert env["HTTP_X_MULTI"] == "a,b"
    # The "_" spelling must not overwrite it (header_map "drop"); gunicorn 21, which has no
    # header_map, joins it in, and the worker does as the installed gunicorn does.
    joined = "1.2.3.4" if has_setting("header_map") else "1.2.3.4,6.6.6.6"
    assert env["HTTP_X_FORWARDED_FOR"] == joined


def test_latin1_header_value(srv):
    status, _, body = request(srv, b"GET /environ HTTP/1.1\r\nHost: h\r\nX-L: caf\xe9\r\n\r\n")
    assert json.loads(body)["HTTP_X_L"] == "caf\xe9"


def test_http10_request(srv):
    status, headers, body = request(srv, b"GET /environ HTTP/1.0\r\n\r\n")
    env = json.loads(body)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def pieces_read(how: str, data: bytes) -> bytes:
    """What apps.body_read reports for `data` read the `how` way: read(7) pieces joined, or the
    lines (readline(5): at most 5 bytes each) joined with "|"."""
    lines = data.splitlines(keepends=True)
    if how == "readn":
        return data
    if how == "readline":
        return b"|".join(line[i:i + 5] for line in lines for i in range(0, len(line), 5))
    return b"|".join(lines)


@pytest.mark.parametrize("how", ["readn", "readline", "readlines", "iter"])
@pytest.mark.parametrize("size", [0, 10, 100_000, 1_500_000])
def test_wsgi_input_methods_content_length(srv, how, size):
    # Lines of varying length, the last one without its newline: readline(5) splits some.
    text = b"".join(b"line %d of text\n" % n for n in range(size // 10 + 1))
    data = text[:size]
    info = get_json(srv, f"/body?how={how}", method="POST", body=data)
    expected = pieces_read(how, data)
    assert info["content_length"] == str(size)
    assert info["len"] == len(expected)
    assert info["sha256"] == hashlib.sha256(expected).hexdigest()
    assert info["head"].encode("latin-1") == expected[:64]


@pytest.mark.parametrize("size", [5, 200_000])
def test_chunked_body_gets_content_length(srv, size):
    data = os.urandom(size)
    with Conn.to(srv) as conn:
        conn.send(b"POST /body?how=readn HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, size, 4096):
            part = data[i:i + 4096]
            conn.send(b"%x\r\n%b\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
        status, _, body = conn.response()
    info = json.loads(body)
    assert status == 200
    assert info["len"] == size
    assert info["content_length"] == str(size)
    assert info["head"].encode("latin-1") == data[:64]
    assert info["tail"].encode("latin-1") == data[-64:]


def test_spooled_body_roundtrip(srv):
    data = os.urandom(3 * 1024 * 1024)
    info = get_json(srv, "/body?how=readn", method="POST", body=data)
    assert info["len"] == len(data)
    assert info["tail"].encode("latin-1") == data[-64:]


def test_body_over_max_gets_413_before_reading(srv):
    with Conn.to(srv) as conn:
        conn.send(b"POST /body HTTP/1.1\r\nHost: h\r\nContent-Length: 9000000\r\nExpect: 100-continue\r\n\r\n")
        status, headers, body = conn.response()
    assert status == 413
    assert headers["connection"] == "close"
    assert b"Request Entity Too Large" in body or b"Content Too Large" in body


def test_chunked_body_over_max_gets_413(srv):
    with Conn.to(srv) as conn:
        conn.send(b"POST /body?how=readn HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 65536
        try:
            for _ in range(140):  # 9 MiB > 8 MiB
                conn.send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, _ = conn.response()
    assert status == 413


def test_expect_100_continue(srv):
    with Conn.to(srv) as conn:
        conn.send(b"POST /body?how=readn&echo=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        interim, _, _ = conn.response()
        assert interim == 100
        conn.send(b"hello")
        status, _, body = conn.response()
    assert status == 200
    assert json.loads(body)["data"] == "hello"


def test_unknown_expectation_is_417(srv):
    status, _, _ = request(srv, b"POST /body HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nExpect: x\r\n\r\nz")
    assert status == 417


def test_keepalive_many_requests_on_one_connection(srv):
    with Conn.to(srv) as conn:
        for i in range(20):
            conn.send(b"POST /body?how=readn&echo=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n%03d" % i)
            status, headers, body = conn.response()
            assert status == 200 and headers["connection"] == "keep-alive"
            assert json.loads(body)["data"] == "%03d" % i


def test_pipelined_requests_answered_in_order(srv):
    with Conn.to(srv) as conn:
        conn.send(b"".join(b"GET /environ/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(10)))
        for i in range(10):
            status, _, body = conn.response()
            assert json.loads(body)["PATH_INFO"] == f"/environ/{i}"


def test_truncated_body_never_reaches_app(srv, tmp_path):
    with Conn.to(srv) as conn:
        conn.send(b"POST /body?how=readn HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly-ten!!")
        conn.sock.shutdown(socket.SHUT_WR)
        data = conn.read_all()
    # Never a 200 from the app: at most the server's own 400 for the short body.
    assert data == b"" or data.startswith(b"HTTP/1.1 400 "), data[:100]
    assert b'"len"' not in data


def test_an_app_closing_wsgi_errors_leaves_it_working_for_the_next_requests():
    """PEP 3333 does not let an app close wsgi.errors, but one may: gunicorn gives each request
    a wrapper of its own, ours is one object per worker, so its close() leaves it open (before,
    every later request of the worker that wrote to it got a 500)."""
    with Gunicorn("apps:router", "--threads", "2") as g:
        paths = ["/errors_close/a", "/errors_close/close", "/errors_close/b", "/errors_close/c"]
        assert [get(g, path)[0] for path in paths] == [200, 200, 200, 200]
        log = g.wait_log("wsgi.errors line from /errors_close/c")
        for path in paths:
            assert f"wsgi.errors line from {path}\nand another\n" in log
