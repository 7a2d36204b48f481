"""Table-driven tests for gunicorn_aiowsgi.proxy_protocol (PROXY protocol v1/v2 preamble parser)."""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import pathlib
import random
import socket
import struct
from dataclasses import dataclass

import pytest
from robustness.corpus import REFERENCE

from gunicorn_aiowsgi import proxy_protocol
from gunicorn_aiowsgi.proxy_protocol import (
    MAX_PREAMBLE,
    MAX_V1_LINE,
    MAX_V2_HEADER,
    UNKNOWN,
    ProxyInfo,
    ProxyParser,
    ProxyProtocolError,
    State,
    enabled,
    ipv6_text,
    normalize_mode,
)

REST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
ERROR = "error"
NEED_MORE = "need-more"


# --- frame builders ------------------------------------------------------


def v2(ver_cmd: int = 0x21, fam: int = 0x11, block: bytes = b"") -> bytes:
    """A v2 preamble: signature, ver/cmd, fam/proto, 16-bit length of block, block."""
    return SIG + struct.pack("!BBH", ver_cmd, fam, len(block)) + block


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    a, b = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    return struct.pack("!4s4sHH", a, b, sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    a, b = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return struct.pack("!16s16sHH", a, b, sport, dport)


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


# ALPN, AUTHORITY and NOOP TLVs (spec 2.2.1, 2.2.2, 2.2.4).
TLVS = tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x04, b"\x00\x00\x00")
FFFF6 = "ffff:" * 7 + "ffff"  # longest IPv6 text, 39 chars
V4 = inet("192.0.2.1", "198.51.100.7", 56324, 443)
V4_INFO = ProxyInfo("TCP4", "192.0.2.1", 56324, "198.51.100.7", 443)
V6 = inet6("2001:db8::1", "2001:db8::2", 40000, 8443)
V6_INFO = ProxyInfo("TCP6", "2001:db8::1", 40000, "2001:db8::2", 8443)


# --- the table -----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    expect: object  # ProxyInfo (parsed), None (no preamble), ERROR or NEED_MORE
    mode: str | bool = "auto"
    rest: bytes = REST  # what feed() must hand back after the preamble
    # "same" as gunicorn's parser, "n/a" (not comparable), or gunicorn's own verdict where ours
    # deviates on purpose (pinned: the test fails if gunicorn changes, so the table is revisited).
    gunicorn: object = "same"


def ok(id, preamble, info, mode="auto", gunicorn="same"):
    return Case(id, preamble + REST, info, mode, REST, gunicorn)


def bad(id, preamble, mode="auto", gunicorn="same"):
    return Case(id, preamble + REST, ERROR, mode, REST, gunicorn)


def passthrough(id, data, mode="auto", gunicorn="same"):
    return Case(id, data, None, mode, data, gunicorn)


def more(id, data, mode="auto", gunicorn="same"):
    return Case(id, data, NEED_MORE, mode, b"", gunicorn)


def v1_line(*fields: str) -> bytes:
    return " ".join(("PROXY", *fields)).encode("latin-1") + b"\r\n"


def padded_port_line(total: int) -> bytes:
    """A TCP4 line of exactly `total` bytes (CRLF included), padded with leading zeros in a port."""
    head = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 "
    return head + b"0" * (total - len(head) - 3) + b"2\r\n"


PADDED_INFO = ProxyInfo("TCP4", "1.2.3.4", 1, "5.6.7.8", 2)

V1_VALID = [
    ok("v1-tcp4", v1_line("TCP4", "192.168.0.1", "192.168.0.11", "56324", "443"),
       ProxyInfo("TCP4", "192.168.0.1", 56324, "192.168.0.11", 443)),
    ok("v1-tcp4-mode-v1", v1_line("TCP4", "192.168.0.1", "192.168.0.11", "56324", "443"),
       ProxyInfo("TCP4", "192.168.0.1", 56324, "192.168.0.11", 443), mode="v1"),
    ok("v1-tcp4-mode-true", v1_line("TCP4", "10.0.0.1", "10.0.0.2", "1", "2"),
       ProxyInfo("TCP4", "10.0.0.1", 1, "10.0.0.2", 2), mode=True),
    ok("v1-tcp4-port-bounds", v1_line("TCP4", "0.0.0.0", "255.255.255.255", "0", "65535"),
       ProxyInfo("TCP4", "0.0.0.0", 0, "255.255.255.255", 65535)),
    # gunicorn parses ports with int(), so leading zeros pass there and here.
    ok("v1-tcp4-leading-zero-ports", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "080", "0443"),
       ProxyInfo("TCP4", "1.2.3.4", 80, "5.6.7.8", 443)),
    ok("v1-exactly-107-bytes", padded_port_line(MAX_V1_LINE), PADDED_INFO),
    ok("v1-tcp6", v1_line("TCP6", "2001:db8::1", "2001:db8::2", "1234", "443"),
       ProxyInfo("TCP6", "2001:db8::1", 1234, "2001:db8::2", 443)),
    ok("v1-tcp6-longest", v1_line("TCP6", FFFF6, FFFF6, "65535", "65535"),
       ProxyInfo("TCP6", FFFF6, 65535, FFFF6, 65535)),
    ok("v1-tcp6-v4-mapped", v1_line("TCP6", "::ffff:192.0.2.1", "::1", "5", "6"),
       ProxyInfo("TCP6", "::ffff:192.0.2.1", 5, "::1", 6)),
    ok("v1-tcp6-text-kept-as-sent", v1_line("TCP6", "2001:DB8:0::1", "::", "5", "6"),
       ProxyInfo("TCP6", "2001:DB8:0::1", 5, "::", 6)),
    # Spec 2.1 says accept UNKNOWN; gunicorn's WSGI parser rejects it.
    ok("v1-unknown-short", b"PROXY UNKNOWN\r\n", UNKNOWN, gunicorn=ERROR),
    ok("v1-unknown-worst-case-107", v1_line("UNKNOWN", FFFF6, FFFF6, "65535", "65535"),
       UNKNOWN, gunicorn=ERROR),
    ok("v1-unknown-ignores-rest", b"PROXY UNKNOWN what ever\xff\r\n", UNKNOWN, gunicorn=ERROR),
]

V1_INVALID = [
    bad("v1-port-65536", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "65536", "80")),
    bad("v1-port-negative", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "80", "-1")),
    bad("v1-port-hex", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "0x50", "80")),
    bad("v1-port-letters", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "http", "80")),
    bad("v1-port-empty", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "", "80")),
    bad("v1-port-superscript", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "\xb2", "80")),
    # int() quirks gunicorn inherits; refused here on purpose.
    bad("v1-port-plus-sign", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "+80", "8"),
        gunicorn=ProxyInfo("TCP4", "1.2.3.4", 80, "5.6.7.8", 8)),
    bad("v1-port-minus-zero", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "-0", "8"),
        gunicorn=ProxyInfo("TCP4", "1.2.3.4", 0, "5.6.7.8", 8)),
    bad("v1-port-underscore", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "1_0", "8"),
        gunicorn=ProxyInfo("TCP4", "1.2.3.4", 10, "5.6.7.8", 8)),
    bad("v1-port-tab", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "\t80", "8"),
        gunicorn=ProxyInfo("TCP4", "1.2.3.4", 80, "5.6.7.8", 8)),
    bad("v1-addr-octet-256", v1_line("TCP4", "256.0.0.1", "5.6.7.8", "1", "2")),
    bad("v1-addr-three-octets", v1_line("TCP4", "1.2.3", "5.6.7.8", "1", "2")),
    bad("v1-addr-five-octets", v1_line("TCP4", "1.2.3.4", "5.6.7.8.9", "1", "2")),
    bad("v1-addr-leading-zero", v1_line("TCP4", "01.2.3.4", "5.6.7.8", "1", "2")),
    bad("v1-addr-hostname", v1_line("TCP4", "localhost", "5.6.7.8", "1", "2")),
    bad("v1-addr-cidr", v1_line("TCP4", "1.2.3.4/32", "5.6.7.8", "1", "2")),
    bad("v1-addr-non-ascii", v1_line("TCP4", "1.2.3.\xb4", "5.6.7.8", "1", "2")),
    bad("v1-addr-v6-scope-id", v1_line("TCP6", "fe80::1%eth0", "::1", "1", "2")),
    bad("v1-addr-v6-brackets", v1_line("TCP6", "[::1]", "::1", "1", "2")),
    bad("v1-addr-v6-nine-groups", v1_line("TCP6", "1:2:3:4:5:6:7:8:9", "::1", "1", "2")),
    bad("v1-family-tcp4-with-v6", v1_line("TCP4", "::1", "::1", "1", "2")),
    bad("v1-family-tcp6-with-v4", v1_line("TCP6", "1.2.3.4", "5.6.7.8", "1", "2")),
    bad("v1-family-mixed", v1_line("TCP4", "1.2.3.4", "::1", "1", "2")),
    bad("v1-family-tcp5", v1_line("TCP5", "1.2.3.4", "5.6.7.8", "1", "2")),
    bad("v1-family-udp4", v1_line("UDP4", "1.2.3.4", "5.6.7.8", "1", "2")),
    bad("v1-family-lowercase", v1_line("tcp4", "1.2.3.4", "5.6.7.8", "1", "2")),
    bad("v1-unknown-lowercase", b"PROXY unknown\r\n"),
    bad("v1-five-fields", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "1")),
    bad("v1-seven-fields", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "1", "2", "3")),
    bad("v1-double-space", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"),
    bad("v1-trailing-space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
    bad("v1-no-fields", b"PROXY \r\n"),
    # Spec 2.1: a bare LF or CR must not end the line.
    bad("v1-bare-lf", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
    bad("v1-bare-cr", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
    bad("v1-unknown-bare-lf", b"PROXY UNKNOWN x\n"),
    # Spec 2.1: CRLF must come within 107 bytes; gunicorn has no limit.
    bad("v1-108-bytes", padded_port_line(MAX_V1_LINE + 1),
        gunicorn=ProxyInfo("TCP4", "1.2.3.4", 1, "5.6.7.8", 2)),
    Case("v1-no-crlf-in-107", b"PROXY UNKNOWN " + b"x" * 200, ERROR, gunicorn=NEED_MORE),
    # Mode mismatch: gunicorn hands these to its HTTP parser, which answers 400.
    bad("v1-in-mode-v2", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "1", "2"), mode="v2"),
    bad("v1-unknown-in-mode-v2", b"PROXY UNKNOWN\r\n", mode="v2"),
]

V2_VALID = [
    ok("v2-tcp4", v2(0x21, 0x11, V4), V4_INFO),
    ok("v2-tcp4-mode-v2", v2(0x21, 0x11, V4), V4_INFO, mode="v2"),
    ok("v2-tcp4-tlvs", v2(0x21, 0x11, V4 + TLVS), V4_INFO),
    # gunicorn skips everything after the addresses without parsing it.
    ok("v2-tcp4-junk-after-addresses", v2(0x21, 0x11, V4 + b"\xff\xff"), V4_INFO),
    ok("v2-tcp4-port-bounds", v2(0x21, 0x11, inet("0.0.0.0", "255.255.255.255", 0, 65535)),
       ProxyInfo("TCP4", "0.0.0.0", 0, "255.255.255.255", 65535)),
    ok("v2-tcp6", v2(0x21, 0x21, V6), V6_INFO),
    ok("v2-tcp6-tlvs", v2(0x21, 0x21, V6 + TLVS), V6_INFO),
    ok("v2-tcp6-v4-mapped", v2(0x21, 0x21, inet6("::ffff:192.0.2.1", "::1", 1, 2)),
       ProxyInfo("TCP6", "::ffff:192.0.2.1", 1, "::1", 2)),
    ok("v2-tcp6-full-width", v2(0x21, 0x21, inet6("2001:db8:1:2:3:4:5:6", FFFF6, 1, 2)),
       ProxyInfo("TCP6", "2001:db8:1:2:3:4:5:6", 1, FFFF6, 2)),
    ok("v2-tcp4-largest-header", v2(0x21, 0x11, V4 + tlv(0x04, bytes(0xFFFF - 12 - 3))), V4_INFO),
    # Spec 2.2: LOCAL ignores the family and any addresses; length must still be honoured.
    ok("v2-local-empty", v2(0x20, 0x00), UNKNOWN),
    ok("v2-local-tlvs", v2(0x20, 0x00, TLVS), UNKNOWN),
    ok("v2-local-with-tcp4-block", v2(0x20, 0x11, V4), UNKNOWN),
    ok("v2-local-with-unix-block", v2(0x20, 0x31, bytes(216)), UNKNOWN),
    ok("v2-local-junk-family", v2(0x20, 0xFF), UNKNOWN),
    ok("v2-proxy-unspec-stream", v2(0x21, 0x01), UNKNOWN),
    ok("v2-proxy-unspec-stream-block", v2(0x21, 0x01, b"\x01" * 12), UNKNOWN),
]

V2_INVALID = [
    bad("v2-version-0", v2(0x01, 0x11, V4)),
    bad("v2-version-1", v2(0x11, 0x11, V4)),
    bad("v2-version-3", v2(0x31, 0x11, V4)),
    bad("v2-version-15", v2(0xF1, 0x11, V4)),
    bad("v2-command-2", v2(0x22, 0x11, V4)),
    bad("v2-command-15", v2(0x2F, 0x11, V4)),
    bad("v2-udp4", v2(0x21, 0x12, V4)),
    bad("v2-udp6", v2(0x21, 0x22, V6)),
    bad("v2-transport-3", v2(0x21, 0x13, V4)),
    bad("v2-proxy-all-unspec", v2(0x21, 0x00)),
    bad("v2-unix-stream", v2(0x21, 0x31, bytes(216))),
    bad("v2-unix-dgram", v2(0x21, 0x32, bytes(216))),
    bad("v2-family-4", v2(0x21, 0x41, V4)),
    bad("v2-tcp4-block-11", v2(0x21, 0x11, V4[:11])),
    bad("v2-tcp6-block-35", v2(0x21, 0x21, V6[:35])),
    bad("v2-tcp6-with-v4-block", v2(0x21, 0x21, V4)),
    # Mode mismatch: gunicorn hands these to its HTTP parser, which answers 400.
    bad("v2-in-mode-v1", v2(0x21, 0x11, V4), mode="v1"),
    bad("v2-local-in-mode-v1", v2(0x20, 0x00), mode="v1"),
    bad("v2-bad-version-in-mode-v1", v2(0x11, 0x11, V4), mode="v1"),
]

V2_FRAME = v2(0x21, 0x11, V4 + TLVS)

NOT_A_PREAMBLE = [
    passthrough("plain-http", REST),
    passthrough("plain-http-mode-v1", REST, mode="v1"),
    passthrough("plain-http-mode-v2", REST, mode="v2"),
    # RFC 9112 2.2: one empty line may precede the request; "\r\nG" leaves the signature.
    passthrough("leading-crlf-http", b"\r\n" + REST),
    passthrough("get-only", b"GET ", gunicorn="n/a"),  # gunicorn waits for 12 bytes first
    passthrough("one-byte", b"G", gunicorn="n/a"),
    # gunicorn only recognises b"PROXY " (with the space); the HTTP parser rejects the rest.
    passthrough("proxy-no-space", b"PROXY\r\n" + REST, gunicorn="n/a"),
    passthrough("proxy-lowercase", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + REST, gunicorn="n/a"),
    passthrough("proxz", b"PROXZ", gunicorn="n/a"),
    # A bad signature is "not a preamble"; gunicorn then fails it as HTTP.
    passthrough("bad-signature-last-byte", SIG[:11] + b"\r" + V2_FRAME[12:] + REST, gunicorn="n/a"),
    passthrough("bad-signature-nul", SIG[:4] + b"\x01" + V2_FRAME[5:] + REST, gunicorn="n/a"),
    passthrough("v1-mode-signature-diverges", b"\r\n\r\nGET", mode="v1", gunicorn="n/a"),
    # Mode off: everything is HTTP.
    passthrough("off-v1-line", v1_line("TCP4", "1.2.3.4", "5.6.7.8", "1", "2") + REST, mode="off",
                gunicorn="n/a"),
    passthrough("off-v2-frame", V2_FRAME + REST, mode="off", gunicorn="n/a"),
    passthrough("false-v2-frame", V2_FRAME + REST, mode=False, gunicorn="n/a"),
    passthrough("off-empty", b"", mode="off", gunicorn="n/a"),
]

TRUNCATED = [
    more("empty", b""),
    more("p", b"P"),
    more("pr", b"PR"),
    more("proxy", b"PROXY"),
    more("proxy-space", b"PROXY "),
    more("v1-no-crlf-yet", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"),
    more("v1-cr-waiting-for-lf", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"),
    more("v1-106-bytes-ending-cr", padded_port_line(MAX_V1_LINE)[:-1]),
    more("v1-prefix-in-mode-v1", b"PROX", mode="v1"),
    more("cr", b"\r"),
    more("crlf", b"\r\n"),
    more("sig-11", SIG[:11]),
    more("sig-12", SIG),
    more("v2-15", V2_FRAME[:15]),
    more("v2-16", V2_FRAME[:16]),
    more("v2-addresses-only", V2_FRAME[:16 + 12]),
    more("v2-minus-1", V2_FRAME[:-1]),
    more("v2-tcp6-minus-1", v2(0x21, 0x21, V6)[:-1]),
    more("v2-local-minus-1", v2(0x20, 0x00, TLVS)[:-1]),
    # Checked before classification, so a mismatch cannot be missed.
    more("v2-prefix-in-mode-v1", SIG[:5], mode="v1", gunicorn="n/a"),
    more("v1-prefix-in-mode-v2", b"PRO", mode="v2", gunicorn="n/a"),
]

CASES = V1_VALID + V1_INVALID + V2_VALID + V2_INVALID + NOT_A_PREAMBLE + TRUNCATED
IDS = [case.id for case in CASES]


# --- drivers -------------------------------------------------------------


def outcome(mode, chunks):
    """Feed chunks in order; return (info, rest + unfed chunks), ERROR or NEED_MORE."""
    parser = ProxyParser(mode)
    try:
        for i, chunk in enumerate(chunks):
            result = parser.feed(chunk)
            if result is not None:
                info, rest = result
                return info, rest + b"".join(chunks[i + 1 :])
    except ProxyProtocolError:
        return ERROR
    return NEED_MORE


def expected(case):
    if isinstance(case.expect, str):
        return case.expect
    return case.expect, case.rest


def test_ids_are_unique():
    assert len(IDS) == len(set(IDS))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fed_whole(case):
    assert outcome(case.mode, [case.data]) == expected(case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fed_byte_by_byte(case):
    chunks = [case.data[i : i + 1] for i in range(len(case.data))] or [b""]
    assert outcome(case.mode, chunks) == expected(case)


SPLIT_LIMIT = 512  # every-offset splitting is quadratic; the 64 KiB v2 case is covered bytewise


@pytest.mark.parametrize(
    "case", [c for c in CASES if len(c.data) < SPLIT_LIMIT], ids=lambda c: c.id
)
def test_fed_in_two_pieces_at_every_offset(case):
    for cut in range(len(case.data) + 1):
        got = outcome(case.mode, [case.data[:cut], case.data[cut:]])
        assert got == expected(case), f"split at {cut}"


# --- rest bytes ----------------------------------------------------------

V1_TCP4 = v1_line("TCP4", "1.2.3.4", "5.6.7.8", "1", "2")
RESTS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00\xff\r\n\r\n" + bytes(range(256)), id="binary"),
    pytest.param(V1_TCP4, id="second-v1-preamble"),
    pytest.param(V2_FRAME, id="second-v2-preamble"),
    pytest.param(REST * 1000, id="large"),
]
PREAMBLES = [
    pytest.param(V1_TCP4, id="v1"),
    pytest.param(b"PROXY UNKNOWN\r\n", id="v1-unknown"),
    pytest.param(V2_FRAME, id="v2"),
    pytest.param(v2(0x20, 0x00), id="v2-local"),
]


@pytest.mark.parametrize("rest", RESTS)
@pytest.mark.parametrize("preamble", PREAMBLES)
def test_rest_returned_intact(preamble, rest):
    info, got = ProxyParser("auto").feed(preamble + rest)
    assert info is not None
    assert got == rest
    assert type(got) is bytes


@pytest.mark.parametrize("rest", RESTS)
def test_rest_intact_when_fed_in_pieces(rest):
    data = V2_FRAME + rest
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert outcome("auto", chunks) == (V4_INFO, rest)


# --- parser lifecycle ----------------------------------------------------

VERSIONS = [
    pytest.param(b"PROXY ", 1, State.V1_LINE, id="v1-prefix"),
    pytest.param(SIG, 2, State.V2_HEADER, id="v2-signature"),
    pytest.param(V2_FRAME[:20], 2, State.V2_BODY, id="v2-fixed-header"),
    pytest.param(b"PROX", None, State.DETECT, id="undecided"),
]


@pytest.mark.parametrize("data, version, state", VERSIONS)
def test_version_known_before_preamble_completes(data, version, state):
    # The caller runs gunicorn's proxy_allow_ips check as soon as this is set.
    parser = ProxyParser("auto")
    assert parser.feed(data) is None
    assert (parser.version, parser.state) == (version, state)


SETTLED = [
    pytest.param(V1_TCP4 + REST, State.DONE, id="done"),
    pytest.param(REST, State.DONE, id="passthrough"),
    pytest.param(v2(0x11, 0x11, V4), State.FAILED, id="failed"),
]


@pytest.mark.parametrize("data, state", SETTLED)
def test_feed_after_settled_is_a_bug(data, state):
    parser = ProxyParser("auto")
    with contextlib.suppress(ProxyProtocolError):
        parser.feed(data)
    assert parser.state is state
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_limits_cover_the_largest_headers():
    assert len(v1_line("UNKNOWN", FFFF6, FFFF6, "65535", "65535")) == MAX_V1_LINE
    assert len(v2(0x21, 0x11, bytes(0xFFFF))) == MAX_V2_HEADER
    assert max(MAX_V1_LINE, MAX_V2_HEADER) <= MAX_PREAMBLE


def test_error_is_a_value_error():
    with pytest.raises(ValueError):
        ProxyParser("auto").feed(b"PROXY nonsense\r\n")


def test_module_is_pure():
    # The parser must stay free of I/O, event loops and threads.
    tree = ast.parse(pathlib.Path(proxy_protocol.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"__future__", "dataclasses", "enum", "ipaddress", "struct"}


# --- modes ---------------------------------------------------------------

MODES = [
    (None, "off"), (False, "off"), (True, "auto"),
    ("off", "off"), ("false", "off"), ("0", "off"), ("none", "off"),
    ("auto", "auto"), ("true", "auto"), ("1", "auto"), (" AUTO ", "auto"),
    ("v1", "v1"), ("V1", "v1"), ("v2", "v2"),
]


@pytest.mark.parametrize("mode, normal", MODES)
def test_normalize_mode(mode, normal):
    assert normalize_mode(mode) == normal
    assert ProxyParser(mode).mode == normal
    assert enabled(mode) is (normal != "off")


@pytest.mark.parametrize("mode, error", [("v3", ValueError), ("", ValueError), (1, TypeError)])
def test_bad_mode(mode, error):
    with pytest.raises(error):
        ProxyParser(mode)
    with pytest.raises(error):
        enabled(mode)


@pytest.mark.parametrize("mode, normal", MODES)
def test_normalize_mode_matches_gunicorn(mode, normal):
    # gunicorn 27.0.1 (the reference, whatever gunicorn is installed: robustness/corpus.py).
    assert REFERENCE.config.validate_proxy_protocol(mode) == normal


# --- IPv6 text as gunicorn (inet_ntop) writes it -------------------------

IPV6_SAMPLES = [
    "::", "::1", "::2", "1::", "::ffff:0.0.0.0", "::ffff:192.0.2.1", "::192.0.2.1",
    "::0.0.0.2", "::1:0:0:1", "1:0:0:1::", "1:0:0:2:0:0:0:3", "1:0::2:0:0:3", "0:0:1::",
    "64:ff9b::192.0.2.1", "::ffff:0:192.0.2.1", "fe80::1", FFFF6, "2001:db8:0:0:1:0:0:1",
]


def random_ipv6(rng):
    # Mostly-zero groups so the compression and dotted-quad rules get exercised.
    groups = [rng.choice([0, 0, 0, 1, 0xFFFF, rng.randrange(0x10000)]) for _ in range(8)]
    return struct.pack("!8H", *groups)


def test_ipv6_text_matches_inet_ntop():
    rng = random.Random(2024)
    samples = [ipaddress.IPv6Address(a).packed for a in IPV6_SAMPLES]
    samples += [random_ipv6(rng) for _ in range(5000)]
    for packed in samples:
        assert ipv6_text(packed) == socket.inet_ntop(socket.AF_INET6, packed), packed.hex()


# --- same verdicts as gunicorn's own parser ------------------------------


def gunicorn_outcome(mode, data):
    """Run gunicorn 27.0.1's WSGI request parser on data (the reference, whatever gunicorn is
    installed: robustness/corpus.py); map its verdict onto ours."""
    errors = REFERENCE.errors
    cfg = REFERENCE.config.Config()
    cfg.set("proxy_protocol", mode)
    try:
        with REFERENCE.active():
            req = REFERENCE.message.Request(cfg, REFERENCE.unreader.IterUnreader([data]),
                                            ("127.0.0.1", 4321), 1)
    except (errors.NoMoreData, StopIteration):
        return NEED_MORE
    except errors.ParseException:
        return ERROR
    info = req.proxy_protocol_info
    if info is None:
        return None
    proto = "UNKNOWN" if info["proxy_protocol"] in ("LOCAL", "UNSPEC") else info["proxy_protocol"]
    return ProxyInfo(
        proto, info["client_addr"], info["client_port"], info["proxy_addr"], info["proxy_port"]
    )


def verdict(case):
    got = outcome(case.mode, [case.data])
    return got[0] if isinstance(got, tuple) else got


@pytest.mark.parametrize("case", [c for c in CASES if c.gunicorn != "n/a"], ids=lambda c: c.id)
def test_verdict_against_gunicorn(case):
    ours, theirs = verdict(case), gunicorn_outcome(case.mode, case.data)
    if case.gunicorn == "same":
        assert ours == theirs
    else:  # a pinned deviation: gunicorn still says exactly what the table says, and we differ
        assert theirs == case.gunicorn, "gunicorn's verdict changed: revisit this deviation"
        assert ours == case.expect and ours != theirs
