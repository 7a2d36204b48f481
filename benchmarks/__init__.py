"""The benchmark harness as a package: where things are, and the one link to tests/sysinfo.py.

Modules: `catalog` (scenarios and servers, as data), `targets` (targets and reference ratios,
as data, and their evaluation), `servers` (start/stop by pid), `drivers` (wrk, the socket
client, RSS sampling), `machine` (machine facts, versions, installing what is measured),
`schedule` (selection and interleaved rounds), `summary` (rounds to medians), `report`
(RESULTS.md), `chart` (results.png), `profiling` (py-spy). `run.py` is the command line.
The apps the servers load (`apps.py`, `aiohttp_native.py`, `aiohttp_wsgi_app.py`) and
`loadclient.py` are imported by the servers and clients as top-level modules, not through it.
"""

import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
OUT = os.path.join(BENCH, "out")
LUA = os.path.join(BENCH, "wrk_json.lua")
LOADCLIENT = os.path.join(BENCH, "loadclient.py")
HOST = "127.0.0.1"  # the only address this harness ever talks to

# /proc readings and free ports are shared with the tests (tests/sysinfo.py). Appended, not
# prepended: tests/ holds other top-level modules (apps, server) that must not shadow ours.
_TESTS = os.path.join(REPO, "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
