"""What only the contract tests use: their app and hooks config, the marks the hooks write, and
readings of the master's log. Generic helpers (requests, waiting, /proc) live in tests/server.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server import Gunicorn, wait_until

HERE = Path(__file__).resolve().parent
APP = "contract.contract_apps:app"
HOOKS = str(HERE / "hooks_conf.py")


def marks(path: Path, hook: str | None = None) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    found = [json.loads(line) for line in lines if line]
    return [m for m in found if hook is None or m["hook"] == hook]


def serve(*args: str, marks: Path | None = None, app: str = APP, env: dict | None = None,
          **kwargs: Any) -> Gunicorn:
    """A Gunicorn master serving the contract app; with `marks`, the hooks config writes there."""
    env = dict(env or {})
    if marks is not None:
        env["CONTRACT_MARKS"] = str(marks)
        kwargs.setdefault("config", HOOKS)
    return Gunicorn(app, *args, env=env, **kwargs)


def tls_serve(*args: str, **kwargs: Any) -> Gunicorn:
    """serve() for TLS: the harness only reads the port of an http:// listener."""
    server = serve(*args, **kwargs)
    assert server.url.startswith("https://127.0.0.1:"), server.url
    server.port = int(server.url.rpartition(":")[2])
    return server


def in_app(marks_path: Path, path: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
    """Wait until pre_request marked `count` requests for `path`: they are in the app now."""
    def found() -> list[dict] | None:
        hits = [m for m in marks(marks_path, "pre_request") if m["path"] == path]
        return hits if len(hits) >= count else None

    return wait_until(found, timeout, f"{count} request(s) for {path} in the app")


def clean_exit(server: Gunicorn, pid: int) -> bool:
    """The master saw worker `pid` exit with status 0 (no signal, no error code)."""
    log = server.log()
    return (f"Worker (pid:{pid}) was sent" not in log
            and f"Worker (pid:{pid}) exited with code" not in log)
