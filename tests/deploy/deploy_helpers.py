"""Helpers for tests/deploy: start what tests/server.py's Gunicorn does not (honcho, nginx, a
master under socket activation), read server-sent events, and read the deploy/ files."""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

from gunicorn.config import Config
from server import ROOT, Gunicorn, run_dir

DEPLOY = ROOT / "deploy"
CONF = DEPLOY / "gunicorn.conf.py"
BIN = Path(sys.executable).parent  # the venv (or tox env) running the tests: gunicorn, honcho
# gunicorn >= 25.1 opens a control socket in ~/.gunicorn unless told not to; older ones
# have no such flag.
NO_CONTROL_SOCKET = ["--no-control-socket"] if "control_socket_disable" in Config().settings else []


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


def free_port() -> int:
    """A loopback port that was free a moment ago, for programs that must be told a number."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    workers: int,
    cwd: Path = ROOT,
    pass_fds: Sequence[int] = (),
    timeout: float = 30.0,
) -> Gunicorn:
    """Start a command that ends up running a gunicorn master, as a tests/server.py Gunicorn.

    `argv` and `env` values may hold {error_log} and {access_log}: the files the returned
    object reads. It waits for "Listening at" and `workers` times "aiowsgi: serving" in the
    error log. .pid is the process started (honcho, or a wrapper that execs gunicorn)."""
    g = Gunicorn.__new__(Gunicorn)
    g.dir = Path(tempfile.mkdtemp(prefix="deploy-", dir=run_dir()))
    g.error_log, g.access_log, g.stdout = (
        g.dir / "error.log",
        g.dir / "access.log",
        g.dir / "stdout.log",
    )
    paths = {"error_log": g.error_log, "access_log": g.access_log}
    g.cmd = [a.format(**paths) for a in argv]
    full_env = {k: v.format(**paths) for k, v in env.items()}
    g._out = open(g.stdout, "wb")  # noqa: SIM115 - Gunicorn.stop() closes it
    g.proc = subprocess.Popen(
        g.cmd,
        cwd=str(cwd),
        env=full_env,
        stdout=g._out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    g.pid = g.proc.pid
    g.url, g.host, g.port = "", "127.0.0.1", 0
    g._wait_listening(workers, timeout)
    return g


def master_pid(g: Gunicorn) -> int:
    match = re.search(r"Listening at: \S+ \((\d+)\)", g.log())
    assert match, g.log()
    return int(match.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still "exists": look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get(
    host: str, port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def read_sse(
    host: str, port: int, path: str = "/stream", on_event: Any = None, timeout: float = 15.0
) -> tuple[int, dict[str, str], list[tuple[float, dict[str, str]]]]:
    """GET a server-sent-events stream; every event with the monotonic time it arrived.

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
                events.append((time.monotonic(), fields))
                fields = {}
                if on_event:
                    on_event(len(events) - 1)
        return resp.status, headers, events
    finally:
        conn.close()


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
