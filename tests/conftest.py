"""Fixtures every test folder shares. The helpers themselves live in tests/server.py (masters,
clients, waiting) and tests/sysinfo.py (/proc, free ports): import them by plain name."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# tests/ on sys.path, so `from server import ...` works however pytest is started (pyproject's
# pythonpath does the same when it is read).
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from server import Gunicorn  # noqa: E402


@pytest.fixture
def gunicorn() -> Iterator[Callable[..., Gunicorn]]:
    """gunicorn(app, *args, **kwargs) -> a started Gunicorn; every one stopped after the test."""
    started: list[Gunicorn] = []

    def start(*args: str, **kwargs) -> Gunicorn:
        server = Gunicorn(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
