"""The worker's settings: one frozen object built once from gunicorn's cfg and AIOWSGI_* variables."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
# gunicorn's largest request line and field line (its limits' maximum, and what 0 means here).
MAX_LINE = 8190
# A head's bytes besides its request-target and one field line: method, version, spaces, line
# ends (the request line's slack beside its target is 64 bytes, boundary.LINE_SLACK).
HEAD_SLACK = 128


class SettingsError(ValueError):
    """A setting has a value the worker cannot use; reported at startup, before serving."""


# Our own knobs. gunicorn's Config accepts no unknown settings, so these come from the
# environment: `-e AIOWSGI_MAX_BODY_SIZE=10485760`, `raw_env` in gunicorn.conf.py, or the
# process environment (Procfile, systemd Environment=, Kubernetes env:).
# name -> (field, kind, default)
ENV_SETTINGS: dict[str, tuple[str, str, Any]] = {
    "AIOWSGI_BODY_MEMORY_LIMIT": ("body_memory_limit", "bytes", 1 * MIB),
    "AIOWSGI_BODY_MEMORY_BUDGET": ("body_memory_budget", "bytes", 64 * MIB),
    "AIOWSGI_MAX_BODY_SIZE": ("max_body_size", "bytes", 1 * GIB),
    "AIOWSGI_SPOOL_BUDGET": ("spool_budget", "bytes", 1 * GIB),
    "AIOWSGI_STREAMED_BODIES": ("streamed_bodies", "count", -1),
    "AIOWSGI_HEADER_TIMEOUT": ("header_timeout", "seconds", 30.0),
    "AIOWSGI_BODY_TIMEOUT": ("body_timeout", "seconds", 60.0),
    "AIOWSGI_SEND_TIMEOUT": ("send_timeout", "seconds", 60.0),
    "AIOWSGI_MAX_HEAD_SIZE": ("max_head_size", "bytes", 64 * KIB),
    "AIOWSGI_WRITE_BUFFER": ("write_buffer", "bytes", 8 * MIB),
    "AIOWSGI_QUEUE_LIMIT": ("queue_limit", "count", -1),
    "AIOWSGI_HEALTH_PATH": ("health_path", "path", ""),
    "AIOWSGI_HEALTH_QUEUE_FULL": ("health_queue_full", "bool", False),
    "AIOWSGI_REQUEST_TIMEOUT": ("request_timeout", "seconds", 0.0),
}


@dataclass(frozen=True)
class Settings:
    """Everything the server reads per request, resolved once per worker process."""

    # -- from gunicorn's cfg ---------------------------------------------------------------
    threads: int = 1                       # app threads per worker (count)
    worker_connections: int = 1000         # open client connections per worker (count)
    keepalive: float = 2.0                 # idle keep-alive lifetime (seconds); 0 = no keep-alive
    graceful_timeout: float = 30.0         # drain time on TERM before a hard exit (seconds)
    timeout: float = 30.0                  # master heartbeat timeout (seconds)
    workers: int = 1                       # worker processes (count), for wsgi.multiprocess
    limit_request_line: int = 4094         # request line length (bytes); 0 = no limit (parser.py)
    limit_request_fields: int = 100        # header fields per request (count)
    limit_request_field_size: int = 8190   # one header field line (bytes)
    tmp_upload_dir: str | None = None      # where large bodies spool (directory)
    sendfile: bool = True                  # zero-copy file_wrapper responses (flag)
    is_ssl: bool = False                   # TLS on every listener (flag)
    secure_scheme_headers: Mapping[str, str] = field(default_factory=dict)  # UPPER name -> value
    forwarder_headers: frozenset[str] = frozenset()  # UPPER names allowed to hold "_"
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")  # trusted proxies (addresses)
    forwarded_networks: tuple[Any, ...] = ()  # the same, parsed (ip networks)
    header_map: str = "drop"               # what to do with "_" in header names (drop|refuse|dangerous)
    proxy_protocol: str = "off"            # PROXY preamble (off|v1|v2|auto)
    proxy_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")  # peers allowed to send it (addresses)
    proxy_networks: tuple[Any, ...] = ()   # the same, parsed (ip networks)
    casefold_http_method: bool = False     # upper-case the method (flag)
    strip_header_spaces: bool = False      # strip spaces before ":" (flag); aiohttp refuses them
    permit_obsolete_folding: bool = False  # accept obs-fold (flag); aiohttp refuses it
    script_name: str = ""                  # SCRIPT_NAME from the environment (path)
    # -- our own, from AIOWSGI_* ------------------------------------------------------------
    body_memory_limit: int = 1 * MIB       # request body kept in memory before spooling (bytes)
    # Bodies held in memory per worker at once (from their first byte to the end of their
    # response). Without it, worker_connections bodies just under the limit each would hold
    # that many MiB (1000 at the defaults); past it a body spools from its first byte.
    body_memory_budget: int = 64 * MIB     # request body bytes in memory per worker at once (bytes); 0 = no limit
    # waitress's default: an internet client cannot send an endless body; 0 = no limit.
    max_body_size: int = 1 * GIB           # largest accepted request body (bytes); 0 = no limit
    # Bodies on disk (or on their way) per worker at once. Without it, worker_connections
    # uploads of max_body_size each could fill the disk (1000 GiB per worker by default); equal
    # to max_body_size, so one upload of the largest size always fits an idle worker.
    spool_budget: int = 1 * GIB            # request body bytes spooled per worker at once (bytes); 0 = no limit
    # Large bodies an app thread may read while they arrive, instead of after the spool: each
    # holds a thread until its last byte, so a slow client can hold this many threads at most.
    streamed_bodies: int = -1              # per worker at once (count); -1 = threads // 4, 0 = always spool
    header_timeout: float = 30.0           # time to receive a complete request head (seconds)
    body_timeout: float = 60.0             # longest pause between request body reads (seconds)
    # nginx's send_timeout: a client that takes no response byte for this long while our output
    # waits for it is cut off, and the app thread writing to it is freed.
    send_timeout: float = 60.0             # longest wait for the client to take output (seconds)
    # gunicorn's limits bound each line and the count of fields (100 x 8190 bytes by default),
    # and aiohttp's parser keeps each field twice: a total bounds what one head can cost.
    max_head_size: int = 64 * KIB          # a request head, or trailers (bytes); 0 = no limit
    write_buffer: int = 8 * MIB            # response bytes in flight before the app thread waits (bytes)
    queue_limit: int = -1                  # requests waiting for a thread (count); -1 = max(64, 16 x threads), 0 = no limit
    health_path: str = ""                  # answered on the loop, 200/503 (path); "" = off
    health_queue_full: bool = False        # health path says 503 while the queue is full (flag)
    request_timeout: float = 0.0           # app time before a 504 (seconds); 0 = off

    @property
    def effective_queue_limit(self) -> int:
        """The queue bound in force: 0 means unbounded."""
        if self.queue_limit < 0:
            # Generous enough never to bite a healthy app; small enough that a stuck pool
            # answers fast 503s instead of queueing every connection's request.
            return max(64, 16 * self.threads)
        return self.queue_limit

    @property
    def effective_streamed_bodies(self) -> int:
        """Streamed bodies allowed at once: by default a quarter of the threads (none below 4),
        so slow uploads never hold more than that share of the pool."""
        if self.streamed_bodies < 0:
            return self.threads // 4
        return self.streamed_bodies

    @property
    def min_head_size(self) -> int:
        """The smallest max_head_size allowed: a request line and one field line at gunicorn's
        limits (0 counted as their maximum, 8190) must fit, or those limits would never be reached."""
        line = self.limit_request_line if 0 < self.limit_request_line <= MAX_LINE else MAX_LINE
        field = self.limit_request_field_size if self.limit_request_field_size > 0 else MAX_LINE
        return line + field + HEAD_SLACK


def _networks(values: list[str] | tuple[str, ...]) -> tuple[Any, ...]:
    nets = []
    for value in values:
        if value == "*":
            continue
        try:
            nets.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise SettingsError(f"not an address or network: {value!r}") from exc
    return tuple(nets)


def _parse_env(name: str, kind: str, raw: str) -> Any:
    try:
        if kind == "bytes" or kind == "count":
            value: Any = int(raw)
            if value < -1 or (kind == "bytes" and value < 0):
                raise ValueError
        elif kind == "seconds":
            value = float(raw)
            if not math.isfinite(value) or value < 0:  # "nan" compares False with everything
                raise ValueError
        elif kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
                raise ValueError
            value = raw.lower() in ("1", "true", "yes", "on")
        else:
            value = raw
            if value and not value.startswith("/"):
                raise ValueError
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind} value") from None
    return value


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for name, (attr, kind, _default) in ENV_SETTINGS.items():
        raw = environ.get(name)
        if raw is not None:
            values[attr] = _parse_env(name, kind, raw.strip())
    return values


def _proxy_mode(value: Any) -> str:
    # gunicorn before 24.1 has a boolean proxy_protocol, and True there means PROXY v1 only;
    # 24.1+ has off|v1|v2|auto (its own validator turns a True from the user into "auto").
    if value is True:
        return "v1"
    if value in (False, None):
        return "off"
    return str(value)


# What a gunicorn release that lacks a setting does, for each setting it may lack (21.2 is the
# oldest supported release). Read through `gunicorn_setting`, never by version number.
ABSENT: dict[str, Any] = {
    # gunicorn 21 maps a name with "_" like any other, joining it with its "-" twin: the
    # "dangerous" mapping of 22+ (21.2's http/wsgi.py: 'HTTP_' + name.replace('-', '_')).
    "header_map": "dangerous",
    "forwarder_headers": [],  # 21 and 22: no header is exempt from header_map
    # 21: no setting, and nothing to honour: aiohttp's parser refuses lower-case methods and
    # folded lines whatever gunicorn says (README: "Supported versions").
    "casefold_http_method": False,
    "permit_obsolete_folding": False,
}


def gunicorn_setting(cfg: Any, name: str) -> Any:
    """gunicorn's value of setting `name`; where the running gunicorn lacks the setting, the value
    that gives that release's behaviour (ABSENT), or None for a setting it never had."""
    if name in cfg.settings:  # feature detection: the settings differ from release to release
        return getattr(cfg, name)
    return ABSENT.get(name)


def from_cfg(cfg: Any, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from gunicorn's Config; raises SettingsError for unusable values."""
    env = os.environ if environ is None else environ

    def get(name: str) -> Any:
        return gunicorn_setting(cfg, name)

    allow = tuple(get("forwarded_allow_ips"))
    proxy_allow = tuple(get("proxy_allow_ips"))
    values: dict[str, Any] = dict(
        threads=max(1, int(get("threads"))),
        worker_connections=max(1, int(get("worker_connections"))),
        keepalive=float(get("keepalive")),
        graceful_timeout=float(get("graceful_timeout")),
        timeout=float(get("timeout")),
        workers=int(get("workers")),
        limit_request_line=int(get("limit_request_line")),
        limit_request_fields=int(get("limit_request_fields")),
        limit_request_field_size=int(get("limit_request_field_size")),
        tmp_upload_dir=get("tmp_upload_dir"),
        sendfile=get("sendfile") is not False,
        is_ssl=bool(cfg.is_ssl),  # a Config property (certfile or keyfile set), in every release
        secure_scheme_headers={k.upper(): v for k, v in get("secure_scheme_headers").items()},
        forwarder_headers=frozenset(h.upper() for h in get("forwarder_headers")),
        forwarded_allow_ips=allow,
        forwarded_networks=_networks(allow),
        header_map=get("header_map"),
        proxy_protocol=_proxy_mode(get("proxy_protocol")),
        proxy_allow_ips=proxy_allow,
        proxy_networks=_networks(proxy_allow),
        casefold_http_method=bool(get("casefold_http_method")),
        strip_header_spaces=bool(get("strip_header_spaces")),
        permit_obsolete_folding=bool(get("permit_obsolete_folding")),
        script_name=env.get("SCRIPT_NAME", ""),
    )
    values.update(_from_env(env))
    settings = Settings(**values)
    if settings.header_timeout == 0 or settings.body_timeout == 0 or settings.send_timeout == 0:
        raise SettingsError("AIOWSGI_HEADER_TIMEOUT, AIOWSGI_BODY_TIMEOUT and AIOWSGI_SEND_TIMEOUT "
                            "must be > 0")
    if 0 < settings.max_head_size < settings.min_head_size:
        raise SettingsError(f"AIOWSGI_MAX_HEAD_SIZE must be 0 or at least {settings.min_head_size} "
                            "(limit_request_line + limit_request_field_size + 128)")
    if settings.write_buffer == 0:  # not "no limit": a thread streaming would wait for ever
        raise SettingsError("AIOWSGI_WRITE_BUFFER must be > 0")
    # tmp_upload_dir is not checked here: gunicorn's doc says it may disappear, and gunicorn's
    # own workers never use it. Each worker checks it once it runs as its user (startup.py).
    return settings
