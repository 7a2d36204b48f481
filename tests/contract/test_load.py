"""Under a bounded closed-loop load, TERM, HUP and max_requests recycling lose no request.

A request counts as lost if it got a partial or wrong answer, or was closed unanswered twice
(one retry is what RFC 9112 section 9.3.1 allows a client for an idempotent request).
"""

from __future__ import annotations

import collections
import signal
import time

from server import gone, wait_until

from .helpers import serve
from .request_fates import BROKEN, OK, REFUSED, UNANSWERED, LoadClient


def assert_nothing_lost(results: list) -> None:
    bad = [r for r in results if r.outcome in (BROKEN, UNANSWERED)]
    assert not bad, bad[:5]


def test_hup_under_load_loses_no_request() -> None:
    with serve("--threads", "4", "--keep-alive", "30", workers=2) as g:
        old = set(g.wait_workers(2))
        with LoadClient(g.host, g.port, clients=4) as load:
            load.wait_for(200)
            g.signal(signal.SIGHUP)
            g.wait_log("Hang up: Master")
            wait_until(lambda: all(gone(pid) for pid in old), 20, "old workers to exit")
            new = set(g.wait_workers(2, exclude=tuple(old)))
            before = load.count()
            load.wait_for(200)
            results = load.stop()
    assert_nothing_lost(results)
    assert all(r.outcome == OK for r in results)
    served_by = collections.Counter(r.pid for r in results)
    # Old and new generations both served. Not every old worker: the kernel may hand all four
    # keep-alive connections to the worker that wakes first.
    assert old & set(served_by) and new & set(served_by), served_by
    assert len(results) >= before + 200


def test_max_requests_recycling_under_load_loses_no_request() -> None:
    base, jitter = 40, 10
    with serve("--threads", "2", "--keep-alive", "30", "--max-requests", str(base),
               "--max-requests-jitter", str(jitter), workers=2) as g:
        with LoadClient(g.host, g.port, clients=4) as load:
            # Enough for several generations of workers.
            load.wait_for(6 * base)
            results = load.stop()
        wait_until(lambda: g.log().count("aiowsgi: serving") >= 4, 10, "recycled workers")
        live = set(g.worker_pids())
    assert_nothing_lost(results)
    assert all(r.outcome == OK for r in results)
    served_by = collections.Counter(r.pid for r in results)
    retired = {pid: n for pid, n in served_by.items() if pid not in live}
    assert len(retired) >= 3, served_by
    # A retired worker answered its limit, base + [0, jitter], plus at most the requests
    # already on their way (one per client connection) when it began to drain.
    assert all(base <= n <= base + jitter + 4 for n in retired.values()), retired
    # The request reaching the limit said Connection: close.
    assert all(any(r.closed for r in results if r.pid == pid) for pid in retired)


def test_term_under_load_loses_no_request() -> None:
    """Every request sent before the TERM is answered in full; later ones are refused cleanly."""
    with serve("--threads", "4", "--keep-alive", "30", workers=2) as g:
        with LoadClient(g.host, g.port, clients=4, query="&sleep=0.02") as load:
            load.wait_for(100)
            term_at = time.monotonic()
            g.signal(signal.SIGTERM)
            assert g.wait(20) == 0
            # Once the master and its workers are gone, every client gets refused and stops.
            wait_until(lambda: load.count(REFUSED) == 4, 20, "every client to be refused")
            results = load.stop()
    assert_nothing_lost(results)
    before = [r for r in results if r.sent < term_at]
    assert before and all(r.outcome == OK for r in before), [r for r in before if r.outcome != OK]
    assert {r.outcome for r in results} <= {OK, REFUSED}
