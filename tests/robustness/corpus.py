"""gunicorn's request corpus (tests/requests/{valid,invalid}) and what gunicorn does with each case,
from one fixed reference: gunicorn 27.0.1's sdist, whatever gunicorn is installed.

The reference is imported from the unpacked sdist beside the installed gunicorn (its modules are
swapped into sys.modules only while it runs), so the suite holds the worker to the same
expectations on every supported gunicorn, never to an older release's laxer parser. The `.http`
files are decoded and the `.py` expectations loaded by the reference's own tests/treq.py, so the
cases mean here exactly what they mean in gunicorn's suite; what gunicorn would build for a valid
case, and the status it answers an invalid one with, come from the reference's parser,
gunicorn.http.wsgi.create and Worker.handle_error run on the same bytes.

A case may set a setting the installed gunicorn lacks (or cannot spell, as `proxy_protocol =
"auto"` before 24.1): the worker then takes that release's behaviour (gunicorn_aiowsgi.settings.
ABSENT), and the reference runs with the settings that behaviour amounts to (`run_settings`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import io
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType, SimpleNamespace
from typing import Any, Iterator

from gunicorn.config import Config as InstalledConfig
from server import REFERENCE_GUNICORN

from gunicorn_aiowsgi.settings import ABSENT
from robustness.sdists import sdist

REFERENCE_VERSION = REFERENCE_GUNICORN

# gunicorn settings the corpus sets, and how our worker takes each: a config-file line.
SETTING_NAMES = ("limit_request_line", "limit_request_fields", "limit_request_field_size",
                 "proxy_protocol", "forwarded_allow_ips", "header_map", "casefold_http_method",
                 "permit_obsolete_folding", "strip_header_spaces",
                 "permit_unconventional_http_method")


def _gunicorn_modules() -> dict[str, ModuleType]:
    """Take every gunicorn module out of sys.modules."""
    names = [n for n in sys.modules if n == "gunicorn" or n.startswith("gunicorn.")]
    return {name: sys.modules.pop(name) for name in names}


class Reference:
    """gunicorn REFERENCE_VERSION, imported from its sdist without replacing the installed one."""

    def __init__(self) -> None:
        self.tree = sdist("gunicorn", REFERENCE_VERSION)
        self.modules: dict[str, ModuleType] = {}
        with self.active():
            gunicorn = importlib.import_module("gunicorn")
            assert gunicorn.__version__ == REFERENCE_VERSION, gunicorn.__file__
            self.config = importlib.import_module("gunicorn.config")
            self.errors = importlib.import_module("gunicorn.http.errors")
            self.parser = importlib.import_module("gunicorn.http.parser")
            self.message = importlib.import_module("gunicorn.http.message")
            self.unreader = importlib.import_module("gunicorn.http.unreader")
            self.wsgi = importlib.import_module("gunicorn.http.wsgi")
            self.base = importlib.import_module("gunicorn.workers.base")
            spec = importlib.util.spec_from_file_location("gunicorn_reference_treq",
                                                          self.tree / "tests" / "treq.py")
            assert spec is not None and spec.loader is not None
            self.treq = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self.treq)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The reference is `gunicorn` inside the block (imports the corpus's .py files make
        included); the installed gunicorn is back after it."""
        installed = _gunicorn_modules()
        sys.modules.update(self.modules)
        sys.path.insert(0, str(self.tree))
        try:
            yield
        finally:
            sys.path.remove(str(self.tree))
            self.modules = _gunicorn_modules()
            sys.modules.update(installed)


REFERENCE = Reference()


def _lacking() -> dict[str, Any]:
    """Settings the installed gunicorn lacks, each with the value of the behaviour it has."""
    installed = InstalledConfig().settings
    return {name: value for name, value in ABSENT.items() if name not in installed}


def _installed_form(name: str, value: Any) -> tuple[bool, Any, Any]:
    """(can the installed gunicorn's config file say it, the value it says, the value the
    reference runs with to behave as the installed gunicorn does)."""
    installed = InstalledConfig().settings
    if name not in installed:
        # The worker takes the missing release's behaviour; the reference's default otherwise.
        return False, None, ABSENT.get(name, REFERENCE.config.Config().settings[name].get())
    if name == "proxy_protocol" and installed[name].default is False:
        # A boolean proxy_protocol (before 24.1): True is PROXY v1 only.
        on = value not in ("off", False, None)
        return True, on, "v1" if on else "off"
    return True, value, value


@dataclass
class Case:
    name: str
    kind: str                       # "valid" | "invalid"
    data: bytes                     # the raw request bytes
    cfg: Any                        # reference Config the case runs with in gunicorn's suite
    expect: Any                     # list of request dicts (valid) or the exception class (invalid)
    settings: dict[str, Any] = field(default_factory=dict)  # non-default settings

    @cached_property
    def forms(self) -> dict[str, tuple[bool, Any, Any]]:
        return {name: _installed_form(name, value) for name, value in self.settings.items()}

    @property
    def written(self) -> dict[str, Any]:
        """The settings the installed gunicorn is given (its config file)."""
        return {name: said for name, (ok, said, _run) in self.forms.items() if ok}

    @property
    def run_settings(self) -> dict[str, Any]:
        """The settings the reference runs with: the case's, as the installed gunicorn takes them."""
        return {name: run for name, (_ok, _said, run) in self.forms.items()}

    @property
    def adapted(self) -> bool:
        """The installed gunicorn cannot express this case's settings as the corpus means them."""
        return self.run_settings != self.settings

    @cached_property
    def run_cfg(self) -> Any:
        """The reference's Config for this case: the case's settings as the installed gunicorn
        takes them, and every setting it lacks at the value of the behaviour it has instead."""
        values = {**_lacking(), **self.run_settings}
        if all(self.cfg.settings[name].get() == value for name, value in values.items()):
            return self.cfg
        cfg = copy.deepcopy(self.cfg)
        for name, value in values.items():
            cfg.settings[name].value = value  # already as a validator leaves it
        return cfg

    @property
    def config_text(self) -> str:
        lines = []
        for key, value in sorted(self.written.items()):
            if isinstance(value, list):  # forwarded_allow_ips: the config file wants "a,b"
                value = ",".join(value)
            lines.append(f"{key} = {value!r}\n")
        return "".join(lines)


def _settings(cfg: Any) -> dict[str, Any]:
    default = REFERENCE.config.Config()
    out = {}
    for name in SETTING_NAMES:
        if name in cfg.settings and cfg.settings[name].get() != default.settings[name].get():
            out[name] = cfg.settings[name].get()
    return out


def load(kind: str) -> list[Case]:
    """Every case of the reference's tests/requests/<kind>, sorted by name."""
    treq = REFERENCE.treq
    cases = []
    with REFERENCE.active():  # the .py expectations import gunicorn.config and http.errors
        for http in sorted((REFERENCE.tree / "tests" / "requests" / kind).glob("*.http")):
            env = treq.load_py(str(http.with_suffix(".py")))
            cfg, expect = env["cfg"], env["request"]
            if kind == "valid":
                data = treq.request(str(http), expect).data
                expect = expect if isinstance(expect, list) else [expect]
            else:
                data = treq.badrequest(str(http)).data
            cases.append(Case(http.stem, kind, data, cfg, expect, _settings(cfg)))
    return cases


# An HTTP/1.1 request line, and the header section after it (up to the empty line). Not anchored
# to a line start: a pipelined request follows the previous body directly (valid/pp_02).
REQUEST_HEAD = re.compile(rb"[!-~]+ [^ \r\n]+ HTTP/1\.1\r\n((?:[^\r]*\r\n)*?)\r\n")
HOST_FIELD = re.compile(rb"(?im)^host[ \t]*:")


def add_host(data: bytes, field_line: bytes = b"Host: h\r\n") -> bytes:
    """`data` with a Host field added to each HTTP/1.1 request head that has none (short: a few
    cases set limit_request_field_size to 10 bytes)."""
    out, at = [], 0
    for match in REQUEST_HEAD.finditer(data):
        if HOST_FIELD.search(match.group(1)):
            continue
        cut = match.start(1)
        out += [data[at:cut], field_line]
        at = cut
    return b"".join(out) + data[at:]


class _Sock:
    """Enough of a socket for gunicorn.http.wsgi.create (100-continue) and util.write_error."""

    def __init__(self) -> None:
        self.sent = io.BytesIO()

    def send(self, data: bytes) -> int:
        self.sent.write(data)
        return len(data)

    sendall = send

    def gettimeout(self) -> float:
        return 0.0


def gunicorn_environs(case: Case, client: tuple[str, int], server: tuple[str, int],
                      data: bytes | None = None) -> list[dict]:
    """The str-valued environ keys and the body the reference builds for each request it serves
    (up to the first error) from `data` (the case's own bytes by default)."""
    out = []
    with REFERENCE.active():
        parser = REFERENCE.parser.RequestParser(case.run_cfg, iter([data or case.data]), client)
        try:
            for req in parser:
                _resp, environ = REFERENCE.wsgi.create(req, _Sock(), client, server, case.run_cfg)
                body = req.body.read()
                env = {k: v for k, v in environ.items() if isinstance(v, str)}
                env["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
                env["body"] = body.decode("latin-1")
                out.append(env)
        except Exception:  # noqa: BLE001 - what was served before the error is the answer
            pass
    return out


def gunicorn_refuses(case: Case, data: bytes | None = None) -> tuple[int, BaseException | None]:
    """(requests the reference's parser yields, bodies whole, before it fails; the exception, or
    None where it does not fail)."""
    with REFERENCE.active():
        parser = REFERENCE.parser.RequestParser(case.run_cfg, iter([data or case.data]),
                                                ("127.0.0.1", 40000))
        count = 0
        try:
            for req in parser:
                req.body.read()
                count += 1  # a request whose body fails is not counted: the worker reads
                            # the whole body before the app runs, so that app is never called
        except Exception as exc:  # noqa: BLE001 - any parse error is the point
            return count, exc
    return count, None


class _Log:
    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


def gunicorn_status(exc: BaseException | None, cfg: Any = None) -> int | None:
    """The status the reference's Worker.handle_error answers `exc` with; None: closed, no
    answer (end of input, or a client that left: sync and gthread only log NoMoreData)."""
    if exc is None or isinstance(exc, REFERENCE.errors.NoMoreData):
        return None
    sock = _Sock()
    worker = SimpleNamespace(log=_Log(), cfg=cfg or REFERENCE.config.Config())
    with REFERENCE.active():
        REFERENCE.base.Worker.handle_error(worker, None, sock, ("127.0.0.1", 40000), exc)
    status_line = sock.sent.getvalue().split(b"\r\n", 1)[0]  # HTTP/1.1 400 Bad Request
    return int(status_line.split()[1])
