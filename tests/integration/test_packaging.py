"""Packaging: the package as users install it (a built wheel in a clean virtualenv), the
gunicorn.workers entry points, the version in one place, py.typed, and the README's support table
against tox.ini."""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from server import ROOT, TESTS, Gunicorn, request

import gunicorn_aiowsgi

pytestmark = pytest.mark.timeout(180)

PACKAGE = Path(gunicorn_aiowsgi.__file__).parent


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
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog or f"## [{gunicorn_aiowsgi.__version__}]" in changelog


def test_py_typed_is_shipped():
    assert (PACKAGE / "py.typed").exists()


# -- the built wheel, installed as a user installs it --------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`python -m build` from the checkout: the sdist, then the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=170)
    (built,) = out.glob("gunicorn_aiowsgi-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A clean virtualenv with the wheel installed (--no-deps): its dependencies come from this
    environment's site-packages, listed after the venv's own, never from the checkout."""
    where = tmp_path_factory.mktemp("venv")
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    purelib = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    # Installed first, into an empty venv: with this environment's packages in view, pip would
    # find gunicorn-aiowsgi installed there already and install nothing.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    # A plain path line: the .pth files there (this checkout's editable install) are not run.
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "zz_test_deps.pth").write_text("\n".join(sorted(paths)) + "\n")
    return python


def clean_env() -> dict[str, str]:
    """The test apps importable; the checkout (ROOT) not."""
    return {"PYTHONPATH": str(TESTS)}


def test_the_wheel_holds_every_module_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"gunicorn_aiowsgi/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*")
                if p.suffix == ".py" or p.name == "py.typed"}
    assert expected - names == set()


def test_the_installed_wheel_is_what_runs(installed):
    out = subprocess.check_output(
        [str(installed), "-c", "import gunicorn_aiowsgi, json, pathlib; "
         "p = pathlib.Path(gunicorn_aiowsgi.__file__).parent; "
         "print(json.dumps([str(p), sorted(x.relative_to(p).as_posix() for x in p.rglob('*') "
         "if x.suffix in ('.py', '.typed'))]))"],
        text=True, cwd=str(TESTS), env={**os.environ, **clean_env()})
    where, names = json.loads(out)
    assert Path(where).is_relative_to(installed.parent.parent)  # not the checkout
    assert names == sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
                           if p.suffix in (".py", ".typed"))


@pytest.mark.parametrize("worker_class", ["gunicorn_aiowsgi.Worker", "egg:gunicorn-aiowsgi#aiowsgi",
                                          "gunicorn_aiowsgi.UVLoopWorker"])
def test_the_installed_wheel_serves(installed, worker_class):
    with Gunicorn("apps:hello", worker_class=worker_class, python=str(installed),
                  env=clean_env()) as srv:
        assert request(srv, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")[2] == b"Hello, world!\n"
        assert f"Using worker: {worker_class}" in srv.log()


# -- the support table -----------------------------------------------------------------------
def tox_matrix() -> dict[str, dict[str, str]]:
    """tox.ini's pinned environments: env -> {python, gunicorn, aiohttp, uvloop} ("newest": no pin)."""
    ini = configparser.ConfigParser()
    ini.read(ROOT / "tox.ini")
    matrix = {}
    for section in ini.sections():
        env = section.partition("testenv:")[2]
        if not env or env in ("lint", "type"):
            continue
        pins = dict(re.findall(r"^\s*([\w-]+)==(\S+)", ini[section].get("deps", ""), re.M))
        python = ini[section]["base_python"].removeprefix("python")
        matrix[env] = {"python": python, **{name: pins.get(name, "newest")
                                            for name in ("gunicorn", "aiohttp", "uvloop")}}
    return matrix


def readme_matrix() -> dict[str, dict[str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Supported versions"):]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", section, re.M)
    return {env: dict(zip(("python", "gunicorn", "aiohttp", "uvloop"), (c.strip() for c in cells)))
            for env, *cells in rows}


def test_the_readme_support_table_is_what_tox_runs():
    assert readme_matrix() == tox_matrix()
    assert {"lowest", "highest"} <= set(tox_matrix())
