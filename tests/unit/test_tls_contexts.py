"""The TLS context new connections get (tls.TlsContexts): rebuilt in a thread when its files
change, or, with an ssl_context hook, when it is old; the last good one serves meanwhile."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import pytest
from gunicorn.config import Config
from inloop import until
from memory import Log

from gunicorn_aiowsgi import tls as tls_mod
from gunicorn_aiowsgi.tls import (
    TLS_HOOK_REFRESH,
    TlsContexts,
    TlsState,
    hook_refresh,
    watched_files,
)

# Failure detection only: how long a rebuild in its thread may take before the test fails.
WAIT = 10.0


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(tls_mod, "TLS_RELOAD_CHECK", 0.0)  # look at every connection
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


async def connect(tls: TlsContexts) -> Any:
    """The context a new connection gets, as the listener asks for it."""
    context = tls.current()
    return context if context is not None else await asyncio.wait_for(tls.fresh(), WAIT)


def test_unchanged_files_keep_the_context_built_once(files):
    async def test() -> None:
        build = Builder(*files)
        tls = TlsContexts(asyncio.get_running_loop(), build, [str(f) for f in files], Log())
        assert [await connect(tls) for _ in range(3)] == ["cert 1"] * 3 and build.calls == 1

    asyncio.run(test())


def test_a_renewal_is_picked_up_and_a_half_written_one_waits(files):
    async def test() -> None:
        cert, key = files
        build, log = Builder(cert, key), Log()
        tls = TlsContexts(asyncio.get_running_loop(), build, [str(cert), str(key)], log)
        cert.write_text("cert 22")                  # the new certificate, the old key still there
        assert await connect(tls) == "cert 1"       # the old context serves meanwhile
        assert await connect(tls) == "cert 1"
        assert [level for level, _ in log.lines] == ["error"]  # said once, not per connection
        key.write_text("key 22")
        assert await connect(tls) == "cert 22"      # the first connection after it gets it
        assert log.lines[-1][0] == "info"

    asyncio.run(test())


def test_no_files_named_means_nothing_to_look_at(files):
    async def test() -> None:
        build = Builder(*files)
        tls = TlsContexts(asyncio.get_running_loop(), build, ["", None], Log())  # type: ignore[list-item]
        assert await connect(tls) == "cert 1" and build.calls == 1

    asyncio.run(test())


def test_the_ca_file_is_watched_with_the_certificate_and_key():
    cfg = Config()
    cfg.set("certfile", "/c.pem")
    cfg.set("keyfile", "/k.pem")
    assert watched_files(cfg) == ["/c.pem", "/k.pem"]
    cfg.set("ca_certs", "/ca.pem")
    assert watched_files(cfg) == ["/c.pem", "/k.pem", "/ca.pem"]


def hook(conf: Any, default_ssl_context_factory: Callable[[], Any]) -> Any:
    return default_ssl_context_factory()


def test_only_an_ssl_context_hook_of_the_users_rebuilds_on_a_clock():
    cfg = Config()
    assert hook_refresh(cfg) is None  # gunicorn's default hook reads only the watched files
    cfg.set("ssl_context", hook)
    assert hook_refresh(cfg) == TLS_HOOK_REFRESH


def test_with_a_hook_an_old_context_is_rebuilt_and_a_failing_hook_keeps_the_last_good_one(files):
    outcomes = ["first", "second", ValueError("CRL half-written"), ValueError("again"), "third"]

    def build() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def test() -> None:
        log = Log()
        tls = TlsContexts(asyncio.get_running_loop(), build, [], log, refresh=0.0)
        assert await connect(tls) == "second"   # old already (refresh 0): rebuilt for it
        assert log.lines == []                  # nothing changed that is worth a line
        assert await connect(tls) == "second"   # the hook fails: the last good one serves
        assert await connect(tls) == "second"
        assert [level for level, _ in log.lines] == ["error"]  # once, not per failure
        assert await connect(tls) == "third"
        assert log.lines[-1] == ("info", "TLS context rebuilt (loadable again): new connections use it")

    asyncio.run(test())


def test_a_rebuild_that_hangs_holds_new_connections_no_longer_than_the_wait(files, monkeypatch):
    monkeypatch.setattr(tls_mod, "TLS_BUILD_WAIT", 0.05)
    release, built = threading.Event(), ["first"]

    def build() -> str:
        if built:
            return built.pop()
        release.wait(WAIT)  # a hook stuck on the network
        return "late"

    async def test() -> None:
        tls = TlsContexts(asyncio.get_running_loop(), build, [], Log(), refresh=0.0)
        assert await connect(tls) == "first"    # waited TLS_BUILD_WAIT, then the previous one
        assert tls.state is TlsState.BUILDING
        assert tls.current() == "first"         # no waiting once it is overdue, no second build
        release.set()
        await until(lambda: tls.state is TlsState.READY, "the late rebuild")
        assert tls.context == "late"

    try:
        asyncio.run(test())
    finally:
        release.set()


def test_a_rebuild_that_never_returns_is_given_up_said_once_and_later_changes_rebuild(
        files, monkeypatch):
    """One hook call stuck for good (a CRL fetch that hangs) must not end reloading for the
    worker's life: past TLS_BUILD_STUCK it is said in the log and given up, the next change of
    the files is built, and the stuck call's late answer is dropped."""
    monkeypatch.setattr(tls_mod, "TLS_BUILD_WAIT", 0.01)
    monkeypatch.setattr(tls_mod, "TLS_BUILD_STUCK", 0.1)
    cert, key = files
    release, calls = threading.Event(), []

    def build() -> str:
        calls.append(cert.read_text())
        if len(calls) == 2:  # the first rebuild hangs
            release.wait(WAIT)
            return "late"
        return cert.read_text()

    async def test() -> None:
        log = Log()
        tls = TlsContexts(asyncio.get_running_loop(), build, [str(cert)], log)
        cert.write_text("cert 2")
        assert await connect(tls) == "cert 1"  # the rebuild hangs: the previous one serves
        await asyncio.sleep(0.15)              # past TLS_BUILD_STUCK
        cert.write_text("cert 3")
        await until(lambda: tls.current() == "cert 3", "the next change to be built")
        assert [level for level, line in log.lines if "still running" in line] == ["error"]
        release.set()
        await until(lambda: len(calls) == 3 and tls.state is TlsState.READY, "the late answer")
        await asyncio.sleep(0.05)
        assert tls.context == "cert 3"         # the given-up rebuild's answer came too late

    try:
        asyncio.run(test())
    finally:
        release.set()


def test_a_hook_that_raises_systemexit_in_its_thread_ends_the_rebuild(files):
    """A BaseException from the hook (sys.exit in it) still reports back: the rebuild fails,
    the previous context serves, and the state is READY again."""
    cert, key = files
    built = ["cert 1"]

    def build() -> str:
        if built:
            return built.pop()
        raise SystemExit(1)

    async def test() -> None:
        log = Log()
        tls = TlsContexts(asyncio.get_running_loop(), build, [str(cert)], log)
        cert.write_text("cert 2")
        assert await connect(tls) == "cert 1"
        await until(lambda: tls.state is TlsState.READY, "the failed rebuild to report")
        assert [level for level, line in log.lines if "cannot be rebuilt" in line] == ["error"]

    asyncio.run(test())
