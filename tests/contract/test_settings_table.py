"""The README's settings table names every gunicorn setting, and its "warned" rows are exactly
the settings the worker warns about at startup."""

from __future__ import annotations

import re
from pathlib import Path

from gunicorn.config import Config

from gunicorn_aiowsgi.worker import UNSUPPORTED

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## gunicorn's settings with this worker"


def section() -> list[str]:
    """The lines of the README's settings section, up to the next heading of its level."""
    lines = README.read_text().splitlines()
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def rows() -> dict[str, str]:
    """Each setting named in the first column -> its row's second column."""
    found = {}
    for line in section():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2:
            for name in re.findall(r"`([a-z0-9_]+)`", cells[0]):
                found[name] = cells[1]
    return found


def test_every_gunicorn_setting_is_in_the_table() -> None:
    missing = sorted(set(Config().settings) - set(rows()))
    assert not missing, missing


def test_warned_rows_are_the_settings_the_worker_warns_about() -> None:
    warned = {name for name, text in rows().items() if "**warned**" in text}
    assert warned == {name for name, _, _ in UNSUPPORTED}
