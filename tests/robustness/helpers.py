"""Shared pieces of the robustness tests: polling, process inspection, raw loopback clients."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server import Conn, Gunicorn, rss_kib, wait_until


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    return wait_until(predicate, timeout, what or repr(predicate))


# -- a worker process, seen from /proc ---------------------------------------------------
def fds(pid: int) -> list[str]:
    """What each open file descriptor of `pid` points to."""
    out = []
    base = Path(f"/proc/{pid}/fd")
    for name in os.listdir(base):
        try:
            out.append(os.readlink(base / name))
        except OSError:  # closed while we looked
            pass
    return out


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def sockets(pid: int) -> int:
    return sum(1 for target in fds(pid) if target.startswith("socket:"))


def temp_files(pid: int, directory: str | None = None) -> list[str]:
    """Open regular files that are temporary: unlinked (TemporaryFile) or under `directory`.

    gunicorn's own heartbeat file (wgunicorn-*, unlinked too) is not one of them.
    """
    return [t for t in fds(pid) if t.startswith("/") and "/wgunicorn-" not in t and
            (t.endswith(" (deleted)") or (directory is not None and t.startswith(directory)))]


@dataclass
class Usage:
    """What a worker holds: compared before and after a test to find leaks."""

    fds: int
    threads: int
    temp_files: int
    rss_kib: int

    @classmethod
    def of(cls, pid: int, directory: str | None = None) -> Usage:
        return cls(len(fds(pid)), threads(pid), len(temp_files(pid, directory)), rss_kib(pid))


def settle(pid: int, base: Usage, timeout: float = 15.0, directory: str | None = None) -> Usage:
    """Wait until the worker is back to `base` fds, threads and temp files; return its usage."""
    def back() -> Usage | None:
        now = Usage.of(pid, directory)
        ok = (now.fds <= base.fds and now.threads <= base.threads
              and now.temp_files <= base.temp_files)
        return now if ok else None
    try:
        return wait_for(back, timeout, "worker back to its baseline")  # type: ignore[return-value]
    except AssertionError:
        now = Usage.of(pid, directory)
        raise AssertionError(f"leak: before {base}, now {now}; fds: {sorted(fds(pid))[:40]}") from None


# -- clients -----------------------------------------------------------------------------
def get(server: Gunicorn, path: str = "/", timeout: float = 10.0,
        extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection (Connection: close)."""
    with Conn.to(server, timeout) as conn:
        conn.send(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n".encode() + extra + b"\r\n")
        return conn.response()


def connect_many(server: Gunicorn, count: int, payload: bytes = b"") -> list[socket.socket]:
    """`count` connected sockets, each having sent `payload` (if any)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection((server.host, server.port), timeout=10)
        if payload:
            sock.sendall(payload)
        socks.append(sock)
    return socks


def closed_by_server(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets the server closed (EOF or reset) within `timeout`; the others stay open."""
    pending = {s.fileno(): s for s in socks}
    closed = []
    deadline = time.monotonic() + timeout
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    while pending and time.monotonic() < deadline:
        for fd, _event in poller.poll(100):
            sock = pending.get(fd)
            if sock is None:
                continue
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                del pending[fd]
                closed.append(sock)
    return closed


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


def abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): the client vanishes without a FIN."""
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def pieces(data: bytes) -> list[bytes]:
    sizes = (1, 7, 3, 64, 2, 512)
    out, at, i = [], 0, 0
    while at < len(data):
        out.append(data[at:at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    return out


def replay(server: Gunicorn, data: bytes, sender: str) -> tuple[list, tuple[str, int]]:
    """Send `data`, half-close, read responses until the server closes; (responses, our address)."""
    sock = server.connect(10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = sock.getsockname()[:2]
    with Conn(sock, 10) as conn:
        try:
            for part in ([data] if sender == "whole" else pieces(data)):
                conn.send(part)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused and closed before the rest was sent: read what came back
            pass
        responses = []
        while True:
            try:
                responses.append(conn.response())
            except ConnectionError:  # closed (EOF or reset) before another status line
                return responses, client
            except TimeoutError:
                raise AssertionError(f"connection hung after {responses}; worker log:\n"
                                     f"{server.log()[-3000:]}") from None
