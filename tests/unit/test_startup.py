"""What is checked before serving, in-process: the master's check_config (settings, TLS files),
and tmp_upload_dir as a worker finds it at start."""

from __future__ import annotations

import os
import tempfile

import pytest
import trustme
from gunicorn.config import Config

from gunicorn_aiowsgi import startup
from gunicorn_aiowsgi.settings import Settings, SettingsError
from gunicorn_aiowsgi.worker import Worker


class Log:
    """Records what a gunicorn logger is asked to say, as 'LEVEL message'."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, fmt: str, *args: object) -> None:
        self.lines.append("WARNING " + fmt % args)

    def error(self, fmt: str, *args: object) -> None:
        self.lines.append("ERROR " + fmt % args)


def config(**values: object) -> Config:
    cfg = Config()
    for name, value in values.items():
        cfg.set(name, value)
    return cfg


@pytest.fixture
def tls(tmp_path):
    cert = trustme.CA().issue_cert("127.0.0.1")
    chain, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(chain))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


# -- in the master: check_config -----------------------------------------------------------
@pytest.mark.parametrize("name, raw, said", [
    ("AIOWSGI_SEND_TIMEOUT", "0", "must be > 0"),
    ("AIOWSGI_MAX_BODY_SIZE", "lots", "AIOWSGI_MAX_BODY_SIZE='lots' is not a valid bytes value"),
    ("AIOWSGI_MAX_HEAD_SIZE", "5", "AIOWSGI_MAX_HEAD_SIZE must be 0 or at least"),
])
def test_check_config_stops_the_master_with_one_line(name, raw, said, monkeypatch):
    """gunicorn's Arbiter.start calls it with raw_env in os.environ, before any fork."""
    monkeypatch.setenv(name, raw)
    log = Log()
    with pytest.raises(SystemExit) as info:
        Worker.check_config(config(), log)
    assert info.value.code == 1
    [line] = log.lines
    assert line.startswith("ERROR gunicorn_aiowsgi cannot start: ") and said in line


def test_check_config_says_nothing_of_good_settings(tls, monkeypatch):
    monkeypatch.setenv("AIOWSGI_SEND_TIMEOUT", "5")
    log = Log()
    chain, key = tls
    Worker.check_config(config(certfile=str(chain), keyfile=str(key)), log)
    assert log.lines == []


@pytest.mark.parametrize("broken", ["empty", "swapped"])
def test_a_certificate_no_worker_could_load_is_said_in_the_master(broken, tls):
    chain, key = tls
    if broken == "empty":
        chain.write_bytes(b"")
    else:
        chain, key = key, chain
    with pytest.raises(SettingsError) as info:
        startup.check_in_master(config(certfile=str(chain), keyfile=str(key)))
    assert str(info.value).startswith(f"cannot build the TLS context (certfile {str(chain)!r}")
    assert "SSLError" in str(info.value)


def test_the_master_does_not_refuse_a_missing_tmp_upload_dir(tmp_path):
    """Checked by each worker as its user (usable_spool_dir), where it falls back."""
    missing = str(tmp_path / "missing")
    assert startup.check_in_master(config(tmp_upload_dir=missing)).tmp_upload_dir == missing


# -- in each worker: tmp_upload_dir --------------------------------------------------------
def test_a_usable_tmp_upload_dir_is_kept_silently(tmp_path):
    log = Log()
    settings = Settings(tmp_upload_dir=str(tmp_path))
    assert startup.usable_spool_dir(settings, log) is settings
    assert startup.usable_spool_dir(Settings(), log).tmp_upload_dir is None
    assert log.lines == []


@pytest.mark.parametrize("what", ["missing", "a file"])
def test_a_tmp_upload_dir_the_worker_cannot_use_is_said_once_and_replaced(what, tmp_path):
    where = tmp_path / "spool"
    if what == "a file":
        where.write_text("not a directory")
    log = Log()
    settings = startup.usable_spool_dir(Settings(tmp_upload_dir=str(where), threads=3), log)
    assert settings.tmp_upload_dir is None and settings.threads == 3  # the default directory
    assert log.lines == [f"WARNING tmp_upload_dir {str(where)!r} is not a directory this worker "
                         f"(uid {os.geteuid()}) can create files in: request bodies spool to "
                         f"{tempfile.gettempdir()} instead"]
