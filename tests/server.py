"""Test harness that owns real gunicorn masters: start on a free loopback port, wait, stop by pid."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
LISTEN_RE = re.compile(r"Listening at: (\S+) \((\d+)\)")
BOOT_RE = re.compile(r"Booting worker with pid: (\d+)")
READY_MARK = "aiowsgi: serving"
# gunicorn 25.1+ opens a control socket in $HOME; tests turn it off where the flag exists.
NO_CONTROL_SOCKET = (["--no-control-socket"]
                     if "control_socket_disable" in __import__("gunicorn.config").config.Config().settings
                     else [])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


_RUN_DIR: list[str] = []


def run_dir() -> str:
    """One temporary directory per test process for every master's logs, removed at exit."""
    if not _RUN_DIR:
        _RUN_DIR.append(tempfile.mkdtemp(prefix="aiowsgi-test-"))
        atexit.register(shutil.rmtree, _RUN_DIR[0], True)
    return _RUN_DIR[0]


class Gunicorn:
    """One gunicorn master process with our worker class, logging to files the test can read."""

    def __init__(self, app: str = "apps:hello", *args: str, worker_class: str = "gunicorn_aiowsgi.Worker",
                 env: dict[str, str] | None = None, bind: str | None = "127.0.0.1:0",
                 workers: int = 1, config: str | None = None, cwd: str | None = None,
                 access_log: bool = True, wait_ready: bool = True, loglevel: str = "info"):
        # Logs stay readable after stop(); the whole run's directories go at exit.
        self.dir = Path(tempfile.mkdtemp(prefix="gunicorn-", dir=run_dir()))
        self.error_log = self.dir / "error.log"
        self.access_log = self.dir / "access.log"
        self.stdout = self.dir / "stdout.log"
        cmd = [sys.executable, "-m", "gunicorn", "-k", worker_class, "--workers", str(workers),
               "--error-logfile", str(self.error_log), "--log-level", loglevel,
               "--chdir", str(TESTS), "--graceful-timeout", "10", *NO_CONTROL_SOCKET]
        if bind:
            cmd += ["--bind", bind]
        if access_log:
            cmd += ["--access-logfile", str(self.access_log)]
        if config:
            cmd += ["--config", config]
        cmd += list(args) + [app]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), full_env.get("PYTHONPATH", "")])
        full_env.update(env or {})
        self.cmd = cmd
        self._out = open(self.stdout, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd or str(TESTS), env=full_env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.url = ""
        self.host = "127.0.0.1"
        self.port = 0
        self._wait_listening(workers if wait_ready else 0)

    # -- startup -------------------------------------------------------------------------
    def _wait_listening(self, workers: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            match = LISTEN_RE.search(log)
            if match and log.count(READY_MARK) >= workers:
                self.url = match.group(1).split(",")[0]
                if self.url.startswith("http://") and not self.url.startswith("http://unix:"):
                    hostport = self.url[len("http://"):]
                    host, _, port = hostport.rpartition(":")
                    self.host, self.port = host.strip("[]"), int(port)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{log}\n{_read(self.stdout)}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"gunicorn did not become ready:\n{self.log()}")

    # -- inspection ----------------------------------------------------------------------
    def log(self) -> str:
        return _read(self.error_log)

    def access(self) -> str:
        return _read(self.access_log)

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def worker_pid(self) -> int:
        pids = self.worker_pids()
        assert len(pids) == 1, pids
        return pids[0]

    def wait_log(self, text: str | re.Pattern, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until the error log holds `text` (a substring or regex) at least `count` times."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            found = len(text.findall(log)) if isinstance(text, re.Pattern) else log.count(text)
            if found >= count:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in log after {timeout}s:\n{log}")
            time.sleep(0.02)

    def wait_workers(self, count: int, timeout: float = 20.0, exclude: tuple[int, ...] = ()) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in self.worker_pids() if p not in exclude]
            if len(pids) == count:
                return pids
            time.sleep(0.05)
        raise AssertionError(f"expected {count} workers, have {self.worker_pids()}")

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    # -- shutdown ------------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._out.close()
        return self.proc.returncode

    def __enter__(self) -> "Gunicorn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Conn:
    """A raw client connection with its own read buffer, so keep-alive responses can be read in turn."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""

    @classmethod
    def to(cls, server: "Gunicorn", timeout: float = 10.0) -> "Conn":
        return cls(server.connect(timeout), timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            if not self._fill():
                line, self.buf = self.buf, b""
                return line
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read(self, n: int) -> bytes:
        while len(self.buf) < n and self._fill():
            pass
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_all(self) -> bytes:
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (EOF or reset) within timeout."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """Read one HTTP/1.x response: Content-Length, chunked or close-delimited."""
        status_line = self.readline()
        if not status_line:
            raise ConnectionError("closed before a response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = self.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = (headers[key] + "," if key in headers else "") + value.strip()
        if head or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.readline().split(b";")[0], 16)
                if size == 0:
                    while self.readline() not in (b"\r\n", b""):
                        pass
                    return status, headers, body
                body += self.read(size)
                self.readline()
        if "content-length" in headers:
            return status, headers, self.read(int(headers["content-length"]))
        return status, headers, self.read_all()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(server: "Gunicorn", data: bytes, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection and read one response."""
    with Conn.to(server) as conn:
        conn.send(data)
        return conn.response(head=head)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; return that, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def open_files(pid: int, directory: str) -> list[str]:
    """Files process `pid` holds open under `directory` (unnamed temporary files show only here)."""
    found = []
    base = Path(f"/proc/{pid}/fd")
    for name in os.listdir(base):
        try:
            target = os.readlink(base / name)
        except OSError:  # closed while we looked
            continue
        if target.startswith(directory.rstrip("/") + "/"):
            found.append(target)
    return found


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged process may still write in `directory`'s file system (statvfs)."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")
