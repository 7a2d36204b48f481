"""What is checked and said before serving: the worker's settings and TLS files once in the master, before any fork; in each worker at start, tmp_upload_dir (as its user) and the settings aiohttp cannot honour."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from typing import Any

from .settings import Settings, SettingsError, from_cfg, gunicorn_setting
from .tls import gunicorn_context

# gunicorn settings aiohttp (or this worker) cannot honour: (setting, is it set?, what happens).
# Said once at startup, in the log, never silently ignored (README settings table, same words).
UNSUPPORTED: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("permit_obsolete_folding", bool, "aiohttp's parser refuses folded header lines with 400"),
    ("strip_header_spaces", bool, "aiohttp's parser refuses a space before ':' with 400"),
    ("permit_unconventional_http_method", bool,
     "aiohttp's parser (llhttp) refuses methods outside its list, and lower-case ones, with 400"),
    ("permit_unconventional_http_version", bool,
     "aiohttp's parser refuses HTTP versions other than 1.0 and 1.1 with 400"),
    ("casefold_http_method", bool,
     "aiohttp's parser refuses lower-case methods with 400 before they could be upper-cased"),
    ("protocol", lambda value: value not in (None, "http"),
     "only HTTP is spoken; uwsgi clients will get 400s"),
    ("http_protocols", lambda value: "h2" in str(value),
     "HTTP/2 is not served; TLS ALPN offers http/1.1 only"),
    ("http2_cleartext", lambda value: value not in (None, "off", False), "h2c is not served"),
    ("http_parser", lambda value: value not in (None, "auto"),
     "requests are parsed by aiohttp's parser, not by gunicorn's"),
    ("tolerate_dangerous_framing", bool,  # gunicorn 22.0 only
     "aiohttp's parser refuses a request with both Transfer-Encoding and Content-Length with 400"),
)


def warn_unsupported(cfg: Any, log: Any) -> None:
    """Settings aiohttp's parser cannot honour: said at each worker's start, never silently
    ignored."""
    for name, is_set, what in UNSUPPORTED:
        value = gunicorn_setting(cfg, name)  # None: this gunicorn lacks it
        if is_set(value):
            log.warning("%s is set but not supported by gunicorn_aiowsgi: %s (%s=%r)",
                        name, what, name, value)


def check_in_master(cfg: Any) -> Settings:
    """What every worker's start would refuse, found once, in the master (gunicorn calls the
    worker class's check_config there with raw_env already in os.environ). Raises SettingsError
    saying which setting and why."""
    settings = from_cfg(cfg)
    if settings.is_ssl:
        check_tls(cfg)
    return settings


def check_tls(cfg: Any) -> None:
    """Build the TLS context once as the workers will (gunicorn's ssl_context, the hook
    included): a certificate or key that cannot be loaded is said now, in one line, rather than
    by each worker's start in turn."""
    try:
        gunicorn_context(cfg)
    except Exception as exc:  # noqa: BLE001 - a file, a password or the hook: said as it is
        raise SettingsError(f"cannot build the TLS context (certfile {cfg.certfile!r}, keyfile "
                            f"{cfg.keyfile!r}): {type(exc).__name__}: {exc}") from None


def readable_as_worker(build: Callable[[], Any]) -> Any:
    """Build a worker's TLS contexts (`build`), running as its user (--user): a file the master
    could read and this user cannot (a root-only key) is a setting no worker will ever start
    with, so the master stops with one line (gunicorn's boot error), rather than a worker
    crashing and respawning in a loop. Anything else, a file caught half-written during a
    certificate renewal, is a crash the master heals by starting another worker."""
    try:
        return build()
    except PermissionError as exc:
        raise SettingsError(f"a TLS file cannot be read by the worker's user (uid {os.geteuid()}): "
                            f"{exc}") from None


def writable(directory: str) -> bool:
    """Whether this process may create files in `directory`."""
    return os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)


def usable_spool_dir(settings: Settings, log: Any) -> Settings:
    """The settings with a tmp_upload_dir this worker can use, checked once it runs as its user
    (--user). gunicorn's doc says the directory may disappear, and gunicorn's own workers never
    use it: one this process cannot create files in (gone, another user's) is said once, and
    bodies spool to the default temporary directory, rather than every large upload getting 500
    or the worker not starting."""
    configured = settings.tmp_upload_dir
    if not configured or writable(configured):
        return settings
    log.warning("tmp_upload_dir %r is not a directory this worker (uid %d) can create files in: "
                "request bodies spool to %s instead", configured, os.geteuid(),
                tempfile.gettempdir())
    return dataclasses.replace(settings, tmp_upload_dir=None)
