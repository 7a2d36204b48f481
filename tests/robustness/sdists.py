"""Other projects' source distributions, fetched from PyPI at test time (never copied into the repo).

`pip download --no-binary :all: --no-deps NAME==VERSION` into a cache under the system temp
directory, unpacked once; a file lock keeps parallel test runs from unpacking twice.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "aiowsgi-sdists"


def sdist(name: str, version: str) -> Path:
    """The unpacked source tree of NAME==VERSION (for example .../gunicorn-27.0.1)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for tree in CACHE.glob("*/"):
            if _matches(tree.name, name, version) and (tree / ".unpacked").exists():
                return tree
        archive = _download(name, version)
        with tarfile.open(archive) as tar:
            top = tar.getnames()[0].split("/")[0]
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
                tar.extractall(CACHE, filter="data")
            else:  # pragma: no cover - an sdist from PyPI, into our own cache
                tar.extractall(CACHE)  # noqa: S202
        tree = CACHE / top
        (tree / ".unpacked").touch()
        return tree


def _matches(dirname: str, name: str, version: str) -> bool:
    norm = name.lower().replace("-", "_")
    return dirname.lower().replace("-", "_") == f"{norm}_{version}"


def _download(name: str, version: str) -> Path:
    dest = CACHE / "archives"
    dest.mkdir(exist_ok=True)
    found = _archive(dest, name, version)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
           "--disable-pip-version-check", "-q", "-d", str(dest),
           f"{name}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    found = _archive(dest, name, version)
    if found is None:
        raise RuntimeError(f"pip download {name}=={version} failed:\n{result.stdout}\n{result.stderr}")
    return found


def _archive(dest: Path, name: str, version: str) -> Path | None:
    norm = name.lower().replace("-", "_")
    for path in dest.glob("*.tar.gz"):
        stem = path.name[: -len(".tar.gz")].lower().replace("-", "_")
        if stem == f"{norm}_{version}":
            return path
    return None
