"""Polling helpers for the contract tests: processes, marks files, sockets. No sleeps as sync."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from server import wait_until  # noqa: F401  (re-exported: the contract tests import it from here)

HERE = Path(__file__).resolve().parent
APP = "contract.contract_apps:app"
HOOKS = str(HERE / "hooks_conf.py")


def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie nobody reaped yet)."""
    state = proc_status(pid).get("State", "")
    return not state or state.startswith("Z")


def signal_mask(pid: int, field: str) -> set[int]:
    """Signal numbers in /proc/<pid>/status SigCgt (caught), SigIgn (ignored) or SigBlk."""
    mask = int(proc_status(pid)[field], 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def marks(path: Path, hook: str | None = None) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    found = [json.loads(line) for line in lines if line]
    return [m for m in found if hook is None or m["hook"] == hook]


def listen_queue(port: int) -> tuple[int, int]:
    """(Recv-Q, Send-Q) of the listening socket on 127.0.0.1:port, from `ss -ltn`.

    For a listener Recv-Q is the accept queue's current length, Send-Q its size (backlog).
    """
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields[3].endswith(f":{port}"):
            return int(fields[1]), int(fields[2])
    raise AssertionError(f"no listener on port {port}: {out!r}")


def worker_fds(pid: int) -> list[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    links = []
    for fd in fd_dir.iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            pass
    return links


def get(server: Any, path: str, headers: str = "", timeout: float = 10.0
        ) -> tuple[int, dict, bytes]:
    """One GET on a fresh connection (Connection: close), via the harness's raw reader."""
    from server import Conn

    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    with Conn(sock, timeout) as conn:
        conn.send(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n"
                  .encode())
        return conn.response()


def serve(*args: str, marks: Path | None = None, app: str = APP, env: dict | None = None,
          **kwargs: Any) -> Any:
    """A Gunicorn master serving the contract app; with `marks`, the hooks config writes there."""
    from server import Gunicorn

    env = dict(env or {})
    if marks is not None:
        env["CONTRACT_MARKS"] = str(marks)
        kwargs.setdefault("config", HOOKS)
    return Gunicorn(app, *args, env=env, **kwargs)


def start_request(server: Any, path: str, timeout: float = 30.0) -> Any:
    """Send a GET on a new kept-alive connection and return the harness Conn, unanswered yet."""
    from server import Conn

    conn = Conn(socket.create_connection((server.host, server.port), timeout=timeout), timeout)
    conn.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return conn


def in_app(marks_path: Path, path: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
    """Wait until pre_request marked `count` requests for `path`: they are in the app now."""
    def found() -> list[dict] | None:
        hits = [m for m in marks(marks_path, "pre_request") if m["path"] == path]
        return hits if len(hits) >= count else None

    return wait_until(found, timeout, f"{count} request(s) for {path} in the app")


def clean_exit(server: Any, pid: int) -> bool:
    """The master saw worker `pid` exit with status 0 (no signal, no error code)."""
    log = server.log()
    return (f"Worker (pid:{pid}) was sent" not in log
            and f"Worker (pid:{pid}) exited with code" not in log)
