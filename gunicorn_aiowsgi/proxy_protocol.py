"""Incremental, I/O-free parser for the HAProxy PROXY protocol v1/v2 connection preamble."""

# Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt ("spec" below).
# Reference behaviour: gunicorn 27 gunicorn/http/message.py
# (Request._handle_proxy_protocol / _parse_proxy_protocol_v1 / _parse_proxy_protocol_v2),
# the parser gunicorn's own WSGI workers use; deviations are listed in ProxyParser's docstring.

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

# Spec 2.1: the worst-case v1 line ("PROXY UNKNOWN" + two full IPv6 + two ports)
# is 107 bytes including the CRLF; "if the CRLF sequence is not found in the
# first 107 characters, the receiver should declare the line invalid".
MAX_V1_LINE = 107
V1_PREFIX = b"PROXY "

# Spec 2.2: fixed 12-byte signature, then ver/cmd, fam/proto and a 16-bit length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LEN = 16
V2_VERSION = 2  # spec 2.2: "the receiver must only accept this value"
MAX_PORT = 0xFFFF  # spec 2.1: ports are in [0..65535]; v2 carries them as uint16
# Spec 2.2: "the length of the protocol header in bytes is always exactly
# 16 + this value", and the value is 16 bits, so no v2 preamble exceeds this.
MAX_V2_HEADER = V2_HEADER_LEN + 0xFFFF

# Largest preamble the parser will ever buffer; the v1 and v2 states enforce
# their own (smaller or equal) limits, so this is the global bound.
MAX_PREAMBLE = max(MAX_V1_LINE, MAX_V2_HEADER)

# Bytes needed before a connection can be classified (spec 2.2, "Identifying
# the protocol version"); shorter data that is still a prefix of one of the
# markers means "need more".
DETECT_LEN = max(len(V2_SIGNATURE), len(V1_PREFIX))

_V2_FIXED = struct.Struct("!12sBBH")
_V2_INET = struct.Struct("!4s4sHH")  # spec 2.2: len = 12
_V2_INET6 = struct.Struct("!16s16sHH")  # spec 2.2: len = 36


class ProxyProtocolError(ValueError):
    """Malformed or forbidden preamble; the server answers 400 and closes."""


@dataclass(frozen=True)
class ProxyInfo:
    """What the preamble said about the proxied connection."""

    protocol: str  # "TCP4", "TCP6" or "UNKNOWN" (v1 names, v2 mapped onto them)
    client_addr: str | None  # source address; None for UNKNOWN / v2 LOCAL
    client_port: int | None
    proxy_addr: str | None  # destination address
    proxy_port: int | None


# Spec 2.1 / 2.2: UNKNOWN, LOCAL and AF_UNSPEC all mean "use the real
# connection endpoints", so they share one value.
UNKNOWN = ProxyInfo("UNKNOWN", None, None, None, None)


class State(enum.Enum):
    """Where the parser is in the preamble."""

    DETECT = "detect"  # too few bytes to tell a preamble from plain HTTP
    V1_LINE = "v1-line"  # "PROXY " seen, waiting for the CRLF
    V2_HEADER = "v2-header"  # signature seen, waiting for the 16-byte fixed part
    V2_BODY = "v2-body"  # fixed part valid, waiting for `len` address/TLV bytes
    DONE = "done"  # result returned; the parser is spent
    FAILED = "failed"  # ProxyProtocolError raised; the parser is spent


class _Command(enum.IntEnum):
    """Spec 2.2, low nibble of the 13th byte."""

    LOCAL = 0x0
    PROXY = 0x1


class _Family(enum.IntEnum):
    """Spec 2.2, high nibble of the 14th byte."""

    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


_STREAM = 0x1  # spec 2.2, low nibble of the 14th byte: SOCK_STREAM (TCP)

# Same table as gunicorn.config.validate_proxy_protocol.
_MODE_NAMES = {
    "false": "off",
    "off": "off",
    "0": "off",
    "none": "off",
    "true": "auto",
    "auto": "auto",
    "1": "auto",
    "v1": "v1",
    "v2": "v2",
}


def normalize_mode(mode: str | bool | None) -> str:
    """Map a proxy_protocol setting to "off", "v1", "v2" or "auto" as gunicorn's validator does.

    Older gunicorn stored a bool (its config notes the modes arrived in 24.1.0); True now
    means "auto", False "off".
    """
    if mode is None:
        return "off"
    if isinstance(mode, bool):
        return "auto" if mode else "off"
    if not isinstance(mode, str):
        raise TypeError("proxy_protocol must be string or bool")
    try:
        return _MODE_NAMES[mode.strip().lower()]
    except KeyError:
        raise ValueError("proxy_protocol must be: off, v1, v2, or auto") from None


def enabled(mode: str | bool | None) -> bool:
    """True when the setting asks for PROXY protocol handling at all."""
    return normalize_mode(mode) != "off"


class ProxyParser:
    """Consume the PROXY preamble at the start of one connection, fed in arbitrary chunks.

    Acceptance mirrors gunicorn 27's WSGI parser (gunicorn/http/message.py):

    * No preamble at all -> passthrough, in every enabled mode ("v1", "v2" and
      "auto"): gunicorn only parses a preamble when the data starts with the
      v2 signature or with b"PROXY ", otherwise it hands the bytes to the HTTP
      parser untouched.  feed() then returns (None, data).  Note that spec 2
      says a receiver "MUST not try to guess"; gunicorn guesses, and relies on
      proxy_allow_ips, so the caller must run that check (see ``version``).
      We decide as soon as the bytes stop being a prefix of either marker, so
      b"GET " passes through at once and b"PR" waits.
    * A v2 signature in mode "v1", or b"PROXY " in mode "v2", raises.  gunicorn
      hands such bytes to its HTTP parser, which answers 400 for every real
      preamble; raising gives the same 400 without relying on that.
    * v1: "PROXY TCP4|TCP6 src dst sport dport\\r\\n", fields split on single
      spaces, family-checked addresses (inet_pton rules), ports 0..65535.
    * v2: version nibble 2, command LOCAL or PROXY; LOCAL ignores the rest;
      PROXY needs transport STREAM and family INET, INET6 or UNSPEC; address
      block long enough for the family; trailing TLVs skipped unparsed.

    Deliberate deviations from gunicorn/http/message.py:

    * v1 "PROXY UNKNOWN ...\\r\\n" is accepted (spec 2.1: the receiver SHOULD
      accept it and ignore the rest of the line); message.py rejects it,
      gunicorn 27's own ASGI parser (gunicorn/asgi/parser.py) accepts it.
    * v1 lines must end with CRLF within MAX_V1_LINE bytes (spec 2.1);
      message.py reads without bound.  A bare CR or LF inside the line is
      rejected (spec 2.1) instead of being swallowed.
    * v1 ports must be ASCII digits; int() quirks message.py inherits ("+80",
      "1_0", "\\t80", "²") are rejected.  Leading zeros are still accepted,
      as in message.py.
    * v2 LOCAL and AF_UNSPEC report protocol "UNKNOWN" (message.py: "LOCAL",
      "UNSPEC").  Malformed v2 fixed headers are rejected as soon as the 16
      bytes are in, not after the whole address block arrived.
    """

    def __init__(self, mode: str | bool | None):
        self.mode = normalize_mode(mode)
        self.state = State.DETECT
        # 1 or 2 once a preamble is recognised: gunicorn runs its
        # proxy_allow_ips check at exactly that moment, so callers can too.
        self.version: int | None = None
        # Bounded: DETECT_LEN in DETECT, MAX_V1_LINE in V1_LINE, the
        # announced header size (<= MAX_V2_HEADER) in the v2 states.
        self._buf = bytearray()
        self._v2_command = _Command.LOCAL
        self._v2_fam = 0
        self._v2_total = V2_HEADER_LEN

    def feed(self, data: bytes) -> tuple[ProxyInfo | None, bytes] | None:
        """Return None while more bytes are needed, (info, rest) once the preamble is complete.

        rest is the bytes after the preamble (the start of the HTTP request);
        info is None when the connection carries no preamble.  Raises
        ProxyProtocolError on malformed input, on a version not allowed by
        mode, or when more than MAX_PREAMBLE bytes arrive without a complete
        preamble (for v1 the tighter MAX_V1_LINE applies; a v2 header cannot
        announce more than MAX_V2_HEADER == MAX_PREAMBLE bytes).
        """
        if self.state in (State.DONE, State.FAILED):
            raise RuntimeError("ProxyParser.feed() called after the preamble was settled")
        if self.mode == "off":
            self.state = State.DONE
            return None, bytes(data)
        self._buf += data
        try:
            return self._advance()
        except ProxyProtocolError:
            self.state = State.FAILED
            self._buf = bytearray()
            raise

    def _advance(self) -> tuple[ProxyInfo | None, bytes] | None:
        # One feed() may carry the whole preamble, so keep stepping while a
        # handler moves to a new state without producing a result.
        while True:
            before = self.state
            result = _HANDLERS[before](self)
            if result is not None or self.state is before:
                return result

    def _detect(self) -> tuple[ProxyInfo | None, bytes] | None:
        buf = self._buf
        if buf[: len(V2_SIGNATURE)] == V2_SIGNATURE:
            self._start(2, State.V2_HEADER)
        elif buf[: len(V1_PREFIX)] == V1_PREFIX:
            self._start(1, State.V1_LINE)
        elif not (V2_SIGNATURE.startswith(buf) or V1_PREFIX.startswith(buf)):
            # The bytes can no longer become either marker (spec 2.2, "Identifying
            # the protocol version"); gunicorn: "Not proxy protocol - return buffer
            # unchanged".  While they still can, wait (gunicorn waits for 12 bytes).
            return self._finish(None, 0)
        return None

    def _start(self, version: int, state: State) -> None:
        if self.mode not in ("auto", f"v{version}"):
            raise ProxyProtocolError(
                f"PROXY protocol v{version} preamble but proxy_protocol is {self.mode!r}"
            )
        self.version = version
        self.state = state

    def _v1_line(self) -> tuple[ProxyInfo | None, bytes] | None:
        # Spec 2.1: wait for the CRLF before decoding, and give up if it is
        # not within the first MAX_V1_LINE bytes.
        end = self._buf.find(b"\r\n", 0, MAX_V1_LINE)
        if end < 0:
            if len(self._buf) >= MAX_V1_LINE:
                raise ProxyProtocolError(f"PROXY v1 line has no CRLF in {MAX_V1_LINE} bytes")
            return None
        return self._finish(parse_v1_line(bytes(self._buf[:end])), end + 2)

    def _v2_header(self) -> tuple[ProxyInfo | None, bytes] | None:
        if len(self._buf) < V2_HEADER_LEN:
            return None
        _sig, ver_cmd, fam, length = _V2_FIXED.unpack_from(self._buf)
        # Spec 2.2: "the receiver must only accept" version 2, and "must drop
        # connections presenting unexpected values" for the command.
        if ver_cmd >> 4 != V2_VERSION:
            raise ProxyProtocolError(f"PROXY v2: unsupported version {ver_cmd >> 4}")
        command = ver_cmd & 0x0F
        if command not in (_Command.LOCAL, _Command.PROXY):
            raise ProxyProtocolError(f"PROXY v2: unsupported command {command}")
        if command == _Command.PROXY:
            _check_v2_family(fam, length)
        self._v2_command = _Command(command)
        self._v2_fam = fam
        self._v2_total = V2_HEADER_LEN + length
        self.state = State.V2_BODY
        return None

    def _v2_body(self) -> tuple[ProxyInfo | None, bytes] | None:
        # Spec 2.2: "must not start to parse an address before the whole
        # address block is received".
        if len(self._buf) < self._v2_total:
            return None
        if self._v2_command == _Command.LOCAL:
            # Spec 2.2: LOCAL -> "discard the protocol block including the family".
            return self._finish(UNKNOWN, self._v2_total)
        block = bytes(self._buf[V2_HEADER_LEN : self._v2_total])
        return self._finish(_v2_addresses(self._v2_fam >> 4, block), self._v2_total)

    def _finish(self, info: ProxyInfo | None, consumed: int) -> tuple[ProxyInfo | None, bytes]:
        rest = bytes(self._buf[consumed:])
        self._buf = bytearray()
        self.state = State.DONE
        return info, rest


_HANDLERS = {
    State.DETECT: ProxyParser._detect,
    State.V1_LINE: ProxyParser._v1_line,
    State.V2_HEADER: ProxyParser._v2_header,
    State.V2_BODY: ProxyParser._v2_body,
}


# --- v1 (spec 2.1) -------------------------------------------------------

_V1_FAMILIES = {"TCP4": ipaddress.IPv4Address, "TCP6": ipaddress.IPv6Address}
_V1_FIELDS = 6  # "PROXY", protocol, source, destination, source port, destination port


def parse_v1_line(line: bytes) -> ProxyInfo:
    """Decode one v1 line, without its CRLF, e.g. b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443"."""
    # latin-1 never fails, like gunicorn's bytes_to_str; non-ASCII then fails
    # the address/port checks below.
    text = line.decode("latin-1")
    # Spec 2.1: "must not tolerate a single CR or LF character to end the line".
    if "\r" in text or "\n" in text:
        raise ProxyProtocolError(f"PROXY v1 line contains a bare CR or LF: {text!r}")
    bits = text.split(" ")
    # Spec 2.1: for UNKNOWN "the receiver must ignore anything presented
    # before the CRLF".
    if bits[1:2] == ["UNKNOWN"]:
        return UNKNOWN
    if len(bits) != _V1_FIELDS:
        raise ProxyProtocolError(f"PROXY v1 line needs 6 fields: {text!r}")
    _proxy, proto, src, dst, sport, dport = bits
    family = _V1_FAMILIES.get(proto)
    if family is None:
        raise ProxyProtocolError(f"PROXY v1 protocol {proto!r} not supported")
    return ProxyInfo(
        proto,
        _v1_address(src, family, proto),
        _v1_port(sport),
        _v1_address(dst, family, proto),
        _v1_port(dport),
    )


def _v1_address(text: str, family: type, proto: str) -> str:
    # gunicorn validates with socket.inet_pton for the announced family
    # ("the advertised protocol family dictates what format to use") and
    # keeps the text as sent.  ipaddress agrees with inet_pton except that it
    # also takes IPv6 scope ids ("fe80::1%eth0"), which inet_pton refuses.
    try:
        if "%" in text:
            raise ValueError(text)
        family(text)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 invalid {proto} address {text!r}") from None
    return text


def _v1_port(text: str) -> int:
    # Spec 2.1: decimal integer in [0..65535].  ASCII digits only, so the
    # signs, underscores and whitespace int() would take are refused.
    if not (text.isascii() and text.isdigit()):
        raise ProxyProtocolError(f"PROXY v1 invalid port {text!r}")
    port = int(text)
    if port > MAX_PORT:
        raise ProxyProtocolError(f"PROXY v1 port {port} out of range")
    return port


# --- v2 (spec 2.2) -------------------------------------------------------

_V2_MIN_LEN: dict[int, int] = {_Family.INET: _V2_INET.size, _Family.INET6: _V2_INET6.size,
                               _Family.UNSPEC: 0}


def _check_v2_family(fam: int, length: int) -> None:
    """Validate a PROXY command's 14th byte and length, as gunicorn does after reading the block."""
    # gunicorn serves HTTP over TCP only: any non-STREAM transport is refused,
    # including the all-UNSPEC 0x00 byte (spec 2.2 leaves accept/reject for
    # PROXY+UNSPEC to the receiver).
    if fam & 0x0F != _STREAM:
        raise ProxyProtocolError(f"PROXY v2: transport {fam & 0x0F} is not STREAM (TCP)")
    minimum = _V2_MIN_LEN.get(fam >> 4)
    if minimum is None:
        raise ProxyProtocolError(f"PROXY v2: unsupported address family {fam >> 4}")
    if length < minimum:
        raise ProxyProtocolError(
            f"PROXY v2: {length} address bytes, family {fam >> 4} needs {minimum}"
        )


def _v2_addresses(family: int, block: bytes) -> ProxyInfo:
    """Read the address block of a validated PROXY command; bytes after it (TLVs) are skipped."""
    # Spec 2.2: a receiver "may choose to skip over and ignore" TLVs, and
    # gunicorn does; they are not even checked for well-formedness.
    if family == _Family.INET:
        src, dst, sport, dport = _V2_INET.unpack_from(block)
        return ProxyInfo(
            "TCP4", str(ipaddress.IPv4Address(src)), sport, str(ipaddress.IPv4Address(dst)), dport
        )
    if family == _Family.INET6:
        src, dst, sport, dport = _V2_INET6.unpack_from(block)
        return ProxyInfo("TCP6", ipv6_text(src), sport, ipv6_text(dst), dport)
    return UNKNOWN  # AF_UNSPEC over STREAM; spec 2.2: "ignore address information"


_V4_MAPPED = bytes(10) + b"\xff\xff"
_V4_COMPAT = bytes(12)


def ipv6_text(packed: bytes) -> str:
    """Format 16 bytes the way glibc inet_ntop does, which is what gunicorn reports."""
    # ipaddress compresses like inet_ntop, but inet_ntop keeps the dotted
    # quad for IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d)
    # addresses, where ipaddress prints hex groups.
    if packed[:12] == _V4_MAPPED:
        return "::ffff:" + str(ipaddress.IPv4Address(packed[12:]))
    if packed[:12] == _V4_COMPAT and packed[12:14] != b"\0\0":
        return "::" + str(ipaddress.IPv4Address(packed[12:]))
    return str(ipaddress.IPv6Address(packed))
