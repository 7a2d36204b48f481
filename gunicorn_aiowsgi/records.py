"""The request and response records handed to gunicorn's hooks and access log, shaped like gunicorn's."""

from __future__ import annotations

from typing import Any


class RequestRecord:
    """What gunicorn's http.Request carries and hooks commonly read (pre_request, post_request)."""

    __slots__ = ("method", "uri", "path", "query", "fragment", "version", "headers", "scheme",
                 "peer_addr", "remote_addr", "body", "trailers", "req_number")

    def __init__(self, environ: dict[str, Any], version: tuple[int, int],
                 headers: list[tuple[str, str]], peer_addr: Any, req_number: int) -> None:
        self.method: str = environ["REQUEST_METHOD"]
        self.uri: str = environ["RAW_URI"]
        self.path: str = self.uri.partition("?")[0].partition("#")[0]
        self.query: str = environ["QUERY_STRING"]
        self.fragment: str = self.uri.partition("#")[2]
        self.version = version                  # (1, 1)
        self.headers = headers                  # [("HOST", "example.com"), ...], names upper-case
        self.scheme: str = environ["wsgi.url_scheme"]
        self.peer_addr = peer_addr
        self.remote_addr = peer_addr
        self.body = environ.get("wsgi.input")
        self.trailers: list[tuple[str, str]] = []
        self.req_number = req_number            # requests so far on this connection

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
