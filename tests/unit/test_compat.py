"""Every supported gunicorn (21.2 to 27): settings read by feature detection, each setting a release
lacks taking that release's behaviour; the start-up warnings; the copied wsgi.errors; the refusal to
start without the GIL.

Configs are real gunicorn Config objects (the installed gunicorn); a release that lacks a setting
is a Config whose `settings` lack it, the one thing feature detection looks at.
"""

from __future__ import annotations

import copy
import io
import logging
import sys
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from server import Gunicorn

from gunicorn_aiowsgi import startup
from gunicorn_aiowsgi import worker as worker_mod
from gunicorn_aiowsgi.environ import Peer, build_environ
from gunicorn_aiowsgi.settings import SettingsError, from_cfg, gunicorn_setting


def config(**values) -> Config:
    cfg = Config()
    for name, value in values.items():
        cfg.set(name, value)
    return cfg


def without(cfg: Config, *names: str) -> Config:
    """The Config as a gunicorn release that lacks these settings builds it."""
    for name in names:
        cfg.settings.pop(name, None)
    return cfg


def with_old_setting(cfg: Config, name: str, value) -> Config:
    """The Config as a release that has setting `name` (which the installed one lacks) builds it.

    A copy of a boolean Setting instance renamed: declaring a Setting subclass would register it
    in gunicorn's global list, and every later Config would have it.
    """
    setting = copy.copy(cfg.settings["sendfile"])
    setting.name, setting.value = name, value
    cfg.settings[name] = setting
    return cfg


# -- the one reader: feature detection -----------------------------------------------------
@pytest.mark.parametrize("name, field, absent", [
    # gunicorn 21 has no header_map and maps "_" names like any other (see the environ test).
    ("header_map", "header_map", "dangerous"),
    # 21 and 22 have no forwarder_headers: no header is exempt from header_map.
    ("forwarder_headers", "forwarder_headers", frozenset()),
    ("casefold_http_method", "casefold_http_method", False),
    ("permit_obsolete_folding", "permit_obsolete_folding", False),
])
def test_a_setting_the_release_lacks_takes_its_behaviour(name, field, absent):
    assert getattr(from_cfg(without(Config(), name), {}), field) == absent


def having(cfg: Config, name: str, value) -> Config:
    """The Config as a release that has setting `name` holds `value` (normalised, as its
    validator leaves it), whichever release is installed."""
    if name not in cfg.settings:
        return with_old_setting(cfg, name, value)
    cfg.settings[name].value = value
    return cfg


@pytest.mark.parametrize("name, value, field, expected", [
    ("header_map", "refuse", "header_map", "refuse"),
    ("header_map", "drop", "header_map", "drop"),
    ("forwarder_headers", ["X_A", "Script_Name"], "forwarder_headers",
     frozenset({"X_A", "SCRIPT_NAME"})),
    ("proxy_protocol", "v2", "proxy_protocol", "v2"),    # 24.1+: off|v1|v2|auto
    ("proxy_protocol", "auto", "proxy_protocol", "auto"),
    ("threads", 7, "threads", 7),
])
def test_a_setting_the_release_has_is_read(name, value, field, expected):
    assert getattr(from_cfg(having(Config(), name, value), {}), field) == expected


@pytest.mark.parametrize("value, mode", [
    (True, "v1"),   # before 24.1 proxy_protocol is a boolean, and True meant PROXY v1 only
    (False, "off"),
])
def test_a_boolean_proxy_protocol_keeps_its_old_meaning(value, mode):
    cfg = Config()
    cfg.settings["proxy_protocol"].value = value  # as an older release's bool setting holds it
    assert from_cfg(cfg, {}).proxy_protocol == mode


def test_a_setting_no_release_has_reads_as_none():
    assert gunicorn_setting(Config(), "no_such_setting") is None


def test_without_header_map_underscore_headers_pass_as_gunicorn_21_passes_them():
    # gunicorn 21.2, http/wsgi.py: key = 'HTTP_' + name.replace('-', '_'), joined with "," when
    # the key is already there; and a SCRIPT_NAME header sets SCRIPT_NAME.
    settings = from_cfg(without(Config(), "header_map", "forwarder_headers"), {})
    peer = Peer(remote_addr="10.0.0.9", remote_port="5000", server_name="h", server_port="80",
                trusted=False, proxy=None)
    headers = [(b"Host", b"h"), (b"X-Auth", b"dash"), (b"X_Auth", b"underscore"),
               (b"Script_Name", b"/app")]
    environ, _expect = build_environ({}, settings, peer, "GET", "/app/x", (1, 1), headers)
    assert environ["HTTP_X_AUTH"] == "dash,underscore"
    assert environ["SCRIPT_NAME"] == "/app" and environ["PATH_INFO"] == "/x"
    assert environ["HTTP_SCRIPT_NAME"] == "/app"


# -- start-up warnings ---------------------------------------------------------------------
class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, fmt: str, *args) -> None:
        self.lines.append(fmt % args)


def warnings_for(cfg: Config) -> list[str]:
    log = Log()
    worker_mod.Worker.warn_unsupported(SimpleNamespace(cfg=cfg, log=log))
    return log.lines


def test_tolerate_dangerous_framing_is_warned_where_the_release_has_it():
    # gunicorn 22.0 only: llhttp refuses Transfer-Encoding with Content-Length whatever it says.
    lines = warnings_for(with_old_setting(Config(), "tolerate_dangerous_framing", True))
    assert len(lines) == 1
    assert lines[0].startswith("tolerate_dangerous_framing is set but not supported")


# Each warned setting (startup.UNSUPPORTED) with a value that sets it, as a user would set it
# (gunicorn's own validator normalises it: http2_cleartext True is "prior-knowledge" from 27 on).
WARNED = {
    "permit_obsolete_folding": True,
    "strip_header_spaces": True,
    "permit_unconventional_http_method": True,
    "permit_unconventional_http_version": True,
    "casefold_http_method": True,
    "protocol": "uwsgi",
    "http_protocols": "h2,h1",
    "http2_cleartext": True,
    "http_parser": "python",
    "tolerate_dangerous_framing": True,
}


def test_every_warned_setting_is_in_the_table():
    assert sorted(WARNED) == sorted(name for name, _, _ in startup.UNSUPPORTED)


def test_each_warned_setting_the_release_has_is_one_warning_line():
    """Set alone, each is one line naming it and the value it holds; set together, one line
    each. Only the settings the installed gunicorn has (any release has some of them)."""
    present = [name for name in WARNED if name in Config().settings]
    assert present, f"the installed gunicorn has none of {sorted(WARNED)}"
    for name in present:
        cfg = config(**{name: WARNED[name]})
        value = cfg.settings[name].get()
        assert warnings_for(cfg) == [warning_line(name, value)], name
    together = config(**{name: WARNED[name] for name in present})
    lines = warnings_for(together)
    assert lines == [warning_line(name, together.settings[name].get())
                     for name, _, _ in startup.UNSUPPORTED if name in present]


def warning_line(name: str, value) -> str:
    what = next(what for setting, _, what in startup.UNSUPPORTED if setting == name)
    return f"{name} is set but not supported by gunicorn_aiowsgi: {what} ({name}={value!r})"


def test_no_warning_for_settings_the_release_lacks_or_leaves_unset():
    names = [name for name, _, _ in startup.UNSUPPORTED]
    assert warnings_for(without(Config(), *names)) == []
    assert warnings_for(with_old_setting(Config(), "tolerate_dangerous_framing", False)) == []
    assert warnings_for(Config()) == []


# -- wsgi.errors, copied from gunicorn -----------------------------------------------------
def test_wsgi_errors_writes_to_the_error_log_streams(monkeypatch):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("gunicorn.error")
    monkeypatch.setattr(logger, "handlers", [handler])
    errors = worker_mod.WSGIErrors(config(errorlog="/some/file"))
    errors.write("app says\n")
    errors.writelines(["one\n", "two\n"])
    errors.flush()
    assert stream.getvalue() == "app says\none\ntwo\n"


def test_wsgi_errors_writes_to_the_stream_a_log_reopen_put_in_place(monkeypatch, tmp_path):
    """USR1 (log rotation): gunicorn's reopen_files closes each handler's stream and opens a new
    one; an app writing to wsgi.errors afterwards must reach the new file, not fail."""
    from gunicorn.glogging import Logger
    for name in ("gunicorn.error", "gunicorn.access"):  # put back as they were afterwards
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
    cfg = config(errorlog=str(tmp_path / "error.log"))
    log = Logger(cfg)
    errors = worker_mod.WSGIErrors(cfg)
    errors.write("before\n")
    (tmp_path / "error.log").rename(tmp_path / "error.log.1")
    log.reopen_files()
    errors.write("after\n")
    for handler in logging.getLogger("gunicorn.error").handlers:
        handler.close()
    assert (tmp_path / "error.log.1").read_text().endswith("before\n")
    assert (tmp_path / "error.log").read_text() == "after\n"


def test_wsgi_errors_to_stderr_is_not_written_twice(monkeypatch, capsys):
    # errorlog "-": gunicorn's first handler is the stderr one, so it is skipped.
    monkeypatch.setattr(logging.getLogger("gunicorn.error"), "handlers",
                        [logging.StreamHandler(sys.stderr)])
    worker_mod.WSGIErrors(config(errorlog="-")).write("once\n")
    assert capsys.readouterr().err == "once\n"


def test_the_worker_imports_nothing_from_gunicorns_http_package():
    source = open(worker_mod.__file__).read()
    assert "gunicorn.http" not in source


# -- free-threaded Python ------------------------------------------------------------------
def test_this_interpreter_has_the_gil():
    assert worker_mod.gil_enabled() is True  # the suite does not run on a GIL-less build


def test_without_the_gil_the_worker_refuses_to_start(monkeypatch):
    monkeypatch.setattr(worker_mod, "gil_enabled", lambda: False)
    with pytest.raises(SettingsError, match="needs the GIL.*PYTHON_GIL=1"):
        worker_mod.refuse_without_gil()


def test_with_the_gil_the_check_passes(monkeypatch):
    monkeypatch.setattr(worker_mod, "gil_enabled", lambda: True)
    worker_mod.refuse_without_gil()


NO_GIL_CONF = """\
def post_fork(server, worker):
    # Runs in the worker before it starts: this Python now says its GIL is off.
    import gunicorn_aiowsgi.worker
    gunicorn_aiowsgi.worker.gil_enabled = lambda: False
"""


def test_a_master_on_a_python_without_the_gil_stops_with_the_reason(tmp_path):
    conf = tmp_path / "nogil.conf.py"
    conf.write_text(NO_GIL_CONF)
    with Gunicorn("apps:hello", config=str(conf), wait_ready=False) as srv:
        assert srv.wait(20) == 3  # gunicorn's "Worker failed to boot": no respawn loop
        log = srv.log()
        assert "gunicorn_aiowsgi needs the GIL" in log
        assert "Worker failed to boot." in log
        assert log.count("Booting worker") == 1
        assert "aiowsgi: serving" not in log
