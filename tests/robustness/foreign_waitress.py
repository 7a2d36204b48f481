"""pytest plugin: waitress's tests/test_functional.py, serving its fixture apps with gunicorn.

Loaded with `-p robustness.foreign_waitress` into a pytest run inside waitress's sdist (fetched
at test time). Its SubprocessTests start a waitress server in a child process; here they start
a gunicorn master instead, with the worker class named by AIOWSGI_FOREIGN_WORKER (ours or
gthread, for the comparison), on TCP or on a unix socket as the test class asks. One master per
(app, socket family) is kept for the whole run, since the fixture apps hold no state.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

from server import ROOT, TESTS, Gunicorn

WORKER = os.environ.get("AIOWSGI_FOREIGN_WORKER", "gunicorn_aiowsgi.Worker")
SDIST = Path(os.environ.get("AIOWSGI_FOREIGN_SDIST", "."))
_servers: dict[tuple[str, bool], Gunicorn] = {}
_sockets = Path(tempfile.mkdtemp(prefix="aiowsgi-waitress-"))


def _serve(app: str, unix: bool, kw: dict) -> Gunicorn:
    key = (app + repr(sorted(kw.items(), key=str)), unix)
    if key not in _servers:
        env = {"PYTHONPATH": os.pathsep.join([str(SDIST), str(SDIST / "src"), str(ROOT), str(TESTS)])}
        if "max_request_body_size" in kw:  # waitress's limit, as our worker spells it
            env["AIOWSGI_MAX_BODY_SIZE"] = str(kw["max_request_body_size"])
        bind = f"unix:{_sockets / f'{len(_servers)}.sock'}" if unix else "127.0.0.1:0"
        _servers[key] = Gunicorn(app, "--threads", "4", "--keep-alive", "5", worker_class=WORKER,
                                 bind=bind, env=env, wait_ready=WORKER != "gthread",
                                 access_log=False)
    return _servers[key]


def start_subprocess(self, target, **kw) -> None:
    unix = getattr(self.server, "family", socket.AF_INET) == getattr(socket, "AF_UNIX", None)
    server = _serve(f"{target.__module__}:{target.__name__}", unix, kw)
    self.gunicorn = server
    self.bound_to = server.url[len("unix:"):] if unix else (server.host, server.port)
    self.sock = self.create_socket()


def stop_subprocess(self) -> None:
    self.sock.close()


def pytest_collection_modifyitems(session, config, items) -> None:
    module = sys.modules.get("tests.test_functional")
    if module is not None:
        module.SubprocessTests.start_subprocess = start_subprocess
        # UnixTests' own stop also unlinks the socket file: the shared master still needs it.
        for cls in (module.SubprocessTests, getattr(module, "UnixTests", None)):
            if cls is not None:
                cls.stop_subprocess = stop_subprocess


def pytest_sessionfinish(session, exitstatus) -> None:
    for server in _servers.values():
        server.stop()
