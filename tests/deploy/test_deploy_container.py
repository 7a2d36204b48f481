"""deploy/Dockerfile and deploy/kubernetes.yaml, read as text (no docker engine or cluster
here): what they say must agree with gunicorn.conf.py and example_app.py; and their probes, run
against a real master started with their environment."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import threading
import time

import pytest
import yaml
from deploy_helpers import (
    CONF,
    DEPLOY,
    assert_streamed,
    base_env,
    bind_port,
    call,
    load_conf,
    load_example,
    read_sse,
)
from gunicorn.config import Config
from server import ROOT, Gunicorn, get
from sysinfo import free_port

from gunicorn_aiowsgi.settings import from_cfg


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        instruction, _, args = (pending + line).partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    return out


def instructions(name: str) -> list[str]:
    return [args for instr, args in dockerfile() if instr == name]


def image_env() -> dict[str, str]:
    """The image's ENV, every instruction's NAME=value pairs."""
    return dict(pair.split("=", 1) for args in instructions("ENV") for pair in shlex.split(args))


def dockerignored(path: str) -> bool:
    """Whether deploy/Dockerfile.dockerignore leaves `path` out of the build context. Docker
    matches each pattern against the path and each directory above it; fnmatch's `*` also
    crosses `/`, so this errs on the side of "ignored"."""
    patterns = [
        line.strip().rstrip("/")
        for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        prefix, name = "/".join(parts[:end]), parts[end - 1]
        for pattern in patterns:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(name, pattern[3:])
            ):
                return True
    return False


def healthcheck() -> list[str]:
    """The HEALTHCHECK's command (exec form)."""
    (health,) = instructions("HEALTHCHECK")
    return json.loads(health.split(" CMD ", 1)[1])


def uid_of_user() -> tuple[int, int]:
    """The image's USER as (uid, gid), checked against the useradd that creates it."""
    (user,) = instructions("USER")
    uid, _, gid = user.partition(":")
    match = re.search(r"useradd .*--uid (\d+) --gid (\d+) (\w+)", " ".join(instructions("RUN")))
    assert match, "the Dockerfile should create its user with useradd --uid N --gid N NAME"
    created = int(match.group(1)), int(match.group(2))
    if not uid.isdigit():  # USER name[:group]
        assert uid == match.group(3)
        return created
    assert (int(uid), int(gid or uid)) == created
    return created


def test_dockerfile_base_user_env_signal():
    (base,) = instructions("FROM")
    assert re.fullmatch(r"python:3\.1[0-3]-slim(-\w+)?", base), base
    env = image_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert uid_of_user()[0] != 0
    names = [i for i, _ in dockerfile()]
    assert names.index("USER") < names.index("CMD"), "USER must come before CMD"
    # gunicorn's graceful stop is TERM, docker's default STOPSIGNAL.
    assert instructions("STOPSIGNAL") in ([], ["SIGTERM"])
    assert not instructions("ENTRYPOINT")
    # Everything COPY'd exists in the build context (the repository root), and the ignore file
    # keeps it in while it keeps virtualenvs, caches and history out.
    for args in instructions("COPY"):
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not dockerignored(src), f"COPY {src}: excluded by Dockerfile.dockerignore"
    for path in (".git", ".venv", ".tox", "build", "gunicorn_aiowsgi/__pycache__/x.pyc"):
        assert dockerignored(path), f"{path} would be sent to the docker daemon"


def test_dockerfile_cmd_is_exec_form_and_runs_the_example():
    (cmd,) = instructions("CMD")
    argv = json.loads(cmd)  # exec form: gunicorn is PID 1 and receives docker stop's TERM
    assert argv[0] == "gunicorn"
    args = Config().parser().parse_args(argv[1:])
    workdir = instructions("WORKDIR")[-1]
    assert args.config == "deploy/gunicorn.conf.py" and (ROOT / args.config).samefile(CONF)
    assert (ROOT / args.chdir).samefile(DEPLOY) and args.args == ["example_app:app"]
    assert workdir == "/app"  # the repository root's counterpart: relative paths resolve there
    (expose,) = instructions("EXPOSE")
    assert int(expose) == bind_port(load_conf())


def kube() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["Deployment", "Service"]
    return by_kind


def test_kubernetes_agrees_with_the_app_the_config_and_the_image():
    objs = kube()
    deploy, service = objs["Deployment"], objs["Service"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    conf = load_conf(**env)

    # The port gunicorn binds is the port declared, probed and targeted by the Service.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": bind_port(conf)}
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] in ports or svc_port["targetPort"] in ports.values()

    # Both probes hit a path the app answers with 200.
    app = load_example().app
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ports or get["port"] in ports.values()
        assert call(app, get["path"])[0] == 200, get["path"]

    # SIGKILL comes terminationGracePeriodSeconds after the preStop pause starts.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert pause >= 5, "give balancers time to stop sending new requests"
    assert pod["terminationGracePeriodSeconds"] > conf["graceful_timeout"] + pause

    # Non-root, and the same uid as the image's USER.
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == uid_of_user()

    # The environment is what gunicorn.conf.py reads: workers match the CPU limit.
    assert (
        conf["workers"]
        == int(env["WEB_CONCURRENCY"])
        == int(container["resources"]["limits"]["cpu"])
    )
    assert conf["threads"] == int(env["GUNICORN_THREADS"])
    assert conf["forwarded_allow_ips"] == env["FORWARDED_ALLOW_IPS"]


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK command, as the container runs it, with `env`."""
    return subprocess.run([sys.executable, *healthcheck()[1:]], env=base_env(**env),
                          capture_output=True, text=True, check=False, timeout=30)


def example_server(port: int, env: dict[str, str]) -> Gunicorn:
    """A real master serving the example app with the shipped config on `port`, given `env`."""
    return Gunicorn("example_app:app", "--chdir", str(DEPLOY), config=str(CONF),
                    bind=f"127.0.0.1:{port}", env=env)


def test_healthcheck_probes_the_port_the_config_binds():
    """HEALTHCHECK runs inside the container, with its environment: it must probe $PORT, the
    port gunicorn.conf.py binds (8000 when PORT is unset, the EXPOSEd port)."""
    probe = healthcheck()
    assert probe[0] == "python" and "PORT" in probe[-1]
    assert f"'{bind_port(load_conf())}'" in probe[-1], "PORT's default should be the conf's"
    port = free_port()
    env = {**image_env(), "PORT": str(port)}
    assert run_healthcheck(env).returncode != 0  # nothing listens there yet: the probe fails
    with example_server(port, env):
        ok = run_healthcheck(env)
        assert ok.returncode == 0, ok.stderr


def pod_container() -> dict:
    (container,) = kube()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def pod_env() -> dict[str, str]:
    """What the pod runs with: the image's ENV, then the container's env: on top. On a gunicorn
    that takes addresses only in forwarded_allow_ips (23.x), the "*" the manifest says to use
    there instead of its network."""
    env = {**image_env(), **{e["name"]: e["value"] for e in pod_container().get("env", [])}}
    if not takes_networks():
        assert 'gunicorn 23.x takes addresses only here' in (DEPLOY / "kubernetes.yaml").read_text()
        env["FORWARDED_ALLOW_IPS"] = "*"
    return env


def takes_networks() -> bool:
    """Whether this gunicorn's forwarded_allow_ips takes a network (21, 22: any string, the
    worker matches it; 23: addresses only; 24 and later: networks)."""
    try:
        Config().set("forwarded_allow_ips", "10.0.0.0/8")
    except ValueError:
        return False
    return True


def test_probes_hit_the_path_the_worker_answers_itself():
    """The worker answers AIOWSGI_HEALTH_PATH on its event loop, never queued behind busy app
    threads; the app's own /healthz waits for a free thread like any request."""
    container = pod_container()
    for env in (image_env(), pod_env()):  # `docker run` of the image; the pod
        settings = from_cfg(Config(), env)
        assert settings.health_path == "/healthz"
        # Liveness shares the path: a full queue must not get a busy pod restarted.
        assert settings.health_queue_full is False
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert "/healthz" in healthcheck()[-1]


@pytest.mark.timeout(60)
def test_probes_answered_while_streams_hold_every_thread():
    """Both threads of the one worker held by /stream: Docker's HEALTHCHECK command and the
    pod's readiness probe are still answered, while both streams run."""
    port = free_port()
    env = {**pod_env(), "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2", "PORT": str(port)}
    with example_server(port, env) as server:
        results: list = [None] * 2
        first = threading.Barrier(3, timeout=10)

        def consume(i: int) -> None:
            results[i] = read_sse(
                server.host, server.port, on_event=lambda n: first.wait() if n == 0 else None
            )

        streams = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
        for t in streams:
            t.start()
        first.wait()  # both streams have sent their first event: every app thread is taken

        path = pod_container()["readinessProbe"]["httpGet"]["path"]
        status, _, body = get(server, path)
        assert (status, body) == (200, b"ok\n")
        docker = run_healthcheck(env)
        probed = time.time()
        assert docker.returncode == 0, docker.stderr
        for t in streams:
            t.join(20)

        last = []
        for status, _, events in results:
            assert status == 200 and [e["id"] for _, e in events] == [str(n) for n in range(1, 11)]
            assert_streamed(events)
            last.append(json.loads(events[-1][1]["data"])["time"])
        # Answered before either stream's last event was produced: no thread had come free.
        assert probed < min(last), f"the {path} probes waited for a stream to end"
