#!/usr/bin/env python3
"""Benchmark gunicorn-aiowsgi against its peers, one worker process each.

    python benchmarks/run.py              # full run (3 rounds), writes RESULTS.md + results.png
    python benchmarks/run.py --quick      # smoke run: 1 round, 2 s per load
    python benchmarks/run.py --only ours,gthread --only idle
    python benchmarks/run.py --only ours/hello --only gthread/hello

Run it with the interpreter of the environment the project is installed in (the
repo's .venv): benchmark-only packages from benchmarks/requirements.txt are
pip-installed into that interpreter's environment (``--no-install`` skips this).

Every server gets ONE worker process on a loopback port (gunicorn binds port 0
and the port is read from its "Listening at:" line; the others get a port that
was free a moment before).  Load comes from wrk (hello / blocking / idle) and
from benchmarks/loadclient.py (1 GiB stream, 1 GiB upload, 10k idle
connections).  Servers are interleaved round by round and the median per
metric is reported (RSS: the maximum over rounds).  Nothing is ever sent
anywhere but 127.0.0.1.

See benchmarks/README.md for the scenarios and targets.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
OUT = os.path.join(BENCH, "out")
LUA = os.path.join(BENCH, "wrk_json.lua")
LOADCLIENT = os.path.join(BENCH, "loadclient.py")
HOST = "127.0.0.1"  # the only address this harness ever talks to

sys.path.insert(0, BENCH)
import loadclient  # noqa: E402  (benchmarks/loadclient.py)

GIB = 1 << 30
MIB = 1 << 20
IDEAL_SLEEP_RPS = 16 / 0.01  # 16 threads, 10 ms per request


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    name: str
    title: str
    app: str  # key into apps.WSGI_APPS
    threads: int
    path: str
    kind: str  # "wrk" | "download" | "upload" | "idle"
    conns: int = 0
    idle_conns: int = 0
    delay_ms: int = 0  # per-connection pause between requests (paced light load)


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("hello", "hello world, 50 kept-alive connections", "hello", 8, "/", "wrk", 50),
        Scenario("sleep", "blocking app (time.sleep 10 ms), --threads 16, 100 connections",
                 "sleep", 16, "/", "wrk", 100),
        Scenario("stream", "1 GiB streamed response in 1 MiB chunks", "stream", 8, "/stream",
                 "download"),
        Scenario("upload", "1 GiB upload, app reads wsgi.input in 1 MiB chunks", "upload", 8,
                 "/upload", "upload"),
        Scenario("idle", "10,000 idle kept-alive connections + light load "
                 "(20 connections, 10 ms pause between requests: <= 2000 req/s)",
                 "hello", 8, "/", "idle", 20, 10000, 10),
    ]
}


# --------------------------------------------------------------------------- servers


@dataclass
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
    note: str = ""
    max_rounds: dict = field(default_factory=dict)  # scenario -> cap on rounds (slow peers)


ALL = ("hello", "sleep", "stream", "upload", "idle")
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
           ("hello", "sleep", "stream", "upload"),
           worker="aiohttp.worker.GunicornWebWorker", target="aiohttp_wsgi_app:app_factory",
           requires=("aiohttp_wsgi",), threads_via="env",
           # it joins the whole 1 GiB response in memory (~10 s, +3 GiB RSS) and spools the
           # upload to a temp file (~3 s): one transfer shows it
           max_rounds={"stream": 1, "upload": 1}),
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
    Server("granian", "granian --interface wsgi", "granian", ("hello", "sleep"),
           requires=("granian",)),
]
SERVER_BY_NAME = {s.name: s for s in SERVERS}


# --------------------------------------------------------------------------- utilities


def log(msg=""):
    print(msg, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_status(pid):
    """VmRSS / VmHWM of a process in KiB (None if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return out


def reset_hwm(pid):
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_starttime(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(d))
                except OSError:
                    pass
        return out


class RssSampler:
    """Samples a pid's VmRSS every few ms and resets/reads VmHWM around a block."""

    def __init__(self, pid, interval=0.01):
        self.pid, self.interval = pid, interval
        self.start_kb = self.peak_kb = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.hwm_reset = reset_hwm(self.pid)
        st = proc_status(self.pid) or {}
        self.start_kb = self.peak_kb = st.get("VmRSS", 0)
        self.cpu0, self.t0 = proc_cpu_seconds(self.pid), time.monotonic()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            st = proc_status(self.pid)
            if st is None:
                return
            self.peak_kb = max(self.peak_kb, st.get("VmRSS", 0))

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        cpu1, t1 = proc_cpu_seconds(self.pid), time.monotonic()
        self.cpu_pct = ((cpu1 - self.cpu0) / (t1 - self.t0) * 100
                        if cpu1 is not None and self.cpu0 is not None else None)
        st = proc_status(self.pid) or {}
        self.end_kb = st.get("VmRSS", 0)
        if self.hwm_reset:
            self.peak_kb = max(self.peak_kb, st.get("VmHWM", 0))
        self.peak_kb = max(self.peak_kb, self.end_kb)
        return False

    def result(self):
        return {
            "rss_start_mib": self.start_kb / 1024,
            "rss_peak_mib": self.peak_kb / 1024,
            "rss_growth_mib": (self.peak_kb - self.start_kb) / 1024,
            "worker_cpu_pct": self.cpu_pct,
        }


# --------------------------------------------------------------------------- process control


class StartError(Exception):
    pass


class Running:
    def __init__(self, server, scenario, proc, log_path):
        self.server, self.scenario, self.proc, self.log_path = server, scenario, proc, log_path
        self.port = None
        self.worker_pid = None
        self.worker_start = None

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=15):
        return "\n".join(self.log_text().rstrip().splitlines()[-n:])

    def worker_alive(self):
        return self.worker_pid is not None and proc_starttime(self.worker_pid) == self.worker_start


def build_command(server: Server, sc: Scenario, port):
    """Return (argv, env additions) to run `server` for scenario `sc`."""
    threads = sc.threads
    env = {"BENCH_APP": sc.app, "BENCH_THREADS": str(threads)}
    env.update(server.env)
    target = server.target.format(app=sc.app)
    py = sys.executable
    if server.kind == "gunicorn":
        argv = [py, "-m", "gunicorn", "--workers", "1", "--worker-class", server.worker,
                "--bind", f"{HOST}:0", "--keep-alive", "60", "--worker-connections", "12000",
                "--backlog", "2048", "--timeout", "120", "--graceful-timeout", "5",
                "--no-control-socket", "--log-level", "info", "--error-logfile", "-"]
        if server.threads_via == "--threads":
            argv += ["--threads", str(threads)]
        argv += list(server.extra) + [target]
    elif server.kind == "waitress":
        argv = [py, "-m", "waitress", f"--listen={HOST}:{port}", f"--threads={threads}",
                "--connection-limit=12000", "--channel-timeout=60", "--backlog=2048",
                "--max-request-body-size=2147483648", target]
    elif server.kind == "granian":
        argv = [py, "-m", "granian", "--interface", "wsgi", "--host", HOST, "--port", str(port),
                "--workers", "1", "--blocking-threads", str(threads), "--no-ws", "--http", "1",
                "--backlog", "2048", "--log-level", "info", target]
    else:
        raise ValueError(server.kind)
    return argv, env


def start_server(server: Server, sc: Scenario, tag="") -> Running:
    missing = [m for m in server.requires if not module_available(m)]
    if missing:
        raise StartError(f"cannot import {', '.join(missing)}")
    port = None if server.kind == "gunicorn" else free_port()
    argv, env_add = build_command(server, sc, port)
    env = dict(os.environ)
    env.update(env_add)
    env["PYTHONPATH"] = os.pathsep.join(
        [BENCH, REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    log_path = os.path.join(OUT, "logs", f"{server.name}-{sc.name}{tag}.log")
    logf = open(log_path, "w")
    logf.write("$ " + " ".join(argv) + "\n")
    logf.flush()
    proc = subprocess.Popen(argv, cwd=BENCH, env=env, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    logf.close()
    run = Running(server, sc, proc, log_path)
    run.port = port
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                raise StartError(f"exited with {proc.returncode}:\n{run.log_tail()}")
            if time.monotonic() > deadline:
                raise StartError(f"not serving after 30 s:\n{run.log_tail()}")
            text = run.log_text()
            if server.kind == "gunicorn":
                m = re.search(r"Listening at: http://[^:]+:(\d+)", text)
                w = re.findall(r"Booting worker with pid: (\d+)", text)
                if not (m and w):
                    time.sleep(0.05)
                    continue
                run.port = int(m.group(1))
                wpid = int(w[-1])
            else:
                kids = children(proc.pid)
                wpid = kids[0] if kids else proc.pid
            try:
                r = loadclient.cmd_probe(argparse.Namespace(
                    host=HOST, port=run.port, path="/ping", timeout=5))
            except OSError:
                time.sleep(0.1)
                continue
            if r["status"] != 200:
                raise StartError(f"probe answered {r['status']}:\n{run.log_tail()}")
            if server.kind != "gunicorn":
                kids = children(proc.pid)
                wpid = kids[0] if kids else proc.pid
            else:
                wpid = int(re.findall(r"Booting worker with pid: (\d+)", run.log_text())[-1])
            run.worker_pid, run.worker_start = wpid, proc_starttime(wpid)
            return run
    except BaseException:
        stop_server(run)
        raise


def stop_server(run: Running):
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
    # a worker orphaned by a master that died hard: kill it by pid (same start time => same proc)
    if run.worker_pid and run.worker_pid != proc.pid and run.worker_alive():
        time.sleep(0.5)
        if run.worker_alive():
            try:
                os.kill(run.worker_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- load drivers

CLIENT_CPUS = None  # set by main(): the CPUs wrk and the socket clients are pinned to


def _pin_client():
    if CLIENT_CPUS:
        os.sched_setaffinity(0, CLIENT_CPUS)


def run_wrk(port, path, conns, duration, threads=1, delay_ms=0):
    url = f"http://{HOST}:{port}{path}"
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s",
            "--latency", "-s", LUA, url]
    env = dict(os.environ, WRK_DELAY_MS=str(delay_ms))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, env=env,
                       preexec_fn=_pin_client)
    m = re.search(r"^WRK_JSON (\{.*\})$", p.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed (rc={p.returncode}): {p.stderr.strip() or p.stdout[-500:]}")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    errors = sum(d[k] for k in ("err_connect", "err_read", "err_write", "err_status",
                                "err_timeout"))
    return {
        "rps": d["requests"] / secs if secs else 0.0,
        "requests": d["requests"],
        "p50_ms": d["p50"] / 1000,
        "p90_ms": d["p90"] / 1000,
        "p99_ms": d["p99"] / 1000,
        "max_ms": d["lat_max"] / 1000,
        "errors": errors,
        "error_detail": {k[4:]: d[k] for k in d if k.startswith("err_") and d[k]},
    }


def run_client(args, timeout):
    p = subprocess.run([sys.executable, LOADCLIENT] + args, capture_output=True, text=True,
                       timeout=timeout, preexec_fn=_pin_client)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadclient failed (rc={p.returncode}): {p.stderr.strip()[-500:]}")
    d = json.loads(lines[-1])
    if "error" in d:
        raise RuntimeError(d["error"])
    return d


def check_worker(run: Running, res: dict):
    if not run.worker_alive():
        res["errors"] = res.get("errors", 0) + 1
        res["note"] = "worker died/restarted during the run"
        raise RuntimeError(f"worker {run.worker_pid} died:\n{run.log_tail()}")


def measure_wrk(run: Running, duration, warmup, threads):
    sc = run.scenario
    if warmup:
        run_wrk(run.port, sc.path, sc.conns, warmup, threads)
    with RssSampler(run.worker_pid) as s:
        res = run_wrk(run.port, sc.path, sc.conns, duration, threads)
    res.update(s.result())
    check_worker(run, res)
    return res


def measure_transfer(run: Running, size, timeout):
    sc = run.scenario
    args = [sc.kind, "--port", str(run.port), "--path", sc.path, "--timeout", str(timeout)]
    if sc.kind == "upload":
        args += ["--size", str(size)]
    with RssSampler(run.worker_pid) as s:
        d = run_client(args, timeout + 30)
    res = {
        "bytes_per_s": d["bytes_per_s"],
        "seconds": d["seconds"],
        "bytes": d["bytes"],
        "errors": 0,
    }
    if d["status"] != 200:
        res["errors"] += 1
        res["note"] = f"HTTP {d['status']}"
    if sc.kind == "download" and d["bytes"] != size:
        res["errors"] += 1
        res["note"] = f"got {d['bytes']} bytes, expected {size}"
    if sc.kind == "upload" and d.get("server_counted") != size:
        res["errors"] += 1
        res["note"] = f"server counted {d.get('server_counted')} bytes, sent {size}"
    res.update(s.result())
    check_worker(run, res)
    return res


class IdleHelper:
    """benchmarks/loadclient.py idle, driven over its stdin/stdout."""

    def __init__(self, port, count, path):
        self.p = subprocess.Popen(
            [sys.executable, LOADCLIENT, "idle", "--port", str(port), "--count", str(count),
             "--path", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_pin_client)

    def read_event(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.p.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            raise RuntimeError(f"idle helper gave no answer within {timeout} s")
        return json.loads(box[0])

    def command(self, cmd, timeout=30):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.read_event(timeout)

    def close(self):
        if self.p.poll() is None:
            try:
                self.command("close", 30)
            except Exception:  # noqa: BLE001
                pass
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def measure_idle(run: Running, duration, warmup, threads):
    sc = run.scenario
    run_wrk(run.port, sc.path, sc.conns, max(1, warmup), threads, sc.delay_ms)
    base = run_wrk(run.port, sc.path, sc.conns, duration, threads, sc.delay_ms)
    time.sleep(0.3)
    before = (proc_status(run.worker_pid) or {}).get("VmRSS", 0)
    helper = IdleHelper(run.port, sc.idle_conns, sc.path)
    try:
        ready = helper.read_event(120)
        if ready.get("event") != "ready":
            raise RuntimeError(f"idle helper: {ready}")
        time.sleep(1.0)
        after = (proc_status(run.worker_pid) or {}).get("VmRSS", 0)
        # same warm-up as before the baseline, now with the idle connections open
        run_wrk(run.port, sc.path, sc.conns, max(1, warmup), threads, sc.delay_ms)
        loaded = run_wrk(run.port, sc.path, sc.conns, duration, threads, sc.delay_ms)
        chk = helper.command("check")
    finally:
        helper.close()
    opened = ready["open"]
    res = {
        "idle_open": opened,
        "idle_errors": ready.get("errors", {}),
        "idle_retried_503": ready.get("retried_503", 0),
        "idle_open_seconds": ready.get("seconds"),
        "idle_alive_after": chk.get("alive"),
        "rss_before_mib": before / 1024,
        "rss_idle_mib": after / 1024,
        "kib_per_conn": (after - before) / opened if opened else float("nan"),
        "p99_base_ms": base["p99_ms"],
        "p99_idle_ms": loaded["p99_ms"],
        "p50_base_ms": base["p50_ms"],
        "p50_idle_ms": loaded["p50_ms"],
        "rps_base": base["rps"],
        "rps_idle": loaded["rps"],
        "p99_ratio": loaded["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan"),
        "errors": base["errors"] + loaded["errors"] + (sc.idle_conns - opened),
    }
    check_worker(run, res)
    return res


# --------------------------------------------------------------------------- dependencies


def module_available(mod):
    if mod == "gunicorn_aiowsgi":
        # the package under test lives in the repo; it is importable via PYTHONPATH
        return os.path.exists(os.path.join(REPO, "gunicorn_aiowsgi", "__init__.py"))
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


REQ_MODULES = {"matplotlib": "matplotlib", "aiohttp-wsgi": "aiohttp_wsgi", "waitress": "waitress",
               "a2wsgi": "a2wsgi", "granian": "granian", "py-spy": None}


def tool_path(name):
    """A console script of this interpreter's environment, or one on PATH."""
    cand = os.path.join(os.path.dirname(sys.executable), name)
    return cand if os.access(cand, os.X_OK) else shutil.which(name)


def ensure_deps(install: bool):
    notes = []
    for mod in ("gunicorn", "aiohttp"):
        if not module_available(mod):
            sys.exit(f"{mod} is not importable by {sys.executable}; run this script with the "
                     f"project's environment (e.g. .venv/bin/python benchmarks/run.py)")
    reqs = []
    with open(os.path.join(BENCH, "requirements.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                reqs.append(line)
    for req in reqs:
        name = re.split(r"[<>=!~ \[]", req, 1)[0]
        mod = REQ_MODULES.get(name, name.replace("-", "_"))
        present = (tool_path(name) is not None) if mod is None else module_available(mod)
        if present:
            continue
        if not install:
            notes.append(f"{req}: not installed (--no-install)")
            continue
        log(f"installing benchmark dependency {req} ...")
        p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", req],
                           capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
            notes.append(f"{req}: pip install failed ({tail[0]})")
        importlib.invalidate_caches()
    return notes


def versions():
    v = {}
    for dist in ("gunicorn", "aiohttp", "uvloop", "aiohttp-wsgi", "waitress", "a2wsgi", "granian",
                 "matplotlib"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = "not installed"
    try:
        p = subprocess.run([sys.executable, "-c", "import gunicorn_aiowsgi as m; "
                            "print(getattr(m, '__version__', '?'))"],
                           capture_output=True, text=True, cwd=REPO, timeout=30)
        v["gunicorn-aiowsgi"] = p.stdout.strip() or "import failed"
    except Exception:  # noqa: BLE001
        v["gunicorn-aiowsgi"] = "import failed"
    # the worker's source may be uncommitted: fingerprint what was actually benchmarked
    h = hashlib.sha256()
    pkg = os.path.join(REPO, "gunicorn_aiowsgi")
    for name in sorted(os.listdir(pkg)) if os.path.isdir(pkg) else []:
        if name.endswith(".py"):
            with open(os.path.join(pkg, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    v["gunicorn-aiowsgi"] += f" [source sha256 {h.hexdigest()[:12]}]"
    try:
        p = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        if p.returncode == 0:
            v["gunicorn-aiowsgi"] += f" (git {p.stdout.strip()}"
            d = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "gunicorn_aiowsgi"],
                               capture_output=True, text=True, timeout=10)
            v["gunicorn-aiowsgi"] += ", worktree modified)" if d.stdout.strip() else ")"
    except Exception:  # noqa: BLE001
        pass
    try:
        p = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        v["wrk"] = (p.stdout + p.stderr).split("\n")[0].split(" [")[0].replace("wrk ", "")
    except Exception:  # noqa: BLE001
        v["wrk"] = "?"
    return v


def cpu_busy_pct(seconds=1.0):
    """How busy the whole machine is (all CPUs, %) over `seconds`: other work skews results."""
    def snap():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait
    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
        return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))
    except OSError:
        return None


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpu_busy_before_start": (lambda b: "?" if b is None else f"{b:.0f}% (1 s sample)")(
            cpu_busy_pct()),
        "nofile": " / ".join(str(x) for x in __import__("resource").getrlimit(
            __import__("resource").RLIMIT_NOFILE)),
    }


# --------------------------------------------------------------------------- selection


def parse_only(items):
    """--only values -> list of (server_glob, scenario_glob)."""
    filters = []
    for item in items or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if "/" in part:
                a, b = part.split("/", 1)
                filters.append((a or "*", b or "*"))
            elif any(fnmatch.fnmatch(s, part) for s in SCENARIOS):
                filters.append(("*", part))
            else:
                filters.append((part, "*"))
    return filters


def selected(filters, server, scenario):
    if not filters:
        return True
    srv_f = [f for f in filters if f[1] == "*" and f[0] != "*"]
    sc_f = [f for f in filters if f[0] == "*" and f[1] != "*"]
    pair_f = [f for f in filters if f not in srv_f and f not in sc_f]
    if any(fnmatch.fnmatch(server, a) and fnmatch.fnmatch(scenario, b) for a, b in pair_f):
        return True
    # bare server names and bare scenario names combine with AND (ours + hello = ours/hello)
    if not srv_f and not sc_f:
        return False
    ok_srv = not srv_f or any(fnmatch.fnmatch(server, a) for a, _ in srv_f)
    ok_sc = not sc_f or any(fnmatch.fnmatch(scenario, b) for _, b in sc_f)
    return ok_srv and ok_sc


# --------------------------------------------------------------------------- orchestration


def run_interleaved(sc: Scenario, servers, args, results, failures):
    """Start every server for `sc`, then run the rounds interleaved."""
    running = {}
    try:
        for srv in servers:
            log(f"  starting {srv.name} ...")
            try:
                running[srv.name] = start_server(srv, sc)
                r = running[srv.name]
                log(f"    port {r.port}, worker pid {r.worker_pid}")
            except StartError as e:
                failures.setdefault(sc.name, {})[srv.name] = f"failed to start: {e}"
                log(f"    FAILED to start {srv.name}: {e}")
        for rnd in range(args.rounds):
            names = [s.name for s in servers if s.name in running]
            k = rnd % len(names) if names else 0
            order = names[k:] + names[:k]
            for name in order:
                run = running[name]
                if rnd >= SERVER_BY_NAME[name].max_rounds.get(sc.name, args.rounds):
                    continue
                if not run.worker_alive():
                    failures.setdefault(sc.name, {})[name] = (
                        f"worker gone before round {rnd + 1}:\n{run.log_tail()}")
                    continue
                try:
                    if sc.kind == "wrk":
                        res = measure_wrk(run, args.duration, args.warmup if rnd == 0 else 0,
                                          args.wrk_threads)
                        log(f"  [{sc.name} r{rnd + 1}] {name:22s} {res['rps']:9.0f} req/s  "
                            f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  "
                            f"err {res['errors']}  peak RSS {res['rss_peak_mib']:.1f} MiB  "
                            f"CPU {res['worker_cpu_pct'] or 0:.0f}%")
                    else:
                        reps = 1 if sc.name in SERVER_BY_NAME[name].max_rounds else \
                            args.transfer_reps
                        for _ in range(reps):
                            res = measure_transfer(run, args.size, args.transfer_timeout)
                            log(f"  [{sc.name} r{rnd + 1}] {name:22s} "
                                f"{res['bytes_per_s'] / 1e6:9.0f} MB/s  {res['seconds']:6.2f} s  "
                                f"RSS growth {res['rss_growth_mib']:.1f} MiB  "
                                f"CPU {res['worker_cpu_pct'] or 0:.0f}%  err {res['errors']}"
                                + (f"  ({res['note']})" if res.get("note") else ""))
                            results.setdefault(sc.name, {}).setdefault(name, []).append(res)
                        continue
                    results.setdefault(sc.name, {}).setdefault(name, []).append(res)
                except Exception as e:  # noqa: BLE001
                    msg = f"round {rnd + 1}: {type(e).__name__}: {e}"
                    failures.setdefault(sc.name, {})[name] = msg
                    log(f"  [{sc.name} r{rnd + 1}] {name}: ERROR {msg}")
    finally:
        for run in running.values():
            stop_server(run)


def run_idle(sc: Scenario, servers, args, results, failures):
    """Idle connections: a fresh server per round, servers interleaved round by round."""
    for rnd in range(args.rounds):
        k = rnd % len(servers) if servers else 0
        for srv in servers[k:] + servers[:k]:
            if rnd >= srv.max_rounds.get(sc.name, args.rounds):
                continue
            if failures.get(sc.name, {}).get(srv.name, "").startswith("failed to start"):
                continue
            try:
                run = start_server(srv, sc, tag=f"-r{rnd + 1}")
            except StartError as e:
                failures.setdefault(sc.name, {})[srv.name] = f"failed to start: {e}"
                log(f"  FAILED to start {srv.name}: {e}")
                continue
            try:
                res = measure_idle(run, args.idle_duration, args.warmup, args.wrk_threads)
                results.setdefault(sc.name, {}).setdefault(srv.name, []).append(res)
                log(f"  [idle r{rnd + 1}] {srv.name:22s} {res['idle_open']} open "
                    f"({res['idle_alive_after']} alive after load) "
                    f"{res['kib_per_conn']:.2f} KiB/conn  p99 {res['p99_base_ms']:.2f} -> "
                    f"{res['p99_idle_ms']:.2f} ms (x{res['p99_ratio']:.2f})  "
                    f"req/s {res['rps_base']:.0f} -> {res['rps_idle']:.0f}")
            except Exception as e:  # noqa: BLE001
                msg = f"round {rnd + 1}: {type(e).__name__}: {e}"
                failures.setdefault(sc.name, {})[srv.name] = msg
                log(f"  [idle r{rnd + 1}] {srv.name}: ERROR {msg}")
            finally:
                stop_server(run)


# --------------------------------------------------------------------------- aggregation


MAX_KEYS = ("rss_peak_mib", "rss_growth_mib", "kib_per_conn", "rss_idle_mib")
SUM_KEYS = ("errors",)


def summarize(rounds):
    out = {"rounds": len(rounds)}
    keys = set().union(*(r.keys() for r in rounds))
    for k in keys:
        vals = [r[k] for r in rounds if isinstance(r.get(k), (int, float))
                and not isinstance(r.get(k), bool)]
        if not vals:
            continue
        if k in SUM_KEYS:
            out[k] = sum(vals)
        elif k in MAX_KEYS:
            out[k] = max(vals)
            out[k + "_median"] = statistics.median(vals)
        else:
            out[k] = statistics.median(vals)
            if k in ("rps", "bytes_per_s"):
                out[k + "_min"], out[k + "_max"] = min(vals), max(vals)
    notes = sorted({r["note"] for r in rounds if r.get("note")})
    if notes:
        out["notes"] = notes
    return out


def get(summary, sc, srv, key):
    return summary.get(sc, {}).get(srv, {}).get(key)


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}x"


def evaluate_targets(summary, results=None):
    """Return a list of target rows: (text, measured, threshold, met, detail)."""
    rows = []
    results = results or {}

    def ratio(a, b):
        return a / b if (a is not None and b) else None

    def add(text, value, threshold, higher_is_better, unit="x", detail=""):
        thr = {"x": f"{threshold:g}x", "%": f"{threshold:g}%"}.get(unit, f"{threshold:g} {unit}")
        if value is None:
            rows.append({"target": text, "value": None, "threshold": thr, "met": None,
                         "unit": unit, "detail": "not measured"})
            return
        met = value >= threshold if higher_is_better else value <= threshold
        if unit == "x":
            shown = f"{value:.2f}x"
        elif unit == "%":
            shown = f"{value:.1f}%"
        else:
            shown = f"{value:.2f} {unit}"
        if higher_is_better:
            margin = (value / threshold - 1) * 100 if threshold else 0
        else:
            margin = (1 - value / threshold) * 100 if threshold else 0
        how = (f"met with {margin:.0f}% to spare" if met
               else f"MISSED by {abs(margin):.0f}%")
        rows.append({"target": text, "value": shown, "threshold": thr, "met": met,
                     "unit": unit, "detail": (detail + "; " if detail else "") + how})

    h = "hello"
    ours_rps = get(summary, h, "ours", "rps")
    uv_rps = get(summary, h, "ours-uvloop", "rps")
    for who, rps in (("ours", ours_rps), ("ours-uvloop", uv_rps)):
        add(f"hello: {who} >= 3x gthread req/s",
            ratio(rps, get(summary, h, "gthread", "rps")), 3, True)
    add("hello: ours >= 2x aiohttp-wsgi req/s (both asyncio)",
        ratio(ours_rps, get(summary, h, "aiohttp-wsgi", "rps")), 2, True)
    add("hello: ours >= 0.6x native aiohttp req/s (both asyncio)",
        ratio(ours_rps, get(summary, h, "aiohttp-native", "rps")), 0.6, True)
    add("hello: ours-uvloop >= 0.6x native aiohttp req/s (both uvloop)",
        ratio(uv_rps, get(summary, h, "aiohttp-native-uvloop", "rps")), 0.6, True)
    for who in ("ours", "ours-uvloop"):
        p = get(summary, h, who, "p99_ms")
        g = get(summary, h, "gthread", "p99_ms")
        add(f"hello: {who} p99 no worse than gthread p99 (ratio <= 1)", ratio(p, g), 1.0, False,
            detail=(f"{p:.2f} ms vs {g:.2f} ms" if p is not None and g else ""))
    add("hello: ours-uvloop >= 1.3x ours (asyncio) req/s", ratio(uv_rps, ours_rps), 1.3, True)
    for who in ("ours", "ours-uvloop"):
        r = get(summary, "sleep", who, "rps")
        add(f"blocking: {who} >= 90% of ideal {IDEAL_SLEEP_RPS:.0f} req/s",
            None if r is None else r / IDEAL_SLEEP_RPS * 100, 90, True, unit="%",
            detail=(f"{r:.0f} req/s" if r is not None else ""))
    for sc, what in (("stream", "1 GiB stream"), ("upload", "1 GiB upload")):
        g = get(summary, sc, "gthread", "bytes_per_s")
        for who in ("ours", "ours-uvloop"):
            t = get(summary, sc, who, "bytes_per_s")
            add(f"{what}: {who} >= 0.8x gthread throughput", ratio(t, g), 0.8, True,
                detail=(f"{t / 1e6:.0f} vs {g / 1e6:.0f} MB/s" if t and g else ""))
            add(f"{what}: {who} worker peak RSS growth < 32 MiB",
                get(summary, sc, who, "rss_growth_mib"), 32, False, unit="MiB",
                detail="max over rounds")
    for who in ("ours", "ours-uvloop"):
        add(f"10k idle: {who} < 10 KiB RSS per idle connection",
            get(summary, "idle", who, "kib_per_conn"), 10, False, unit="KiB",
            detail="max over rounds")
        per_round = ", ".join(f"{r['p99_base_ms']:.2f}->{r['p99_idle_ms']:.2f} ms "
                              f"(x{r['p99_ratio']:.2f})"
                              for r in results.get("idle", {}).get(who, []) if "p99_ratio" in r)
        add(f"10k idle: {who} active p99 within 1.2x of p99 without idle conns",
            get(summary, "idle", who, "p99_ratio"), 1.2, False,
            detail=f"median of per-round ratios; rounds: {per_round}" if per_round else "")
    return rows


# --------------------------------------------------------------------------- reporting


def md_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def n(x, f="{:.0f}"):
    return "–" if x is None else f.format(x)


def scenario_tables(summary, failures, servers_order):
    parts = []
    for sc in SCENARIOS.values():
        data = summary.get(sc.name, {})
        fails = failures.get(sc.name, {})
        if not data and not fails:
            continue
        parts.append(f"### {sc.name}: {sc.title}\n")
        rows = []
        names = [s for s in servers_order if s in data or s in fails]
        most = max((d.get("rounds", 0) for d in data.values()), default=0)
        for name in names:
            d = data.get(name)
            label = SERVER_BY_NAME[name].label
            if d is not None and d.get("rounds", most) < most:
                label += f" ({d['rounds']} of {most} runs)"
            if d is None:
                rows.append(None)
                continue
            if sc.kind == "wrk":
                row = [f"**{name}**" if SERVER_BY_NAME[name].ours else name, label,
                       n(d.get("rps")),
                       f"{n(d.get('rps_min'))}–{n(d.get('rps_max'))}",
                       n(d.get("p50_ms"), "{:.2f}"), n(d.get("p99_ms"), "{:.2f}"),
                       n(d.get("errors")), n(d.get("rss_peak_mib"), "{:.1f}"),
                       n(d.get("worker_cpu_pct"), "{:.0f}%")]
                if sc.name == "sleep":
                    row.insert(4, n(d["rps"] / IDEAL_SLEEP_RPS * 100 if d.get("rps") else None,
                                    "{:.1f}%"))
            elif sc.kind in ("download", "upload"):
                row = [f"**{name}**" if SERVER_BY_NAME[name].ours else name, label,
                       n(d.get("bytes_per_s") and d["bytes_per_s"] / 1e6),
                       n(d.get("seconds"), "{:.2f}"),
                       n(d.get("rss_growth_mib"), "{:.1f}"), n(d.get("rss_peak_mib"), "{:.1f}"),
                       n(d.get("worker_cpu_pct"), "{:.0f}%"), n(d.get("errors"))]
            else:
                row = [f"**{name}**" if SERVER_BY_NAME[name].ours else name, label,
                       f"{n(d.get('idle_open'))} / {n(d.get('idle_alive_after'))}",
                       n(d.get("kib_per_conn"), "{:.2f}"),
                       n(d.get("rss_before_mib"), "{:.1f}"), n(d.get("rss_idle_mib"), "{:.1f}"),
                       n(d.get("p99_base_ms"), "{:.2f}"), n(d.get("p99_idle_ms"), "{:.2f}"),
                       n(d.get("p99_ratio"), "{:.2f}x"),
                       f"{n(d.get('rps_base'))} / {n(d.get('rps_idle'))}", n(d.get("errors"))]
            rows.append(row)
        if sc.kind == "wrk":
            hdr = ["server", "what", "req/s (median)", "range", "p50 ms", "p99 ms", "errors",
                   "peak RSS MiB", "worker CPU"]
            if sc.name == "sleep":
                hdr.insert(4, "% of ideal 1600")
        elif sc.kind in ("download", "upload"):
            hdr = ["server", "what", "MB/s (median)", "seconds", "peak RSS growth MiB (max)",
                   "peak RSS MiB", "worker CPU", "errors"]
        else:
            hdr = ["server", "what", "idle conns open / alive after load",
                   "RSS per idle conn KiB (max)", "RSS before MiB", "RSS with idle MiB",
                   "p99 w/o idle ms", "p99 with idle ms", "p99 ratio", "req/s w/o / with idle",
                   "errors"]
        filled = []
        for name, row in zip(names, rows):
            if row is None:
                msg = fails.get(name, "no result").splitlines()[0][:120]
                row = [name, SERVER_BY_NAME[name].label, f"not measured: {msg}"] + [""] * (
                    len(hdr) - 3)
            filled.append(row)
        parts.append(md_table(hdr, filled))
        extra = [f"- {name}: {msg.splitlines()[0][:200]}" for name, msg in fails.items()
                 if name in data]
        notes = [f"- {name}: {', '.join(d['notes'])}" for name, d in data.items()
                 if d.get("notes")]
        if extra or notes:
            parts.append("\nIssues during the run:\n" + "\n".join(extra + notes))
        parts.append("")
    return "\n".join(parts)


def targets_table(targets):
    rows = []
    for t in targets:
        verdict = {True: "met", False: "**MISSED**", None: "n/a"}[t["met"]]
        rows.append([t["target"], t["value"] or "–", t["threshold"], verdict, t["detail"]])
    return md_table(["target", "measured", "threshold", "verdict", "detail"], rows)


def write_results_md(path, meta, summary, failures, targets, notes, args, chart_name):
    order = [s.name for s in SERVERS]
    lines = [
        "# gunicorn-aiowsgi benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"({meta['elapsed_s']:.0f} s). Do not edit by hand: rerun the script.",
        "",
        "## Machine",
        "",
        md_table(["", ""], [[k, v] for k, v in meta["machine"].items()]),
        "",
        "## Versions",
        "",
        md_table(["package", "version"], [[k, v] for k, v in meta["versions"].items()]),
        "",
        "## Settings",
        "",
        f"- one worker process per server, loopback only; servers interleaved round by round, "
        f"{args.rounds} round(s); medians reported (peak RSS figures: max over rounds)",
        f"- wrk {args.wrk_threads} thread(s), {args.duration} s per measured load "
        f"({args.warmup} s warm-up in round 1), --timeout 5s; idle scenario: {args.idle_duration} s"
        f" paced loads ({SCENARIOS['idle'].conns} connections, {SCENARIOS['idle'].delay_ms} ms "
        f"pause between requests), {SCENARIOS['idle'].idle_conns} idle connections, "
        f"fresh server per round",
        f"- load generators {'pinned to CPU ' + str(sorted(CLIENT_CPUS)) if CLIENT_CPUS else 'not pinned'}; "
        f"load average at start: {meta['machine']['loadavg_at_start']}",
        f"- gunicorn: `--workers 1 --keep-alive 60 --worker-connections 12000 --backlog 2048`; "
        f"threads per scenario: hello/stream/upload/idle {SCENARIOS['hello'].threads}, "
        f"blocking {SCENARIOS['sleep'].threads} (`--threads` for gunicorn workers, "
        f"executor size for aiohttp-wsgi and a2wsgi, `--threads` for waitress, "
        f"`--blocking-threads` for granian)",
        f"- transfers: {args.size / GIB:g} GiB, 1 MiB chunks, Python socket client "
        f"(benchmarks/loadclient.py), {args.transfer_reps} per server per round (median of all); "
        f"RSS growth = worker peak RSS (VmHWM reset via clear_refs, "
        f"plus 10 ms VmRSS sampling) minus RSS just before the transfer",
        "",
        "## Targets",
        "",
        targets_table(targets),
        "",
        f"Met: {sum(1 for t in targets if t['met'] is True)}, "
        f"missed: {sum(1 for t in targets if t['met'] is False)}, "
        f"not measured: {sum(1 for t in targets if t['met'] is None)}.",
        "",
        f"![results]({chart_name})",
        "",
        "## Results",
        "",
        scenario_tables(summary, failures, order),
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {x}" for x in notes] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def make_chart(path, summary, targets):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not available: no chart"
    order = [s.name for s in SERVERS]

    def color(name):
        return "#d62728" if SERVER_BY_NAME[name].ours else "#7f7f7f"

    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))
    fig.suptitle("gunicorn-aiowsgi vs peers — one worker process, loopback, "
                 f"{os.cpu_count()} cores (medians)", fontsize=13)

    def bars(ax, sc, key, scale, title, ylabel, ref=None, ref_label=None, fmt="{:.0f}",
             extra=None):
        data = summary.get(sc, {})
        names = [s for s in order if s in data and data[s].get(key) is not None]
        if not names:
            ax.set_title(title + " (not measured)")
            ax.axis("off")
            return
        vals = [data[s][key] * scale for s in names]
        b = ax.bar(range(len(names)), vals, color=[color(s) for s in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=9)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
        for rect, v, name in zip(b, vals, names):
            text = fmt.format(v) + (extra(data[name]) if extra else "")
            ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=8)
        if ref is not None:
            ax.axhline(ref, color="#1f77b4", ls="--", lw=1)
            ax.annotate(ref_label, (len(names) - 0.5, ref), ha="right", va="bottom", fontsize=8,
                        color="#1f77b4")
        ax.margins(y=0.15)

    g = get(summary, "hello", "gthread", "rps")
    bars(axes[0][0], "hello", "rps", 1, "hello world, 50 keep-alive conns (label: req/s, p99 ms)",
         "req/s", ref=3 * g if g else None, ref_label="target: 3x gthread",
         extra=lambda d: f"\n{d['p99_ms']:.1f}" if d.get("p99_ms") is not None else "")
    bars(axes[0][1], "sleep", "rps", 1, "blocking app (10 ms sleep, 16 threads, 100 conns)",
         "req/s", ref=IDEAL_SLEEP_RPS, ref_label="ideal 1600 req/s (target >= 90%)")
    # streaming: grouped bars stream/upload
    ax = axes[1][0]
    names = [s for s in order if s in summary.get("stream", {}) or s in summary.get("upload", {})]
    if names:
        w = 0.4
        for i, (sc, col) in enumerate((("stream", "#ff7f0e"), ("upload", "#2ca02c"))):
            vals = [(get(summary, sc, s, "bytes_per_s") or 0) / 1e6 for s in names]
            b = ax.bar([x + (i - 0.5) * w for x in range(len(names))], vals, w, label=f"1 GiB {sc}",
                       color=col)
            for rect, v, s in zip(b, vals, names):
                growth = get(summary, sc, s, "rss_growth_mib")
                if v:
                    ax.annotate(f"{v:.0f}\n+{growth:.0f}MiB" if growth is not None else f"{v:.0f}",
                                (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                                ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=9)
        for lbl, s in zip(ax.get_xticklabels(), names):
            if SERVER_BY_NAME[s].ours:
                lbl.set_color("#d62728")
        ax.set_ylabel("MB/s")
        ax.set_title("1 GiB stream / upload throughput (labels: MB/s, peak RSS growth)",
                     fontsize=11)
        ax.legend(fontsize=8)
        ax.margins(y=0.2)
    else:
        ax.set_title("streaming (not measured)")
        ax.axis("off")
    bars(axes[1][1], "idle", "kib_per_conn", 1,
         "10k idle keep-alive conns: worker RSS per conn (label: p99 with/without idle)",
         "KiB / connection", ref=10, ref_label="target < 10 KiB", fmt="{:.2f} KiB",
         extra=lambda d: (f"\np99 x{d['p99_ratio']:.2f}" if d.get("p99_ratio") else ""))
    ax = axes[1][1]
    for lbl in ax.get_xticklabels() + axes[0][0].get_xticklabels() + axes[0][1].get_xticklabels():
        if lbl.get_text() in SERVER_BY_NAME and SERVER_BY_NAME[lbl.get_text()].ours:
            lbl.set_color("#d62728")
            lbl.set_fontweight("bold")
    met = sum(1 for t in targets if t["met"] is True)
    missed = sum(1 for t in targets if t["met"] is False)
    fig.text(0.01, 0.005, f"targets met: {met}, missed: {missed} — red = gunicorn-aiowsgi; "
             "see RESULTS.md for the ratios", fontsize=9)
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def print_summary(summary, failures, targets):
    order = [s.name for s in SERVERS]
    log("")
    log("=" * 100)
    log(scenario_tables(summary, failures, order))
    log("Targets (ratios from this run):")
    for t in targets:
        verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        log(f"  [{verdict}] {t['target']}: {t['value'] or '–'} (threshold {t['threshold']})"
            f"  {t['detail']}")


# --------------------------------------------------------------------------- profiling


# frames that only ever run in an app thread (the pool's run loop, the WSGI call, the app)
POOL_MARKERS = ("threading.py", "ThreadPool._work", "AppCall.run", "/apps.py",
                "concurrent/futures/thread.py")
# the outer frames of every stack (process start, arbiter, loop runner, thread bootstrap)
TRUNK_MARKERS = ("runpy>", "gunicorn/arbiter.py", "gunicorn/app/", "gunicorn/__main__.py",
                 "gunicorn/workers/base.py", "run_forever", "run_until_complete",
                 "Thread._bootstrap", "Thread.run ", "Worker.run (", "Worker.init_process")


def summarize_collapsed(path, rate, seconds, top=20):
    """Summarise py-spy's raw (collapsed) output: per-thread activity, self and inclusive frames."""
    from collections import Counter

    self_c, incl, roots, total = Counter(), Counter(), Counter(), 0
    group_incl = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            frames = stack.split(";")
            total += count
            # --nonblocking samples can lose their outer frames: classify by what is there
            pool = any(m in fr for fr in frames for m in POOL_MARKERS)
            root = "app threads (pool)" if pool else "loop thread (main)"
            roots[root] += count
            self_c[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
                group_incl.setdefault(root, Counter())[fr] += count
    if not total:
        return "no samples"
    possible = rate * seconds
    out = [f"{total} samples at {rate} Hz over {seconds} s (one thread fully busy = {possible})", ""]
    out += [f"- {k}: {v} samples ({v / possible * 100:.0f}% of one thread's time)"
            for k, v in roots.most_common()]
    out += ["", "Top frames by self samples:", ""]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in self_c.most_common(top)]
    # the trunk of each thread (runpy -> arbiter -> worker.run, Thread._bootstrap ...) says nothing
    trunk = {fr for root, c in group_incl.items() for fr, v in c.items() if v >= 0.98 * roots[root]}
    trunk |= {fr for fr in incl if any(m in fr for m in TRUNK_MARKERS)}
    out += ["", "Top frames by inclusive samples (each thread's common trunk omitted):", ""]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in incl.most_common(300)
            if k not in trunk][: top + 10]
    return "\n".join(out)


def profile_server(name, args):
    """Profile one server's worker under the hello-world load with py-spy (py-spy itself
    slows the worker: the req/s printed here are not benchmark numbers)."""
    spy = tool_path("py-spy")
    if not spy:
        log("py-spy not found (pip install py-spy)")
        return 1
    srv = SERVER_BY_NAME[name]
    sc = SCENARIOS["hello"]
    run = start_server(srv, sc, tag="-profile")
    secs, rate = args.profile_seconds, 200
    report = [f"# py-spy profile: {name} ({srv.label}) under wrk -c{sc.conns} hello world", ""]
    try:
        for mode, extra in (("gil", ["--gil"]), ("active", [])):
            out = os.path.join(OUT, f"profile-{name}-{mode}.txt")
            wrk = subprocess.Popen(
                ["wrk", f"-t{args.wrk_threads}", f"-c{sc.conns}", f"-d{secs + 3}s", "--latency",
                 "-s", LUA, f"http://{HOST}:{run.port}{sc.path}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                preexec_fn=_pin_client)
            time.sleep(1.5)
            p = subprocess.run([spy, "record", "-p", str(run.worker_pid), "-d", str(secs), "-r",
                                str(rate), "--nonblocking", "--format", "raw", "-o", out] + extra,
                               capture_output=True, text=True, timeout=secs + 60)
            wout, _ = wrk.communicate(timeout=secs + 60)
            m = re.search(r"Requests/sec:\s+([\d.]+)", wout)
            title = {"gil": "samples of the thread holding the GIL (where the CPU goes)",
                     "active": "all non-idle samples, incl. threads waiting for the GIL"}[mode]
            report += [f"## {mode}: {title}", "",
                       f"req/s while profiled: {m.group(1) if m else '?'}; "
                       f"raw stacks: {os.path.relpath(out, REPO)} "
                       "(collapsed format: open in speedscope or flamegraph.pl)", "", "```"]
            report.append(summarize_collapsed(out, rate, secs) if p.returncode == 0 and
                          os.path.exists(out) else f"py-spy failed: {p.stderr.strip()[-500:]}")
            report += ["```", ""]
    finally:
        stop_server(run)
    text = "\n".join(report)
    path = os.path.join(OUT, f"profile-{name}.md")
    with open(path, "w") as f:
        f.write(text)
    log(text)
    log(f"\nwrote {os.path.relpath(path)}")
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="servers: " + ", ".join(SERVER_BY_NAME)
                                + "\nscenarios: " + ", ".join(SCENARIOS))
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s loads")
    p.add_argument("--only", action="append", metavar="SERVER/SCENARIO",
                   help="run only matching pairs; globs allowed; 'ours', 'hello', 'ours/hello', "
                        "'*/stream', comma-separated or repeated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=2, help="seconds per wrk load (default 2)")
    p.add_argument("--idle-duration", type=int, default=3,
                   help="seconds per paced load in the idle scenario (default 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--size", type=int, default=GIB, help="stream/upload bytes (default 1 GiB)")
    p.add_argument("--transfer-timeout", type=float, default=90)
    p.add_argument("--idle-conns", type=int, default=10000,
                   help="idle connections in the idle scenario (default 10000)")
    p.add_argument("--profile", metavar="SERVER",
                   help="instead of benchmarking: profile SERVER's worker under the hello-world "
                        "load with py-spy; writes benchmarks/out/profile-SERVER.md")
    p.add_argument("--profile-seconds", type=int, default=5)
    p.add_argument("--pin", action="store_true",
                   help="pin wrk and the socket clients to the last CPU (default: the kernel "
                        "schedules everything)")
    p.add_argument("--transfer-reps", type=int, default=2,
                   help="1 GiB transfers per server per round in stream/upload (default 2; a "
                        "single transfer takes well under a second and varies a lot)")
    p.add_argument("--no-install", action="store_true",
                   help="do not pip-install benchmarks/requirements.txt")
    p.add_argument("--results", default=None,
                   help="where to write the markdown report (default: benchmarks/RESULTS.md "
                        "for a full unfiltered run, benchmarks/out/RESULTS-partial.md otherwise)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.idle_duration, args.transfer_reps = 1, 2, 2, 1
    if args.size % MIB:
        p.error("--size must be a multiple of 1 MiB")
    os.environ["BENCH_STREAM_CHUNKS"] = str(args.size // MIB)
    SCENARIOS["idle"].idle_conns = args.idle_conns
    global CLIENT_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) >= 2:
        CLIENT_CPUS = {cpus[-1]}

    if not shutil.which("wrk"):
        sys.exit("wrk not found. Install it first, e.g. on Debian/Ubuntu:\n"
                 "    sudo apt-get update && sudo apt-get install -y wrk\n"
                 "(macOS: brew install wrk)")
    notes = ensure_deps(not args.no_install)
    for x in notes:
        log(f"note: {x}")

    if args.profile:
        if args.profile not in SERVER_BY_NAME:
            p.error(f"--profile: unknown server {args.profile}; servers: "
                    f"{', '.join(SERVER_BY_NAME)}")
        os.makedirs(OUT, exist_ok=True)
        return profile_server(args.profile, args)

    filters = parse_only(args.only)
    unknown = [a for a, _ in filters if a != "*" and not any(
        fnmatch.fnmatch(s, a) for s in SERVER_BY_NAME)]
    unknown += [b for _, b in filters if b != "*" and not any(
        fnmatch.fnmatch(s, b) for s in SCENARIOS)]
    if unknown:
        p.error(f"--only: no server/scenario matches {unknown}; servers: "
                f"{', '.join(SERVER_BY_NAME)}; scenarios: {', '.join(SCENARIOS)}")
    full = not args.quick and not filters
    results_path = args.results or (os.path.join(BENCH, "RESULTS.md") if full
                                    else os.path.join(OUT, "RESULTS-partial.md"))
    chart_path = os.path.join(os.path.dirname(os.path.abspath(results_path)),
                              "results.png" if full and not args.results else "results-partial.png")
    os.makedirs(OUT, exist_ok=True)

    meta = {
        "command": "python benchmarks/run.py" + (" " + " ".join(argv if argv is not None
                                                                 else sys.argv[1:])).rstrip(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
    }
    log(f"machine: {meta['machine']}")
    busy = meta["machine"]["cpu_busy_before_start"]
    if busy != "?" and float(busy.split("%")[0]) > 10:
        log(f"WARNING: the machine is already {busy} busy; results will be skewed")
    log(f"versions: {meta['versions']}")

    # peers that cannot run at all are reported, not fatal
    failures: dict = {}
    results: dict = {}
    t0 = time.monotonic()
    for sc in SCENARIOS.values():
        servers = []
        for srv in SERVERS:
            if sc.name not in srv.scenarios or not selected(filters, srv.name, sc.name):
                continue
            missing = [m for m in srv.requires if not module_available(m)]
            if missing:
                failures.setdefault(sc.name, {})[srv.name] = (
                    f"skipped: cannot import {', '.join(missing)}")
                continue
            servers.append(srv)
        if not servers:
            continue
        log(f"\n== {sc.name}: {sc.title} — {', '.join(s.name for s in servers)}")
        try:
            if sc.kind == "idle":
                run_idle(sc, servers, args, results, failures)
            else:
                run_interleaved(sc, servers, args, results, failures)
        except KeyboardInterrupt:
            log("interrupted; writing partial results")
            break
        except Exception:  # noqa: BLE001 - a broken scenario must not lose the others
            log(traceback.format_exc())
            failures.setdefault(sc.name, {})["harness"] = traceback.format_exc()

    summary = {sc: {srv: summarize(rs) for srv, rs in d.items()} for sc, d in results.items()}
    targets = evaluate_targets(summary, results)
    meta["elapsed_s"] = time.monotonic() - t0
    print_summary(summary, failures, targets)
    for sc, d in failures.items():
        for srv, msg in d.items():
            notes.append(f"{sc}/{srv}: {msg.splitlines()[0][:300]}")
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"meta": meta, "args": vars(args), "results": results, "summary": summary,
                   "failures": failures, "targets": targets}, f, indent=1, default=str)
    err = make_chart(chart_path, summary, targets)
    if err:
        notes.append(err)
    write_results_md(results_path, meta, summary, failures, targets, notes, args,
                     os.path.basename(chart_path))
    log(f"\nwrote {os.path.relpath(results_path)}"
        + ("" if err else f", {os.path.relpath(chart_path)}")
        + f", {os.path.relpath(os.path.join(OUT, 'results.json'))} "
        f"in {meta['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
