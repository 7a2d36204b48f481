"""gunicorn's request corpus (tests/requests/{valid,invalid} of its sdist), loaded its own way.

The `.http` files are decoded and the `.py` expectations loaded by gunicorn's own tests/treq.py
from the same sdist, so the cases mean here exactly what they mean in gunicorn's suite. What
gunicorn would build for a valid case is computed by gunicorn's own parser and
gunicorn.http.wsgi.create on the same bytes.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import gunicorn
from gunicorn.config import Config
from gunicorn.http import errors as gerrors
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import create

from robustness.sdists import sdist

# gunicorn settings the corpus sets, and how our worker takes each: a config-file line.
SETTING_NAMES = ("limit_request_line", "limit_request_fields", "limit_request_field_size",
                 "proxy_protocol", "forwarded_allow_ips", "header_map", "casefold_http_method",
                 "permit_obsolete_folding", "strip_header_spaces",
                 "permit_unconventional_http_method")


@dataclass
class Case:
    name: str
    kind: str                       # "valid" | "invalid"
    data: bytes                     # the raw request bytes
    cfg: Any                        # gunicorn Config the case runs with
    expect: Any                     # list of request dicts (valid) or the exception class (invalid)
    settings: dict[str, Any] = field(default_factory=dict)  # non-default settings

    @property
    def config_text(self) -> str:
        lines = []
        for key, value in sorted(self.settings.items()):
            if isinstance(value, list):  # forwarded_allow_ips: the config file wants "a,b"
                value = ",".join(value)
            lines.append(f"{key} = {value!r}\n")
        return "".join(lines)


def gunicorn_tests() -> Path:
    return sdist("gunicorn", gunicorn.__version__) / "tests"


def _treq() -> ModuleType:
    path = gunicorn_tests() / "treq.py"
    spec = importlib.util.spec_from_file_location("gunicorn_sdist_treq", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settings(cfg: Any) -> dict[str, Any]:
    default = Config()
    out = {}
    for name in SETTING_NAMES:
        if name in cfg.settings and cfg.settings[name].get() != default.settings[name].get():
            out[name] = cfg.settings[name].get()
    return out


def load(kind: str) -> list[Case]:
    """Every case of tests/requests/<kind>, sorted by name."""
    treq = _treq()
    cases = []
    for http in sorted((gunicorn_tests() / "requests" / kind).glob("*.http")):
        env = treq.load_py(str(http.with_suffix(".py")))
        cfg, expect = env["cfg"], env["request"]
        if kind == "valid":
            data = treq.request(str(http), expect).data
            expect = expect if isinstance(expect, list) else [expect]
        else:
            data = treq.badrequest(str(http)).data
        cases.append(Case(http.stem, kind, data, cfg, expect, _settings(cfg)))
    return cases


class _Sock:
    """Enough of a socket for gunicorn.http.wsgi.create (100-continue would send here)."""

    def __init__(self) -> None:
        self.sent = io.BytesIO()

    def send(self, data: bytes) -> int:
        self.sent.write(data)
        return len(data)

    sendall = send


def gunicorn_environs(case: Case, client: tuple[str, int], server: tuple[str, int]) -> list[dict]:
    """The str-valued environ keys and the body gunicorn builds for each request of a valid case."""
    parser = RequestParser(case.cfg, iter([case.data]), client)
    out = []
    for req in parser:
        _resp, environ = create(req, _Sock(), client, server, case.cfg)
        body = req.body.read()
        env = {k: v for k, v in environ.items() if isinstance(v, str)}
        env["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
        env["body"] = body.decode("latin-1")
        out.append(env)
    return out


def gunicorn_refuses(case: Case) -> tuple[int, BaseException | None]:
    """(requests gunicorn's parser yields before it fails, the exception) for an invalid case."""
    parser = RequestParser(case.cfg, iter([case.data]), ("127.0.0.1", 40000))
    count = 0
    try:
        for req in parser:
            count += 1
            req.body.read()
    except Exception as exc:  # noqa: BLE001 - any parse error is the point
        return count, exc
    return count, None


def gunicorn_status(exc: BaseException | None) -> int | None:
    """The status gunicorn's Worker.handle_error answers `exc` with; None: closed, no answer."""
    if exc is None or isinstance(exc, gerrors.NoMoreData):
        return None
    table = [(gerrors.UnsupportedTransferCoding, 501), (gerrors.ConfigurationProblem, 500),
             (gerrors.LimitRequestLine, 414), (gerrors.ExpectationFailed, 417),
             (gerrors.LimitRequestHeaders, 431), (gerrors.ForbiddenProxyRequest, 403)]
    for cls, status in table:
        if isinstance(exc, cls):
            return status
    return 400
