"""The tests' one helper module: real gunicorn masters (start on a free loopback port, wait, stop by
pid), raw clients, requests, waiting, and what a process holds (read through sysinfo.py)."""

from __future__ import annotations

import atexit
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sysinfo
from sysinfo import hwm_kib, rss_kib  # noqa: F401  (older `from server import rss_kib`)

T = TypeVar("T")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
LISTEN_RE = re.compile(r"Listening at: (\S+) \((\d+)\)")
BOOT_RE = re.compile(r"Booting worker with pid: (\d+)")
READY_MARK = "aiowsgi: serving"
# gunicorn 25.1+ opens a control socket in $HOME; tests turn it off where the flag exists.
NO_CONTROL_SOCKET = (["--no-control-socket"]
                     if "control_socket_disable" in __import__("gunicorn.config").config.Config().settings
                     else [])


# The gunicorn that comparisons are held to, whatever gunicorn is installed: the corpus
# (robustness/corpus.py) and the gthread masters the contract tests compare with
# (Gunicorn(reference=True): run from its sdist, pure Python, beside the installed one).
REFERENCE_GUNICORN = "27.0.1"


def reference_tree() -> Path:
    """The unpacked sdist of gunicorn REFERENCE_GUNICORN (fetched once, then cached)."""
    from robustness.sdists import sdist

    return sdist("gunicorn", REFERENCE_GUNICORN)


def reference_args() -> list[str]:
    """Flags that give the reference gunicorn the behaviour the installed gunicorn has where it
    lacks a setting (gunicorn_aiowsgi.settings.ABSENT: what the worker does there too)."""
    from gunicorn.config import Config

    from gunicorn_aiowsgi.settings import ABSENT

    installed, args = Config().settings, []
    for name, value in ABSENT.items():
        if name in installed or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, ",".join(value) if isinstance(value, list) else value]
    return args


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
                 access_log: bool = True, wait_ready: bool = True, loglevel: str = "info",
                 python: str = sys.executable, reference: bool = False,
                 nofile: tuple[int, int] | None = None):
        # Logs stay readable after stop(); the whole run's directories go at exit.
        self.dir = Path(tempfile.mkdtemp(prefix="gunicorn-", dir=run_dir()))
        self.error_log = self.dir / "error.log"
        self.access_log = self.dir / "access.log"
        self.stdout = self.dir / "stdout.log"
        cmd = [python, "-m", "gunicorn", "-k", worker_class, "--workers", str(workers),
               "--error-logfile", str(self.error_log), "--log-level", loglevel,
               "--chdir", str(TESTS), "--graceful-timeout", "10", *NO_CONTROL_SOCKET]
        if bind:
            cmd += ["--bind", bind]
        if access_log:
            cmd += ["--access-logfile", str(self.access_log)]
        if config:
            cmd += ["--config", config]
        own = len(cmd)  # where the test's own flags start
        cmd += list(args) + [app]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), full_env.get("PYTHONPATH", "")])
        full_env.update(env or {})
        if reference:  # gunicorn REFERENCE_GUNICORN's master, not the installed gunicorn's
            full_env["PYTHONPATH"] = os.pathsep.join([str(reference_tree()), full_env["PYTHONPATH"]])
            cmd[own:own] = ["--no-control-socket", *reference_args()]  # the test's flags win
        self._start(cmd, full_env, cwd or str(TESTS), nofile=nofile)
        self._wait_listening(workers if wait_ready else 0)

    @classmethod
    def launch(cls, argv: list[str], *, env: dict[str, str], workers: int, cwd: str | Path = ROOT,
               pass_fds: tuple[int, ...] = (), timeout: float = 30.0) -> "Gunicorn":
        """Start any command that ends up running a gunicorn master (honcho, a wrapper that execs
        gunicorn...), watched like one started by Gunicorn(): `argv` and `env` values may hold
        {error_log} and {access_log}, the files it reads. .pid is the process started."""
        self = cls.__new__(cls)
        self.dir = Path(tempfile.mkdtemp(prefix="launch-", dir=run_dir()))
        self.error_log, self.access_log = self.dir / "error.log", self.dir / "access.log"
        self.stdout = self.dir / "stdout.log"
        paths = {"error_log": self.error_log, "access_log": self.access_log}
        self._start([a.format(**paths) for a in argv], {k: v.format(**paths) for k, v in env.items()},
                    str(cwd), pass_fds)
        self._wait_listening(workers, timeout)
        return self

    def _start(self, cmd: list[str], env: dict[str, str], cwd: str, pass_fds: tuple[int, ...] = (),
               nofile: tuple[int, int] | None = None) -> None:
        """`nofile`: the master's RLIMIT_NOFILE (soft, hard), set in the child before exec."""
        self.cmd = cmd
        self._out = open(self.stdout, "wb")  # noqa: SIM115 - stop() closes it
        limit = None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile))
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True, pass_fds=pass_fds, preexec_fn=limit)
        self.pid = self.proc.pid
        self.url = ""
        self.host = "127.0.0.1"
        self.port = 0

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

    def master_pid(self) -> int:
        """The gunicorn master's pid as it logged it (not .pid when a wrapper started it)."""
        match = LISTEN_RE.search(self.log())
        assert match, self.log()
        return int(match.group(2))

    def worker_pids(self) -> list[int]:
        return sysinfo.children(self.pid)

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

    def answered(self) -> bool:
        """Something from the server (an answer, or its close) is here already: no waiting."""
        return bool(self.buf) or bool(select.select([self.sock], [], [], 0)[0])

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




# -- requests ----------------------------------------------------------------------------
def request(server: "Gunicorn", data: bytes, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection and read one response."""
    with Conn.to(server) as conn:
        conn.send(data)
        return conn.response(head=head)


def get(target: Any, path: str = "/", *, method: str = "GET", version: str = "1.1",
        headers: dict[str, str] | None = None, body: bytes | None = None, close: bool = True,
        timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body).

    `target` is a Gunicorn (anything with .host and .port), a (host, port) pair or the path of a
    unix socket; `headers` are
    sent in order after Host (which they may replace). With `close`
    the request says Connection: close; without it the connection is kept alive by default (the
    response is still read by its own framing). A `body` is sent with its Content-Length.
    HEAD reads no body.
    """
    headers = headers or {}
    lines = [f"{method} {path} HTTP/{version}"]
    if not any(name.lower() == "host" for name in headers):
        lines.append("Host: test")  # the same in every run, so two servers' records compare
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    if isinstance(target, (str, Path)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(target))
    else:
        address = (target.host, target.port) if hasattr(target, "port") else target
        sock = socket.create_connection(address, timeout=timeout)
    with Conn(sock, timeout) as conn:
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return conn.response(head=method == "HEAD")


def start_request(server: "Gunicorn", path: str, timeout: float = 30.0) -> Conn:
    """Send a GET on a new kept-alive connection and return the Conn, not answered yet."""
    conn = Conn.to(server, timeout)
    conn.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return conn


def connect_many(server: "Gunicorn", count: int, payload: bytes = b"") -> list[socket.socket]:
    """`count` connected sockets, each having sent `payload` (if any)."""
    socks = []
    for _ in range(count):
        sock = server.connect(10)
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
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Statsd:
    """A statsd server on a loopback UDP port (pass `.address` to --statsd-host): every
    `name:value|type` line sent there, parsed, in the order they arrived."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = "%s:%d" % self.sock.getsockname()
        self.lines: list[tuple[str, float, str]] = []

    def receive(self) -> list[tuple[str, float, str]]:
        """Take in what has arrived (without waiting); every line so far."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.lines
            for line in data.decode().splitlines():
                name, _, rest = line.partition(":")
                value, kind = rest.split("|")[:2]  # a rate (|@1.0) or tags (|#...) may follow
                self.lines.append((name, float(value), kind))

    def last(self, name: str) -> float | None:
        """The latest value of gauge `name`, or None before the first."""
        values = [value for n, value, kind in self.receive() if n == name and kind == "g"]
        return values[-1] if values else None

    def total(self, name: str) -> float:
        """The sum of counter `name`'s increments so far."""
        return sum(value for n, value, kind in self.receive() if n == name and kind == "c")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Statsd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- waiting -----------------------------------------------------------------------------
def under_ci() -> bool:
    """CI runs the suite with CI set (CI=true): whatever a test needs is installed there."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def skip_unless_ci(message: str) -> None:
    """What a test needs is missing: skip on a developer's machine, fail under CI, where a skip
    counted as a pass would hide a red."""
    import pytest

    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


def need_program(name: str, package: str) -> str:
    """The path of program `name`. Missing, the test skips on a developer's machine but fails
    under CI, where .ci/run installs `package`."""
    path = shutil.which(name)
    if path is None:
        skip_unless_ci(f"{name} is not installed (Debian package {package}; .ci/run installs it)")
    assert path is not None
    return path


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.02) -> T:
    """Poll `predicate` until it returns something truthy; return that, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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


def read_mark(path: Path, timeout: float = 10.0) -> str:
    """The text of a mark file an app writes, once a whole line is in (the app's open(..., "a")
    creates the file before its write lands)."""
    def whole() -> str:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return ""
        return text if text.endswith("\n") else ""

    return wait_until(whole, timeout, f"the mark {path}")


def open_gate(mark: Path) -> None:
    """Let the /gate request marking `mark` (apps.gate) finish."""
    mark.with_name(mark.name + ".open").touch()


# -- a process, seen from /proc ----------------------------------------------------------
def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie nobody reaped yet)."""
    try:
        return sysinfo.status(pid).get("State", "").startswith("Z")
    except ProcessLookupError:
        return True


def signal_mask(pid: int, field: str) -> set[int]:
    """Signal numbers in /proc/<pid>/status SigCgt (caught), SigIgn (ignored) or SigBlk."""
    mask = int(sysinfo.status(pid)[field], 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def socket_count(pid: int) -> int:
    return sum(1 for target in sysinfo.fd_targets(pid) if target.startswith("socket:"))


def temp_files(pid: int, directory: str | None = None) -> list[str]:
    """Open regular files that are temporary: unlinked (TemporaryFile) or under `directory`.

    gunicorn's own heartbeat file (wgunicorn-*, unlinked too) is not one of them.
    """
    return [t for t in sysinfo.fd_targets(pid) if t.startswith("/") and "/wgunicorn-" not in t and
            (t.endswith(" (deleted)") or (directory is not None and t.startswith(directory)))]


def open_file_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of `pid`, from /proc/<pid>/limits."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open file limit for {pid}")


def wait_heartbeats(pid: int, count: int, timeout: float = 30.0) -> None:
    """Wait until worker `pid` has notified the master at least `count` times: each notify()
    changes its heartbeat file's ctime (gunicorn sets the file's times; older releases chmod
    it). Beats closer together than this looks may count as one: at least, never more."""
    base = f"/proc/{pid}/fd"
    path = next(f"{base}/{fd}" for fd in os.listdir(base)
                if "/wgunicorn-" in _readlink(f"{base}/{fd}"))
    last, seen = os.stat(path).st_ctime_ns, 0

    def beat() -> bool:
        nonlocal last, seen
        now = os.stat(path).st_ctime_ns
        if now != last:
            last, seen = now, seen + 1
        return seen >= count

    wait_until(beat, timeout, f"{count} heartbeats of worker {pid}", interval=0.01)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


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


def unread_bytes_on(port: int) -> int:
    """Bytes clients sent to 127.0.0.1:port that the server has not read yet: the Recv-Q of
    every established connection whose local port is `port`, from `ss -tn`."""
    out = subprocess.run(["ss", "-tnH", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.strip())


@dataclass
class Usage:
    """What a worker holds: compared before and after a test to find leaks."""

    fds: int
    threads: int
    temp_files: int
    rss_kib: int

    @classmethod
    def of(cls, pid: int, directory: str | None = None) -> "Usage":
        return cls(sysinfo.open_fds(pid), sysinfo.thread_count(pid), len(temp_files(pid, directory)),
                   sysinfo.rss_kib(pid))


def settle(pid: int, base: Usage, timeout: float = 15.0, directory: str | None = None) -> Usage:
    """Wait until the worker is back to `base` fds, threads and temp files; return its usage."""
    def back() -> Usage | None:
        now = Usage.of(pid, directory)
        ok = (now.fds <= base.fds and now.threads <= base.threads
              and now.temp_files <= base.temp_files)
        return now if ok else None
    try:
        return wait_until(back, timeout, "worker back to its baseline")
    except AssertionError:
        now = Usage.of(pid, directory)
        fds = sorted(sysinfo.fd_targets(pid))[:40]
        raise AssertionError(f"leak: before {base}, now {now}; fds: {fds}") from None


def needs(*names: str) -> Any:
    """Skip where the installed gunicorn lacks a setting the test passes (feature detection);
    where the worker takes that release's behaviour instead, tests/unit/test_compat.py tests it."""
    from gunicorn.config import Config

    settings = Config().settings
    missing = [name for name in names if name not in settings]
    if "proxy_modes" in names:  # before 24.1 proxy_protocol is a boolean: no v1/v2/auto
        missing = [n for n in missing if n != "proxy_modes"]
        if not proxy_modes():
            missing.append("proxy_protocol modes")
    if "allow_networks" in names:  # before 24.1 forwarded_allow_ips takes addresses only
        missing = [n for n in missing if n != "allow_networks"]
        try:
            Config().set("forwarded_allow_ips", "127.0.0.0/8")
        except ValueError:
            missing.append("networks in forwarded_allow_ips")
    import pytest

    return pytest.mark.skipif(bool(missing), reason=f"this gunicorn has no {', '.join(missing)}")


def has_setting(name: str) -> bool:
    """Whether the installed gunicorn has this setting (gunicorn 21 has no header_map, say)."""
    from gunicorn.config import Config

    return name in Config().settings


def proxy_modes() -> bool:
    """gunicorn 24.1+ takes --proxy-protocol off|v1|v2|auto; before, it is a flag (a boolean)."""
    from gunicorn.config import Config

    return Config().settings["proxy_protocol"].default is not False
