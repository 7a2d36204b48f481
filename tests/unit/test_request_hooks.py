"""Which per-request calls a worker makes (context.request_hooks), from gunicorn's own Config and
loggers, and what a pre_request hook's changes to req do (as under gthread, they reach the app).

gunicorn's default post_request, its default pre_request below debug level and its access log
when none is configured do nothing, and are skipped; anything configured is called.
"""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd
from test_appcall import RecordingChannel, RecordingLog

from gunicorn_aiowsgi.application import AppCall
from gunicorn_aiowsgi.context import access_logged, request_hooks
from gunicorn_aiowsgi.environ import Peer, build_environ
from gunicorn_aiowsgi.settings import Settings


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
    # On every gunicorn: 27 computes access_log_enabled; 21 to 26 ask cfg in each access() call.
    cfg, log = configured()
    assert request_hooks(cfg, log) == (None, None, None)


# What gives gunicorn's Logger.access somewhere to write, the same rule in gunicorn 21 to 27 (27
# computes it in setup(); ours, for the releases before, from the same settings). Syslog to a
# loopback UDP port: nothing needs to listen there.
SYSLOG = {"syslog": True, "syslog_addr": "udp://127.0.0.1:9"}
ACCESS_LOGGED = [
    ({"logconfig_dict": {"version": 1, "disable_existing_loggers": False}}, True),
    (SYSLOG, True),
    ({**SYSLOG, "disable_redirect_access_to_syslog": True}, False),
    ({"disable_redirect_access_to_syslog": True}, False),
]


@pytest.mark.parametrize("settings, logged", ACCESS_LOGGED,
                         ids=["logconfig_dict", "syslog", "syslog-not-redirected", "neither"])
def test_the_access_log_is_called_where_gunicorn_would_write_a_line(settings, logged) -> None:
    cfg, log = configured(**settings)
    assert access_logged(cfg, log) is logged
    assert request_hooks(cfg, log)[2] == (log.access if logged else None)


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


# -- what a pre_request hook changes on req reaches the app ----------------------------------
# gthread builds the environ from req after pre_request (wsgi.create), so a hook may add, strip
# or replace headers, rewrite the path, the query, the method or the scheme, wrap the body, or
# close the connection. Each case: the hook, the environ keys it changes (ABSENT: removed), and
# whether the response closes the connection. The request: GET /app/x?q=1 with a 4-byte body.
ABSENT = "<absent>"
FIELDS = ((b"Host", b"h"), (b"X-Secret", b"s"), (b"Content-Type", b"text/plain"),
          (b"Content-Length", b"4"))
TCP = Peer("10.0.0.7", "5555", "127.0.0.1", "8000", trusted=False)
UNIX = Peer("", None, None, None, trusted=True)
WRAPPED = io.BytesIO(b"wrapped")


def remove_secret(req: Any) -> None:
    for field in list(req.headers):
        if field[0] == "X-SECRET":
            req.headers.remove(field)


def setting(name: str, value: Any) -> Callable[[Any], None]:
    return lambda req: setattr(req, name, value)


def without(name: str) -> Callable[[Any], None]:
    return lambda req: setattr(req, "headers", [h for h in req.headers if h[0] != name])


MUTATIONS = [
    ("reads-only", lambda req: (req.method, req.path, list(req.headers)), {}, False),
    ("appends", lambda req: req.headers.append(("X-HOOK", "added")),
     {"HTTP_X_HOOK": "added"}, False),
    ("appends-a-repeat", lambda req: req.headers.append(("X-SECRET", "t")),
     {"HTTP_X_SECRET": "s,t"}, False),
    # gunicorn's create maps names as they are: a lower-case name stays lower-case.
    ("appends-lower-case", lambda req: req.headers.append(("x-low", "v")),
     {"HTTP_x_low": "v"}, False),
    ("strips-by-assignment", without("X-SECRET"), {"HTTP_X_SECRET": ABSENT}, False),
    ("removes-in-place", remove_secret, {"HTTP_X_SECRET": ABSENT}, False),
    ("replaces-all", setting("headers", [("HOST", "h"), ("X-ONLY", "1")]),
     {"HTTP_X_SECRET": ABSENT, "CONTENT_TYPE": ABSENT, "HTTP_X_ONLY": "1"}, False),
    ("changes-content-type", lambda req: req.headers.append(("CONTENT-TYPE", "text/x-hook")),
     {"CONTENT_TYPE": "text/x-hook"}, False),
    # CONTENT_LENGTH describes the body the server holds: the loop's key, whatever the hook says.
    ("strips-content-length", without("CONTENT-LENGTH"), {}, False),
    ("adds-script-name", lambda req: req.headers.append(("SCRIPT_NAME", "/app")),
     {"SCRIPT_NAME": "/app", "HTTP_SCRIPT_NAME": "/app", "PATH_INFO": "/x"}, False),
    ("rewrites-path", setting("path", "/caf%C3%A9"), {"PATH_INFO": "/caf\xc3\xa9"}, False),
    ("rewrites-query", setting("query", "a=1"), {"QUERY_STRING": "a=1"}, False),
    ("rewrites-uri", setting("uri", "/y?z"), {"RAW_URI": "/y?z"}, False),  # PATH_INFO is req.path's
    ("rewrites-method", setting("method", "POST"), {"REQUEST_METHOD": "POST"}, False),
    ("sets-scheme", setting("scheme", "https"), {"wsgi.url_scheme": "https"}, False),
    ("wraps-body", setting("body", WRAPPED), {"wsgi.input": WRAPPED}, False),
    ("forces-close", lambda req: req.force_close(), {}, True),
    ("says-connection-close", lambda req: req.headers.append(("CONNECTION", "close")),
     {"HTTP_CONNECTION": "close"}, True),
]


def serve(change: Callable[[Any], None] | None, peer: Peer = TCP,
          settings: Settings | None = None) -> tuple[dict, dict, AppCall, RecordingChannel]:
    """One request through AppCall with `change` as its pre_request hook (None: no hook):
    (the environ as the loop built it, the environ the app saw, the call, its channel)."""
    settings = settings or Settings()
    environ, _ = build_environ({}, settings, peer, "GET", "/app/x?q=1", (1, 1), FIELDS)
    environ["wsgi.input"] = io.BytesIO(b"body")
    events: list = []
    seen: dict = {}

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    hook = None if change is None else (lambda worker, req: change(req))
    server = SimpleNamespace(worker=None, pre_request=hook, post_request=None, access=None,
                             settings=settings, log=RecordingLog(events), can_sendfile=False)
    channel = RecordingChannel(events)
    call = AppCall(app, environ, channel, (1, 1), server, 0.0, FIELDS, peer, 1)  # type: ignore[arg-type]
    built = dict(environ)
    call.run()
    return built, seen, call, channel


def changes(before: dict, after: dict) -> dict:
    return {k: after.get(k, ABSENT) for k in before.keys() | after.keys()
            if before.get(k, ABSENT) is not after.get(k, ABSENT)
            and before.get(k, ABSENT) != after.get(k, ABSENT)}


@pytest.mark.parametrize("change, changed, closes", [m[1:] for m in MUTATIONS],
                         ids=[m[0] for m in MUTATIONS])
def test_what_the_hook_changes_reaches_the_app(change, changed, closes) -> None:
    built, seen, call, channel = serve(change)
    assert changes(built, seen) == changed
    assert channel.sent[0][:2] == ("head", "200 OK")
    assert call.head is not None and call.head.close is closes  # the loop: Connection: close
    assert call.body.closed  # the server's own body, whatever the hook wrapped it in


def test_a_hook_that_only_reads_builds_no_header_list() -> None:
    """gunicorn's default pre_request (at debug level) reads method and path: the record's
    headers are never built, and nothing is compared."""
    built, seen, call, _ = serve(lambda req: (req.method, req.path))
    assert call.req._headers is None and changes(built, seen) == {}


def test_no_hook_no_record() -> None:
    built, seen, call, _ = serve(None)
    assert call._req is None and changes(built, seen) == {}


def test_head_from_the_hook_has_no_body() -> None:
    """gunicorn's response frames by req.method, read after the hook."""
    _, _, _, channel = serve(setting("method", "HEAD"))
    assert channel.sent[0] == ("head", "200 OK", "none", b"")


@pytest.mark.parametrize("change, server", [
    (setting("headers", [("HOST", "hooked.example:8443")]), ("hooked.example", "8443")),
    (setting("scheme", "https"), ("h", "443")),
    (lambda req: req.headers.append(("X-HOOK", "1")), ("h", "80")),
], ids=["new-host", "https-default-port", "other-fields"])
def test_a_unix_sockets_server_name_follows_the_hooks_host(change, server) -> None:
    _, seen, _, _ = serve(change, UNIX)
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == server


def test_a_path_outside_the_hooks_script_name_is_a_500() -> None:
    _, seen, _, channel = serve(lambda req: req.headers.append(("SCRIPT_NAME", "/other")))
    assert seen == {} and channel.sent == [("error", 500)]
