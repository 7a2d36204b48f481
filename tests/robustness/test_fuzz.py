"""Property-based fuzzing of the request path (hypothesis) against a live worker.

Random request heads (methods, targets, versions, header names and values with CR, LF, NUL and
high bytes, duplicated and conflicting framing fields, bare LF or CR line ends) and bodies
(raw, well chunked, badly chunked), sent whole or in random pieces, with or without a
half-close. Whatever arrives:

- the connection ends within the worker's timeouts (head, body, keep-alive), never hangs;
- every answer is a well-formed HTTP/1.x response, never more 200s than requests sent;
- the worker does not crash, log a traceback, or keep a descriptor, thread or temp file.
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from server import Conn, Usage, settle

from robustness.conftest import check_log, module_server

pytestmark = pytest.mark.timeout(240)

TIMEOUT = 1.0        # AIOWSGI_HEADER_TIMEOUT, AIOWSGI_BODY_TIMEOUT and --keep-alive (seconds)
HANG = 3 * TIMEOUT + 5  # a connection still open this long after the last byte is a hang

TOKEN = st.text("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                min_size=1, max_size=12)
NASTY = st.binary(max_size=12).map(lambda b: b.replace(b"\r\n\r\n", b""))
# Mostly sound requests with a few things wrong, so that both the refusals and the app path
# (body spooling, pipelining, keep-alive) are exercised.
STANDARD = st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS"])
ODD_METHODS = st.one_of(st.sampled_from(["CONNECT", "PURGE", "get", "G ET", ""]), TOKEN)
PATHS = st.text("abcdefghijklmnopqrstuvwxyz/%?=&#.;", max_size=30).map(lambda t: "/" + t)
ODD_TARGETS = st.sampled_from(["*", "/a?b=c#d", "http://h/x", "h:443", "//x", "/%00", "/caf%C3%A9",
                               "/a b"])
VERSIONS = st.sampled_from(["HTTP/1.1"] * 4 + ["HTTP/1.0"])
ODD_VERSIONS = st.sampled_from([
    "HTTP/2.0", "HTTP/0.9", "HTTP/1.10", "HTTP/1.1 ", "http/1.1", "HTTP/11", "FTP/1.1", ""])
ODD_EOLS = st.sampled_from([b"\n", b"\r", b"\r\r\n"])
FRAMING = st.sampled_from([
    ("Content-Length", "5"), ("Content-Length", "0"), ("Content-Length", "-1"),
    ("Content-Length", "5, 5"), ("Content-Length", "+5"), ("Content-Length", "99999999999999"),
    ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip, chunked"),
    ("Transfer-Encoding", "chunked, gzip"), ("Transfer-Encoding", "identity"),
    ("Transfer_Encoding", "chunked"), ("Expect", "100-continue"), ("Expect", "nothing"),
    ("Connection", "close"), ("Connection", "keep-alive"), ("Host", "h"), ("Host", ""),
])
PLAIN = st.tuples(TOKEN, st.text("abcdefghijklmnopqrstuvwxyz0123456789 ,;=/-", max_size=20))
FIELDS = st.one_of(PLAIN, PLAIN, FRAMING, st.tuples(TOKEN, st.text(max_size=20)))


@st.composite
def requests(draw) -> bytes:
    def odd(usual, unusual):  # one part in ten is unusual
        return draw(unusual if draw(st.integers(0, 9)) == 0 else usual)

    eol = odd(st.just(b"\r\n"), ODD_EOLS)
    line = f"{odd(STANDARD, ODD_METHODS)} {odd(PATHS, ODD_TARGETS)} {odd(VERSIONS, ODD_VERSIONS)}"
    line = line.encode("latin-1", "replace")
    fields = draw(st.lists(FIELDS, max_size=6))
    if draw(st.integers(0, 4)):
        fields.insert(0, ("Host", "fuzz"))
    head = [line] + [f"{n}: {v}".encode("utf-8", "surrogateescape") for n, v in fields]
    if draw(st.integers(0, 14)) == 0:  # raw garbage in one field line
        head.insert(draw(st.integers(1, len(head))), draw(NASTY))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=40), chunked()))
    return eol.join(head) + eol + eol + body


@st.composite
def chunked(draw) -> bytes:
    parts = draw(st.lists(st.binary(min_size=1, max_size=10), max_size=3))
    sizes = [draw(st.sampled_from(["%x" % len(p), "%X" % len(p), "0%x" % len(p), "%x;e=v" % len(p),
                                   "%x " % len(p), "-1", "zz", "%x" % (len(p) + 1)])) for p in parts]
    out = b"".join(s.encode() + b"\r\n" + p + b"\r\n" for s, p in zip(sizes, parts))
    trailer = draw(st.sampled_from([b"", b"X-T: 1\r\n", b"Content-Length: 9\r\n", b"Host: x\r\n"]))
    return out + b"0\r\n" + trailer + draw(st.sampled_from([b"\r\n", b"", b"\n"]))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    server, calls = module_server(
        tmp_path_factory, "robustness.robust_apps:echo", "--threads", "2",
        "--keep-alive", str(int(TIMEOUT)),
        env={"AIOWSGI_HEADER_TIMEOUT": str(TIMEOUT), "AIOWSGI_BODY_TIMEOUT": str(TIMEOUT),
             "AIOWSGI_BODY_MEMORY_LIMIT": "16"})  # even small bodies go through a temp file
    pid = server.worker_pid()
    base = Usage.of(pid)
    yield server, pid
    settle(pid, base)
    assert server.worker_pids() == [pid]
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-4000:]
    check_log(server)


def exchange(server, data: bytes, cuts: list[int], half_close: bool) -> list[int]:
    """Send `data` (cut at `cuts`), read answers until the worker closes; their statuses."""
    sock = server.connect(HANG)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    statuses = []
    with Conn(sock, HANG) as conn:
        try:
            at = 0
            for cut in sorted(set(cuts)) + [len(data)]:
                if cut > at:
                    conn.send(data[at:cut])
                    at = cut
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused and closed mid-send
            pass
        while True:
            try:
                line = conn.readline()
                if not line:
                    return statuses
                assert line[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 ") and line[9:12].isdigit(), line
                conn.buf = line + conn.buf
                status, headers, _body = conn.response(head=data.startswith(b"HEAD "))
            except socket.timeout:
                raise AssertionError(f"no answer and no close within {HANG}s") from None
            except ConnectionError:
                return statuses
            statuses.append(status)
            if headers.get("connection") == "close":
                # The worker closes now. (A HEAD refused by the parser, before its method is
                # known, gets gunicorn's error page body: not worth reading as a response.)
                return statuses


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=requests(), cuts=st.lists(st.integers(0, 200), max_size=4),
       half_close=st.sampled_from([True] * 5 + [False]), pipelined=st.integers(1, 2))
def test_random_requests_never_crash_or_hang_the_worker(fuzzed, data, cuts, half_close, pipelined):
    server, pid = fuzzed
    statuses = exchange(server, data * pipelined, cuts, half_close)
    assert statuses.count(200) <= pipelined
    assert all(100 <= s < 600 for s in statuses)
    assert server.worker_pids() == [pid]
    event(f"first answer {statuses[0] if statuses else 'none'}")  # --hypothesis-show-statistics
