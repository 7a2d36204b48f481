"""Table-driven cases for the settings built from gunicorn's Config (the body spool: test_body_spool.py)."""

from __future__ import annotations

import pytest
from gunicorn.config import Config

from gunicorn_aiowsgi import settings as settings_mod
from gunicorn_aiowsgi.settings import Settings, SettingsError, from_cfg


def cfg(**values):
    c = Config()
    for k, v in values.items():
        c.set(k, v)
    return c


def test_from_cfg_defaults():
    s = from_cfg(cfg(), environ={})
    assert (s.threads, s.worker_connections, s.keepalive, s.limit_request_line) == (1, 1000, 2.0, 4094)
    default_allow = tuple(cfg().forwarded_allow_ips)  # gunicorn 21 and 22: 127.0.0.1 alone
    assert s.forwarded_allow_ips == default_allow and len(s.forwarded_networks) == len(default_allow)
    assert s.secure_scheme_headers == {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https",
                                       "X-FORWARDED-SSL": "on"}
    assert s.max_body_size == settings_mod.GIB and s.body_memory_limit == settings_mod.MIB
    assert s.spool_budget == settings_mod.GIB and s.body_memory_budget == 64 * settings_mod.MIB
    assert s.effective_queue_limit == 64


@pytest.mark.parametrize("name, raw, field, value", [
    ("AIOWSGI_MAX_BODY_SIZE", "1048576", "max_body_size", 1048576),
    ("AIOWSGI_MAX_BODY_SIZE", "0", "max_body_size", 0),
    ("AIOWSGI_SPOOL_BUDGET", "4194304", "spool_budget", 4194304),
    ("AIOWSGI_SPOOL_BUDGET", "0", "spool_budget", 0),
    ("AIOWSGI_BODY_MEMORY_BUDGET", "8388608", "body_memory_budget", 8388608),
    ("AIOWSGI_BODY_MEMORY_BUDGET", "0", "body_memory_budget", 0),
    ("AIOWSGI_HEADER_TIMEOUT", "2.5", "header_timeout", 2.5),
    ("AIOWSGI_HEALTH_PATH", "/healthz", "health_path", "/healthz"),
    ("AIOWSGI_HEALTH_QUEUE_FULL", "yes", "health_queue_full", True),
    ("AIOWSGI_QUEUE_LIMIT", "0", "queue_limit", 0),
    ("AIOWSGI_STREAMED_BODIES", "0", "streamed_bodies", 0),
    ("AIOWSGI_STREAMED_BODIES", "3", "streamed_bodies", 3),
    ("AIOWSGI_SEND_TIMEOUT", "2.5", "send_timeout", 2.5),
    ("AIOWSGI_MAX_HEAD_SIZE", "32768", "max_head_size", 32768),
    ("AIOWSGI_MAX_HEAD_SIZE", "0", "max_head_size", 0),  # gunicorn's per-line limits alone
])
def test_from_env(name, raw, field, value):
    assert getattr(from_cfg(cfg(), environ={name: raw}), field) == value


@pytest.mark.parametrize("name, raw", [
    ("AIOWSGI_MAX_BODY_SIZE", "-5"), ("AIOWSGI_MAX_BODY_SIZE", "1M"), ("AIOWSGI_HEADER_TIMEOUT", "soon"),
    ("AIOWSGI_SPOOL_BUDGET", "-1"), ("AIOWSGI_SPOOL_BUDGET", "1G"), ("AIOWSGI_STREAMED_BODIES", "-2"),
    ("AIOWSGI_BODY_MEMORY_BUDGET", "-1"), ("AIOWSGI_BODY_MEMORY_BUDGET", "64M"),
    ("AIOWSGI_HEADER_TIMEOUT", "0"), ("AIOWSGI_HEALTH_PATH", "healthz"), ("AIOWSGI_HEALTH_QUEUE_FULL", "maybe"),
    # float() takes these, and "nan" passes every comparison by failing it
    ("AIOWSGI_HEADER_TIMEOUT", "nan"), ("AIOWSGI_BODY_TIMEOUT", "NaN"), ("AIOWSGI_REQUEST_TIMEOUT", "nan"),
    ("AIOWSGI_REQUEST_TIMEOUT", "inf"), ("AIOWSGI_BODY_TIMEOUT", "-inf"),
    ("AIOWSGI_WRITE_BUFFER", "0"),  # not "no limit": every streamed response would spin
    ("AIOWSGI_SEND_TIMEOUT", "0"), ("AIOWSGI_SEND_TIMEOUT", "nan"),  # a client-side timeout
    ("AIOWSGI_MAX_HEAD_SIZE", "12411"),  # below limit_request_line + limit_request_field_size + 128
    ("AIOWSGI_MAX_HEAD_SIZE", "64K"),
])
def test_bad_env_values(name, raw):
    with pytest.raises(SettingsError) as info:
        from_cfg(cfg(), environ={name: raw})
    assert name in str(info.value) or "must be" in str(info.value)


@pytest.mark.parametrize("threads, raw, effective", [
    (1, None, 0), (3, None, 0), (4, None, 1), (8, None, 2), (33, None, 8),  # a quarter, rounded down
    (8, "0", 0), (8, "8", 8), (1, "2", 2),  # the user's count, as given
])
def test_streamed_bodies_default_to_a_quarter_of_the_threads(threads, raw, effective):
    env = {} if raw is None else {"AIOWSGI_STREAMED_BODIES": raw}
    assert from_cfg(cfg(threads=threads), environ=env).effective_streamed_bodies == effective


def test_from_cfg_defaults_of_our_client_limits():
    s = from_cfg(cfg(), environ={})
    assert (s.send_timeout, s.max_head_size) == (60.0, 64 * 1024)


@pytest.mark.parametrize("line, field, smallest", [
    (4094, 8190, 4094 + 8190 + 128),     # gunicorn's defaults
    (0, 0, 8190 + 8190 + 128),           # 0: their maximum
    (20000, 100, 8190 + 100 + 128),      # a request line past 8190 means 8190 (aiohttp's)
    (100, 100, 328),
])
def test_the_head_limit_holds_a_request_line_and_a_field_at_gunicorns_limits(line, field, smallest):
    config = cfg(limit_request_line=line, limit_request_field_size=field)
    assert from_cfg(config, environ={}).min_head_size == smallest
    env = {"AIOWSGI_MAX_HEAD_SIZE": str(smallest)}
    assert from_cfg(config, environ=env).max_head_size == smallest
    with pytest.raises(SettingsError, match="AIOWSGI_MAX_HEAD_SIZE"):
        from_cfg(config, environ={"AIOWSGI_MAX_HEAD_SIZE": str(smallest - 1)})


def test_a_missing_tmp_upload_dir_is_no_settings_error(tmp_path):
    """gunicorn's doc says it may disappear: each worker checks it at start (startup.py) and
    spools elsewhere, rather than refusing to start."""
    missing = str(tmp_path / "missing")
    assert from_cfg(cfg(tmp_upload_dir=missing), environ={}).tmp_upload_dir == missing


def test_settings_are_frozen():
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().threads = 5  # type: ignore[misc]
