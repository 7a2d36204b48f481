"""WSGI apps the tests serve through real gunicorn masters (each also wrapped in wsgiref's validator)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

MIB = 1024 * 1024
MARKS = os.environ.get("AIOWSGI_TEST_MARKS", tempfile.gettempdir())


def _query(environ: dict) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _mark(name: str, text: str) -> None:
    """Leave a mark the test can read, since the app runs in another process."""
    with open(os.path.join(MARKS, name), "a") as f:
        f.write(text + "\n")


def hello(environ, start_response):
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def environ_json(environ, start_response):
    """Every str/int/bool/tuple environ value, plus the types of the wsgi.* objects."""
    out = {}
    for key, value in environ.items():
        if isinstance(value, (str, int, bool, tuple)) or value is None:
            out[key] = value
        else:
            out[key] = "<%s>" % type(value).__name__
    out["_types"] = {k: type(v).__name__ for k, v in environ.items()}
    body = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def body_read(environ, start_response):
    """Read wsgi.input the way ?how= says and report what was read."""
    how = _query(environ).get("how", "read")
    stream = environ["wsgi.input"]
    if how == "count":  # large bodies: read in 64 KiB pieces, keep only the ends
        total, head, tail = 0, b"", b""
        while True:
            part = stream.read(65536)
            if not part:
                break
            head = head or part[:64]
            tail = (tail + part)[-64:]
            total += len(part)
        body = json.dumps({"len": total, "head": head.decode("latin-1"),
                           "tail": tail.decode("latin-1")}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if how == "read":
        data = stream.read()
    elif how == "readn":
        parts = []
        while True:
            part = stream.read(7)
            if not part:
                break
            parts.append(part)
        data = b"".join(parts)
    elif how == "readline":
        lines = []
        while True:
            line = stream.readline(5)
            if not line:
                break
            lines.append(line)
        data = b"|".join(lines)
    elif how == "readlines":
        data = b"|".join(stream.readlines())
    else:
        data = b"|".join(line for line in stream)
    info = {"len": len(data), "content_length": environ.get("CONTENT_LENGTH"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "input": type(stream).__name__, "head": data[:64].decode("latin-1"),
            "tail": data[-64:].decode("latin-1")}
    if _query(environ).get("echo"):
        info["data"] = data.decode("latin-1")
    body = json.dumps(info).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def duplex(environ, start_response):
    """Answers each ?part= bytes of the body as they are read: a client may wait for the answer
    to one part before it sends the next (the body is not all in when the response begins)."""
    part, stream = int(_query(environ).get("part", "65536")), environ["wsgi.input"]
    left = int(environ.get("CONTENT_LENGTH") or 0)
    start_response("200 OK", [("Content-Type", "text/plain")])

    def answers():
        nonlocal left
        while left > 0:
            data = stream.read(min(part, left))
            if not data:
                return
            left -= len(data)
            yield b"%d\n" % len(data)

    return answers()


def stream(environ, start_response):
    """?n= events, ?gap= seconds apart, each yielded on its own (server-sent events)."""
    q = _query(environ)
    n, gap = int(q.get("n", "5")), float(q.get("gap", "0.2"))
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])

    def events():
        for i in range(n):
            if i:
                time.sleep(gap)
            yield b"data: %d %f\n\n" % (i, time.time())
    return events()


def big(environ, start_response):
    """?mib= MiB in 1 MiB chunks from a generator; ?length=1 sends a Content-Length."""
    q = _query(environ)
    mib = int(q.get("mib", "64"))
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("length"):
        headers.append(("Content-Length", str(mib * MIB)))
    start_response("200 OK", headers)
    chunk = b"x" * MIB
    return (chunk for _ in range(mib))


class Tracked:
    """An iterable that records close() and how far it got, under ?name=; with ?progress=1 also
    one line per chunk handed to the server, under NAME.progress."""

    def __init__(self, name: str, chunks: int, size: int, gap: float, progress: bool = False) -> None:
        self.name, self.chunks, self.size, self.gap = name, chunks, size, gap
        self.progress = progress
        self.sent = 0

    def __iter__(self):
        for _ in range(self.chunks):
            if self.gap:
                time.sleep(self.gap)
            self.sent += 1
            if self.progress:
                _mark(self.name + ".progress", str(self.sent))
            yield b"y" * self.size

    def close(self) -> None:
        _mark(self.name, "closed after %d thread=%s" % (self.sent, threading.current_thread().name))


def tracked(environ, start_response):
    q = _query(environ)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return Tracked(q.get("name", "tracked"), int(q.get("chunks", "1000")),
                   int(q.get("size", "65536")), float(q.get("gap", "0.01")), bool(q.get("progress")))


def framing(environ, start_response):
    """?declared= Content-Length vs ?actual= bytes; ?status=; ?close=1 adds Connection: close."""
    q = _query(environ)
    headers = [("Content-Type", "text/plain")]
    if "declared" in q:
        headers.append(("Content-Length", q["declared"]))
    if q.get("close"):
        headers.append(("Connection", "close"))
    start_response(q.get("status", "200 OK").replace("_", " "), headers)
    actual = int(q.get("actual", "5"))
    return iter([b"z" * actual]) if q.get("gen") else [b"z" * actual]


def bad_header(environ, start_response):
    which = _query(environ).get("which", "crlf")
    headers = {"crlf": [("X-Bad", "a\r\nSet-Cookie: evil=1")], "nul": [("X-Bad", "a\x00b")],
               "name": [("Bad Name", "v")], "status": []}[which]
    status = "20 OK" if which == "status" else "200 OK"
    start_response(status, headers)
    return [b"should not be sent"]


def fail(environ, start_response):
    """?when=before|after (the other PEP 3333 breaches are in tests/unit/test_appcall.py)."""
    when = _query(environ).get("when", "before")
    if when == "before":
        raise RuntimeError("boom before headers")
    def gen():
        yield b"first chunk"
        raise RuntimeError("boom after headers")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return gen()


def files(environ, start_response):
    """?kind=real|bytesio, ?size=, ?declared=, ?offset=: wsgi.file_wrapper; ?shrink=N cuts the
    real file to N bytes half a second later (while a slow client is being sent it); ?delay=S
    sleeps first."""
    q = _query(environ)
    time.sleep(float(q.get("delay", "0")))
    size = int(q.get("size", str(3 * MIB)))
    data = bytes(range(256)) * (size // 256) + b"e" * (size % 256)
    headers = [("Content-Type", "application/octet-stream")]
    if "declared" in q:
        headers.append(("Content-Length", q["declared"]))
    start_response("200 OK", headers)
    if q.get("kind", "real") == "real":
        f = tempfile.TemporaryFile()
        f.write(data)
        f.seek(int(q.get("offset", "0")))
        if "shrink" in q:
            threading.Timer(0.5, os.ftruncate, (f.fileno(), int(q["shrink"]))).start()
    else:
        import io
        f = io.BytesIO(data)
    return environ["wsgi.file_wrapper"](f, 65536)


def status(environ, start_response):
    """?code= with a body the server must drop for HEAD/204/304."""
    code = _query(environ).get("code", "200")
    reasons = {"200": "OK", "204": "No Content", "304": "Not Modified"}
    headers = {"200": [("Content-Type", "text/plain"), ("Content-Length", "4")],
               "304": [("Content-Length", "4")], "204": []}[code]  # no Content-Type on 204/304
    start_response(f"{code} {reasons.get(code, 'X')}", headers)
    # The body is dropped by the server for HEAD and 304; a 204 app sends none (PEP 3333 checks).
    return iter([b"body"]) if code != "204" else iter([])


def slow(environ, start_response):
    """Sleeps ?s= seconds before answering: a stuck or slow request. With ?mark=NAME it marks
    "started" as it takes its thread and "done" when it has slept, so a test can wait for it."""
    q = _query(environ)
    if "mark" in q:
        _mark(q["mark"], "started")
    time.sleep(float(q.get("s", "1")))
    if "mark" in q:
        _mark(q["mark"], "done")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"slow"]


def gate(environ, start_response):
    """Holds its thread until the test opens the gate: marks "started" under ?mark=NAME as it
    takes its thread, waits until the file NAME.open exists beside the mark (server.open_gate),
    then marks "done" and answers. Never open after ?max= seconds (60): 500, not a stuck thread."""
    q = _query(environ)
    name = q["mark"]
    _mark(name, "started")
    gate_file = os.path.join(MARKS, name + ".open")
    deadline = time.monotonic() + float(q.get("max", "60"))
    while not os.path.exists(gate_file):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gate {gate_file} was never opened")
        time.sleep(0.005)
    _mark(name, "done")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"gate"]


def digest(environ, start_response):
    """The body's length and SHA-256, read in 64 KiB pieces: proof an upload arrived intact."""
    import hashlib

    stream, hasher, total = environ["wsgi.input"], hashlib.sha256(), 0
    while True:
        part = stream.read(65536)
        if not part:
            break
        hasher.update(part)
        total += len(part)
    body = f"{total} {hasher.hexdigest()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def errors_close(environ, start_response):
    """Writes a line to wsgi.errors; /errors_close/close closes it first (PEP 3333 forbids it,
    so this route runs outside the validator)."""
    errors = environ["wsgi.errors"]
    if environ["PATH_INFO"].endswith("/close"):
        errors.close()
    errors.write(f"wsgi.errors line from {environ['PATH_INFO']}\n")
    errors.writelines(["and another\n"])
    errors.flush()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


HELD: list[int] = []  # descriptors /descriptors?take=all holds


def descriptors(environ, start_response):
    """?take=all opens /dev/null until the worker has no file descriptor left (EMFILE) and keeps
    them all; any other query closes them. The body says how many are held."""
    if _query(environ).get("take") == "all":
        try:
            while True:
                HELD.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
    else:
        while HELD:
            os.close(HELD.pop())
    body = str(len(HELD)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def router(environ, start_response):
    """One app with every fixture under its path, so one master serves a whole module."""
    name = environ["PATH_INFO"].strip("/").split("/")[0] or "hello"
    app = ROUTES.get(name)
    if app is None:
        return environ_json(environ, start_response)
    return app(environ, start_response)


ROUTES = {"hello": hello, "environ": environ_json, "body": body_read, "duplex": duplex, "stream": stream,
          "big": big, "tracked": tracked, "framing": framing, "bad_header": bad_header,
          "fail": fail, "files": files, "status": status, "slow": slow, "gate": gate,
          "digest": digest, "errors_close": errors_close, "descriptors": descriptors}

# The same, inside wsgiref's validator: any PEP 3333 slip by the server fails the request.
validated = validator(router)

# Fixtures that break PEP 3333 on purpose (or whose file_wrapper must reach the server
# unwrapped, for sendfile) run bare; every other route runs inside the validator.
UNCHECKED = {"fail", "bad_header", "files", "framing", "errors_close"}
CHECKED = {name: (app if name in UNCHECKED else validator(app)) for name, app in ROUTES.items()}


def checked(environ, start_response):
    name = environ["PATH_INFO"].strip("/").split("/")[0] or "hello"
    return CHECKED.get(name, validated)(environ, start_response)


def hints(environ, start_response):
    """wsgi.early_hints (gunicorn 27): a 103 before the final response; ?late=1 tries after it."""
    link = [("Link", "</style.css>; rel=preload; as=style")]
    late = "late=1" in environ.get("QUERY_STRING", "")
    if not late:
        environ["wsgi.early_hints"](link)
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    write(b"he")
    if late:
        environ["wsgi.early_hints"](link)  # ignored: the response has begun
    return [b"llo"]
