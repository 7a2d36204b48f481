"""The request and response records handed to gunicorn's hooks and access log, shaped like gunicorn's."""

from __future__ import annotations

from typing import Any, Iterable

from .environ import (
    HOST,
    FieldKind,
    field_key,
    keeps_field,
    path_info,
    server_from_host,
    split_uri,
)
from .settings import Settings


class RequestRecord:
    """What gunicorn's http.Request carries and hooks commonly read (pre_request, post_request)."""

    __slots__ = ("method", "uri", "path", "query", "fragment", "version", "_raw", "_headers",
                 "scheme", "peer_addr", "remote_addr", "body", "trailers", "req_number",
                 "must_close", "_peer", "_settings")

    def __init__(self, environ: dict[str, Any], version: tuple[int, int],
                 raw_headers: Any, peer: Any, req_number: int, settings: Settings) -> None:
        self.method: str = environ["REQUEST_METHOD"]
        uri: str = environ["RAW_URI"]
        self.uri = uri
        self.query: str = environ["QUERY_STRING"]
        if uri[:1] == "/" and uri[1:2] != "/" and "?" not in uri and "#" not in uri:
            self.path: str = uri  # a bare path (most requests): nothing to cut off
            self.fragment: str = ""
        else:  # as gunicorn's Request: absolute-form "http://h/x" has the path "/x"
            parts = split_uri(uri)  # the target passed split_target: it splits
            self.path, self.fragment = parts.path, parts.fragment
        self.version = version                  # (1, 1)
        self._raw = raw_headers                 # aiohttp's ((b"Host", b"example.com"), ...)
        self._headers: list[tuple[str, str]] | None = None
        self.scheme: str = environ["wsgi.url_scheme"]
        # gunicorn's is accept()'s address, ("127.0.0.1", 51234); hooks index it. A Peer has it
        # made once per connection.
        address = getattr(peer, "address", None)
        if address is None:
            port = getattr(peer, "remote_port", None)
            address = ((peer.remote_addr, int(port)) if port is not None
                       else getattr(peer, "remote_addr", peer))
        self.peer_addr = address
        self.remote_addr = self.peer_addr
        self.body = environ.get("wsgi.input")
        self.trailers: list[tuple[str, str]] = []
        self.req_number = req_number            # requests so far on this connection
        self.must_close = False                 # force_close() was called (by a pre_request hook)
        self._peer = peer                       # header_map's trust; a unix socket's SERVER_NAME
        self._settings = settings

    @property
    def headers(self) -> list[tuple[str, str]]:
        """[("HOST", "example.com"), ...] as gunicorn's; built only if a hook or log reads it."""
        if self._headers is None:
            self._headers = self._fields()
        return self._headers

    @headers.setter
    def headers(self, headers: list[tuple[str, str]]) -> None:
        self._headers = headers  # a pre_request hook's own list (update_environ maps it)

    def _fields(self) -> list[tuple[str, str]]:
        return request_headers(self._raw, self._settings, getattr(self._peer, "trusted", False))

    def force_close(self) -> None:
        """gunicorn's: the connection closes after this response (Connection: close)."""
        self.must_close = True

    def should_close(self) -> bool:
        """gunicorn's Message.should_close: force_close(), CONNECT, the first Connection field,
        else HTTP/1.0 closes."""
        if self.must_close or self.method == "CONNECT":
            return True
        for name, value in self.headers:
            if name == "CONNECTION":
                value = value.lower().strip(" \t")
                if value == "close":
                    return True
                if value == "keep-alive":
                    return False
                break
        return self.version <= (1, 0)

    # -- what a pre_request hook changed -----------------------------------------------------
    def snapshot(self) -> tuple[Any, ...]:
        """What the environ was built from, taken just before the pre_request hook runs."""
        return self.method, self.uri, self.path, self.query, self.scheme, self.body

    def update_environ(self, environ: dict[str, Any], before: tuple[Any, ...]) -> bool:
        """Bring `environ` (the request's own, changed in place) in line with what the hook
        changed on this record since `before`, as gunicorn's wsgi.create, which builds the
        environ from the record after the hook, would have built it. Keys the loop owns stay
        (CONTENT_LENGTH, wsgi.early_hints). True when the response must close the connection."""
        method, uri, path, query, scheme, body = before
        fields = self._headers  # None: never read, so never changed
        if fields is not None and fields == self._fields():
            fields = None  # read (or rebuilt alike), not changed
        if self.method != method:
            environ["REQUEST_METHOD"] = self.method
        if self.uri != uri:
            environ["RAW_URI"] = self.uri
        if self.query != query:
            environ["QUERY_STRING"] = self.query
        if self.scheme != scheme:
            environ["wsgi.url_scheme"] = self.scheme
        if self.body is not body:
            environ["wsgi.input"] = self.body
        if fields is not None:
            host, field = replace_fields(environ, fields)
            script_name = self._settings.script_name if field is None else field
        else:
            host, script_name = environ.get("HTTP_HOST"), environ.get("SCRIPT_NAME", "")
        if fields is not None or self.path != path:
            environ["PATH_INFO"] = path_info(self.path, script_name)
            environ["SCRIPT_NAME"] = script_name
        unix = getattr(self._peer, "server_name", "") is None
        if unix and (fields is not None or self.scheme != scheme):
            # SERVER_NAME/PORT come from Host there (and the scheme's default port).
            environ["SERVER_NAME"], environ["SERVER_PORT"] = server_from_host(
                host, self.scheme, getattr(self._peer, "socket_path", ""))
        return self.must_close or (fields is not None and self.should_close())


class ResponseRecord:
    """What gunicorn's http.wsgi.Response carries for post_request and the access log."""

    __slots__ = ("status", "status_code", "headers", "sent", "response_length", "chunked",
                 "headers_sent")

    def __init__(self) -> None:
        self.status: str | None = None          # "200 OK"
        self.status_code: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent = 0                           # body bytes sent (the access log's %(B)s)
        self.response_length: int | None = None  # the app's Content-Length
        self.chunked = False
        self.headers_sent = False


def request_headers(raw_headers: Any, settings: Settings, trusted: bool) -> list[tuple[str, str]]:
    """aiohttp's raw header bytes as gunicorn's req.headers, (UPPER-NAME, value), minus what
    header_map drops (the environ's own rule: environ.keeps_field)."""
    fields = []
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1").upper()
        if "_" not in name or keeps_field(name, settings, trusted):
            fields.append((name, raw_value.decode("latin-1").strip(" \t")))
    return fields


def replace_fields(environ: dict[str, Any],
                   fields: Iterable[tuple[str, str]]) -> tuple[str | None, str | None]:
    """Replace the environ's header keys (HTTP_*, CONTENT_TYPE) with those of `fields`, a
    record's headers as a pre_request hook left them, mapped as gunicorn's wsgi.create maps
    req.headers: unchecked (they are past header_map; the hook is the server's own code), names
    as they are, repeats joined with ",". CONTENT_LENGTH stays: it describes the body the
    server holds. Returns the last Host and SCRIPT_NAME fields' values (None: none)."""
    for key in [key for key in environ if key.startswith("HTTP_")]:
        del environ[key]
    environ.pop("CONTENT_TYPE", None)
    host = script_name = None
    for name, value in fields:
        key, kind = field_key(name)  # the environ's own naming rule
        if kind is FieldKind.CONTENT:
            if key == "CONTENT_TYPE":
                environ[key] = value
            continue
        if kind is HOST:
            host = value
        elif name == "SCRIPT_NAME":
            script_name = value
        environ[key] = environ[key] + "," + value if key in environ else value
    return host, script_name
