"""Build the PEP 3333 environ from plain request values, the way gunicorn's http.wsgi.create does."""

from __future__ import annotations

import enum
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import (
    BadRequest,
    ExpectationFailed,
    HeaderFieldsTooLarge,
    HTTPError,
    NotImplementedCoding,
)
from .settings import Settings

SERVER_SOFTWARE = "gunicorn/aiowsgi"
HTTP_11 = (1, 1)
PROTOCOLS = {HTTP_11: "HTTP/1.1", (1, 0): "HTTP/1.0"}

# RFC 9110 section 5.5: field values must not hold CTLs other than HTAB.
VALUE_INVALID = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# gunicorn's nonstandard method restriction: upper-case, 3 to 20 characters, no "#".
METHOD_BADCHAR = re.compile(r"[a-z#]")


class ConfigurationProblem(HTTPError):
    """gunicorn answers a path outside SCRIPT_NAME with 500 and logs it as the client's."""

    status = 500
    client_error = True


@dataclass(frozen=True)
class Peer:
    """Addresses of one connection, resolved once when it is accepted (and after a PROXY preamble)."""

    remote_addr: str                  # client address; "" on a unix socket
    remote_port: str | None           # client port as text; None on a unix socket
    server_name: str | None           # listener address; None on a unix socket (Host decides)
    server_port: str | None           # listener port as text
    trusted: bool                     # may set forwarding and secure-scheme headers
    proxy: dict[str, str] | None = None  # PROXY_* environ keys when a PROXY preamble was sent
    socket_path: str = ""             # a unix socket's path: SERVER_NAME when no Host names one
    # The environ keys these addresses give every request of the connection, computed once.
    keys: dict[str, str | None] = field(init=False, compare=False, repr=False)
    # gunicorn's req.peer_addr (accept()'s address, ("127.0.0.1", 51234)), for the request record.
    address: Any = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        keys: dict[str, str | None] = {"REMOTE_ADDR": self.remote_addr}
        if self.remote_port is not None:
            keys["REMOTE_PORT"] = self.remote_port
        if self.server_name is not None:  # else from Host, per request (a unix socket)
            keys["SERVER_NAME"], keys["SERVER_PORT"] = self.server_name, self.server_port
        keys.update(self.proxy or {})
        object.__setattr__(self, "keys", keys)  # frozen: set once, here
        object.__setattr__(self, "address", self.remote_addr if self.remote_port is None
                           else (self.remote_addr, int(self.remote_port)))


def is_trusted(addr: str, allow: tuple[str, ...], networks: tuple[Any, ...]) -> bool:
    """gunicorn's _ip_in_allow_list: "*" or membership of a configured network."""
    if "*" in allow:
        return True
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def make_peer(settings: Settings, peername: Any, sockname: Any) -> Peer:
    """Resolve a connection's addresses; unix-socket peers are always trusted, as in gunicorn."""
    if isinstance(peername, tuple) and isinstance(sockname, tuple):
        addr = peername[0]
        return Peer(addr, str(peername[1]), sockname[0], str(sockname[1]),
                    is_trusted(addr, settings.forwarded_allow_ips, settings.forwarded_networks))
    return Peer(peername.decode() if isinstance(peername, bytes) else (peername or ""),
                None, None, None, True,
                socket_path=sockname.decode() if isinstance(sockname, bytes) else (sockname or ""))


def proxied_peer(peer: Peer, info: Any) -> Peer:
    """The addresses a PROXY preamble gives (gunicorn's proxy_environ); UNKNOWN keeps the socket's."""
    if info.client_addr is None:
        return peer
    proxy = {"PROXY_PROTOCOL": info.protocol, "REMOTE_ADDR": info.client_addr,
             "REMOTE_PORT": str(info.client_port), "PROXY_ADDR": info.proxy_addr or "",
             "PROXY_PORT": str(info.proxy_port)}
    return Peer(info.client_addr, str(info.client_port), peer.server_name, peer.server_port,
                peer.trusted, proxy, peer.socket_path)


def base_environ(settings: Settings, errors: Any, file_wrapper: Any) -> dict[str, Any]:
    """The keys that are the same for every request of a worker (PEP 3333 'wsgi.*')."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.errors": errors,
        "wsgi.multithread": True,
        "wsgi.multiprocess": settings.workers > 1,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": file_wrapper,
        "wsgi.input_terminated": True,
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
    }


# Methods seen before and accepted -> REQUEST_METHOD, one table per casefold_http_method. The
# same few come on every request; bounded like the header names below (count).
METHOD_CACHE_SIZE = 64
_METHODS: dict[bool, dict[str, str]] = {False: {}, True: {}}


def check_method(settings: Settings, method: str) -> str:
    """gunicorn's method rules (aiohttp has already checked it is a token)."""
    methods = _METHODS[settings.casefold_http_method]
    known = methods.get(method)
    if known is not None:
        return known
    if METHOD_BADCHAR.search(method) or not 3 <= len(method) <= 20:
        raise BadRequest(f"Invalid Method '{method}'")
    checked = method.upper() if settings.casefold_http_method else method
    if len(methods) < METHOD_CACHE_SIZE:
        methods[method] = checked
    return checked


# Origin-form targets seen before -> (RAW_URI, path, query): the same few ("/", "/health") come
# again and again, and their split does not depend on the method. Bounded like the header names
# below, and only short targets are kept (count, characters).
TARGET_CACHE_SIZE = 256
TARGET_CACHE_LENGTH = 128
_TARGETS: dict[str, tuple[str, str, str]] = {}


def split_target(method: str, target: str) -> tuple[str, str, str]:
    """Request-target to (RAW_URI, path, query) as gunicorn's parse_request_line does.

    `target` is as the parser decoded it: UTF-8, other bytes as surrogates (surrogateescape).
    """
    # RFC 9112 section 3.2 / RFC 3986 section 2: a request-target is printable ASCII only
    # (no space, control or DEL): then its characters are its bytes, as latin-1 reads them.
    if not target or not (target.isascii() and target.isprintable()) or " " in target:
        shown = target.encode("utf-8", "surrogateescape").decode("latin-1")
        raise BadRequest(f"Invalid Request Line '{shown}'")
    uri = target
    if uri[0] == "/" and uri[1:2] != "/" and "#" not in uri:  # origin-form: nearly every request
        path, _, query = uri.partition("?")
        if len(_TARGETS) < TARGET_CACHE_SIZE and len(uri) <= TARGET_CACHE_LENGTH:
            _TARGETS[uri] = (uri, path, query)
        return uri, path, query
    # RFC 9112 section 3.2.4: asterisk-form only with OPTIONS; 3.2.3: authority-form only
    # with CONNECT; otherwise origin-form ("/...") or absolute-form ("scheme://...").
    if (uri == "*" and method != "OPTIONS") or (
            method != "CONNECT" and uri != "*" and not uri.startswith("/") and "://" not in uri):
        raise BadRequest(f"Invalid Request Line '{uri}'")
    try:
        parts = split_uri(uri)
    except ValueError:
        raise BadRequest(f"Invalid Request Line '{uri}'") from None
    return uri, parts.path, parts.query


def split_uri(uri: str) -> urllib.parse.SplitResult:
    """gunicorn's split_request_uri: RFC 3986's parts of a request-target, a fragment cut off
    before the query is looked for ("/a#b?c" has no query), and a target starting with "//"
    read as a path (RFC 9112 section 3.2.1), not as a network-path reference."""
    if uri.startswith("//"):
        parts = urllib.parse.urlsplit("." + uri)
        return parts._replace(path=parts.path[1:])
    return urllib.parse.urlsplit(uri)


def _header_name(name: str, settings: Settings, trusted: bool) -> str | None:
    """Apply header_map to a name holding "_" (gunicorn 22+): keep, drop (None) or refuse."""
    if trusted and (name in settings.forwarder_headers or "*" in settings.forwarder_headers):
        return name
    if settings.header_map == "dangerous":
        return name
    if settings.header_map == "drop":
        return None
    raise BadRequest(f"Invalid header name '{name}'")


def keeps_field(name: str, settings: Settings, trusted: bool) -> bool:
    """Whether a field whose name holds "_" stays among the request's headers, as gunicorn's
    parser decides for req.headers (the request record's filter; add_headers makes the same
    decision for the environ). A refused one never reaches a record: its request got a 400."""
    try:
        return _header_name(name, settings, trusted) is not None
    except BadRequest:
        return False


class FieldKind(enum.Enum):
    """How a header field name is mapped into the environ; known once per name (the cache below)."""

    PLAIN = "plain"            # HTTP_NAME; repeats are joined with "," (RFC 9110 section 5.3)
    HOST = "host"              # HTTP_HOST, once at most; SERVER_NAME/PORT on a unix socket
    CONTENT = "content"        # CONTENT_TYPE / CONTENT_LENGTH (PEP 3333), once at most
    FRAMING = "framing"        # Transfer-Encoding: refused in an HTTP/1.0 request
    EXPECT = "expect"          # Expect: only 100-continue (RFC 9110 section 10.1.1)
    UNDERSCORE = "underscore"  # a name holding "_": header_map decides


PLAIN, HOST = FieldKind.PLAIN, FieldKind.HOST  # compared for every field (see boundary.py's aliases)

# Header names seen before: raw bytes -> (NAME, environ key, kind). Names repeat on every
# request (Host, Accept, User-Agent...), so each is decoded and mapped once.
# Bounded: past NAME_CACHE_SIZE entries new names are mapped but not kept (count).
NAME_CACHE_SIZE = 1024
_NAMES: dict[bytes, tuple[str, str, FieldKind]] = {}
# The names with rules of their own; Host, Content-Type and Content-Length cannot be combined
# into a list, so a repeat is ambiguous (RFC 9110 section 5.3).
KINDS = {"HOST": FieldKind.HOST, "CONTENT-TYPE": FieldKind.CONTENT,
         "CONTENT-LENGTH": FieldKind.CONTENT, "TRANSFER-ENCODING": FieldKind.FRAMING,
         "EXPECT": FieldKind.EXPECT}
# No secure-scheme headers from an untrusted peer.
NO_HEADERS: dict[str, str] = {}


def field_key(name: str) -> tuple[str, FieldKind]:
    """A field name's environ key and kind: CONTENT_TYPE / CONTENT_LENGTH, else HTTP_NAME."""
    kind = KINDS.get(name) or (FieldKind.UNDERSCORE if "_" in name else PLAIN)
    key = name.replace("-", "_") if kind is FieldKind.CONTENT else "HTTP_" + name.replace("-", "_")
    return key, kind


def _map_name(raw_name: bytes) -> tuple[str, str, FieldKind]:
    name = raw_name.decode("latin-1").upper()
    mapped = (name, *field_key(name))
    if len(_NAMES) < NAME_CACHE_SIZE:
        _NAMES[raw_name] = mapped
    return mapped


def add_headers(environ: dict[str, Any], settings: Settings, peer: Peer,
                version: tuple[int, int], raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[bool, str | None, str]:
    """Map header fields into environ; returns (expect 100-continue, Host, scheme from headers).

    `environ` holds no HTTP_HOST, CONTENT_TYPE or CONTENT_LENGTH yet: a second such field is
    refused by finding the first one's key.
    """
    secure = settings.secure_scheme_headers if peer.trusted else NO_HEADERS
    scheme = None
    host = None
    expect = False
    # gunicorn's limit_request_field_size counts the whole line, "Name: value\r\n"; aiohttp's
    # own max_field_size counts name and value apart.
    size_limit = (settings.limit_request_field_size if settings.limit_request_field_size > 0
                  else 8190) - 4
    names = _NAMES
    for raw_name, raw_value in raw_headers:
        if len(raw_name) + len(raw_value) > size_limit:
            raise HeaderFieldsTooLarge("limit request headers fields size")
        name, key, kind = names.get(raw_name) or _map_name(raw_name)
        value = raw_value.decode("latin-1").strip(" \t")
        if not value.isprintable() and VALUE_INVALID.search(value):  # printable: no CTL at all
            raise BadRequest(f"Invalid HTTP Header: '{name}'")
        if name in secure:
            this = "https" if value == secure[name] else "http"
            if scheme is not None and scheme != this:
                raise BadRequest("Contradictory scheme headers")
            scheme = this
        if kind is PLAIN:
            if key in environ:
                environ[key] += "," + value
            else:
                environ[key] = value
        elif kind is HOST:
            if host is not None:  # RFC 9110 section 5.3: not a list; a repeat is ambiguous
                raise BadRequest(f"Invalid HTTP Header: '{name}'")
            host = environ[key] = value
        else:
            expect = _careful_field(environ, settings, peer, version, name, key, kind, value, expect)
    return expect, host, scheme or ("https" if settings.is_ssl else "http")


def _careful_field(environ: dict[str, Any], settings: Settings, peer: Peer, version: tuple[int, int],
                   name: str, key: str, kind: FieldKind, value: str, expect: bool) -> bool:
    """A field with rules of its own (not Host); returns whether 100-continue is expected."""
    if kind is FieldKind.CONTENT:
        if key in environ:  # RFC 9110 section 5.3: not a list; a repeat is ambiguous
            raise BadRequest(f"Invalid HTTP Header: '{name}'")
        environ[key] = value
        return expect
    if kind is FieldKind.FRAMING:
        if version < (1, 1):
            # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise BadRequest(f"Invalid HTTP Header: '{name}'")
        _check_codings(value)
    if kind is FieldKind.EXPECT:
        # RFC 9110 section 10.1.1: an HTTP/1.0 client's 100-continue is ignored.
        if value.lower() != "100-continue":
            raise ExpectationFailed(value)
        expect = version >= (1, 1)
    if kind is FieldKind.UNDERSCORE:
        if _header_name(name, settings, peer.trusted) is None:
            return expect
        if name == "SCRIPT_NAME":
            environ["SCRIPT_NAME"] = value
    if key in environ:
        environ[key] += "," + value
    else:
        environ[key] = value
    return expect


# The transfer codings gunicorn knows (RFC 9112 section 7); the parser has checked that the
# last is chunked. gunicorn passes the others to the app undecoded, and so do we.
KNOWN_CODINGS = frozenset(("chunked", "identity", "gzip", "deflate", "compress"))


def _check_codings(value: str) -> None:
    """RFC 9112 section 6.1: a transfer coding the server does not understand is a 501, as
    gunicorn answers it; aiohttp's parser looks only at the last coding (chunked or not)."""
    for coding in value.split(","):
        coding = coding.strip(" \t").lower()
        if coding and coding not in KNOWN_CODINGS:  # RFC 9110 section 5.6.1: empty items ignored
            raise NotImplementedCoding(f"Unsupported transfer coding: '{coding}'")


def path_info(path: str, script_name: str) -> str:
    """PATH_INFO: the path minus SCRIPT_NAME, percent-decoded to latin-1 text (PEP 3333:
    "/caf%C3%A9" -> "/caf\\xc3\\xa9"); a path outside SCRIPT_NAME is gunicorn's 500."""
    if script_name:
        if not path.startswith(script_name):
            raise ConfigurationProblem(
                f"Request path {path!r} does not start with SCRIPT_NAME {script_name!r}")
        path = path[len(script_name):]
    return urllib.parse.unquote_to_bytes(path).decode("latin-1") if "%" in path else path


def server_from_host(host: str | None, scheme: str, path: str) -> tuple[str, str]:
    """On a unix socket, SERVER_NAME/PORT come from Host, as gunicorn does; without one, the
    socket's path and no port (gunicorn's http.wsgi.create)."""
    if not host:
        return path, ""
    name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep:
        return host, "443" if scheme == "https" else "80" if scheme == "http" else ""
    return name, port


def build_environ(base: dict[str, Any], settings: Settings, peer: Peer, method: str,
                  target: str, version: tuple[int, int],
                  raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, Any], bool]:
    """The environ for one request, minus wsgi.input; returns it and whether 100-continue is expected.

    Raises a BadRequest (or another HTTPError) for what gunicorn would refuse.
    """
    if version == HTTP_11:  # nearly every request: one comparison, no table lookup
        protocol = "HTTP/1.1"
    elif version[0] != 1:  # gunicorn serves HTTP/1.x only; aiohttp also parses "HTTP/2.0" heads
        raise BadRequest("Invalid HTTP Version '%d.%d'" % tuple(version))
    else:
        protocol = PROTOCOLS.get(version) or "HTTP/%d.%d" % version
    raw_uri, path, query = _TARGETS.get(target) or split_target(method, target)
    environ = base.copy()
    # A method seen before is taken from check_method's table without calling it.
    environ["REQUEST_METHOD"] = (_METHODS[settings.casefold_http_method].get(method)
                                 or check_method(settings, method))
    environ["QUERY_STRING"] = query
    environ["RAW_URI"] = raw_uri
    environ["SERVER_PROTOCOL"] = protocol
    environ["SCRIPT_NAME"] = settings.script_name
    expect, host, scheme = add_headers(environ, settings, peer, version, raw_headers)
    if host is None and version >= (1, 1):
        # RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
        raise BadRequest("Missing 'Host' header")
    environ["wsgi.url_scheme"] = scheme
    environ.update(peer.keys)
    if peer.server_name is None:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = server_from_host(host, scheme, peer.socket_path)
    script_name = environ["SCRIPT_NAME"]
    # Nearly every path has neither a SCRIPT_NAME to strip nor a "%": no call for those.
    environ["PATH_INFO"] = path_info(path, script_name) if script_name or "%" in path else path
    return environ, expect


def refusal_environ(base: dict[str, Any], settings: Settings, peer: Peer, method: str,
                    target: str, version: tuple[int, int]) -> dict[str, Any]:
    """What the access log reads of a request refused after its head was parsed (a repeated
    Host, a path outside SCRIPT_NAME): gunicorn's default_environ, which its handle_error logs
    such a refusal with; nothing of it is checked, since it was refused."""
    path, _, query = target.partition("#")[0].partition("?")
    environ = base.copy()
    environ.update(peer.keys)
    environ.update(REQUEST_METHOD=method, RAW_URI=target, QUERY_STRING=query, PATH_INFO=path,
                   SERVER_PROTOCOL="HTTP/%d.%d" % version, SCRIPT_NAME=settings.script_name)
    environ["wsgi.url_scheme"] = "https" if settings.is_ssl else "http"
    return environ
