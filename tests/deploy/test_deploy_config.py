"""deploy/gunicorn.conf.py: gunicorn accepts it, its timeouts line up, the worker runs with it."""

from __future__ import annotations

import re
import subprocess
import sys

from deploy_helpers import CONF, DEPLOY, base_env, bind_port, load_conf
from gunicorn.config import Config
from server import ROOT, Gunicorn, get, wait_until


def check_config(app: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--check-config",
            "-c",
            str(CONF),
            "--chdir",
            "deploy",
            app,
        ],
        cwd=ROOT,
        env=base_env(),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gunicorn_check_config_accepts_it():
    ok = check_config("example_app:app")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # ...and --check-config does check: a missing app fails.
    assert check_config("example_app:nope").returncode != 0


def test_every_name_is_a_gunicorn_setting_with_a_valid_value():
    """gunicorn silently ignores unknown names in a config file: a typo would go unnoticed."""
    cfg = Config()
    for name, value in load_conf().items():
        if name == "os" or callable(value):
            continue
        assert name in cfg.settings, f"{name} is not a gunicorn setting"
        cfg.set(name, value)  # runs gunicorn's validator
    assert cfg.worker_class_str == "gunicorn_aiowsgi.Worker"
    import gunicorn_aiowsgi

    assert cfg.worker_class is gunicorn_aiowsgi.Worker


def test_environment_drives_port_workers_threads():
    conf = load_conf()
    assert conf["bind"] == ["0.0.0.0:8000"] and conf["workers"] >= 1 and conf["threads"] == 8
    conf = load_conf(
        PORT="5123", WEB_CONCURRENCY="3", GUNICORN_THREADS="16", FORWARDED_ALLOW_IPS="10.0.0.0/8"
    )
    assert bind_port(conf) == 5123 and conf["workers"] == 3 and conf["threads"] == 16
    assert conf["forwarded_allow_ips"] == "10.0.0.0/8"


def test_timeouts_line_up_with_the_balancers():
    conf = load_conf()
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream \w+ \{(.*?)\n    \}", nginx, re.DOTALL).group(1)
    nginx_idle = int(re.search(r"^\s*keepalive_timeout (\d+)s;", upstream, re.MULTILINE).group(1))
    alb_idle = 60  # AWS ALB's default idle timeout
    assert conf["keepalive"] > max(nginx_idle, alb_idle), (
        "the balancer must close idle connections first"
    )
    heroku_kill = 30  # Heroku: SIGKILL 30 s after SIGTERM
    assert conf["graceful_timeout"] < heroku_kill
    assert conf["accesslog"] == "-" and conf["errorlog"] == "-"


def test_serves_with_it_and_logs_the_useful_fields():
    # The harness's --bind 127.0.0.1:0 / --*-logfile / --graceful-timeout flags win over the file.
    with Gunicorn(
        "example_app:app",
        "--chdir",
        str(DEPLOY),
        config=str(CONF),
        workers=2,
        env={"WEB_CONCURRENCY": "2"},
    ) as server:
        assert len(server.worker_pids()) == 2
        status, _, body = get(
            server,
            "/healthz",
            headers={"X-Forwarded-For": "203.0.113.7", "X-Request-Id": "req-42"},
        )
        assert (status, body) == (200, b"ok\n")
        wait_until(lambda: "req-42" in server.access(), 5, "the access log line")
        line = next(x for x in server.access().splitlines() if "req-42" in x)
        assert re.fullmatch(
            r'203\.0\.113\.7 127\.0\.0\.1 "GET /healthz HTTP/1\.1" 200 3 \d+ms "-" "[^"]*" req-42',
            line,
        ), line
