"""WSGI apps for the contract tests: `contract.contract_apps:app`, one app routed by path."""

from __future__ import annotations

import gc
import json
import os
import sys
import time

from gunicorn.glogging import Logger

# Where the module was imported: with --preload it is the master, otherwise the worker.
IMPORT_PID = os.getpid()

# The environ keys whose values the proxy/TLS tests compare with gthread's.
ENVIRON_KEYS = ("wsgi.url_scheme", "REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT",
                "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "SERVER_PROTOCOL",
                "RAW_URI", "PROXY_PROTOCOL", "PROXY_ADDR", "PROXY_PORT")


def _text(start_response, body: str, status: str = "200 OK", headers=()) -> list[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data))),
                            *headers])
    return [data]


def _query(environ) -> dict[str, str]:
    pairs = (part.partition("=") for part in environ.get("QUERY_STRING", "").split("&") if part)
    return {name: value for name, _, value in pairs}


def _environ(environ) -> dict[str, str]:
    keys = [k for k in ENVIRON_KEYS if k in environ]
    keys += sorted(k for k in environ if k.startswith("HTTP_"))
    return {k: environ[k] for k in keys}


def _block_loop(seconds: float) -> None:
    """Block the worker's event loop (not this app thread): what a heartbeat timeout is for."""
    from gunicorn_aiowsgi.worker import Worker

    # The worker gc.freeze()s what exists at boot, itself included; frozen objects are not in
    # gc.get_objects(). Unfreezing is harmless here: this worker is about to be killed.
    gc.unfreeze()
    worker = next(o for o in gc.get_objects() if isinstance(o, Worker))
    worker.loop.call_soon_threadsafe(time.sleep, seconds)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = _query(environ)
    if path == "/sleep":
        time.sleep(float(query.get("s", "1")))
        return _text(start_response, f"{os.getpid()} slept")
    if path == "/gate":  # held until the test lets it go (tests/apps.py, server.open_gate)
        from apps import gate

        return gate(environ, start_response)
    if path == "/echo":  # the load client checks that every answer is its own
        if "sleep" in query:
            time.sleep(float(query["sleep"]))
        return _text(start_response, f"{os.getpid()} {query.get('n', '')}")
    if path.endswith("/environ"):  # also under a SCRIPT_NAME a proxy announced
        return _text(start_response, json.dumps(_environ(environ)))
    if path == "/boom":
        raise RuntimeError("boom from the app")
    if path == "/print":
        print("captured stdout mark", flush=True)
        print("captured stderr mark", file=sys.stderr, flush=True)
        return _text(start_response, "printed")
    if path == "/block-loop":
        _block_loop(float(query.get("s", "30")))
        return _text(start_response, "blocking")
    if path == "/headers":  # response headers for the access log's {name}o atoms
        return _text(start_response, "x" * int(query.get("n", "5")), "201 Created",
                     [("X-Out", "out-value")])
    if path == "/info":
        return _text(start_response, json.dumps({
            "pid": os.getpid(), "import_pid": IMPORT_PID, "cwd": os.getcwd(), "uid": os.getuid(),
            "gid": os.getgid(), "env": os.environ.get("CONTRACT_ENV", ""),
            "multiprocess": environ["wsgi.multiprocess"], "scheme": environ["wsgi.url_scheme"]}))
    return _text(start_response, str(os.getpid()))


class MarkingLogger(Logger):
    """A --logger-class: gunicorn's own Logger, marking every access line it writes."""

    def access(self, resp, req, environ, request_time):
        super().access(resp, req, environ, request_time)
        self.info("MarkingLogger saw %s %s", req.method, req.path)
