"""deploy/gunicorn.socket + gunicorn.service: systemd accepts them, and the service's command
really runs under socket activation (done here without systemd: LISTEN_FDS, fd 3, LISTEN_PID,
NOTIFY_SOCKET, ExecReload, KillSignal)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys

import pytest
from deploy_helpers import BIN, DEPLOY, base_env, load_conf
from server import ROOT, Gunicorn, get, need_program, wait_until

SERVICE, SOCKET = DEPLOY / "gunicorn.service", DEPLOY / "gunicorn.socket"
PLACEHOLDER = "/srv/app"  # where the units expect the checkout


def unit(path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            key, _, value = line.partition("=")
            sections[current].append((key.strip(), value.strip()))
    return sections


def value(sections, section: str, key: str) -> str:
    values = [v for k, v in sections[section] if k == key]
    assert len(values) == 1, f"{section}.{key}: {values}"
    return values[0]


def real_paths(text: str) -> str:
    return text.replace(f"{PLACEHOLDER}/.venv/bin/gunicorn", str(BIN / "gunicorn")).replace(
        PLACEHOLDER, str(ROOT)
    )


def test_systemd_analyze_verify(tmp_path):
    analyze = need_program("systemd-analyze", "systemd")
    for src in (SERVICE, SOCKET):
        (tmp_path / src.name).write_text(real_paths(src.read_text()))
    out = subprocess.run(
        [analyze, "verify", str(tmp_path / SOCKET.name), str(tmp_path / SERVICE.name)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "gunicorn" not in out.stderr, out.stderr  # no warning about our units


def test_units_agree_with_gunicorn_conf_and_nginx():
    svc, sock = unit(SERVICE), unit(SOCKET)
    assert value(svc, "Unit", "Requires") == SOCKET.name
    assert value(svc, "Service", "Type") == "notify"  # gunicorn's master sends READY=1
    assert value(svc, "Service", "KillMode") == "mixed"
    assert value(svc, "Service", "ExecReload") == "/bin/kill -s HUP $MAINPID"
    assert int(value(svc, "Service", "TimeoutStopSec")) > load_conf()["graceful_timeout"]
    path = value(sock, "Socket", "ListenStream")
    assert f"server unix:{path} " in (DEPLOY / "nginx.conf").read_text(), "nginx proxies elsewhere"
    assert f"{PLACEHOLDER}/deploy/gunicorn.conf.py" in value(svc, "Service", "ExecStart")


# What systemd does between fork and exec: the sockets from fd 3 on, LISTEN_FDS their count,
# LISTEN_PID the pid of the process that will read them (gunicorn checks it is its own).
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_FDS'] = '1'; "
    "os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])"
)


@pytest.mark.timeout(60)
def test_service_command_under_socket_activation(tmp_path):
    svc = unit(SERVICE)
    argv = shlex.split(value(svc, "Service", "ExecStart"))
    assert argv[0] == f"{PLACEHOLDER}/.venv/bin/gunicorn"
    args = [real_paths(a) for a in argv[1:]]
    env = dict(v.split("=", 1) for k, v in svc["Service"] if k == "Environment")
    assert env["XDG_RUNTIME_DIR"] == "/run/" + value(svc, "Service", "RuntimeDirectory")
    env["XDG_RUNTIME_DIR"] = str(tmp_path)  # systemd would create /run/gunicorn for the User=
    workers = int(env["WEB_CONCURRENCY"])

    # gunicorn.socket's ListenStream, made here instead of by systemd.
    sock_path = str(tmp_path / "gunicorn.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(128)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    # If activation failed gunicorn would bind this instead (never the config's 0.0.0.0:8000).
    fallback = tmp_path / "fallback.sock"
    try:
        master = Gunicorn.launch(
            [
                sys.executable,
                "-c",
                ACTIVATE,
                str(listener.fileno()),
                "-m",
                "gunicorn",
                *args,
                "--bind",
                f"unix:{fallback}",
                "--error-logfile",
                "{error_log}",
                "--access-logfile",
                "{access_log}",
            ],
            env=base_env(**env, NOTIFY_SOCKET=str(tmp_path / "notify")),
            workers=workers,
            cwd=ROOT,
            pass_fds=(listener.fileno(),),
        )
    finally:
        listener.close()  # gunicorn holds it now, as it would hold systemd's
    try:
        assert notify.recv(4096).startswith(b"READY=1"), "Type=notify needs READY=1"
        assert re.search(rf"Listening at: unix:{re.escape(sock_path)} ", master.log()), master.log()
        assert not fallback.exists()
        assert len(master.worker_pids()) == workers
        assert get(sock_path, "/healthz")[::2] == (200, b"ok\n")

        # systemctl reload: ExecReload with $MAINPID filled in -> fresh workers, still serving.
        old = tuple(master.worker_pids())
        reload = shlex.split(
            value(svc, "Service", "ExecReload").replace("$MAINPID", str(master.pid))
        )
        subprocess.run(reload, check=True, timeout=10)
        master.wait_workers(workers, exclude=old)
        wait_until(lambda: not set(old) & set(master.worker_pids()), 15, "the old workers to exit")
        assert get(sock_path, "/")[::2] == (200, b"Hello from gunicorn-aiowsgi!\n")

        # systemctl stop: KillSignal to the main process, done well within TimeoutStopSec.
        master.signal(getattr(signal, value(svc, "Service", "KillSignal")))
        assert master.wait(int(value(svc, "Service", "TimeoutStopSec"))) == 0
        assert os.path.exists(sock_path), "the socket is systemd's: gunicorn must not unlink it"
    finally:
        master.stop()
        notify.close()
