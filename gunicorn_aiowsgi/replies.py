"""What the loop itself writes: error pages, small plain answers, 100 Continue, 103 Early Hints, the Date."""

from __future__ import annotations

import time
from email.utils import formatdate

from .errors import HTTPError, error_page
from .response import Framing, Head, render_head

SERVER_HEADER = "gunicorn"
# RFC 9110 section 15.2.1: sent only once the body is wanted (section 10.1.1).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_reply(error: HTTPError, method: str = "") -> bytes:
    """gunicorn's util.write_error response: an HTML page and Connection: close.

    RFC 9110 section 9.3.2: the answer to HEAD has the head GET would get, and no content.
    An error that says when to come back (a full spool's 503) gets Retry-After (RFC 9110 10.2.3).
    """
    page = error_page(error.status, error.reason, str(error) if error.client_error else "")
    retry = getattr(error, "retry_after", None)  # a 503 for load says when to come back
    extra = f"Retry-After: {retry}\r\n" if retry is not None else ""
    head = (f"HTTP/1.1 {error.status} {error.reason}\r\nConnection: close\r\n{extra}"
            f"Content-Type: text/html\r\nContent-Length: {len(page)}\r\n\r\n")
    return head.encode("latin-1") + (b"" if method == "HEAD" else page)


def plain(version: tuple[int, int], method: str, code: int, reason: str, body: bytes,
          headers: list[tuple[str, str]], keep_alive: bool, date: str) -> bytes:
    """A small text/plain response the loop answers itself (health checks, overload 503s)."""
    head = Head(f"{code} {reason}", code, [("Content-Type", "text/plain"), *headers], len(body), False)
    data = render_head(version, head, Framing.LENGTH, keep_alive, SERVER_HEADER, date)
    return data + (b"" if method == "HEAD" else body)


def early_hints(headers: list[tuple[str, str]]) -> bytes:
    """An RFC 8297 103 Early Hints response; the headers were checked by response.check_headers."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 103 Early Hints\r\n{lines}\r\n".encode("latin-1")


class HttpDate:
    """The Date header value (RFC 9110 section 6.6.1), formatted at most once a second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = 0
        self._text = ""

    def __call__(self) -> str:
        now = int(time.time())
        if self._second != now:
            self._second, self._text = now, formatdate(now, usegmt=True)
        return self._text


def health_reply(draining: bool, full: bool) -> tuple[int, str, bytes, list[tuple[str, str]]]:
    """The health check's answer: 200 while serving; 503 once draining (balancers stop routing
    first) or, if AIOWSGI_HEALTH_QUEUE_FULL, while the queue is full."""
    if draining:
        return 503, "Service Unavailable", b"draining\n", []
    if full:
        return 503, "Service Unavailable", b"overloaded\n", [("Retry-After", "1")]
    return 200, "OK", b"ok\n", []
