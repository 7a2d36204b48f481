"""deploy/Procfile, run the way Heroku runs it: with honcho, PORT and WEB_CONCURRENCY set, and
stopped with TERM to every process; a request in flight at that moment still completes."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading

import pytest
from deploy_helpers import CONF, DEPLOY, base_env, read_sse
from gunicorn.config import Config
from server import NO_CONTROL_SOCKET, ROOT, Gunicorn, get, gone, wait_until
from sysinfo import free_port


def procfile() -> dict[str, str]:
    entries = {}
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def print_config(argv: list[str], **env: str) -> dict[str, str]:
    """What gunicorn makes of the command under `env`, run from the repository root as Heroku
    runs a Procfile from the app's root (--print-config listens on nothing)."""
    out = subprocess.run(
        [sys.executable, "-m", *argv, "--print-config"],
        cwd=ROOT,
        env=base_env(**env),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return dict(
        re.split(r"\s+=\s+", line, maxsplit=1)
        for line in out.stdout.splitlines()
        if re.match(r"^\w+\s+=", line)
    )


def test_procfile_runs_the_production_config():
    entries = procfile()
    assert list(entries) == ["web"]
    argv = shlex.split(entries["web"])
    assert argv[0] == "gunicorn"
    assert not {"-b", "--bind", "-w", "--workers"} & set(argv), "PORT / WEB_CONCURRENCY must decide"
    # -c is read relative to where the command starts (the repository root), --chdir after it.
    args = Config().parser().parse_args(argv[1:])
    assert (ROOT / args.config).samefile(CONF)
    assert (ROOT / args.chdir).samefile(DEPLOY) and args.args == ["example_app:app"]

    settings = print_config(argv, PORT="5123", WEB_CONCURRENCY="3")
    assert settings["bind"] == "['0.0.0.0:5123']"
    assert settings["workers"] == "3"
    assert settings["worker_class"] == "gunicorn_aiowsgi.Worker"
    assert int(settings["threads"]) > 1, "one thread: one request at a time, streams included"
    # Heroku sends SIGKILL 30 s after SIGTERM: in-flight requests must finish before it.
    assert float(settings["graceful_timeout"]) < 30
    # Heroku's router (Router 2.0) closes idle keep-alive connections after 90 s: gunicorn
    # must keep them longer, so that the router always closes first.
    assert float(settings["keepalive"]) > 90
    assert settings["accesslog"] == "-"
    # Heroku's router is not loopback: deploy/README.md says to set FORWARDED_ALLOW_IPS='*'.
    assert settings["forwarded_allow_ips"] == "['127.0.0.1', '::1']"
    trusted = print_config(argv, PORT="5123", FORWARDED_ALLOW_IPS="*")
    assert trusted["forwarded_allow_ips"] == "['*']"


@pytest.mark.timeout(60)
def test_honcho_runs_it_and_term_loses_no_request():
    port = free_port()
    # Heroku binds 0.0.0.0:$PORT (checked above); these tests stay on loopback, so GUNICORN_CMD_ARGS
    # (which Heroku users set too) narrows the bind to 127.0.0.1 on the same $PORT.
    web = Gunicorn.launch(
        [
            sys.executable,
            "-m",
            "honcho",
            "start",
            "-f",
            str(DEPLOY / "Procfile"),
            "-d",
            str(ROOT),
            "--no-colour",
        ],
        env=base_env(
            PORT=str(port),
            WEB_CONCURRENCY="2",
            GUNICORN_CMD_ARGS=(
                f"--bind 127.0.0.1:{port} --error-logfile {{error_log}} "
                "--access-logfile {access_log} --log-level info " + " ".join(NO_CONTROL_SOCKET)
            ),
        ),
        workers=2,
    )
    master = web.master_pid()
    try:
        assert web.port == port, web.log()
        assert web.log().count("Booting worker with pid") == 2  # WEB_CONCURRENCY=2
        assert get(("127.0.0.1", port), "/")[0] == 200

        first_event = threading.Event()
        result: list = []
        reader = threading.Thread(
            target=lambda: result.append(
                read_sse(
                    "127.0.0.1", port, on_event=lambda n: first_event.set() if n == 0 else None
                )
            )
        )
        reader.start()
        assert first_event.wait(10), "the stream did not start"

        # Heroku's shutdown: SIGTERM to every process of the dyno. honcho does the same to
        # its children's process group (the gunicorn master and its workers).
        web.signal(signal.SIGTERM)
        reader.join(20)
        assert result, "the stream in flight did not finish"
        status, _, events = result[0]
        assert status == 200 and [e["id"] for _, e in events] == [str(n) for n in range(1, 11)]

        # honcho's own exit status after a TERM is 128 + SIGTERM (not an error of its own);
        # the master's clean stop is its "Shutting down" line, checked below.
        assert web.wait(30) == 128 + signal.SIGTERM, web.stdout.read_text()
        wait_until(lambda: gone(master), 10, "the gunicorn master to exit")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert "Shutting down: Master" in web.log(), web.log()
    finally:
        web.stop()
        if not gone(master):  # honcho died before its child: do not leave gunicorn behind
            os.kill(master, signal.SIGTERM)
