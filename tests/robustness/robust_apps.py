"""WSGI apps for the robustness tests, served as `robustness.robust_apps:<name>`.

Every well-behaved app here is wrapped in wsgiref.validate.validator, so a PEP 3333 slip by the
worker (a missing environ key, a bad wsgi.input, close() not called) fails the request loudly.
The deliberately broken apps in `faults` are not wrapped: the validator would catch their faults
before the worker does, and the worker's own handling is what their tests check.

Calls are recorded (one line per call, flushed at once) in the file named by ROBUST_CALLS, so a
test can prove a refused request never reached the application.
"""

from __future__ import annotations

import json
import os
import threading
import time
from wsgiref.validate import validator

CHUNK = 65536
_calls_lock = threading.Lock()


def record(environ: dict) -> None:
    """Append `METHOD RAW_URI` to $ROBUST_CALLS (when set): the app was reached."""
    path = os.environ.get("ROBUST_CALLS")
    if not path:
        return
    line = f"{environ.get('REQUEST_METHOD')} {environ.get('RAW_URI')}\n"
    with _calls_lock, open(path, "a", encoding="latin-1") as out:
        out.write(line)


def read_body(environ: dict) -> bytes:
    """The whole of wsgi.input, read in bounded pieces (validator requires a size argument)."""
    stream = environ["wsgi.input"]
    parts = []
    while True:
        part = stream.read(CHUNK)
        if not part:
            return b"".join(parts)
        parts.append(part)


def _text(status: str, body: bytes, start_response, extra=()) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _echo(environ, start_response):
    """Everything str-valued in environ plus the body, as JSON (latin-1 for bytes)."""
    record(environ)
    body = read_body(environ)
    data = {k: v for k, v in environ.items() if isinstance(v, str)}
    data["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
    data["wsgi.input_terminated"] = environ.get("wsgi.input_terminated")
    data["body"] = body.decode("latin-1")
    out = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out))), ("X-App", "echo")])
    return [out]


def _lenient_echo(environ, start_response):
    """_echo under the validator, except for request-targets PEP 3333 has no PATH_INFO for.

    RFC 9112 asterisk-form (`OPTIONS *`) and authority-form (`CONNECT host:port`) give a
    PATH_INFO that does not start with "/"; wsgiref.validate asserts it does. gunicorn builds
    the same environ, so those two forms go to the unwrapped echo (see DEVIATIONS.md).
    """
    path = environ.get("PATH_INFO", "")
    if path and not path.startswith("/"):
        return _echo(environ, start_response)
    return validated_echo(environ, start_response)


validated_echo = validator(_echo)
echo = _lenient_echo


def _hello(environ, start_response):
    record(environ)
    read_body(environ)
    return _text("200 OK", b"hello\n", start_response)


hello = validator(_hello)


def _size(environ, start_response):
    """The body's length and a digest of it: proves the whole body (and only it) arrived."""
    import hashlib

    record(environ)
    body = read_body(environ)
    out = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    return _text("200 OK", out, start_response)


size = validator(_size)


def _big(environ, start_response):
    """GET /?n=BYTES: a large streamed response, in 64 KiB pieces."""
    record(environ)
    query = dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&") if p)
    total = int(query.get("n", "1048576"))
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(total))])
    return _Pieces(total)


class _Pieces:
    """An iterable response that notes in $ROBUST_CLOSED when close() ran (PEP 3333)."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.piece = b"x" * CHUNK

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self.left <= 0:
            raise StopIteration
        n = min(self.left, CHUNK)
        self.left -= n
        return self.piece[:n]

    def close(self) -> None:
        path = os.environ.get("ROBUST_CLOSED")
        if path:
            with _calls_lock, open(path, "a") as out:
                out.write(f"closed {self.left}\n")


big = validator(_big)


def _slow(environ, start_response):
    """Sleeps ?s=SECONDS in the app thread (a slow app, not a synchronisation)."""
    record(environ)
    query = dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&") if p)
    time.sleep(float(query.get("s", "1")))
    return _text("200 OK", b"slow done\n", start_response)


slow = validator(_slow)
