"""WSGI applications used by the benchmark harness (benchmarks/run.py).

Each callable is a plain WSGI app; servers load them as ``apps:<name>`` with
``benchmarks/`` on the Python path.

* ``hello``  -- 13-byte "Hello, world!" response (scenario 1).
* ``sleep``  -- blocks the calling thread for 10 ms with ``time.sleep`` (scenario 2).
* ``stream`` -- streams 1 GiB in 1 MiB chunks with a Content-Length (scenario 3).
* ``upload`` -- reads ``wsgi.input`` in 1 MiB chunks, discards the data and
  answers with the number of bytes read (scenario 4).
* ``flask_json`` -- a small real framework app: a Flask view returning a small dict as
  JSON; built when first accessed, so importing this module never requires Flask.

``stream`` and ``upload`` also answer ``GET /ping`` with a tiny body so the
harness can probe readiness without pulling a gigabyte.

``wsgi_app(name)`` returns any of them by name. ``asgi_hello`` / ``asgi_sleep`` / ... wrap
the same apps with a2wsgi for
gunicorn's ``asgi`` worker; they are only built when accessed, so importing this
module never requires a2wsgi.
"""

import os
import time

HELLO_BODY = b"Hello, world!"
HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO_BODY)))]

CHUNK_SIZE = 1 << 20  # 1 MiB
STREAM_CHUNKS = int(os.environ.get("BENCH_STREAM_CHUNKS", "1024"))  # 1024 x 1 MiB = 1 GiB
STREAM_TOTAL = CHUNK_SIZE * STREAM_CHUNKS
_CHUNK = b"x" * CHUNK_SIZE  # one shared buffer: the app itself allocates nothing per chunk

SLEEP_SECONDS = float(os.environ.get("BENCH_SLEEP_SECONDS", "0.01"))

PING_BODY = b"pong"
PING_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(PING_BODY)))]


def hello(environ, start_response):
    start_response("200 OK", HELLO_HEADERS)
    return [HELLO_BODY]


def sleep(environ, start_response):
    time.sleep(SLEEP_SECONDS)
    start_response("200 OK", HELLO_HEADERS)
    return [HELLO_BODY]


def _stream_body():
    chunk = _CHUNK
    for _ in range(STREAM_CHUNKS):
        yield chunk


def stream(environ, start_response):
    if environ.get("PATH_INFO") == "/ping":
        start_response("200 OK", PING_HEADERS)
        return [PING_BODY]
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(STREAM_TOTAL))],
    )
    return _stream_body()


def upload(environ, start_response):
    if environ.get("PATH_INFO") == "/ping":
        start_response("200 OK", PING_HEADERS)
        return [PING_BODY]
    stream_in = environ["wsgi.input"]
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        remaining = 0
    total = 0
    while remaining > 0:
        data = stream_in.read(min(CHUNK_SIZE, remaining))
        if not data:
            break
        total += len(data)
        remaining -= len(data)
    body = str(total).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


WSGI_APPS = {"hello": hello, "sleep": sleep, "stream": stream, "upload": upload}
LAZY_APPS = ("flask_json",)  # built on first access: their framework is a benchmark dependency

JSON_PAYLOAD = {"message": "Hello, world!", "ok": True, "count": 3, "tags": ["a", "b"]}


def _flask_json():
    from flask import Flask

    app = Flask("bench_flask")

    @app.get("/")
    def index():
        return JSON_PAYLOAD  # Flask turns a dict into a JSON response

    @app.get("/ping")
    def ping():
        return PING_BODY

    return app


_lazy_cache = {}


def wsgi_app(name):
    """The WSGI app called `name` (one of WSGI_APPS or LAZY_APPS)."""
    if name in WSGI_APPS:
        return WSGI_APPS[name]
    if name not in LAZY_APPS:
        raise KeyError(name)
    if name not in _lazy_cache:
        _lazy_cache[name] = globals()["_" + name]()
    return _lazy_cache[name]


def _asgi(name):
    from a2wsgi import WSGIMiddleware

    workers = int(os.environ.get("BENCH_THREADS", "8"))
    return WSGIMiddleware(wsgi_app(name), workers=workers)


def __getattr__(attr):  # PEP 562: flask_json, asgi_hello, asgi_sleep, ... built lazily
    if attr in LAZY_APPS:
        return wsgi_app(attr)
    name = attr[5:] if attr.startswith("asgi_") else None
    if name in WSGI_APPS or name in LAZY_APPS:
        if attr not in _lazy_cache:
            _lazy_cache[attr] = _asgi(name)
        return _lazy_cache[attr]
    raise AttributeError(attr)
