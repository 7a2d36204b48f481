"""Starting and stopping one server process for one scenario, always by pid.

Every server gets ONE worker process on a loopback port: gunicorn binds port 0 and the port
is read from its "Listening at:" line; the others get a port that was free a moment before.
The worker pid (for RSS and CPU) comes from gunicorn's "Booting worker with pid:" line, or is
the child (granian) or the process itself (waitress).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time

import sysinfo  # tests/sysinfo.py (benchmarks/__init__.py puts tests/ on the path)

from benchmarks import BENCH, HOST, OUT, REPO, loadclient
from benchmarks.catalog import SKETCH_FILE, Scenario, Server
from benchmarks.machine import module_available

START_TIMEOUT = 30.0  # seconds for a server to answer its readiness probe


class StartError(Exception):
    pass


def _start_time(pid: int | None) -> int | None:
    """When `pid` started, or None if it is gone: pid + start time name one process."""
    try:
        return sysinfo.start_time(pid) if pid else None
    except OSError:
        return None


class Running:
    """One started server: its process, port, worker pid, and its log."""

    def __init__(self, server: Server, scenario: Scenario, proc, log_path: str):
        self.server, self.scenario, self.proc, self.log_path = server, scenario, proc, log_path
        self.port: int | None = None
        self.worker_pid: int | None = None
        self.worker_start: int | None = None

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(self.log_text().rstrip().splitlines()[-n:])

    def worker_alive(self) -> bool:
        """The worker measured at start is still the same process."""
        return self.worker_pid is not None and _start_time(self.worker_pid) == self.worker_start


def unavailable(server: Server, sketch_dir: str | None) -> str | None:
    """Why `server` cannot run here (a module missing, the sketch absent), or None."""
    missing = [m for m in server.requires if not module_available(m)]
    if missing:
        return f"skipped: cannot import {', '.join(missing)}"
    if server.sketch and not sketch_dir:
        return (f"sketch not found: no {SKETCH_FILE} in shared/sketches beside the checkout "
                "or in --sketch-dir")
    return None


def gunicorn_argv(server: Server, sc: Scenario, target: str) -> list[str]:
    """gunicorn with one worker on port 0 and the settings every gunicorn-based server gets."""
    argv = [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", server.worker,
            "--bind", f"{HOST}:0", "--keep-alive", "60", "--worker-connections", "12000",
            "--backlog", "2048", "--timeout", "120", "--graceful-timeout", "5",
            # gunicorn 27's control socket would otherwise be shared by every master
            "--no-control-socket", "--log-level", "info", "--error-logfile", "-"]
    if server.threads_via == "--threads":
        argv += ["--threads", str(sc.threads)]
    return argv + list(server.extra) + [target]


def build_command(server: Server, sc: Scenario, port: int | None) -> tuple[list[str], dict]:
    """Return (argv, env additions) to run `server` for scenario `sc`."""
    env = {"BENCH_APP": sc.app, "BENCH_THREADS": str(sc.threads)}
    env.update(server.env)
    target = server.target.format(app=sc.app)
    py = sys.executable
    if server.kind == "gunicorn":
        return gunicorn_argv(server, sc, target), env
    if server.kind == "waitress":
        return [py, "-m", "waitress", f"--listen={HOST}:{port}", f"--threads={sc.threads}",
                "--connection-limit=12000", "--channel-timeout=60", "--backlog=2048",
                "--max-request-body-size=2147483648", target], env
    if server.kind == "granian":
        return [py, "-m", "granian", "--interface", "wsgi", "--host", HOST, "--port", str(port),
                "--workers", "1", "--blocking-threads", str(sc.threads), "--no-ws", "--http",
                "1", "--backlog", "2048", "--log-level", "info", target], env
    raise ValueError(server.kind)


def spawn(server: Server, sc: Scenario, tag: str, sketch_dir: str | None) -> Running:
    """Start the server's process, its output going to benchmarks/out/logs/."""
    port = None if server.kind == "gunicorn" else sysinfo.free_port(HOST)
    argv, env_add = build_command(server, sc, port)
    env = dict(os.environ, **env_add, PYTHONUNBUFFERED="1")
    path = [BENCH, REPO] + ([sketch_dir] if server.sketch and sketch_dir else [])
    env["PYTHONPATH"] = os.pathsep.join(path + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                else []))
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    log_path = os.path.join(OUT, "logs", f"{server.name}-{sc.name}{tag}.log")
    with open(log_path, "w") as logf:
        logf.write("$ " + " ".join(argv) + "\n")
        logf.flush()
        proc = subprocess.Popen(argv, cwd=BENCH, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    run = Running(server, sc, proc, log_path)
    run.port = port
    return run


def worker_pid(run: Running) -> int | None:
    """The worker's pid as far as it is known yet (gunicorn: from its log)."""
    if run.server.kind == "gunicorn":
        booted = re.findall(r"Booting worker with pid: (\d+)", run.log_text())
        return int(booted[-1]) if booted else None
    try:
        kids = sysinfo.children(run.proc.pid)
    except OSError:
        kids = []
    return kids[0] if kids else run.proc.pid


def ready(run: Running) -> bool:
    """One readiness step: learn the port, probe /ping; False means not yet."""
    if run.server.kind == "gunicorn":
        m = re.search(r"Listening at: http://[^:]+:(\d+)", run.log_text())
        if not (m and worker_pid(run)):
            return False
        run.port = int(m.group(1))
    try:
        r = loadclient.cmd_probe(argparse.Namespace(host=HOST, port=run.port, path="/ping",
                                                    timeout=5))
    except OSError:
        return False
    if r["status"] != 200:
        raise StartError(f"probe answered {r['status']}:\n{run.log_tail()}")
    return True


def start_server(server: Server, sc: Scenario, tag: str = "",
                 sketch_dir: str | None = None) -> Running:
    """Start `server` for `sc` and wait until it answers; StartError if it cannot."""
    why = unavailable(server, sketch_dir)
    if why:
        raise StartError(why)
    run = spawn(server, sc, tag, sketch_dir)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not ready(run):
            if run.proc.poll() is not None:
                raise StartError(f"exited with {run.proc.returncode}:\n{run.log_tail()}")
            if time.monotonic() > deadline:
                raise StartError(f"not serving after {START_TIMEOUT:.0f} s:\n{run.log_tail()}")
            time.sleep(0.05)
        run.worker_pid = worker_pid(run)
        run.worker_start = _start_time(run.worker_pid)
        return run
    except BaseException:
        stop_server(run)
        raise


def stop_server(run: Running) -> None:
    """SIGTERM the process (SIGKILL after 15 s), then any worker it orphaned, by pid."""
    proc = run.proc
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    # a worker orphaned by a master that died hard: same pid and start time => same process
    if run.worker_pid and run.worker_pid != proc.pid and run.worker_alive():
        time.sleep(0.5)
        if run.worker_alive():
            try:
                os.kill(run.worker_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
