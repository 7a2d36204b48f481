"""Readings of a process from /proc (memory, descriptors, threads, children) and a free port.

The one home for them: the tests and the benchmark (benchmarks/) both import this module.
Linux only. A reading of a process that is gone raises OSError (FileNotFoundError or
ProcessLookupError), so a caller that samples a dying process catches OSError.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int:
    """One `Vm*` line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ProcessLookupError(f"no {field} for pid {pid} (a zombie or a kernel thread)")


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    return _status_kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int:
    """VmHWM (peak resident set since start or since reset_hwm), KiB."""
    return _status_kib(pid, "VmHWM")


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    try:
        # each thread has its own children file: a child forked by any thread counts
        kids: list[int] = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            kids += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        return sorted(set(kids))
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise
    # kernels built without CONFIG_PROC_CHILDREN: scan every process's parent
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat_fields(int(name))[1]) == pid:
                    found.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def tree_rss_kib(pid: int) -> int:
    """VmRSS of the process and all its descendants, KiB (those that exit meanwhile count 0)."""
    total = rss_kib(pid)
    for kid in children(pid):
        try:
            total += tree_rss_kib(kid)
        except OSError:
            pass
    return total


def open_fds(pid: int) -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    """How many threads the process has."""
    return len(os.listdir(f"/proc/{pid}/task"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_time(pid: int) -> int:
    """When the process started (clock ticks since boot): with the pid, names one process."""
    return int(_stat_fields(pid)[19])


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that was free a moment ago, for programs that must be told a number."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("?" if there is none)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def machine_busy_pct(seconds: float = 1.0) -> float:
    """How busy the whole machine is (all CPUs, %) over `seconds`, from /proc/stat."""
    def snap() -> tuple[int, int]:
        vals = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))
