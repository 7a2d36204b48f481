"""deploy/nginx.conf in front of two gunicorn masters on unix sockets: streams pass unbuffered,
and a HUP then a TERM of one master under load cost no request (nginx retries the other); in
front of one master that answers with its environ: what nginx tells the app of the client."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, assert_streamed, nginx, read_sse
from server import Conn, Gunicorn, get, wait_until
from sysinfo import free_port

NGINX_CONF = DEPLOY / "nginx.conf"


def rewrite(text: str, pattern: str, repl: str) -> str:
    new, count = re.subn(pattern, repl, text, flags=re.MULTILINE)
    assert count == 1, f"deploy/nginx.conf no longer has exactly one match for {pattern!r}"
    return new


def conf_for_test(workdir: Path, port: int, sockets: list[Path]) -> str:
    """deploy/nginx.conf with only the machine-specific parts changed: paths into workdir,
    listen on a loopback port, and the upstream's one server line repeated per socket."""
    text = NGINX_CONF.read_text()
    text = rewrite(
        text, r"^user \S+;", "user root;"
    )  # nginx runs as root here; workers must reach workdir
    text = rewrite(text, r"^pid \S+;", f"pid {workdir}/nginx.pid;")
    text = rewrite(text, r"^error_log \S+", f"error_log {workdir}/error.log")
    text = rewrite(text, r"^(\s*)access_log \S+;", rf"\1access_log {workdir}/access.log;")
    text = rewrite(
        text, r"^(\s*)listen 80 default_server;", rf"\1listen 127.0.0.1:{port} default_server;"
    )
    text = rewrite(text, r"^\s*listen \[::\]:80 default_server;\n", "")
    line = re.search(r"^(\s*)server unix:/run/gunicorn\.sock( [^;]*)?;$", text, re.MULTILINE)
    assert line, (
        "deploy/nginx.conf's upstream should have one `server unix:/run/gunicorn.sock ...;`"
    )
    servers = "\n".join(f"{line.group(1)}server unix:{s}{line.group(2) or ''};" for s in sockets)
    text = text[: line.start()] + servers + text[line.end() :]
    temp = "".join(
        f"\n    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return rewrite(text, r"^http \{", "http {" + temp)


def test_shipped_file_passes_nginx_t():
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["nginx", "-t", "-p", tmp, "-c", str(NGINX_CONF)],
            check=False,
            capture_output=True,
            text=True,
        )
    assert out.returncode == 0, out.stderr
    text = NGINX_CONF.read_text()
    for needed in (
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "keepalive 32;",
        "proxy_buffering off;",
        "proxy_next_upstream error timeout http_502;",
        "max_fails=",
        "X-Forwarded-Proto $fwd_proto",
        "X-Forwarded-For",
    ):
        assert needed in text, needed


@pytest.fixture
def stack():
    """nginx on a free loopback port, proxying to masters "a" (2 workers) and "b" (1 worker)."""
    with tempfile.TemporaryDirectory(prefix="aiowsgi-nginx-") as tmp:
        workdir = Path(tmp)
        sockets = [workdir / "a.sock", workdir / "b.sock"]
        masters: list[Gunicorn] = []
        try:
            for sock, workers in zip(sockets, (2, 1)):
                masters.append(
                    Gunicorn(
                        "example_app:app",
                        "--chdir",
                        str(DEPLOY),
                        "--threads",
                        "4",
                        bind=f"unix:{sock}",
                        workers=workers,
                    )
                )
            port = free_port()
            with nginx(conf_for_test(workdir, port, sockets), workdir, port):
                yield port, masters, workdir
        finally:
            for m in masters:
                m.stop()


def test_events_stream_through_nginx_as_they_are_yielded(stack):
    port, _, _ = stack
    assert get(("127.0.0.1", port), "/")[:3:2] == (200, b"Hello from gunicorn-aiowsgi!\n")
    status, headers, events = read_sse("127.0.0.1", port)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert [e["id"] for _, e in events] == [str(n) for n in range(1, 11)]
    assert_streamed(events)  # nginx did not buffer the stream


@pytest.mark.timeout(90)
def test_hup_then_term_of_one_master_under_load_loses_nothing(stack):
    port, (a, b), workdir = stack
    stop = threading.Event()
    statuses: list[int] = []
    failures: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        for i in range(3000):  # bounded, closed loop: one request at a time per client
            if stop.is_set():
                break
            try:
                conn.request("GET", "/healthz" if (i + n) % 2 else "/")
                resp = conn.getresponse()
                resp.read()
                statuses.append(resp.status)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.close()

    def more_requests(count: int, what: str) -> None:
        target = len(statuses) + count
        wait_until(lambda: len(statuses) >= target or bool(failures), 20, what)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in clients:
        t.start()
    try:
        more_requests(100, "load to start")
        a_served = a.access().count("\n")
        assert a_served > 0 and b.access().count("\n") > 0, "nginx should spread load over both"

        # HUP: master "a" boots new workers, then retires the old ones gracefully.
        old = tuple(a.worker_pids())
        a.signal(signal.SIGHUP)
        a.wait_workers(2, exclude=old)
        wait_until(lambda: not set(old) & set(a.worker_pids()), 15, "a's old workers to exit")
        more_requests(200, "load after the reload")
        wait_until(
            lambda: a.access().count("\n") > a_served + 20,
            10,
            "a's new workers to serve through nginx",
        )

        # TERM: master "a" stops gracefully and its socket goes away; nginx must retry on "b".
        a.signal(signal.SIGTERM)
        a.wait(30)
        b_served = b.access().count("\n")
        more_requests(200, "load after a is gone")
        assert b.access().count("\n") >= b_served + 150
    finally:
        stop.set()
        for t in clients:
            t.join(30)

    assert failures == []
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(statuses) >= 500
    logged = re.findall(r'" (\d{3}) ', (workdir / "access.log").read_text())
    assert logged and set(logged) == {"200"}, "nginx logged a non-200 (a 502?)"


@pytest.fixture
def echo():
    """nginx on a free loopback port in front of one master whose app answers with its environ
    as JSON (tests/apps.py environ_json)."""
    with tempfile.TemporaryDirectory(prefix="aiowsgi-nginx-") as tmp:
        workdir = Path(tmp)
        sock = workdir / "echo.sock"
        master = Gunicorn("apps:environ_json", bind=f"unix:{sock}")
        try:
            port = free_port()
            with nginx(conf_for_test(workdir, port, [sock]), workdir, port):
                yield port
        finally:
            master.stop()


def raw(port: int, request: bytes) -> tuple[int, dict, bytes]:
    """Send `request` as it is to nginx on a fresh connection; read one response."""
    with Conn(socket.create_connection(("127.0.0.1", port), timeout=10)) as conn:
        conn.send(request)
        return conn.response()


def test_http10_request_without_host_is_served(echo):
    """An HTTP/1.0 request needs no Host (HAProxy's default `option httpchk` sends none), but
    nginx talks HTTP/1.1 upstream, and the worker refuses an HTTP/1.1 request without one."""
    status, _, body = raw(echo, b"GET / HTTP/1.0\r\n\r\n")
    assert status == 200, body
    status, _, body = raw(echo, b"GET http://app.example/ HTTP/1.0\r\n\r\n")
    assert status == 200, body
    assert json.loads(body)["HTTP_HOST"] == "app.example"  # the host the request named
    # A Host the client sends reaches the app as sent, port included.
    status, _, body = raw(
        echo, b"GET / HTTP/1.1\r\nHost: app.example:8443\r\nConnection: close\r\n\r\n"
    )
    assert status == 200 and json.loads(body)["HTTP_HOST"] == "app.example:8443"


def test_the_balancers_x_forwarded_proto_reaches_the_app(echo):
    """A balancer in front of nginx that terminates TLS says so in X-Forwarded-Proto: nginx
    passes it on (gunicorn trusts nginx on the unix socket), instead of its own `http`."""
    status, _, body = get(("127.0.0.1", echo), "/", headers={"X-Forwarded-Proto": "https"})
    assert status == 200 and json.loads(body)["wsgi.url_scheme"] == "https"
    status, _, body = get(("127.0.0.1", echo), "/")  # no balancer: nginx's own scheme
    assert status == 200 and json.loads(body)["wsgi.url_scheme"] == "http"
