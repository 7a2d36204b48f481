"""Table-driven cases for the body spool and the settings built from gunicorn's Config."""

from __future__ import annotations

import io
import os

import pytest
from gunicorn.config import Config

from gunicorn_aiowsgi import settings as settings_mod
from gunicorn_aiowsgi.body import BodySpool
from gunicorn_aiowsgi.errors import InsufficientStorage, PayloadTooLarge
from gunicorn_aiowsgi.settings import Settings, SettingsError, from_cfg


@pytest.mark.parametrize("chunks, memory_limit, spooled", [
    ([], 10, False),
    ([b"abc"], 10, False),
    ([b"abcde", b"fghij"], 10, False),
    ([b"abcde", b"fghijk"], 10, True),
    ([b"x" * 100], 10, True),
])
def test_spool_memory_then_file(chunks, memory_limit, spooled, tmp_path):
    spool = BodySpool(Settings(body_memory_limit=memory_limit, tmp_upload_dir=str(tmp_path)))
    for chunk in chunks:
        spool.write(chunk)
    body = spool.finish()
    assert spool.spooled is spooled
    assert isinstance(body, io.BytesIO) is not spooled
    assert body.read() == b"".join(chunks)
    assert spool.size == sum(map(len, chunks))
    spool.close()
    assert os.listdir(tmp_path) == []  # an unnamed temporary file: nothing left behind


def test_spool_max_body_size():
    spool = BodySpool(Settings(max_body_size=5))
    spool.write(b"12345")
    with pytest.raises(PayloadTooLarge):
        spool.write(b"6")


def test_spool_disk_full():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")

    class FullDisk(BodySpool):
        __slots__ = ()

        def _open(self):
            return open("/dev/full", "wb", buffering=0)  # every write fails with ENOSPC

    spool = FullDisk(Settings(body_memory_limit=0))
    spool.write(b"data")  # held until the batch fills or the body ends
    with pytest.raises(InsufficientStorage):
        spool.finish()


def test_write_all_many_small_chunks(tmp_path):
    from gunicorn_aiowsgi.body import IOV_BATCH, write_all
    chunks = [bytes([i % 256]) * (i % 7 + 1) for i in range(IOV_BATCH * 3 + 5)]
    with open(tmp_path / "f", "wb") as f:
        write_all(f.fileno(), chunks)
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)


@pytest.mark.parametrize("sizes", [[1 << 20, 1], [300_000] * 10, [7] * 5000])
def test_spooled_body_in_order(sizes, tmp_path):
    spool = BodySpool(Settings(body_memory_limit=1000, tmp_upload_dir=str(tmp_path)))
    chunks = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    for chunk in chunks:
        spool.write(chunk)
    assert spool.finish().read() == b"".join(chunks)


def cfg(**values):
    c = Config()
    for k, v in values.items():
        c.set(k, v)
    return c


def test_from_cfg_defaults():
    s = from_cfg(cfg(), environ={})
    assert (s.threads, s.worker_connections, s.keepalive, s.limit_request_line) == (1, 1000, 2.0, 4094)
    assert s.forwarded_allow_ips == ("127.0.0.1", "::1") and len(s.forwarded_networks) == 2
    assert s.secure_scheme_headers == {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https",
                                       "X-FORWARDED-SSL": "on"}
    assert s.max_body_size == 0 and s.body_memory_limit == settings_mod.MIB
    assert s.effective_queue_limit == 64


@pytest.mark.parametrize("name, raw, field, value", [
    ("AIOWSGI_MAX_BODY_SIZE", "1048576", "max_body_size", 1048576),
    ("AIOWSGI_HEADER_TIMEOUT", "2.5", "header_timeout", 2.5),
    ("AIOWSGI_HEALTH_PATH", "/healthz", "health_path", "/healthz"),
    ("AIOWSGI_HEALTH_QUEUE_FULL", "yes", "health_queue_full", True),
    ("AIOWSGI_QUEUE_LIMIT", "0", "queue_limit", 0),
])
def test_from_env(name, raw, field, value):
    assert getattr(from_cfg(cfg(), environ={name: raw}), field) == value


@pytest.mark.parametrize("name, raw", [
    ("AIOWSGI_MAX_BODY_SIZE", "-5"), ("AIOWSGI_MAX_BODY_SIZE", "1M"), ("AIOWSGI_HEADER_TIMEOUT", "soon"),
    ("AIOWSGI_HEADER_TIMEOUT", "0"), ("AIOWSGI_HEALTH_PATH", "healthz"), ("AIOWSGI_HEALTH_QUEUE_FULL", "maybe"),
])
def test_bad_env_values(name, raw):
    with pytest.raises(SettingsError) as info:
        from_cfg(cfg(), environ={name: raw})
    assert name in str(info.value) or "must be" in str(info.value)


def test_tmp_upload_dir_must_exist(tmp_path):
    with pytest.raises(SettingsError):
        from_cfg(cfg(tmp_upload_dir=str(tmp_path / "missing")), environ={})


def test_settings_are_frozen():
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().threads = 5  # type: ignore[misc]
