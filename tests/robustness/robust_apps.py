"""WSGI apps for the robustness tests, served as `robustness.robust_apps:<name>`.

Every well-behaved app here is wrapped in wsgiref.validate.validator, so a PEP 3333 slip by the
worker (a missing environ key, a bad wsgi.input, close() not called) fails the request loudly.
`faults` is the exception: it breaks PEP 3333 on purpose, in the ways its paths say, and the
validator would catch each fault before the worker does (test_validate checks that it does).

The apps leave traces the tests read, in files named by environment variables:
ROBUST_CALLS gets `METHOD RAW_URI` per call (so a test proves a refused request never reached
the app), ROBUST_CLOSED a line per close() of a streamed response, ROBUST_PROGRESS the bytes a
streamed response produced so far; `held` waits for a file in ROBUST_RELEASE.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
import threading
import time
import zipfile
from wsgiref.validate import validator

CHUNK = 65536
HOLD_LIMIT = 60.0   # seconds `held` waits for its release file at most
_lock = threading.Lock()


def record(environ: dict) -> None:
    """Append `METHOD RAW_URI` to $ROBUST_CALLS (when set): the app was reached."""
    path = os.environ.get("ROBUST_CALLS")
    if path:
        line = f"{environ.get('REQUEST_METHOD')} {environ.get('RAW_URI')}\n"
        with _lock, open(path, "a", encoding="latin-1") as out:
            out.write(line)


def note(variable: str, text: str) -> None:
    path = os.environ.get(variable)
    if path:
        with _lock, open(path, "a") as out:
            out.write(text + "\n")


def query(environ: dict) -> dict[str, str]:
    return dict(p.partition("=")[::2] for p in environ.get("QUERY_STRING", "").split("&") if p)


def read_body(environ: dict) -> bytes:
    """The whole of wsgi.input, read in bounded pieces (validator requires a size argument)."""
    stream = environ["wsgi.input"]
    parts = []
    while True:
        part = stream.read(CHUNK)
        if not part:
            return b"".join(parts)
        parts.append(part)


def _text(status: str, body: bytes, start_response) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- well-behaved apps (validated) -----------------------------------------------------------
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
                              ("Content-Length", str(len(out)))])
    return [out]


validated_echo = validator(_echo)


def echo(environ, start_response):
    """_echo under the validator, except for environs PEP 3333 cannot express.

    RFC 9112 asterisk-form (`OPTIONS *`) and authority-form (`CONNECT host:port`) give a
    PATH_INFO that does not start with "/", which wsgiref.validate forbids; gunicorn builds the
    same. So does header_map="dangerous", which exists to let "Content_Length" through as
    HTTP_CONTENT_LENGTH, a key the validator forbids. Those go to the bare _echo.
    """
    path = environ.get("PATH_INFO", "")
    if (path and not path.startswith("/")) or "HTTP_CONTENT_LENGTH" in environ:
        return _echo(environ, start_response)
    return validated_echo(environ, start_response)


def _hello(environ, start_response):
    """`hello <pid>`: which worker answered."""
    record(environ)
    read_body(environ)
    return _text("200 OK", f"hello {os.getpid()}\n".encode(), start_response)


hello = validator(_hello)


def _size(environ, start_response):
    """The body's length and digest: proves the whole body, and only it, arrived."""
    record(environ)
    body = read_body(environ)
    return _text("200 OK", f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode(), start_response)


size = validator(_size)


class Pieces:
    """A streamed body of `total` bytes in 64 KiB pieces; notes progress and its close()."""

    def __init__(self, total: int, before_first=None) -> None:
        self.total = self.left = total
        self.piece = b"x" * CHUNK
        self.before_first = before_first
        self.progress = os.environ.get("ROBUST_PROGRESS")

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self.before_first is not None:
            wait, self.before_first = self.before_first, None
            wait()
        if self.left <= 0:
            raise StopIteration
        n = min(self.left, CHUNK)
        self.left -= n
        if self.progress:
            with open(self.progress, "w") as out:
                out.write(str(self.total - self.left))
        return self.piece[:n]

    def close(self) -> None:
        note("ROBUST_CLOSED", f"closed {self.left}")


def _big(environ, start_response):
    """GET /?n=BYTES: a large streamed response."""
    record(environ)
    total = int(query(environ).get("n", "1048576"))
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(total))])
    return Pieces(total)


big = validator(_big)


def wait_release(name: str) -> bool:
    """Wait (in the app thread) until $ROBUST_RELEASE/<name> exists; False after HOLD_LIMIT."""
    path = os.path.join(os.environ.get("ROBUST_RELEASE", "/nonexistent"), name)
    deadline = time.monotonic() + HOLD_LIMIT
    note("ROBUST_HELD", name)
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _held(environ, start_response):
    """GET /?name=X: reads the body, answers a 64 KiB body only once the test releases X."""
    record(environ)
    read_body(environ)
    name = query(environ).get("name", "x")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(CHUNK))])
    return Pieces(CHUNK, before_first=lambda: wait_release(name))


held = validator(_held)


def _router(environ, start_response):
    """/hello, /big, /held, /size, /echo: one worker serving several apps."""
    top = environ.get("PATH_INFO", "/").strip("/").split("/")[0]
    app = {"big": _big, "held": _held, "size": _size, "echo": _echo}.get(top, _hello)
    return app(environ, start_response)


router = validator(_router)


# -- broken on purpose (not validated) -------------------------------------------------------
class _AfterHead:
    """Yields one piece, then raises: the head and some body are out when the app fails."""

    def __init__(self) -> None:
        self.sent = False

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        if self.sent:
            raise RuntimeError("boom after the head")
        self.sent = True
        return b"x" * 1000

    def close(self) -> None:
        note("ROBUST_CLOSED", "closed after-head")


def faults(environ, start_response):
    """Each path breaks PEP 3333 in one way; anything else is answered normally."""
    record(environ)
    path = environ.get("PATH_INFO", "/")
    headers = [("Content-Type", "text/plain")]
    if path == "/raise":
        raise RuntimeError("boom before start_response")
    if path == "/raise-after-head":
        start_response("200 OK", headers + [("Content-Length", "100000")])
        return _AfterHead()
    if path == "/none":
        start_response("200 OK", headers)
        return None
    if path == "/not-iterable":
        start_response("200 OK", headers)
        return 42
    if path == "/str":
        start_response("200 OK", headers)
        return ["text, not bytes"]
    if path == "/start-twice":
        start_response("200 OK", headers)
        start_response("200 OK", headers)
        return [b"twice"]
    if path == "/never-start":
        return [b"no start_response"]
    return _text("200 OK", b"fine\n", start_response)


FAULT_PATHS = ("/raise", "/raise-after-head", "/none", "/not-iterable", "/str", "/start-twice",
               "/never-start")


# -- wsgi.file_wrapper on file objects of every kind (not validated: the wrapper must reach
# -- the worker as it is, for sendfile) ------------------------------------------------------
WRAPPED_TEXT = b"a line of text\n" * 100


class _FailsOnTheLoop(io.BufferedReader):
    """A regular binary file whose fileno() fails on the loop thread (the worker's main thread).

    The app thread's checks pass and the head goes out; then the loop's sendfile fails, as a
    file closed or broken under it would: a failure on the loop after the head.
    """

    def fileno(self) -> int:
        if threading.current_thread() is threading.main_thread():
            raise ValueError("forced failure of the file on the loop")
        return super().fileno()


def _wrapped_file(path: str):
    """The file object PATH_INFO names, holding WRAPPED_TEXT (or its gzip compression)."""
    fd, name = tempfile.mkstemp()
    with os.fdopen(fd, "wb") as out:
        out.write(gzip.compress(WRAPPED_TEXT) if path == "/gzip" else WRAPPED_TEXT)
    try:
        if path == "/text":
            return open(name, encoding="ascii")
        if path == "/write-only":
            return open(name, "ab")
        if path == "/gzip":
            return gzip.GzipFile(name, "rb")
        if path == "/loop-fails":
            return _FailsOnTheLoop(io.FileIO(name, "rb"))
        if path == "/pipe":
            read, write = os.pipe()
            os.write(write, WRAPPED_TEXT)
            os.close(write)
            return os.fdopen(read, "rb")
        if path == "/bytesio":
            return io.BytesIO(WRAPPED_TEXT)
        if path == "/zip":  # a zip member: binary, but its mode is "r" (as Flask's send_file gets)
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w") as out:
                out.writestr("member.txt", WRAPPED_TEXT)
            return zipfile.ZipFile(archive).open("member.txt")
        if path == "/after-read":  # the app read ahead of the body it sends (buffered)
            started = open(name, "rb")
            started.read(10)
            return started
        return open(name, "rb")
    finally:
        os.unlink(name)  # the open file keeps its bytes


def wrapped(environ, start_response):
    """/text, /write-only, /gzip, /loop-fails, /pipe, /bytesio, /zip, anything else a binary file:
    WRAPPED_TEXT through wsgi.file_wrapper, with no Content-Length (/after-read: from byte 10)."""
    record(environ)
    filelike = _wrapped_file(environ.get("PATH_INFO", "/"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return environ["wsgi.file_wrapper"](filelike, 512)
