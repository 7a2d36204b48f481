"""Hooks and logging through gunicorn's own machinery, compared with gthread where it applies.

One script of requests runs against an aiowsgi master and a gthread master configured alike
(hooks from a gunicorn.conf.py, a custom access log format using every atom, statsd to a UDP
socket of the test); the tests then read what each left behind.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from server import Conn, get, has_setting, wait_until

from .helpers import HERE, marks, serve

FORMAT = ('%(h)s|%(l)s|%(u)s|%(t)s|%(r)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(f)s|%(a)s|'
          '%(T)s|%(D)s|%(M)s|%(L)s|%(p)s|%({x-custom}i)s|%({x-out}o)s|%({content-type}o)s|'
          '%({path_info}e)s|%({nope}i)s')
HEADERS = {"X-Custom": "custom-value", "Referer": "http://referer.test/",
           "User-Agent": "contract-agent",
           "Authorization": "Basic dXNlcjpwYXNz"}  # user:pass
BAD_REQUEST = b"GET /bad HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n"
TIMING = re.compile(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]")


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    return sock


def datagrams(sock: socket.socket, until: Any, timeout: float = 10.0) -> list[str]:
    """Receive datagrams until `until(received)` holds."""
    received: list[str] = []

    def more() -> bool:
        try:
            received.append(sock.recv(65536).decode())
        except TimeoutError:
            pass
        return until(received)

    wait_until(more, timeout, "datagrams")
    return received


def run_script(worker_class: str, tmp: Path) -> dict[str, Any]:
    """Serve, send the script, stop; return everything the master and its worker left behind."""
    marks_path, statsd = tmp / "marks", udp_socket()
    with serve("--threads", "2", "--access-logformat", FORMAT, "--statsd-host",
               f"127.0.0.1:{statsd.getsockname()[1]}", "--statsd-prefix", "contract",
               marks=marks_path, worker_class=worker_class,
               wait_ready=worker_class != "gthread", reference=worker_class == "gthread") as g:
        answers = [get(g, "/headers?n=3&x=y", headers=HEADERS)[:2], get(g, "/boom")[0]]
        with Conn.to(g) as conn:
            conn.send(BAD_REQUEST)
            answers.append(conn.response()[0])
        answers.append(get(g, "/sleep?s=0.3")[0])
        wait_until(lambda: g.access().count("\n") == 3, 10, "three access lines")
        worker = g.worker_pid()
        sent = datagrams(statsd, lambda got: sum("gunicorn.request.status." in d for d in got) == 3)
    statsd.close()
    return {"answers": answers, "access": in_script_order(g.access().splitlines()),
            "log": g.log(), "marks": marks(marks_path), "statsd": sent, "worker": worker}


def in_script_order(lines: list[str]) -> list[str]:
    """The access lines in the order the script sent their requests (/headers, /boom, /sleep).
    Each request has a connection of its own, and a line is written after its answer went out
    (in both workers): on a loaded machine the next request's line may come first."""
    order = ["/headers", "/boom", "/sleep"]
    return sorted(lines, key=lambda line: order.index(line.split("|")[4].split()[1].split("?")[0]))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    # pytest's own temporary tree: it keeps the last few runs and removes the older ones.
    tmp = tmp_path_factory.mktemp("contract-hooks")
    (tmp / "gthread").mkdir()
    (tmp / "aiowsgi").mkdir()
    return {"aiowsgi": run_script("gunicorn_aiowsgi.Worker", tmp / "aiowsgi"),
            "gthread": run_script("gthread", tmp / "gthread")}


def by_hook(result: dict, hook: str) -> list[dict]:
    return [m for m in result["marks"] if m["hook"] == hook]


def comparable(mark: dict) -> dict:
    """A hook mark minus what differs by nature (pids, client ports, header order)."""
    # nr is worker.nr read from an app thread: racy in both workers, not compared.
    mark = {k: v for k, v in mark.items() if k not in ("pid", "worker", "nr")}
    if "peer" in mark:
        mark["peer"] = mark["peer"][0]
    if "headers" in mark:
        mark["headers"] = sorted(map(tuple, mark["headers"]))
    return mark


# -- hooks --------------------------------------------------------------------------------
def test_the_script_was_answered_alike(results: dict) -> None:
    def normal(answers: list) -> list:
        (status, headers), *rest = answers
        return [(status, {k: v for k, v in headers.items() if k != "date"}), *rest]

    ours, theirs = normal(results["aiowsgi"]["answers"]), normal(results["gthread"]["answers"])
    assert ours == theirs
    assert ours[1:] == [500, 400, 200] and ours[0][1]["x-out"] == "out-value"


def test_pre_request_sees_what_gthread_sees(results: dict) -> None:
    ours, theirs = (by_hook(results[k], "pre_request") for k in ("aiowsgi", "gthread"))
    assert [m["path"] for m in ours] == ["/headers", "/boom", "/sleep"]
    assert list(map(comparable, ours)) == list(map(comparable, theirs))
    first = ours[0]
    assert (first["method"], first["query"], first["uri"], first["version"]) == \
        ("GET", "n=3&x=y", "/headers?n=3&x=y", [1, 1])
    assert ["X-CUSTOM", "custom-value"] in first["headers"]
    assert first["peer"][0] == "127.0.0.1" and isinstance(first["peer"][1], int)


def test_post_request_sees_what_gthread_sees(results: dict) -> None:
    # Sorted: post_request runs after the answer went out, so the next request may overtake.
    ours, theirs = (sorted(by_hook(results[k], "post_request"), key=lambda m: m["path"])
                    for k in ("aiowsgi", "gthread"))
    assert [m["path"] for m in ours] == ["/boom", "/headers", "/sleep"]
    ours.insert(0, ours.pop(1))
    theirs.insert(0, theirs.pop(1))
    headers = comparable(ours[0])
    assert headers == comparable(theirs[0])
    assert (headers["status"], headers["status_code"], headers["sent"]) == ("201 Created", 201, 3)
    assert ("X-Out", "out-value") in headers["headers"]
    # After an app error gthread passes a response start_response never touched; ours says
    # what was sent instead (the 500), which is what a hook wants to log.
    assert (theirs[1]["status"], ours[1]["status"]) == (None, "500 Internal Server Error")
    assert comparable(ours[2]) == comparable(theirs[2])


# What a pre_request hook changes on req: one request per change, each on its own connection.
CHANGES = ["", "append", "strip", "assign", "path", "close", "append,strip,assign,path,close"]
CHANGE_LOG = "%(s)s|%(U)s|%({x-hook}i)s|%({x-secret}i)s|%({x_under}i)s|%({x-assigned}i)s"


def changed_by_hook(worker_class: str, tmp: Path) -> dict[str, Any]:
    """Each change's (status, Connection, environ, closed after it); the access log; the marks."""
    answers = []
    with serve("--access-logformat", CHANGE_LOG, marks=tmp / "marks",
               config=str(HERE / "hook_changes_conf.py"), worker_class=worker_class,
               wait_ready=worker_class != "gthread", reference=worker_class == "gthread") as g:
        for change in CHANGES:
            with Conn.to(g) as conn:
                conn.send(b"GET /environ?q=1 HTTP/1.1\r\nHost: test\r\nX-Secret: s\r\n"
                          b"X_Under: u\r\nX-Change: %s\r\n\r\n" % change.encode())
                status, headers, body = conn.response()
                environ = {k: v for k, v in json.loads(body).items()
                           if k not in ("REMOTE_PORT", "SERVER_PORT")}  # each master's own
                answers.append((status, headers["connection"], environ, conn.closed_by_peer(0.5)))
        wait_until(lambda: g.access().count("\n") == len(CHANGES), 10, "the access lines")
    found = [sorted(map(tuple, m["headers"])) for m in marks(tmp / "marks", "pre_request")]
    return {"answers": answers, "access": g.access().splitlines(), "found": found}


def test_what_pre_request_changes_on_req_reaches_the_app_as_under_gthread(tmp_path: Path) -> None:
    """gthread builds the environ from req after pre_request: a hook appending a header,
    stripping one, assigning req.headers, rewriting req.path or calling req.force_close()
    changes what the app sees, the access log and the connection. header_map=drop's dropped
    field (X_Under) is in neither worker's req.headers."""
    (tmp_path / "ours").mkdir()
    (tmp_path / "gthread").mkdir()
    ours = changed_by_hook("gunicorn_aiowsgi.Worker", tmp_path / "ours")
    theirs = changed_by_hook("gthread", tmp_path / "gthread")
    assert ours == theirs
    answers = dict(zip(CHANGES, ours["answers"]))
    assert answers[""][:2] == (200, "keep-alive") and not answers[""][3]
    # gunicorn 21 has no header_map: it keeps X_Under (and the reference gthread is told to).
    dropped = has_setting("header_map")
    assert answers[""][2]["HTTP_X_SECRET"] == "s"
    assert ("HTTP_X_UNDER" in answers[""][2]) is not dropped
    assert answers["append"][2]["HTTP_X_HOOK"] == "added"
    assert "HTTP_X_SECRET" not in answers["strip"][2]
    assigned = answers["assign"][2]
    assert assigned["HTTP_X_ASSIGNED"] == "1" and "HTTP_X_CHANGE" not in assigned
    assert answers["path"][2]["PATH_INFO"] == "/rewritten/environ"
    assert answers["close"][1::2] == ("close", True)
    everything = answers[CHANGES[-1]]
    assert everything[1::2] == ("close", True)
    assert everything[2]["PATH_INFO"] == "/rewritten/environ"
    assert all(("X_UNDER" in dict(found)) is not dropped for found in ours["found"])
    assert ours["access"][-1] == f"200|/rewritten/environ|added|-|{'-' if dropped else 'u'}|1"


def test_worker_hooks_run_at_gunicorns_moments(results: dict) -> None:
    for kind in ("aiowsgi", "gthread"):
        result = results[kind]
        order = [m["hook"] for m in result["marks"] if m["pid"] == result["worker"]]
        assert order[:2] == ["post_fork", "post_worker_init"], kind
        assert order[-1] == "worker_exit", kind
        assert [m["worker"] for m in by_hook(result, "child_exit")] == [result["worker"]], kind
    assert by_hook(results["aiowsgi"], "post_worker_init")[0]["loop"] is True


# -- access log ---------------------------------------------------------------------------
def access_fields(line: str) -> list[str]:
    return line.split("|")


def test_access_log_line_is_exact(results: dict) -> None:
    result = results["aiowsgi"]
    line = result["access"][0]
    fields = access_fields(line)
    assert TIMING.fullmatch(fields[3]), fields[3]
    timing = fields[14:18]
    fields[3], fields[14:18] = "T", ["-"] * 4
    assert "|".join(fields) == (
        "127.0.0.1|-|user|T|GET /headers?n=3&x=y HTTP/1.1|GET|/headers|n=3&x=y|HTTP/1.1|201|3|3|"
        f"http://referer.test/|contract-agent|-|-|-|-|<{result['worker']}>|custom-value|out-value|"
        "text/plain|/headers|-")
    check_timing(timing, minimum_us=0)


def check_timing(timing: list[str], minimum_us: int) -> None:
    """T (s), D (us), M (ms) and L ("s.micros") describe the same duration."""
    seconds, micros, millis, text = int(timing[0]), int(timing[1]), int(timing[2]), timing[3]
    assert micros >= minimum_us
    assert seconds == micros // 1_000_000 and millis == micros // 1000
    assert text == f"{seconds}.{micros % 1_000_000:06d}"  # gunicorn: "%d.%06d"


def test_access_log_timing_atoms_measure_the_request(results: dict) -> None:
    line = results["aiowsgi"]["access"][2]
    fields = access_fields(line)
    assert fields[4] == "GET /sleep?s=0.3 HTTP/1.1"
    check_timing(fields[14:18], minimum_us=300_000)


def test_access_log_matches_gthreads(results: dict) -> None:
    def normal(line: str) -> list[str]:
        fields = access_fields(line)
        return fields[:3] + fields[4:14] + fields[19:]  # minus time, durations and pid

    ours, theirs = results["aiowsgi"]["access"], results["gthread"]["access"]
    assert normal(ours[0]) == normal(theirs[0]) and normal(ours[2]) == normal(theirs[2])
    # The app error: gthread logs it from handle_error with a bare environ (%(U)s is "None");
    # ours still has the request's environ. Everything else is the same.
    boom_ours, boom_theirs = normal(ours[1]), normal(theirs[1])
    assert (boom_ours[5], boom_ours[16]) == ("/boom", "/boom")
    assert (boom_theirs[5], boom_theirs[16]) == ("None", "-")
    assert boom_ours[:5] + boom_ours[6:16] == boom_theirs[:5] + boom_theirs[6:16]
    assert boom_ours[8] == "500"


# -- error log ----------------------------------------------------------------------------
def test_app_and_parse_errors_use_gunicorns_wording(results: dict) -> None:
    for kind in ("aiowsgi", "gthread"):
        log = results[kind]["log"]
        assert "[ERROR] Error handling request GET /boom" in log, kind
        assert "RuntimeError: boom from the app" in log, kind
        assert "[WARNING] Invalid request from ip=127.0.0.1: " in log, kind


def test_loglevel_info_hides_debug(results: dict) -> None:
    assert "[DEBUG]" not in results["aiowsgi"]["log"]


# -- statsd -------------------------------------------------------------------------------
def test_statsd_gets_counters_and_durations(results: dict) -> None:
    sent = results["aiowsgi"]["statsd"]
    assert sent.count("contract.gunicorn.requests:1|c|@1.0") == 3
    for status in (201, 500, 200):
        assert f"contract.gunicorn.request.status.{status}:1|c|@1.0" in sent
    durations = [float(d.split(":")[1].split("|")[0]) for d in sent
                 if d.startswith("contract.gunicorn.request.duration:") and d.endswith("|ms")]
    assert len(durations) == 3 and max(durations) >= 300
    counters = sorted(d for d in sent if "|c|" in d and "gunicorn.request" in d)
    assert counters == sorted(d for d in results["gthread"]["statsd"]
                              if "|c|" in d and "gunicorn.request" in d)


def test_dogstatsd_tags_on_every_metric() -> None:
    """dogstatsd_tags end every datagram: gunicorn's request metrics and the worker's own
    aiowsgi.<pid>.* gauges alike (both go through gunicorn's Statsd logger)."""
    statsd = udp_socket()
    try:
        with serve("--statsd-host", f"127.0.0.1:{statsd.getsockname()[1]}",
                   "--dogstatsd-tags", "env:ci,team:web") as g:
            assert get(g, "/pid")[0] == 200
            gauge = f"aiowsgi.{g.worker_pid()}.busy_threads:"
            sent = datagrams(statsd, lambda got: any(d.startswith("gunicorn.requests:") for d in got)
                             and any(d.startswith(gauge) for d in got))
    finally:
        statsd.close()
    lines = [line for d in sent for line in d.splitlines()]
    assert all(line.endswith("|#env:ci,team:web") for line in lines), lines


# -- logger class, syslog, capture_output, debug level ---------------------------------------
def test_logger_class_syslog_capture_output_and_debug_level() -> None:
    syslog = udp_socket()
    port = syslog.getsockname()[1]
    with serve("--logger-class", "contract.contract_apps.MarkingLogger", "--log-syslog",
               "--log-syslog-to", f"udp://127.0.0.1:{port}", "--capture-output",
               loglevel="debug") as g:
        assert get(g, "/print")[0] == 200
        assert get(g, "/pid")[0] == 200
        g.wait_log("MarkingLogger saw GET /pid")
        g.wait_log("captured stdout mark")
        g.wait_log("captured stderr mark")
        g.wait_log("[DEBUG] GET /pid")  # gunicorn's default pre_request hook, at debug level
        lines = datagrams(syslog, lambda got: any('"GET /pid HTTP/1.1" 200' in d for d in got))
    syslog.close()
    assert any("MarkingLogger saw GET /print" in d for d in lines)
