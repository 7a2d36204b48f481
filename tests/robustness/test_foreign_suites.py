"""Other WSGI servers' functional suites, run against our worker and against gunicorn's gthread.

- waitress's tests/test_functional.py with its fixture apps (foreign_waitress.py adapts it),
- werkzeug's tests/test_serving.py with its live apps (foreign_werkzeug.py adapts it),

both from their sdists, fetched at test time. The four runs (two suites, two workers) go in
parallel subprocesses. At least as many tests must pass with our worker as with gthread, and
every test that fails with ours must be one explained below.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from server import ROOT, TESTS

from robustness.sdists import sdist

pytestmark = pytest.mark.timeout(420)

OURS, GTHREAD = "gunicorn_aiowsgi.Worker", "gthread"
WAITRESS = "3.0.2"
WERKZEUG = importlib.metadata.version("werkzeug")  # the one the live apps import

_ERROR_PAGE = ("error answers are gunicorn's (HTTP/1.1 status line, HTML page, no Date or Server), "
               "not waitress's (request's version, text/plain message)")
_STR_BODY = ("the app writes/yields str: the worker refuses it before sending anything (500 and a "
             "log line); waitress and gthread send the head first, then fail")

# waitress test (class without its Tcp/Unix prefix) -> why it fails with our worker.
WAITRESS_EXPLAINED = {
    **{f"EchoTests::{name}": "the Server header is gunicorn's; the test expects 'waitress'"
       for name in ("test_date_and_server", "test_proxy_headers")},
    "EchoTests::test_keepalive_http10_explicit":
        "an HTTP/1.0 keep-alive answer says `Connection: keep-alive`, gunicorn's spelling (the "
        "value is case-insensitive, RFC 9110 section 7.6.1); the test expects `Keep-Alive`",
    **{f"EchoTests::{name}": _ERROR_PAGE for name in (
        "test_bad_host_header", "test_broken_chunked_encoding",
        "test_broken_chunked_encoding_invalid_hex", "test_broken_chunked_encoding_missing_chunk_end")},
    **{f"InternalServerErrorTests::{name}": _ERROR_PAGE for name in (
        "test_after_start_response_http10", "test_after_start_response_http11",
        "test_after_start_response_http11_close", "test_before_start_response_http_10",
        "test_before_start_response_http_11", "test_before_start_response_http_11_close")},
    **{f"InternalServerErrorTestsWithTraceback::{name}":
       "waitress's expose_tracebacks option (traceback in the 500 page) has no counterpart"
       for name in ("test_expose_tracebacks_http_10", "test_expose_tracebacks_http_11")},
    "InternalServerErrorTests::test_after_write_cb": _STR_BODY,
    "InternalServerErrorTests::test_in_generator": _STR_BODY,
    "EchoTests::test_broken_chunked_encoding_invalid_extension":
        "llhttp accepts the empty extension value `invalid=`; the chunked body is then simply "
        "incomplete and the connection is closed after AIOWSGI_BODY_TIMEOUT, not answered 400",
    **{f"NoContentLengthTests::{name}":
       "waitress adds a Content-Length to a list response that has none; gunicorn's workers "
       "chunk it (HTTP/1.1) or close (HTTP/1.0)" for name in ("test_http10_list", "test_http11_list")},
    "FileWrapperTests::test_filelike_longcl_http11":
        "the app declares a Content-Length longer than its file: the worker sends the app's "
        "header and closes after the short body; waitress rewrites the header",
    "TooLargeTests::test_request_body_too_large_chunked_encoding":
        "the chunk extension `20;` (empty name) is refused by llhttp (400) before the body "
        "reaches AIOWSGI_MAX_BODY_SIZE (413)",
    **{f"TooLargeTests::{name}":
       "waitress's max_request_header_size (431 for the stray body read as a head) has no "
       "counterpart: the stray bytes get 400 as a malformed request" for name in (
           "test_request_body_too_large_with_no_cl_http10_keepalive",
           "test_request_body_too_large_with_no_cl_http11",
           "test_request_body_too_large_with_wrong_cl_http10_keepalive",
           "test_request_body_too_large_with_wrong_cl_http11", "test_request_headers_too_large_http11")},
}

WERKZEUG_EXPLAINED = {
    "test_serving::test_double_slash_path":
        "PATH_INFO keeps the request's //double-slash (RFC 3986); werkzeug's server collapses it",
    "test_serving::test_reloader_sys_path[stat]":
        "waits for werkzeug's own reloader log lines; gunicorn's --reload logs differently",
    "test_serving::test_chunked_request[False]":
        "a chunked body gets CONTENT_LENGTH (its de-chunked length; DEVIATIONS.md)",
    "test_serving::test_chunked_request[True]":
        "Content-Length with Transfer-Encoding is refused with 400 (request smuggling guard)",
    "test_serving::test_multiple_headers_concatenated":
        "field values lose trailing whitespace (RFC 9110 section 5.5), as in gunicorn",
    "test_serving::test_multiline_header_folding": "obs-fold is refused with 400 (llhttp)",
    "test_serving::test_streaming_close_response[]":
        "a streamed HTTP/1.1 response is chunked and kept alive, not close-delimited",
    "test_serving::test_streaming_close_response[crash]":
        "the app fails mid-stream: the chunked body is cut short (IncompleteRead), as "
        "test_streaming_chunked_truncation expects",
}


def waitress_run(tree: Path, worker: str, xml: Path) -> subprocess.Popen:
    env = {**os.environ, "AIOWSGI_FOREIGN_WORKER": worker, "AIOWSGI_FOREIGN_SDIST": str(tree),
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), str(tree / "src")])}
    cmd = [sys.executable, "-m", "pytest", "tests/test_functional.py", "-p",
           "robustness.foreign_waitress", "-o", "addopts=", "-p", "no:cacheprovider", "-q",
           "--timeout", "30", f"--junitxml={xml}"]
    return subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def werkzeug_run(tree: Path, rundir: Path, worker: str, xml: Path) -> subprocess.Popen:
    """test_serving.py and live_apps/ copied from the sdist, beside our conftest."""
    rundir.mkdir()
    shutil.copy(tree / "tests" / "test_serving.py", rundir)
    shutil.copytree(tree / "tests" / "live_apps", rundir / "live_apps")
    (rundir / "conftest.py").write_text("from robustness.foreign_werkzeug import *  # noqa: F403\n")
    (rundir / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "AIOWSGI_FOREIGN_WORKER": worker, "AIOWSGI_FOREIGN_RUNDIR": str(rundir),
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    cmd = [sys.executable, "-m", "pytest", "test_serving.py", "-m", "dev_server", "-p",
           "no:cacheprovider", "-q", "--timeout", "60", f"--junitxml={xml}"]
    return subprocess.Popen(cmd, cwd=rundir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def outcomes(xml: Path) -> dict[str, bool]:
    """test id -> passed, from a junit XML report (skipped tests left out)."""
    out = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("classname", "").split(".")[-1] + "::" + case.get("name", "")
        children = {child.tag for child in case}
        if "skipped" not in children:
            out[name] = not children & {"failure", "error"}
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], dict[str, bool]]:
    where = tmp_path_factory.mktemp("foreign")
    waitress, werkzeug = sdist("waitress", WAITRESS), sdist("werkzeug", WERKZEUG)
    runs = {}
    for worker in (OURS, GTHREAD):
        tag = worker.split(".")[0]
        runs["waitress", worker] = (waitress_run(waitress, worker, where / f"waitress-{tag}.xml"),
                                    where / f"waitress-{tag}.xml")
        runs["werkzeug", worker] = (werkzeug_run(werkzeug, where / f"werkzeug-{tag}", worker,
                                                 where / f"werkzeug-{tag}.xml"),
                                    where / f"werkzeug-{tag}.xml")
    try:
        for proc, _xml in runs.values():
            proc.wait(360)
    finally:
        for proc, _xml in runs.values():
            if proc.poll() is None:
                # SIGINT: pytest stops, and its teardown stops the masters it started.
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return {key: outcomes(xml) for key, (_proc, xml) in runs.items()}


def failing(results, suite: str) -> set[str]:
    return {name for name, passed in results[suite, OURS].items() if not passed}


def test_waitress_failures_are_explained(results):
    ours = results["waitress", OURS]
    assert len(ours) > 100, "waitress's suite did not run"
    unexplained = {n for n in failing(results, "waitress")
                   if n.removeprefix("Tcp").removeprefix("Unix") not in WAITRESS_EXPLAINED}
    assert not unexplained, sorted(unexplained)


def test_werkzeug_failures_are_explained(results):
    assert len(results["werkzeug", OURS]) >= 15, "werkzeug's serving tests did not run"
    unexplained = failing(results, "werkzeug") - set(WERKZEUG_EXPLAINED)
    assert not unexplained, sorted(unexplained)


def test_at_least_as_many_pass_as_with_gthread(results):
    summary = {f"{suite}/{worker}": sum(outcome.values())
               for (suite, worker), outcome in results.items()}
    ours = sum(sum(results[s, OURS].values()) for s in ("waitress", "werkzeug"))
    theirs = sum(sum(results[s, GTHREAD].values()) for s in ("waitress", "werkzeug"))
    print("passing tests:", summary)  # shown with -s, and in the failure message
    assert ours >= theirs, summary
    for suite in ("waitress", "werkzeug"):  # every test ran under both
        assert set(results[suite, OURS]) == set(results[suite, GTHREAD]), suite
