"""The request and response records handed to gunicorn's hooks and access log, shaped like gunicorn's."""

from __future__ import annotations

from typing import Any

from .environ import split_uri


class RequestRecord:
    """What gunicorn's http.Request carries and hooks commonly read (pre_request, post_request)."""

    __slots__ = ("method", "uri", "path", "query", "fragment", "version", "_raw", "_headers",
                 "scheme", "peer_addr", "remote_addr", "body", "trailers", "req_number")

    def __init__(self, environ: dict[str, Any], version: tuple[int, int],
                 raw_headers: Any, peer_addr: Any, req_number: int) -> None:
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
        address = getattr(peer_addr, "address", None)
        if address is None:
            port = getattr(peer_addr, "remote_port", None)
            address = ((peer_addr.remote_addr, int(port)) if port is not None
                       else getattr(peer_addr, "remote_addr", peer_addr))
        self.peer_addr = address
        self.remote_addr = self.peer_addr
        self.body = environ.get("wsgi.input")
        self.trailers: list[tuple[str, str]] = []
        self.req_number = req_number            # requests so far on this connection

    @property
    def headers(self) -> list[tuple[str, str]]:
        """[("HOST", "example.com"), ...] as gunicorn's; built only if a hook or log reads it."""
        if self._headers is None:
            self._headers = request_headers(self._raw)
        return self._headers

    def should_close(self) -> bool:
        for name, value in self.headers:
            if name == "CONNECTION":
                value = value.lower().strip(" \t")
                if value == "close":
                    return True
                if value == "keep-alive":
                    return False
        return self.version <= (1, 0)


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


def request_headers(raw_headers: Any) -> list[tuple[str, str]]:
    """aiohttp's raw header bytes as gunicorn's list of (UPPER-NAME, value)."""
    return [(name.decode("latin-1").upper(), value.decode("latin-1").strip(" \t"))
            for name, value in raw_headers]
