"""wsgiref.validate around every fixture app of the robustness suite.

Every well-behaved app in robust_apps is a validator wrapper, so each request the suite sends
through it is checked against PEP 3333 on both sides (the conftest fixtures fail a test whose
worker log shows a validator assertion). `faults` is deliberately unwrapped: the validator
would stop its breaches before the worker saw them (shown here), and the worker's own
handling of them is what test_faults checks.
"""

from __future__ import annotations

import io

import pytest

from robustness import robust_apps

VALIDATED = ("validated_echo", "hello", "size", "big", "held", "router")
# echo dispatches to validated_echo but for the environs PEP 3333 cannot express (its docstring).
DISPATCHERS = ("echo",)
# Deliberate faults: `faults` breaks PEP 3333, `wrapped` hands file_wrapper text-mode and
# write-only files (which the worker must refuse before the head, test_review_framing.py).
UNWRAPPED = ("faults", "wrapped")
# Each breach and what the validator raises for it. It has no check for a second
# start_response without exc_info: only the worker catches /start-twice (test_faults).
PEP3333_BREACHES = {"/none": AssertionError, "/not-iterable": TypeError, "/str": AssertionError,
                    "/never-start": AssertionError}


def wsgi_apps() -> list[str]:
    """Public callables of robust_apps taking (environ, start_response)."""
    names = []
    for name, value in vars(robust_apps).items():
        code = getattr(value, "__code__", None)
        if name.startswith("_") or code is None or value.__module__ not in (robust_apps.__name__,
                                                                           "wsgiref.validate"):
            continue
        if code.co_varnames[:code.co_argcount] in (("environ", "start_response"), ("*args", "**kw")) \
                or value.__name__ == "lint_app":
            names.append(name)
    return sorted(names)


def test_every_fixture_app_is_validated_or_accounted_for():
    assert set(wsgi_apps()) == set(VALIDATED) | set(DISPATCHERS) | set(UNWRAPPED)
    for name in VALIDATED:
        app = getattr(robust_apps, name)
        assert app.__name__ == "lint_app" and app.__module__ == "wsgiref.validate", name


def run(app, path: str) -> list[bytes]:
    """Call `app` in-process for GET `path` with a minimal PEP 3333 environ."""
    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
               "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "RAW_URI": path, "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(), "wsgi.multithread": True,
               "wsgi.multiprocess": False, "wsgi.run_once": False}
    result = app(environ, lambda status, headers, exc_info=None: (lambda data: None))
    try:
        return list(result)
    finally:
        getattr(result, "close", lambda: None)()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # its own __del__
@pytest.mark.parametrize("path", sorted(PEP3333_BREACHES))
def test_validator_would_stop_each_deliberate_fault(path):
    wrapped = robust_apps.validator(robust_apps.faults)
    with pytest.raises(PEP3333_BREACHES[path]):
        run(wrapped, path)


def test_validator_misses_a_second_start_response_the_worker_refuses():
    assert run(robust_apps.validator(robust_apps.faults), "/start-twice") == [b"twice"]


def test_validator_passes_the_fault_apps_well_behaved_path():
    assert run(robust_apps.validator(robust_apps.faults), "/fine") == [b"fine\n"]


@pytest.mark.parametrize("path", ["/", "/big", "/size", "/echo"])
def test_validated_apps_pass_in_process(path, monkeypatch):
    monkeypatch.delenv("ROBUST_CALLS", raising=False)
    assert b"".join(run(robust_apps.router, path))
