"""A bounded closed-loop HTTP/1.1 load from a few client threads, recording every request's fate.

Each client keeps one connection alive and sends its next request as soon as the previous one
is answered. A request the server closed (or reset) before sending any byte of an answer is
retried once on a new connection, as RFC 9112 section 9.3.1 allows for idempotent requests;
anything else that is not a complete, correct answer is a lost request.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import dataclass

OK = "ok"                  # a complete 200 carrying this request's own number
REFUSED = "refused"        # connect() refused: the server is gone (after TERM only)
UNANSWERED = "unanswered"  # closed before any answer, twice
BROKEN = "broken"          # a partial, wrong or late answer


class NoAnswer(Exception):
    """The connection ended before the first byte of a response."""


@dataclass
class Result:
    n: int                 # the request's number (echoed back by the app)
    sent: float            # time.monotonic() once it was first sent in full (inf: never)
    outcome: str
    attempts: int
    pid: int = 0           # the worker that answered
    closed: bool = False   # the answer said Connection: close
    detail: str = ""


class LoadClient:
    """`clients` threads against host:port, at most `limit` requests each, until stop()."""

    def __init__(self, host: str, port: int, clients: int = 4, query: str = "",
                 limit: int = 20000, timeout: float = 15.0) -> None:
        self.address = (host, port)
        self.clients = clients
        self.query = query
        self.limit = limit
        self.timeout = timeout
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    # -- control ---------------------------------------------------------------------------
    def __enter__(self) -> LoadClient:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Result]:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a load client hung"
        return self.results

    def count(self, outcome: str | None = OK) -> int:
        with self._lock:
            return sum(1 for r in self.results if outcome is None or r.outcome == outcome)

    def wait_for(self, more: int, timeout: float = 30.0) -> None:
        """Block until `more` further requests have been answered OK."""
        target = self.count() + more
        deadline = time.monotonic() + timeout
        while self.count() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled: {self.summary()}")
            if not any(t.is_alive() for t in self._threads):
                raise AssertionError(f"all load clients stopped: {self.summary()}")
            time.sleep(0.02)

    def summary(self) -> dict[str, int]:
        with self._lock:
            outcomes = [r.outcome for r in self.results]
        return {o: outcomes.count(o) for o in (OK, REFUSED, UNANSWERED, BROKEN)}

    # -- one client ------------------------------------------------------------------------
    def _client(self) -> None:
        conn: socket.socket | None = None
        for _ in range(self.limit):
            if self._stop.is_set():
                break
            with self._lock:
                n = next(self._numbers)
            result, conn = self._request(n, conn)
            with self._lock:
                self.results.append(result)
            if result.outcome == REFUSED:
                break  # the server is gone; nothing more to send
        if conn is not None:
            conn.close()

    def _request(self, n: int, conn: socket.socket | None) -> tuple[Result, socket.socket | None]:
        data = f"GET /echo?n={n}{self.query} HTTP/1.1\r\nHost: load\r\n\r\n".encode()
        sent = float("inf")
        for attempt in (1, 2):
            if conn is None:
                try:
                    conn = socket.create_connection(self.address, timeout=self.timeout)
                except ConnectionRefusedError:
                    return Result(n, sent, REFUSED, attempt), None
                except OSError as exc:
                    return Result(n, sent, BROKEN, attempt, detail=f"connect: {exc!r}"), None
            try:
                send(conn, data)
                sent = min(sent, time.monotonic())
                status, headers, body = read_response(conn)
            except NoAnswer:
                conn.close()
                conn = None
                continue  # RFC 9112 section 9.3.1: retry an idempotent request once
            except (OSError, ValueError) as exc:
                conn.close()
                return Result(n, sent, BROKEN, attempt, detail=repr(exc)), None
            closed = headers.get("connection", "").lower() == "close"
            if closed:
                conn.close()
            result = _judge(n, sent, attempt, status, body, closed)
            return result, (None if closed or result.outcome != OK else conn)
        return Result(n, sent, UNANSWERED, 2), None


def _judge(n: int, sent: float, attempt: int, status: int, body: bytes, closed: bool) -> Result:
    pid, _, echoed = body.decode("latin-1").partition(" ")
    if status != 200 or echoed != str(n) or not pid.isdigit():
        return Result(n, sent, BROKEN, attempt, detail=f"{status} {body[:80]!r}")
    return Result(n, sent, OK, attempt, int(pid), closed)


def send(conn: socket.socket, data: bytes) -> None:
    try:
        conn.sendall(data)
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise NoAnswer() from exc  # closed by the server before it could answer


def read_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length framed response; NoAnswer when not a byte of it arrived."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = conn.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            if not buf:
                raise NoAnswer() from None
            raise
        if not chunk:
            if not buf:
                raise NoAnswer()
            raise ValueError(f"connection closed inside a response head: {buf[:80]!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError(f"connection closed inside a body ({len(body)} of {length})")
        body += chunk
    return status, headers, body[:length]
