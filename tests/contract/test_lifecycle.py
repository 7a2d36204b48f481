"""Lifecycle: heartbeat, boot errors, master death, max_requests, reload, connections, keepalive."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gunicorn.reloader import reloader_engines
from server import (
    ROOT,
    Conn,
    Gunicorn,
    get,
    gone,
    listen_queue,
    skip_unless_ci,
    start_request,
    wait_until,
)
from sysinfo import fd_targets, status

from gunicorn_aiowsgi import boundary

from .helpers import clean_exit, in_app, marks, serve


def answered(conn: Conn) -> tuple[int, dict, bytes]:
    status, headers, body = conn.response()
    assert status == 200, (status, body)
    return status, headers, body


# -- heartbeat ----------------------------------------------------------------------------
def test_a_request_longer_than_timeout_completes_also_while_draining(tmp_path: Path) -> None:
    """The loop keeps notifying the master while an app thread works past --timeout, and
    while the worker drains on TERM."""
    marks_path = tmp_path / "marks"
    with serve("--timeout", "1", "--threads", "2", "--graceful-timeout", "20",
               marks=marks_path) as g:
        pid = g.worker_pid()
        _, _, body = answered(start_request(g, "/sleep?s=2.5"))
        assert body == f"{pid} slept".encode()
        draining = start_request(g, "/sleep?s=2.5")
        in_app(marks_path, "/sleep", count=2)
        os.kill(pid, signal.SIGTERM)
        _, headers, body = answered(draining)
        assert headers["connection"] == "close" and body == f"{pid} slept".encode()
        wait_until(lambda: gone(pid), 10, "the drained worker to exit")
        g.wait_workers(1, exclude=(pid,))
        assert "WORKER TIMEOUT" not in g.log()
        assert clean_exit(g, pid)


def test_a_worker_whose_loop_is_blocked_is_killed_by_the_master(tmp_path: Path) -> None:
    marks_path = tmp_path / "marks"
    with serve("--timeout", "1", marks=marks_path) as g:
        pid = g.worker_pid()
        blocker = start_request(g, "/block-loop?s=60")
        g.wait_log(f"WORKER TIMEOUT (pid:{pid})")
        wait_until(lambda: gone(pid), 10, "the stuck worker to die")
        # ABRT's handler is a plain one, so worker_abort runs even though the loop is stuck.
        assert [m["pid"] for m in marks(marks_path, "worker_abort")] == [pid]
        new = g.wait_workers(1, exclude=(pid,))[0]
        g.wait_log(f"Booting worker with pid: {new}")
        g.wait_log(f"serving with 1 threads, 1000 connections max (pid: {new})")
        assert answered(start_request(g, "/pid"))[2] == str(new).encode()
        blocker.close()


# -- booting ------------------------------------------------------------------------------
@pytest.mark.parametrize("app, env, code, reason", [
    ("contract.broken_app:app", {}, 3, "Worker failed to boot."),
    ("contract.contract_apps:no_such_app", {}, 4, "App failed to load."),
    # A bad AIOWSGI_* value stops the master before any fork: test_start_failures.py.
])
def test_a_boot_failure_stops_the_master(app: str, env: dict, code: int, reason: str) -> None:
    with serve(app=app, env=env, wait_ready=False) as g:
        assert g.wait(20) == code
        log = g.log()
        assert reason in log
        assert log.count("Booting worker") == 1  # not respawned over and over
        assert "aiowsgi: serving" not in log


def test_the_worker_exits_when_its_master_dies() -> None:
    with serve() as g:
        pid = g.worker_pid()
        os.kill(g.pid, signal.SIGKILL)
        g.wait(10)
        wait_until(lambda: gone(pid), 10, "the orphaned worker to exit")
        g.wait_log(f"Worker draining (pid: {pid}): master is gone")


# -- max_requests -------------------------------------------------------------------------
def test_max_requests_is_counted_exactly(tmp_path: Path) -> None:
    marks_path = tmp_path / "marks"
    with serve("--max-requests", "4", "--keep-alive", "30", marks=marks_path) as g:
        first = g.worker_pid()
        conn = start_request(g, "/pid")
        seen = [answered(conn)[1]["connection"]]
        for _ in range(3):
            conn.send(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
            seen.append(answered(conn)[1]["connection"])
        # The 4th answer closes: no request is left to die on a connection about to go away.
        assert seen == ["keep-alive"] * 3 + ["close"]
        assert conn.closed_by_peer()
        wait_until(lambda: gone(first), 10, "the worker to retire")
        second = g.wait_workers(1, exclude=(first,))[0]
        assert answered(start_request(g, "/pid"))[2] == str(second).encode()
        assert len([m for m in marks(marks_path, "pre_request") if m["pid"] == first]) == 4
        g.wait_log("Autorestarting worker after current request.")


def test_max_requests_jitter_draws_each_workers_own_limit(tmp_path: Path) -> None:
    """Each worker retires after exactly its own limit, max_requests + randint(0, jitter), the
    draw its post_fork mark records, and the draws differ: workers are retired until two limits
    differ (at most six; six equal draws of 31 happen once in 28 million). With the jitter
    ignored, or drawn once for all workers, every worker would retire after the same count."""
    base, jitter = 2, 30
    marks_path = tmp_path / "marks"
    limits: list[int] = []
    retired: list[int] = []
    with serve("--max-requests", str(base), "--max-requests-jitter", str(jitter),
               marks=marks_path) as g:
        while len(set(limits)) < 2 and len(limits) < 6:
            pid = g.wait_workers(1, exclude=tuple(retired))[0]
            [limit] = wait_until(lambda pid=pid: [m["max_requests"] for m in marks(marks_path, "post_fork")
                                                  if m["worker"] == pid], 10, "the post_fork mark")
            seen = []
            for _ in range(limit):
                status, headers, body = get(g, "/pid", close=False)
                assert (status, body) == (200, str(pid).encode())
                seen.append(headers["connection"])
            assert seen == ["keep-alive"] * (limit - 1) + ["close"]
            wait_until(lambda pid=pid: gone(pid), 10, "the worker to retire")
            limits.append(limit)
            retired.append(pid)
    assert all(base <= n <= base + jitter for n in limits), limits
    assert len(set(limits)) == 2, f"every worker drew the same limit: {limits}"


# -- reload -------------------------------------------------------------------------------
INOTIFY = importlib.util.find_spec("inotify") is not None  # gunicorn's inotify engine needs it


def write_until_logged(g: Gunicorn, path: Path, logged: str, text: Callable[[int], str]) -> int:
    """Rewrite `path` with `text(n)` for a growing n until the log holds `logged` (the reloader
    seeing the change); returns the n last written. Each reloader starts watching in a thread
    of its own (the poll one takes each file's first mtime as its baseline on its first pass,
    the inotify one adds its watches), which may start late on a loaded machine: a write made
    before is not a change to it. Each write has a new size: a .pyc records its source's mtime
    in whole seconds and its size, so a same-size rewrite within that second would load stale
    code."""
    for n in range(2, 10):
        path.write_text(text(n))
        try:
            g.wait_log(logged, timeout=2)
            return n
        except AssertionError:
            continue
    g.wait_log(logged, timeout=1)
    return n


@pytest.mark.parametrize("engine", ["poll", "inotify"])
def test_reload_engine_and_reload_extra_files(tmp_path: Path, engine: str) -> None:
    """The worker runs the reloader gunicorn's reload_engine names, watching reload_extra_files
    too: a changed non-Python file replaces the worker. The inotify module is in the test extra:
    missing, the test fails under CI; elsewhere it checks that gunicorn's inotify engine refuses
    to start without it, and so does the worker, then skips (the reload was not exercised)."""
    # A directory of its own: the inotify engine reports any change in a watched directory,
    # and the hooks write their marks into tmp_path.
    extra = tmp_path / "watched" / "settings.toml"
    extra.parent.mkdir()
    extra.write_text("size = 1\n")
    marks_path = tmp_path / "marks"
    args = ("--reload", "--reload-engine", engine, "--reload-extra-file", str(extra))
    if engine == "inotify" and not INOTIFY:
        with serve(*args, marks=marks_path, wait_ready=False) as g:
            assert g.wait(20) != 0
        assert "You must have the inotify module installed" in g.log()
        assert marks(marks_path, "post_worker_init") == []
        skip_unless_ci("the inotify module is not installed (the test extra has it): only the "
                       "refusal to boot without it was checked, not the reload")
    with serve(*args, marks=marks_path) as g:
        pid = g.worker_pid()
        [init] = marks(marks_path, "post_worker_init")
        assert init["reloader"] == reloader_engines[engine].__name__
        # The inotify engine names the file without its directory.
        shown = extra.name if engine == "inotify" else extra
        write_until_logged(g, extra, f"Worker reloading: {shown} modified",
                           lambda size: f"size = {size}\n")
        wait_until(lambda: gone(pid), 10, "the reloading worker to exit")
        g.wait_workers(1, exclude=(pid,))


def test_reload_in_development(tmp_path: Path) -> None:
    """--reload with the default engine (`auto`: inotify where its module is installed, else
    poll): a changed module replaces the worker, which then serves the new code."""
    module = tmp_path / "reloadable.py"
    source = ("def app(environ, start_response):\n"
              "    start_response('200 OK', [('Content-Length', '%d')])\n"
              "    return [b'%s']\n")
    module.write_text(source % (1, "1"))
    with serve("--reload", "--pythonpath", str(tmp_path), app="reloadable:app") as g:
        pid = g.worker_pid()
        assert answered(start_request(g, "/"))[2] == b"1"
        # The path in full from the poll engine, the file's name alone from the inotify one.
        n = write_until_logged(g, module, f"{module.name} modified",
                               lambda n: source % (n, "2" * n))
        wait_until(lambda: gone(pid), 10, "the reloading worker to exit")
        g.wait_workers(1, exclude=(pid,))
        wait_until(lambda: g.log().count("aiowsgi: serving") == 2, 10, "the new worker")
        assert answered(start_request(g, "/"))[2] == b"2" * n


# -- worker_connections -------------------------------------------------------------------
def test_worker_connections_caps_open_connections() -> None:
    with serve("--worker-connections", "2", "--keep-alive", "300") as g:
        # Each holds a request on its way (its head not yet complete): never closed for a
        # client waiting for a slot.
        held = [Conn.to(g, 30) for _ in range(2)]
        for conn in held:
            conn.send(b"GET /pid HTTP/1.1\r\n")
        wait_until(lambda: listen_queue(g.port)[0] == 0, 5, "the worker to take both")
        extra = start_request(g, "/pid")
        # Not accepted: it waits in the kernel's accept queue (where another worker could
        # take it), not inside a worker that is full.
        wait_until(lambda: listen_queue(g.port)[0] == 1, 5, "the third connection to queue")
        assert extra.closed_by_peer(timeout=1) is False  # nothing answered it meanwhile
        held[0].send(b"Host: test\r\n\r\n")
        assert answered(held[0])[1]["connection"] == "keep-alive"
        # Answered, held[0] is idle: it gives way to the client waiting, as at a keep-alive
        # timeout; the other, its head still on its way, stays.
        answered(extra)
        assert held[0].closed_by_peer()
        assert listen_queue(g.port)[0] == 0
        held[1].send(b"Host: test\r\n\r\n")
        answered(held[1])


def test_idle_keepalive_connections_give_way_to_a_waiting_client() -> None:
    """Every slot held by a kept-alive connection idle after its request (a load balancer's
    pool, with its long keep-alive): a new client is answered, not kept waiting until one
    of them times out. nginx closes its idle connections so; gthread answers with
    Connection: close once kept-alive connections reach worker_connections - threads."""
    with serve("--worker-connections", "4", "--threads", "2", "--keep-alive", "300") as g:
        idle = []
        for _ in range(4):  # one after another: idle[0] is the one idle longest
            conn = start_request(g, "/pid")
            assert answered(conn)[1]["connection"] == "keep-alive"
            idle.append(conn)
        answered(start_request(g, "/pid"))
        assert idle[0].closed_by_peer()  # idle longest: its next request finds it closed
        for conn in idle[1:]:
            conn.send(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
            answered(conn)
        g.wait_log("worker_connections (4) are all open: closing idle keep-alive connections")


# -- keepalive ----------------------------------------------------------------------------
def test_keepalive_closes_an_idle_connection_after_that_many_seconds() -> None:
    """--keep-alive 2: the idle connection is closed, and not before 2 s from its answer. The
    answer came after the request was sent, so the close comes 2 s or more after the send on
    any machine, however loaded (a lower bound, not a speed); 30 s is only a hang guard."""
    with serve("--keep-alive", "2") as g:
        conn = Conn.to(g, 30)
        sent = time.monotonic()
        conn.send(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
        assert answered(conn)[1]["connection"] == "keep-alive"
        assert conn.closed_by_peer(timeout=30), "the idle connection still open after 30 s"
        # 10 ms: a loop timer may fire within its clock's resolution of its deadline.
        assert time.monotonic() - sent >= 2 - 0.01, "closed before its keep-alive was over"


def test_keepalive_95_holds_an_idle_connection() -> None:
    """Heroku's router keeps idle connections 90 s, so its config says 95: a long keepalive
    holds (the deadline arithmetic is checked exactly in test_keepalive_deadline_is_exact)."""
    with serve("--keep-alive", "95") as g:
        conn = start_request(g, "/pid")
        answered(conn)
        assert conn.closed_by_peer(timeout=3) is False
        conn.send(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
        assert answered(conn)[1]["connection"] == "keep-alive"


def test_keepalive_0_disables_keepalive() -> None:
    with serve("--keep-alive", "0") as g:
        conn = start_request(g, "/pid")
        assert answered(conn)[1]["connection"] == "close"
        assert conn.closed_by_peer()


def test_keepalive_never_closes_while_a_request_is_arriving() -> None:
    """The head of the next request began before the keepalive deadline: it is finished and
    answered (header timeout applies), not cut at the deadline."""
    with serve("--keep-alive", "1") as g:
        conn = start_request(g, "/pid")
        answered(conn)
        conn.send(b"GET /pid HTTP/1.1\r\n")
        # The scenario itself is about time: the head ends well after the keepalive deadline.
        time.sleep(2.0)
        conn.send(b"Host: test\r\n\r\n")
        assert answered(conn)[0] == 200


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
@pytest.mark.parametrize("keepalive", [95, 10 ** 8])
def test_keepalive_deadline_is_exact(loop_name: str, keepalive: int) -> None:
    """The idle timer is armed at exactly answer time + keepalive, on both loops, for Heroku's
    95 s as for three years (no cap, no overflow)."""
    import uvloop
    from inloop import serving

    from .contract_apps import app

    async def check() -> None:
        async with serving(app, keepalive=keepalive) as (worker, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            [conn] = await wait_idle(worker)
            deadline = conn.since + keepalive
            settings = conn.ctx.settings
            assert boundary.deadline(conn.state, conn.since, conn.requests, settings) == deadline
            # A pending timer may be an earlier one (the header timeout armed at connect):
            # when it fires it re-arms for the deadline. Let it fire now, to see that call.
            assert conn.timer.when() <= deadline + 0.001
            conn.timer.cancel()
            conn._expire()
            assert not conn.transport.is_closing()
            assert abs(conn.timer.when() - deadline) < 0.002  # uvloop keeps milliseconds
            writer.close()

    factory = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
    loop = factory()  # asyncio.Runner(loop_factory=...) is Python 3.11+
    try:
        loop.run_until_complete(check())
    finally:
        loop.close()


async def wait_idle(worker) -> list:
    from gunicorn_aiowsgi.boundary import ConnState

    for _ in range(500):
        conns = list(worker.server.conns)
        if conns and all(c.state is ConnState.IDLE and c.requests for c in conns):
            return conns
        await asyncio.sleep(0.01)
    raise AssertionError("the connection never went idle")


# -- process settings ---------------------------------------------------------------------
def test_preload_app_imports_in_the_master_and_serves_from_forks() -> None:
    with serve("--preload", workers=2) as g:
        info = json.loads(answered(start_request(g, "/info"))[2])
        assert info["import_pid"] == g.pid != info["pid"]
        assert info["pid"] in g.worker_pids()
        assert info["multiprocess"] is True


def test_importing_the_worker_creates_nothing_async() -> None:
    """With preload_app the master imports everything before forking: no loop, no thread."""
    code = ("import asyncio, gc, threading\n"
            "import gunicorn_aiowsgi, gunicorn_aiowsgi.worker\n"
            "loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]\n"
            "print(len(loops), threading.active_count())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out.split() == ["0", "1"]


def test_chdir_pythonpath_and_raw_env(tmp_path: Path) -> None:
    workdir, libdir = tmp_path / "work", tmp_path / "lib"
    workdir.mkdir()
    libdir.mkdir()
    (libdir / "pathapp.py").write_text(
        "import json, os\n"
        "def app(environ, start_response):\n"
        "    body = json.dumps([os.getcwd(), os.environ.get('CONTRACT_ENV')]).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n")
    with serve("--chdir", str(workdir), "--pythonpath", str(libdir),
               "-e", "CONTRACT_ENV=from raw_env", app="pathapp:app") as g:
        cwd, env = json.loads(answered(start_request(g, "/"))[2])
    assert (cwd, env) == (str(workdir), "from raw_env")


def test_user_group_and_worker_tmp_dir_in_shm() -> None:
    with serve("--user", "nobody", "--group", "nogroup", "--worker-tmp-dir", "/dev/shm") as g:
        pid = g.worker_pid()
        info = json.loads(answered(start_request(g, "/info"))[2])
        assert (info["uid"], info["gid"]) == (65534, 65534)
        assert status(pid)["Uid"].split() == ["65534"] * 4
        assert status(g.pid)["Uid"].split()[0] == "0"
        # The heartbeat file lives (unlinked) in /dev/shm, and the worker keeps it fresh.
        assert any(link.startswith("/dev/shm/wgunicorn-") for link in fd_targets(pid))


def test_no_loop_is_left_in_the_test_process() -> None:
    """The in-loop checks above ran their loops to completion and closed them."""
    gc.collect()
    assert not [o for o in gc.get_objects()
                if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed()]
