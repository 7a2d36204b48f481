"""tests/deploy: the examples in deploy/ run for real (honcho, nginx, socket activation...)."""

import sys
from pathlib import Path

# tests/server.py (the shared harness) and deploy_helpers.py, importable by plain name.
for path in (Path(__file__).resolve().parent.parent, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
