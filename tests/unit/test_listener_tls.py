"""The TLS context new connections get (listener.TlsContexts): rebuilt when its files change."""

from __future__ import annotations

import pytest
from memory import Log

from gunicorn_aiowsgi import listener
from gunicorn_aiowsgi.listener import TlsContexts


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(listener, "TLS_RELOAD_CHECK", 0.0)  # look at every connection
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("cert 1")
    key.write_text("key 1")
    return cert, key


class Builder:
    """Builds a "context" from the files as they are now; fails while they do not match."""

    def __init__(self, cert, key) -> None:
        self.cert, self.key, self.calls = cert, key, 0

    def __call__(self) -> str:
        self.calls += 1
        cert, key = self.cert.read_text(), self.key.read_text()
        if cert.split()[1] != key.split()[1]:
            raise ValueError("key values mismatch")
        return cert


def test_unchanged_files_keep_the_context_built_once(files):
    build = Builder(*files)
    tls = TlsContexts(build, [str(f) for f in files], Log())
    assert [tls.current() for _ in range(3)] == ["cert 1"] * 3 and build.calls == 1


def test_a_renewal_is_picked_up_and_a_half_written_one_waits(files):
    cert, key = files
    build, log = Builder(cert, key), Log()
    tls = TlsContexts(build, [str(cert), str(key)], log)
    cert.write_text("cert 22")                  # the new certificate, the old key still there
    assert tls.current() == "cert 1"            # the old context serves meanwhile
    assert tls.current() == "cert 1"
    assert [level for level, _ in log.lines] == ["exception"]  # said once, not per connection
    key.write_text("key 22")
    assert tls.current() == "cert 22"
    assert log.lines[-1][0] == "info"


def test_no_files_named_means_nothing_to_look_at(files):
    build = Builder(*files)
    tls = TlsContexts(build, ["", None], Log())  # type: ignore[list-item]
    assert tls.current() == "cert 1" and build.calls == 1
