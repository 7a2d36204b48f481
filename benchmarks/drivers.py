"""The load: wrk (hello, flask, blocking, idle), benchmarks/loadclient.py (1 GiB transfers, 10k idle
connections), and the worker's RSS and CPU sampled around each measurement.

RSS: the worker's VmHWM is reset right before a measurement, VmRSS sampled every 10 ms during
it, and the peak reported; "growth" is that peak minus the RSS just before. Worker CPU is
utime+stime over the wall time of the load (100% = one core).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import sysinfo  # tests/sysinfo.py (benchmarks/__init__.py puts tests/ on the path)

from benchmarks import HOST, LOADCLIENT, LUA
from benchmarks.servers import Running

WRK_ERRORS = ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
_client_cpus: set[int] | None = None  # the CPUs wrk and the socket clients are pinned to


def pin_clients(cpus: set[int] | None) -> None:
    """Pin every load generator started from now on to `cpus` (None: not pinned)."""
    global _client_cpus
    _client_cpus = cpus


def client_cpus() -> set[int] | None:
    return _client_cpus


def pin_child() -> None:
    """preexec_fn of every load generator: pin it (runs in the child, before exec)."""
    if _client_cpus:
        os.sched_setaffinity(0, _client_cpus)


def _reading(read, pid: int):
    """A /proc reading of a process, or None if it is gone."""
    try:
        return read(pid)
    except OSError:
        return None


class RssSampler:
    """Samples a pid's VmRSS every few ms and resets/reads VmHWM around a block."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid, self.interval = pid, interval
        self.start_kb = self.peak_kb = self.end_kb = 0
        self.cpu_pct: float | None = None
        self._stop = threading.Event()

    def __enter__(self):
        self.hwm_reset = sysinfo.reset_hwm(self.pid)
        self.start_kb = self.peak_kb = _reading(sysinfo.rss_kib, self.pid) or 0
        self.cpu0, self.t0 = _reading(sysinfo.cpu_seconds, self.pid), time.monotonic()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _reading(sysinfo.rss_kib, self.pid)
            if rss is None:
                return
            self.peak_kb = max(self.peak_kb, rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        cpu1, t1 = _reading(sysinfo.cpu_seconds, self.pid), time.monotonic()
        if cpu1 is not None and self.cpu0 is not None:
            self.cpu_pct = (cpu1 - self.cpu0) / (t1 - self.t0) * 100
        self.end_kb = _reading(sysinfo.rss_kib, self.pid) or 0
        if self.hwm_reset:
            self.peak_kb = max(self.peak_kb, _reading(sysinfo.hwm_kib, self.pid) or 0)
        self.peak_kb = max(self.peak_kb, self.end_kb)
        return False

    def result(self) -> dict:
        return {
            "rss_start_mib": self.start_kb / 1024,
            "rss_peak_mib": self.peak_kb / 1024,
            "rss_growth_mib": (self.peak_kb - self.start_kb) / 1024,
            "worker_cpu_pct": self.cpu_pct,
        }


def wrk_result(d: dict) -> dict:
    """wrk_json.lua's summary line -> req/s, latency percentiles (ms), errors."""
    secs = d["duration_us"] / 1e6
    return {
        "rps": d["requests"] / secs if secs else 0.0,
        "requests": d["requests"],
        "p50_ms": d["p50"] / 1000,
        "p90_ms": d["p90"] / 1000,
        "p99_ms": d["p99"] / 1000,
        "max_ms": d["lat_max"] / 1000,
        "errors": sum(d[k] for k in WRK_ERRORS),
        "error_detail": {k[4:]: d[k] for k in d if k.startswith("err_") and d[k]},
    }


def run_wrk(port: int, path: str, conns: int, duration: int, threads: int = 1,
            delay_ms: int = 0) -> dict:
    """One wrk load against 127.0.0.1:port; bounded by its duration (+60 s)."""
    url = f"http://{HOST}:{port}{path}"
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s",
            "--latency", "-s", LUA, url]
    env = dict(os.environ, WRK_DELAY_MS=str(delay_ms))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, env=env,
                       preexec_fn=pin_child)
    m = re.search(r"^WRK_JSON (\{.*\})$", p.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed (rc={p.returncode}): {p.stderr.strip() or p.stdout[-500:]}")
    return wrk_result(json.loads(m.group(1)))


def run_client(args: list[str], timeout: float) -> dict:
    """benchmarks/loadclient.py with `args`; its last JSON line."""
    p = subprocess.run([sys.executable, LOADCLIENT] + args, capture_output=True, text=True,
                       timeout=timeout, preexec_fn=pin_child)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadclient failed (rc={p.returncode}): {p.stderr.strip()[-500:]}")
    d = json.loads(lines[-1])
    if "error" in d:
        raise RuntimeError(d["error"])
    return d


def check_worker(run: Running, res: dict) -> None:
    """A measurement during which the worker died or was replaced does not count."""
    if not run.worker_alive():
        res["errors"] = res.get("errors", 0) + 1
        res["note"] = "worker died/restarted during the run"
        raise RuntimeError(f"worker {run.worker_pid} died:\n{run.log_tail()}")


def measure_wrk(run: Running, duration: int, warmup: int, threads: int) -> dict:
    """A wrk load (after `warmup` seconds of the same load), with RSS and CPU."""
    sc = run.scenario
    if warmup:
        run_wrk(run.port, sc.path, sc.conns, warmup, threads)
    with RssSampler(run.worker_pid) as s:
        res = run_wrk(run.port, sc.path, sc.conns, duration, threads)
    res.update(s.result())
    check_worker(run, res)
    return res


def transfer_errors(kind: str, d: dict, size: int) -> tuple[int, str]:
    """(errors, note) for one transfer: a wrong status or a byte count that does not add up."""
    if d["status"] != 200:
        return 1, f"HTTP {d['status']}"
    if kind == "download" and d["bytes"] != size:
        return 1, f"got {d['bytes']} bytes, expected {size}"
    if kind == "upload" and d.get("server_counted") != size:
        return 1, f"server counted {d.get('server_counted')} bytes, sent {size}"
    return 0, ""


def measure_transfer(run: Running, size: int, timeout: float) -> dict:
    """One 1 GiB download or upload through loadclient.py, with RSS growth and CPU."""
    sc = run.scenario
    args = [sc.kind, "--port", str(run.port), "--path", sc.path, "--timeout", str(timeout)]
    if sc.kind == "upload":
        args += ["--size", str(size)]
    with RssSampler(run.worker_pid) as s:
        d = run_client(args, timeout + 30)
    errors, note = transfer_errors(sc.kind, d, size)
    res = {"bytes_per_s": d["bytes_per_s"], "seconds": d["seconds"], "bytes": d["bytes"],
           "errors": errors}
    if note:
        res["note"] = note
    res.update(s.result())
    check_worker(run, res)
    return res
