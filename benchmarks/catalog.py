"""What is measured, as data: the scenarios (load, app, threads) and the servers (how each starts).

Adding a scenario or a server is adding a row here; `targets.py` says what the report
evaluates. N threads per scenario: 8, 16 for the blocking app.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from benchmarks import REPO

GIB = 1 << 30
MIB = 1 << 20
IDEAL_SLEEP_RPS = 16 / 0.01  # 16 threads, 10 ms per request


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    app: str  # an app of apps.py (apps.wsgi_app)
    threads: int
    path: str
    kind: str  # "wrk" | "download" | "upload" | "idle"
    conns: int = 0
    delay_ms: int = 0  # per-connection pause between requests (paced light load)


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("hello", "hello world, 50 kept-alive connections", "hello", 8, "/", "wrk", 50),
        Scenario("flask", "Flask JSON view (a small dict), 50 kept-alive connections",
                 "flask_json", 8, "/", "wrk", 50),
        Scenario("sleep", "blocking app (time.sleep 10 ms), --threads 16, 100 connections",
                 "sleep", 16, "/", "wrk", 100),
        Scenario("stream", "1 GiB streamed response in 1 MiB chunks", "stream", 8, "/stream",
                 "download"),
        Scenario("upload", "1 GiB upload, app reads wsgi.input in 1 MiB chunks", "upload", 8,
                 "/upload", "upload"),
        Scenario("idle", "10,000 idle kept-alive connections + light load "
                 "(20 connections, 10 ms pause between requests: <= 2000 req/s)",
                 "hello", 8, "/", "idle", 20, 10),
    ]
}


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    kind: str  # "gunicorn" | "waitress" | "granian"
    scenarios: tuple
    worker: str = ""  # gunicorn -k
    target: str = "apps:{app}"  # app target, {app} = scenario app
    requires: tuple = ()  # modules that must import
    threads_via: str = "--threads"  # "--threads" | "env" | "none"
    extra: tuple = ()
    env: dict = field(default_factory=dict)
    ours: bool = False
    sketch: bool = False  # the own-protocol sketch: its folder goes on PYTHONPATH
    note: str = ""
    max_rounds: dict = field(default_factory=dict)  # scenario -> cap on rounds (slow peers)


ALL = ("hello", "flask", "sleep", "stream", "upload", "idle")
SERVERS = [
    Server("ours", "gunicorn-aiowsgi (asyncio)", "gunicorn", ALL,
           worker="gunicorn_aiowsgi.Worker", requires=("gunicorn_aiowsgi",), ours=True),
    Server("ours-uvloop", "gunicorn-aiowsgi (uvloop)", "gunicorn", ALL,
           worker="gunicorn_aiowsgi.UVLoopWorker", requires=("gunicorn_aiowsgi", "uvloop"),
           ours=True),
    Server("gthread", "gunicorn gthread", "gunicorn", ALL, worker="gthread"),
    Server("sync", "gunicorn sync", "gunicorn", ("hello", "sleep", "stream", "upload"),
           worker="sync", threads_via="none",
           note="one request at a time, no keep-alive"),
    Server("aiohttp-wsgi", "aiohttp-wsgi WSGIHandler (asyncio)", "gunicorn",
           ("hello", "flask", "sleep", "stream", "upload"),
           worker="aiohttp.worker.GunicornWebWorker", target="aiohttp_wsgi_app:app_factory",
           requires=("aiohttp_wsgi",), threads_via="env",
           # it joins the whole 1 GiB response in memory (~10 s, +3 GiB RSS) and spools the
           # upload to a temp file (~3 s): one transfer shows it
           max_rounds={"stream": 1, "upload": 1}),
    Server("aiohttp-wsgi-uvloop", "aiohttp-wsgi WSGIHandler (uvloop)", "gunicorn", ("hello",),
           worker="aiohttp.worker.GunicornUVLoopWebWorker", target="aiohttp_wsgi_app:app_factory",
           requires=("aiohttp_wsgi", "uvloop"), threads_via="env"),
    Server("aiohttp-native", "native aiohttp handler (asyncio)", "gunicorn",
           ("hello", "stream", "upload", "idle"),
           worker="aiohttp.worker.GunicornWebWorker", target="aiohttp_native:app_factory",
           threads_via="none", note="async handler, no WSGI, no threads",
           max_rounds={"idle": 1}),  # reference point only: what aiohttp itself costs
    Server("aiohttp-native-uvloop", "native aiohttp handler (uvloop)", "gunicorn", ("hello",),
           worker="aiohttp.worker.GunicornUVLoopWebWorker", target="aiohttp_native:app_factory",
           requires=("uvloop",), threads_via="none"),
    Server("asgi-a2wsgi", "gunicorn asgi worker + a2wsgi (asyncio)", "gunicorn",
           ("hello", "sleep"), worker="asgi", target="apps:asgi_{app}",
           requires=("a2wsgi",), threads_via="env",
           extra=("--asgi-loop", "asyncio", "--asgi-lifespan", "off")),
    Server("waitress", "waitress", "waitress", ("hello", "sleep"), requires=("waitress",)),
    Server("granian", "granian --interface wsgi", "granian", ("hello", "flask", "sleep"),
           requires=("granian",)),
    # the design point of issue 11: a 90-line own protocol on aiohttp's parser (no bodies)
    Server("sketch", "own-protocol sketch (asyncio)", "gunicorn", ("hello",),
           worker="own_protocol.Worker", sketch=True),
    Server("sketch-uvloop", "own-protocol sketch (uvloop)", "gunicorn", ("hello",),
           worker="own_protocol.Worker", sketch=True, requires=("uvloop",),
           env={"UVLOOP": "1"}),
]
SERVER_BY_NAME = {s.name: s for s in SERVERS}

SKETCH_FILE = "own_protocol.py"


def sketch_dir_candidates() -> list[str]:
    """Where the sketch folder may be: beside this checkout, or beside the main checkout
    when this is a git worktree (its shared/ folder lives next to the main one)."""
    found = [os.path.join(os.path.dirname(REPO), "shared", "sketches")]
    try:
        p = subprocess.run(["git", "-C", REPO, "rev-parse", "--path-format=absolute",
                            "--git-common-dir"], capture_output=True, text=True, timeout=10)
    except OSError:
        return found
    if p.returncode == 0 and p.stdout.strip():
        main = os.path.dirname(p.stdout.strip())
        found.append(os.path.join(os.path.dirname(main), "shared", "sketches"))
    return found


def find_sketch_dir(override: str | None = None) -> str | None:
    """The folder holding the sketch, or None (a clean clone has no shared/ beside it)."""
    for d in [override] if override else sketch_dir_candidates():
        if d and os.path.isfile(os.path.join(d, SKETCH_FILE)):
            return os.path.abspath(d)
    return None
