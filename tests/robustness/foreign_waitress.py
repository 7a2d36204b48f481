"""pytest plugin: waitress's tests/test_functional.py, serving its fixture apps with gunicorn.

Loaded with `-p robustness.foreign_waitress` into a pytest run inside waitress's sdist (fetched
at test time). Its SubprocessTests start a waitress server in a child process; here they start
a gunicorn master instead, with the worker class named by AIOWSGI_FOREIGN_WORKER (ours or
gthread, for the comparison), on TCP or on a unix socket as the test class asks. One master per
(app, socket family) is kept for the whole run, since the fixture apps hold no state.

One adaptation of the requests themselves: many raw HTTP/1.1 requests in the suite have no
Host field, which RFC 9112 section 3.2 requires a server to refuse (and our worker does, see
DEVIATIONS.md). The client socket adds `Host: localhost` to those, for both workers alike, so
the tests check what they are about (bodies, chunking, pipelining, file wrappers) rather than
all failing on that one rule. AIOWSGI_FOREIGN_RAW=1 turns the adaptation off.

One adaptation of an app: waitress's echo fixture reads environ["REMOTE_HOST"], which waitress
sets (to the peer's address) but PEP 3333 does not require and neither gunicorn worker sets.
It is served through `with_remote_host`, which sets it the way waitress does, so the echo tests
(chunked uploads, keep-alive, pipelining, large bodies) check our worker instead of all
answering 500 on that one key.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from server import ROOT, TESTS, Gunicorn

WORKER = os.environ.get("AIOWSGI_FOREIGN_WORKER", "gunicorn_aiowsgi.Worker")
SDIST = Path(os.environ.get("AIOWSGI_FOREIGN_SDIST", "."))
_servers: dict[tuple[str, bool], Gunicorn] = {}
# Made when the first unix-socket master is (gunicorn imports this module too, for the app
# factory below) and removed at the end of the run.
_sockets: list[Path] = []
ADD_HOST = os.environ.get("AIOWSGI_FOREIGN_RAW") != "1"
REQUEST_LINE = re.compile(rb"(?:^|(?<=\r\n))[A-Z]+ \S+ HTTP/1\.1\r\n")
CLIENT_TIMEOUT = 2.0  # a test waiting longer for the server fails rather than hangs


def with_host(data: bytes) -> bytes:
    """Add `Host: localhost` to each HTTP/1.1 request head in `data` that has none."""
    out, at = [], 0
    for match in REQUEST_LINE.finditer(data):
        end = data.find(b"\r\n\r\n", match.end() - 2)
        head = data[match.end():end if end >= 0 else len(data)]
        if not re.search(rb"(?im)^host:", head):
            out.append(data[at:match.end()] + b"Host: localhost\r\n")
            at = match.end()
    out.append(data[at:])
    return b"".join(out)


class HostSocket(socket.socket):
    """The tests' client socket, adding Host where RFC 9112 requires one (see above)."""

    def send(self, data, *args):  # type: ignore[override]
        new = with_host(bytes(data))
        super().sendall(new, *args)
        return len(data)

    def sendall(self, data, *args):  # type: ignore[override]
        return super().sendall(with_host(bytes(data)), *args)


def create_socket(self) -> socket.socket:
    sock = (HostSocket if ADD_HOST else socket.socket)(self.server.family, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT)
    return sock


ECHO_APPS = ("tests.fixtureapps.echo:app", "tests.fixtureapps.echo:app_body_only")


def with_remote_host(spec: str):
    """The WSGI app at `spec` ("module:name") with REMOTE_HOST set as waitress sets it: to
    REMOTE_ADDR. Used as a gunicorn app factory: `...foreign_waitress:with_remote_host('m:app')`."""
    module, _, name = spec.partition(":")
    app = getattr(importlib.import_module(module), name)

    def wrapped(environ, start_response):
        environ.setdefault("REMOTE_HOST", environ.get("REMOTE_ADDR", ""))
        return app(environ, start_response)

    return wrapped


def _socket_dir() -> Path:
    if not _sockets:
        _sockets.append(Path(tempfile.mkdtemp(prefix="aiowsgi-waitress-")))
    return _sockets[0]


def _serve(app: str, unix: bool, kw: dict) -> Gunicorn:
    if app in ECHO_APPS:
        app = f"robustness.foreign_waitress:with_remote_host({app!r})"
    key = (app + repr(sorted(kw.items(), key=str)), unix)
    if key not in _servers:
        env = {"PYTHONPATH": os.pathsep.join([str(SDIST), str(SDIST / "src"), str(ROOT), str(TESTS)])}
        if "max_request_body_size" in kw:  # waitress's limit, as our worker spells it
            env["AIOWSGI_MAX_BODY_SIZE"] = str(kw["max_request_body_size"])
        bind = f"unix:{_socket_dir() / f'{len(_servers)}.sock'}" if unix else "127.0.0.1:0"
        _servers[key] = Gunicorn(app, "--threads", "4", "--keep-alive", "1", worker_class=WORKER,
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
        module.SubprocessTests.create_socket = create_socket
        # UnixTests' own stop also unlinks the socket file: the shared master still needs it.
        for cls in (module.SubprocessTests, getattr(module, "UnixTests", None)):
            if cls is not None:
                cls.stop_subprocess = stop_subprocess


def pytest_sessionfinish(session, exitstatus) -> None:
    for server in _servers.values():
        server.stop()
    for path in _sockets:
        shutil.rmtree(path, ignore_errors=True)
