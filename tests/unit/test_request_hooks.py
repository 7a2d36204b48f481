"""Which per-request calls a worker makes (context.request_hooks), from gunicorn's own Config and loggers.

gunicorn's default post_request, its default pre_request below debug level and its access log
when none is configured do nothing, and are skipped; anything configured is called.
"""

from __future__ import annotations

import logging

from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd

from gunicorn_aiowsgi.context import request_hooks


def configured(**settings: object) -> tuple[Config, Logger]:
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    log_class = Statsd if "statsd_host" in settings else Logger
    return cfg, log_class(cfg)


def pre(worker: object, req: object) -> None:
    pass


def post(worker: object, req: object, environ: object, resp: object) -> None:
    pass


def test_defaults_call_nothing() -> None:
    cfg, log = configured()
    pre_request, post_request, access = request_hooks(cfg, log)
    assert (pre_request, post_request) == (None, None)
    if getattr(Logger, "access_log_enabled", None) is not None:  # gunicorn 27 says so
        assert access is None
    else:  # before it, nothing tells whether an access log is configured: keep the call
        assert access == log.access


def test_configured_hooks_are_called() -> None:
    cfg, log = configured(pre_request=pre, post_request=post)
    assert request_hooks(cfg, log)[:2] == (pre, post)


def test_default_pre_request_logs_at_debug_level() -> None:
    cfg, log = configured(loglevel="debug")
    hook = request_hooks(cfg, log)[0]
    assert hook is cfg.pre_request and log.error_log.isEnabledFor(logging.DEBUG)


def test_access_log_when_configured(tmp_path) -> None:
    cfg, log = configured(accesslog=str(tmp_path / "access.log"))
    assert request_hooks(cfg, log)[2] == log.access


def test_statsd_times_every_request_without_an_access_log() -> None:
    cfg, log = configured(statsd_host="127.0.0.1:8125")
    assert request_hooks(cfg, log)[2] == log.access


def test_a_logger_class_of_ones_own_is_always_called() -> None:
    class Counting(Logger):
        def access(self, resp: object, req: object, environ: object, request_time: object) -> None:
            pass

    cfg = Config()
    log = Counting(cfg)
    assert request_hooks(cfg, log)[2] == log.access


def test_a_logger_class_with_its_own_debug_gets_the_default_pre_request() -> None:
    class Chatty(Logger):
        def debug(self, msg: object, *args: object, **kwargs: object) -> None:
            pass

    cfg = Config()
    log = Chatty(cfg)
    assert request_hooks(cfg, log)[0] is cfg.pre_request
