"""conftest for werkzeug's tests/test_serving.py, serving its live apps with gunicorn.

werkzeug's own conftest starts `live_apps/run.py` (werkzeug's dev server) in a subprocess; this
one starts a gunicorn master instead, with the worker class named by AIOWSGI_FOREIGN_WORKER, and
gives the tests the same client object (request, connect, read_log, wait_for_log). The run
directory holds test_serving.py and live_apps/ copied from werkzeug's sdist at test time, and
a conftest.py that imports this module.

How the dev server's options map: ssl_context (adhoc, custom or a cert/key pair) -> a
certificate from werkzeug.serving.make_ssl_devcert; hostname unix://path -> a unix socket;
use_reloader -> --reload. threaded, reloader_type and override_client_addr have no gunicorn
counterpart and are dropped.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
from contextlib import closing
from pathlib import Path

import pytest
from server import ROOT, TESTS, Gunicorn

WORKER = os.environ.get("AIOWSGI_FOREIGN_WORKER", "gunicorn_aiowsgi.Worker")

APP_MODULE = '''
import sys
from importlib import import_module
from werkzeug.wrappers import Request, Response

sys.path.insert(0, {live!r})
mod = import_module("{name}_app")


@Request.application
def app(request):
    if request.path == "/ensure":
        return Response()
    return Response.from_app(mod.app, request.environ)
'''


class UnixSocketHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.host)


class GunicornClient:
    """werkzeug's DevServerClient, over a gunicorn master."""

    def __init__(self, name: str, tmp_path: Path, **kwargs) -> None:
        live = Path(os.environ["AIOWSGI_FOREIGN_RUNDIR"]) / "live_apps"
        (tmp_path / f"gunicorn_{name}_app.py").write_text(APP_MODULE.format(live=str(live), name=name))
        args = ["--threads", "4", "--keep-alive", "2"]
        ssl_context = kwargs.get("ssl_context")
        if ssl_context is not None:
            from werkzeug.serving import make_ssl_devcert

            cert, key = (ssl_context if isinstance(ssl_context, (tuple, list))
                         else make_ssl_devcert(str(tmp_path / "devcert")))
            args += ["--certfile", cert, "--keyfile", key]
        if kwargs.get("use_reloader"):
            args += ["--reload"]
        host = kwargs.get("hostname", "127.0.0.1")
        bind = f"unix:{host[len('unix://'):]}" if host.startswith("unix://") else "127.0.0.1:0"
        env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(TESTS)])}
        self.server = Gunicorn(f"gunicorn_{name}_app:app", *args, worker_class=WORKER, bind=bind,
                               env=env, wait_ready=WORKER != "gthread", access_log=False)
        if host.startswith("unix://"):
            self.scheme, self.addr, self.url = "unix", host[len("unix://"):], host
        else:
            self.scheme = "https" if ssl_context is not None else "http"
            self.addr = self.server.url.split("://", 1)[1]  # the harness reads http:// URLs only
            self.url = f"{self.scheme}://{self.addr}"
        self._log_at = 0
        try:
            self.wait_ready()
        except BaseException:
            self.server.stop()  # not handed to the fixture yet: stop it here
            raise

    def connect(self, **kwargs) -> http.client.HTTPConnection:
        if self.scheme == "https":
            if "context" not in kwargs:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                kwargs["context"] = context
            return http.client.HTTPSConnection(self.addr, **kwargs)
        if self.scheme == "unix":
            return UnixSocketHTTPConnection(self.addr, **kwargs)
        return http.client.HTTPConnection(self.addr, **kwargs)

    def request(self, url: str = "", **kwargs):
        kwargs.setdefault("method", "GET")
        kwargs["url"] = url
        with closing(self.connect(timeout=10)) as conn:
            conn.request(**kwargs)
            with conn.getresponse() as response:
                response.data = response.read()
        response.json = (json.loads(response.data)
                         if response.headers.get("Content-Type", "").startswith("application/json")
                         else None)
        return response

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.request("/ensure")
                return
            except (ConnectionError, FileNotFoundError, http.client.HTTPException, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def read_log(self) -> str:
        text = self.server.log() + self.server.stdout.read_text(errors="replace")
        new, self._log_at = text[self._log_at:], len(text)
        return new

    def wait_for_log(self, value: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while value not in self.read_log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{value!r} never logged")
            time.sleep(0.05)

    def wait_for_reload(self) -> None:
        self.wait_for_log("Restarting with")
        self.wait_ready()

    def stop(self) -> None:
        self.server.stop()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "dev_server: runs a live server")


@pytest.fixture()
def dev_server(tmp_path: Path):
    started: list[GunicornClient] = []

    def start(name: str = "standard", **kwargs) -> GunicornClient:
        client = GunicornClient(name, tmp_path, **kwargs)
        started.append(client)
        return client

    yield start
    for client in started:
        client.stop()


@pytest.fixture()
def standard_app(dev_server):
    return dev_server()
