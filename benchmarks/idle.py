"""The idle scenario's load: a paced light load without, then with, 10,000 idle kept-alive
connections held open by a helper process (`loadclient.py idle`, driven over its stdin/stdout).

Reported: the worker's RSS per idle connection, the p99 with/without them, and how many idle
connections the server kept open through the load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import sysinfo  # tests/sysinfo.py (benchmarks/__init__.py puts tests/ on the path)

from benchmarks import LOADCLIENT
from benchmarks.drivers import check_worker, pin_child, run_wrk
from benchmarks.servers import Running

READY_TIMEOUT = 120.0  # seconds for the helper to open all its connections


class IdleHelper:
    """benchmarks/loadclient.py idle, driven over its stdin/stdout."""

    def __init__(self, port: int, count: int, path: str):
        self.p = subprocess.Popen(
            [sys.executable, LOADCLIENT, "idle", "--port", str(port), "--count", str(count),
             "--path", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=pin_child)

    def read_event(self, timeout: float) -> dict:
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.p.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            raise RuntimeError(f"idle helper gave no answer within {timeout} s")
        return json.loads(box[0])

    def command(self, cmd: str, timeout: float = 30) -> dict:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.read_event(timeout)

    def close(self) -> None:
        """Ask it to close its connections and exit; kill it (by its pid) if it does not."""
        if self.p.poll() is None:
            try:
                self.command("close", 30)
            except Exception:  # noqa: BLE001 - it is killed below either way
                pass
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def _rss(pid: int) -> int:
    try:
        return sysinfo.rss_kib(pid)
    except OSError:
        return 0


def paced(run: Running, duration: int, warmup: int, threads: int) -> dict:
    """The paced light load, after a warm-up of the same load."""
    sc = run.scenario
    run_wrk(run.port, sc.path, sc.conns, max(1, warmup), threads, sc.delay_ms)
    return run_wrk(run.port, sc.path, sc.conns, duration, threads, sc.delay_ms)


def with_idle(run: Running, count: int, duration: int, warmup: int, threads: int):
    """Open `count` idle connections, measure the paced load beside them, close them.
    Returns (helper's ready event, RSS with them open in KiB, the load, the helper's check)."""
    helper = IdleHelper(run.port, count, run.scenario.path)
    try:
        ready = helper.read_event(READY_TIMEOUT)
        if ready.get("event") != "ready":
            raise RuntimeError(f"idle helper: {ready}")
        time.sleep(1.0)
        after = _rss(run.worker_pid)
        loaded = paced(run, duration, warmup, threads)
        chk = helper.command("check")
    finally:
        helper.close()
    return ready, after, loaded, chk


def measure_idle(run: Running, count: int, duration: int, warmup: int, threads: int) -> dict:
    """RSS per idle connection and the active p99 without, then with, `count` idle conns."""
    base = paced(run, duration, warmup, threads)
    time.sleep(0.3)
    before = _rss(run.worker_pid)
    ready, after, loaded, chk = with_idle(run, count, duration, warmup, threads)
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
        "errors": base["errors"] + loaded["errors"] + (count - opened),
    }
    check_worker(run, res)
    return res
