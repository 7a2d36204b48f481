"""What only tests/deploy uses: the deploy/ files (example app, gunicorn.conf.py), a clean child
environment, server-sent events and nginx. Generic helpers live in tests/server.py (honcho and
socket-activated masters start with Gunicorn.launch)."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

from server import ROOT, wait_until

DEPLOY = ROOT / "deploy"
CONF = DEPLOY / "gunicorn.conf.py"
BIN = Path(sys.executable).parent  # the venv (or tox env) running the tests: gunicorn, honcho


def base_env(**extra: str) -> dict[str, str]:
    """The environment for a child: ours, the repo importable, the venv's scripts first on PATH,
    and none of the variables gunicorn or honcho would pick up from the developer's shell."""
    env = dict(os.environ)
    for name in (
        "PORT",
        "WEB_CONCURRENCY",
        "GUNICORN_CMD_ARGS",
        "GUNICORN_THREADS",
        "FORWARDED_ALLOW_IPS",
        "LISTEN_FDS",
        "LISTEN_PID",
        "NOTIFY_SOCKET",
    ):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.update(extra)
    return env


def load_example() -> ModuleType:
    """A fresh import of deploy/example_app.py."""
    spec = importlib.util.spec_from_file_location("example_app", DEPLOY / "example_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(app: Any, path: str, method: str = "GET") -> tuple[int, dict[str, str], list[bytes]]:
    """Call a WSGI app in-process (through wsgiref's validator): status, headers, chunks."""
    environ: dict = {
        "PATH_INFO": path,
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
    }
    setup_testing_defaults(environ)
    seen: dict = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    result = validator(app)(environ, start_response)  # wsgiref checks the app keeps the WSGI rules
    try:
        chunks = list(result)
    finally:
        result.close()
    return int(seen["status"].split()[0]), seen["headers"], chunks


def load_conf(**env: str) -> dict[str, Any]:
    """deploy/gunicorn.conf.py's settings as gunicorn would read them, under `env` only."""
    saved = dict(os.environ)
    try:
        for name in (
            "PORT",
            "WEB_CONCURRENCY",
            "GUNICORN_THREADS",
            "FORWARDED_ALLOW_IPS",
            "GUNICORN_LOGLEVEL",
        ):
            os.environ.pop(name, None)
        os.environ.update(env)
        return {k: v for k, v in runpy.run_path(str(CONF)).items() if not k.startswith("_")}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def bind_port(conf: dict[str, Any]) -> int:
    binds = conf["bind"] if isinstance(conf["bind"], list) else [conf["bind"]]
    (bind,) = binds
    return int(bind.rpartition(":")[2])


def read_sse(
    host: str, port: int, path: str = "/stream", on_event: Any = None, timeout: float = 15.0
) -> tuple[int, dict[str, str], list[tuple[float, dict[str, str]]]]:
    """GET a server-sent-events stream; every event with the time.time() it arrived (comparable
    with the "time" stamp example_app puts in each event's data).

    on_event(index) is called as each event arrives (e.g. to signal the server mid-stream)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        events: list[tuple[float, dict[str, str]]] = []
        fields: dict[str, str] = {}
        while True:
            line = resp.readline()
            if not line:
                break
            text = line.decode().rstrip("\r\n")
            if text:
                name, _, value = text.partition(":")
                fields[name] = value.lstrip(" ")
            elif fields:
                events.append((time.time(), fields))
                fields = {}
                if on_event:
                    on_event(len(events) - 1)
        return resp.status, headers, events
    finally:
        conn.close()


def assert_streamed(events: list[tuple[float, dict[str, str]]]) -> None:
    """Each event of example_app's /stream reached the client before the app produced the next
    one: sent as yielded, not held back (by the worker or a proxy) for a burst. Judged by the
    app's own stamps, so a slow client fails it only when slower than the app's interval."""
    produced = [json.loads(fields["data"])["time"] for _, fields in events]
    arrived = [when for when, _ in events]
    late = [n for n in range(len(events) - 1) if not arrived[n] < produced[n + 1]]
    assert not late, f"events {late} arrived after the next was produced: {events}"


@contextmanager
def nginx(conf_text: str, workdir: Path, port: int) -> Iterator[subprocess.Popen]:
    """Run nginx in the foreground with `conf_text` until the block ends, then stop it."""
    if not shutil.which("nginx"):  # pragma: no cover - .ci/run installs nginx-light
        raise RuntimeError("nginx is not installed: apt-get install -y nginx-light")
    conf = workdir / "nginx.conf"
    conf.write_text(conf_text)
    check = subprocess.run(
        ["nginx", "-t", "-p", str(workdir), "-c", str(conf)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    with open(workdir / "nginx.out", "wb") as out:
        proc = subprocess.Popen(
            ["nginx", "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(workdir / 'nginx.out').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(up, 10, "nginx to listen")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
