"""Packaging: the gunicorn.workers entry points, the version in one place, py.typed."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from server import Gunicorn, request

import gunicorn_aiowsgi

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("uri, cls", [("egg:gunicorn-aiowsgi#aiowsgi", "Worker"),
                                      ("egg:gunicorn-aiowsgi#aiowsgi_uvloop", "UVLoopWorker")])
def test_egg_worker_uri_serves(uri, cls):
    with Gunicorn("apps:hello", worker_class=uri) as srv:
        assert request(srv, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")[2] == b"Hello, world!\n"
        assert f"Using worker: {uri}" in srv.log()
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="gunicorn.workers")}
    assert eps[uri.rpartition("#")[2]] == f"gunicorn_aiowsgi:{cls}"


def test_version_in_one_place():
    assert importlib.metadata.version("gunicorn-aiowsgi") == gunicorn_aiowsgi.__version__
    changelog = (Path(__file__).resolve().parents[2] / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog or f"## [{gunicorn_aiowsgi.__version__}]" in changelog


def test_py_typed_is_shipped():
    assert (Path(gunicorn_aiowsgi.__file__).parent / "py.typed").exists()
