"""Fixtures of the robustness tests: workers that record app calls, and an fd limit high enough."""

from __future__ import annotations

import re
import resource
from pathlib import Path

import pytest
from server import Gunicorn

# A wsgiref.validate assertion in a traceback: `File ".../wsgiref/validate.py", line N, in assert_`.
VALIDATOR_FAILED = re.compile(r'wsgiref/validate\.py", line \d+, in assert_')


class Calls:
    """The file robust_apps writes one `METHOD RAW_URI` line to per app call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.write_text("")

    def reset(self) -> None:
        self.path.write_text("")

    def lines(self) -> list[str]:
        return self.path.read_text(encoding="latin-1").splitlines()


@pytest.fixture(scope="session", autouse=True)
def many_fds():
    """Thousands of client sockets in this process (and the workers it starts, by inheritance)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, 65536)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def start(tmp_path):
    """start(app, *args, env=...) -> (Gunicorn, Calls); every worker stopped after the test."""
    started: list[Gunicorn] = []

    def run(app: str, *args: str, env: dict[str, str] | None = None, **kwargs) -> tuple[Gunicorn, Calls]:
        calls = Calls(tmp_path / f"calls-{len(started)}")
        full = {"ROBUST_CALLS": str(calls.path), **(env or {})}
        server = Gunicorn(app, *args, env=full, **kwargs)
        started.append(server)
        return server, calls

    yield run
    for server in started:
        server.stop()
    for server in started:
        check_log(server)


def check_log(server: Gunicorn) -> None:
    """No PEP 3333 complaint from wsgiref.validate, no error escaping an app thread.

    (The validator writes some complaints to stderr, which the harness keeps in stdout.log.)
    """
    log = server.log() + server.stdout.read_text(errors="replace")
    assert not VALIDATOR_FAILED.search(log), f"wsgiref.validate failed:\n{log[-4000:]}"
    for sign in ("Iterator garbage collected without being closed",
                 "Unhandled error in an app thread", "Exception in callback", "Task exception"):
        assert sign not in log, f"{sign!r} in the worker log:\n{log[-4000:]}"


def module_server(tmp_path_factory, app: str, *args: str, env: dict[str, str] | None = None,
                  worker_class: str = "gunicorn_aiowsgi.Worker"):
    """A worker shared by a module's tests (use from a module-scoped fixture)."""
    calls = Calls(tmp_path_factory.mktemp("calls") / "calls")
    server = Gunicorn(app, *args, env={"ROBUST_CALLS": str(calls.path), **(env or {})},
                      worker_class=worker_class)
    return server, calls


# The worker configurations every framing case runs on: the asyncio and the uvloop worker
# (transports differ in half-close and pausing), and "streamed", where every body with a
# Content-Length goes to its app thread as it arrives (4 threads: one stream slot; no memory
# limit), so framing is judged on that path too.
WORKER_CONFIGS = ["gunicorn_aiowsgi.Worker", "gunicorn_aiowsgi.UVLoopWorker", "streamed"]


def worker_config(name: str, env: dict[str, str]) -> tuple[str, list[str], dict[str, str]]:
    """(worker class, extra gunicorn arguments, environment) for one of WORKER_CONFIGS."""
    if name != "streamed":
        return name, [], env
    return "gunicorn_aiowsgi.Worker", ["--threads", "4"], {**env, "AIOWSGI_BODY_MEMORY_LIMIT": "0"}
