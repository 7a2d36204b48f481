"""A bare WSGI app (no framework) showing what gunicorn-aiowsgi is for.

    gunicorn -k gunicorn_aiowsgi.Worker --threads 4 --chdir deploy example_app:app

    curl http://127.0.0.1:8000/          # plain text hello
    curl -N http://127.0.0.1:8000/stream # server-sent events, one every 0.5 s
    curl http://127.0.0.1:8000/healthz   # 200 ok, for load balancer / orchestrator probes

The worker runs the app in a pool of ``--threads`` threads while aiohttp handles the
sockets, so a slow or streaming response ties up one thread, not the whole worker.
``/stream`` holds its thread for ~5 s: size ``--threads`` for the number of streams
you want open at once per worker.

The Dockerfile and kubernetes.yaml set ``AIOWSGI_HEALTH_PATH=/healthz``: there the worker
answers the probes itself, on its event loop, so they are not queued behind threads held by
streams. This app's ``/healthz`` answers where that variable is not set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

EVENTS = 10  # events sent by /stream
INTERVAL = 0.5  # seconds between two events

StartResponse = Callable[..., Any]


def stream() -> Iterator[bytes]:
    """One server-sent event per chunk: each ``yield`` reaches the client on its own."""
    for n in range(1, EVENTS + 1):
        if n > 1:
            time.sleep(INTERVAL)  # stands in for waiting on real work (a queue, a database, ...)
        data = json.dumps({"n": n, "of": EVENTS, "time": time.time()})
        yield f"id: {n}\nevent: tick\ndata: {data}\n\n".encode()


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO") or "/"
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        body = b"method not allowed\n"
        start_response(
            "405 Method Not Allowed",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Allow", "GET, HEAD"),
            ],
        )
        return [body]

    if path == "/stream":
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Cache-Control", "no-cache"),
                # nginx: do not buffer this response (deploy/nginx.conf turns buffering off too).
                ("X-Accel-Buffering", "no"),
            ],
        )
        return stream()

    if path == "/healthz":
        body = b"ok\n"
    elif path == "/":
        body = b"Hello from gunicorn-aiowsgi!\n"
    else:
        body = b"not found\n"
        start_response(
            "404 Not Found",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
