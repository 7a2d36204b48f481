"""What a process holds, read from Linux /proc: memory, file descriptors, threads, children; free ports.

The one place tests (and the benchmark, which keeps a copy) read /proc. Functions that describe one
process raise ProcessLookupError when it has gone; `children` of a gone process is [].
"""

from __future__ import annotations

import os
import socket


def _proc(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


def status(pid: int) -> dict[str, str]:
    """/proc/PID/status as {field: value} (e.g. "VmRSS": "1234 kB", "State": "S (sleeping)")."""
    fields = {}
    for line in _proc(pid, "status").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name] = value.strip()
    return fields


def _kib(pid: int, field: str) -> int:
    # A zombie has no Vm* lines: it holds no memory any more.
    value = status(pid).get(field)
    return int(value.split()[0]) if value else 0


def rss_kib(pid: int) -> int:
    """Resident memory of one process now, in KiB (VmRSS)."""
    return _kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int:
    """Peak resident memory of one process since it started (or since `echo 5 > clear_refs`), KiB."""
    return _kib(pid, "VmHWM")


def children(pid: int) -> list[int]:
    """The direct children of `pid` (forked by any of its threads)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    out: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(child) for child in f.read().split()]
        except FileNotFoundError:  # the thread ended while we looked
            pass
    return sorted(out)


def tree_rss_kib(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, in KiB (a master and its workers)."""
    total = rss_kib(pid)
    for child in children(pid):
        try:
            total += tree_rss_kib(child)
        except ProcessLookupError:  # exited while we looked
            pass
    return total


def fd_targets(pid: int) -> list[str]:
    """What each open file descriptor of `pid` points to ("socket:[123]", "/tmp/x (deleted)", ...)."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    out = []
    for name in names:
        try:
            out.append(os.readlink(f"{base}/{name}"))
        except OSError:  # closed while we looked
            pass
    return out


def open_fds(pid: int) -> int:
    """How many file descriptors `pid` has open."""
    return len(fd_targets(pid))


def thread_count(pid: int) -> int:
    """How many threads `pid` runs (the main thread included)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on `host` a moment ago, for programs that must be told a number.

    Another process may take it before the program binds it; prefer binding port 0 where possible.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
