"""Signals as gunicorn's workers take them: TERM, QUIT/INT, USR1, ABRT, WINCH, resets."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from server import (
    NO_CONTROL_SOCKET,
    ROOT,
    TESTS,
    Conn,
    Gunicorn,
    gone,
    open_gate,
    read_mark,
    signal_mask,
    start_request,
    wait_until,
)
from sysinfo import children

from .helpers import APP, clean_exit, in_app, marks, serve

CAUGHT = {signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGUSR1, signal.SIGABRT,
          signal.SIGWINCH}
RESET = {signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD}
HARMLESS = {signal.SIGTTIN, signal.SIGTTOU}  # the master's, but their default stops a process
# Signals are taken by the loop's own machinery: asyncio's selector loop, and uvloop's.
WORKER_CLASSES = ("gunicorn_aiowsgi.Worker", "gunicorn_aiowsgi.UVLoopWorker")


def idle_keepalive(server) -> Conn:
    """A connection that has been answered once and now sits idle, kept alive."""
    conn = start_request(server, "/pid")
    status, headers, _ = conn.response()
    assert status == 200 and headers["connection"] == "keep-alive"
    return conn


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_term_is_graceful(tmp_path: Path, worker_class: str) -> None:
    """TERM (twice, straight to the worker, as Heroku and honcho send it): idle keep-alive
    connections stay up to STOP_KEEPALIVE_LINGER (2 s, as gthread's in gunicorn 27), a request
    on one meanwhile answered with Connection: close, then they are closed though a request is
    still in the app; that request finishes with Connection: close, no new connection is
    taken, and the worker exits cleanly once done."""
    marks_path = tmp_path / "marks"
    with serve("--threads", "4", "--keep-alive", "60", "--graceful-timeout", "30",
               marks=marks_path, worker_class=worker_class,
               env={"AIOWSGI_TEST_MARKS": str(tmp_path)}) as g:
        pid = g.worker_pid()
        idle, asked = idle_keepalive(g), idle_keepalive(g)
        busy = start_request(g, "/gate?mark=busy")
        assert read_mark(tmp_path / "busy") == "started\n"
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGTERM)
        g.wait_log(f"Worker draining (pid: {pid})")
        asked.send(b"GET /pid HTTP/1.1\r\nHost: test\r\n\r\n")  # a pooling proxy's next one
        status, headers, _ = asked.response()
        assert (status, headers["connection"]) == (200, "close") and asked.closed_by_peer()
        assert idle.closed_by_peer(timeout=30)  # the linger is over
        assert not busy.answered()  # idle went first, while the busy one was still in the app
        open_gate(tmp_path / "busy")
        status, headers, body = busy.response()
        assert (status, headers["connection"], body) == (200, "close", b"gate")
        assert busy.closed_by_peer()
        wait_until(lambda: gone(pid), 10, "the drained worker to exit")
        new_pid = g.wait_workers(1, exclude=(pid,))[0]
        g.wait_log(f"Booting worker with pid: {new_pid}")
        assert clean_exit(g, pid)
        assert [m["worker"] for m in marks(marks_path, "worker_exit")] == [pid]


def test_term_stops_accepting_at_once(tmp_path: Path) -> None:
    """A connection made while the old worker drains is served by its replacement."""
    marks_path = tmp_path / "marks"
    with serve("--threads", "2", "--graceful-timeout", "30", marks=marks_path) as g:
        pid = g.worker_pid()
        busy = start_request(g, "/sleep?s=1.5")
        in_app(marks_path, "/sleep")
        os.kill(pid, signal.SIGTERM)
        g.wait_log(f"Worker draining (pid: {pid})")
        late = start_request(g, "/pid")  # waits in the backlog for the new worker
        status, _, body = late.response()
        assert status == 200 and int(body) != pid
        assert busy.response()[0] == 200  # the drained worker still finished its request
        busy.close()
        late.close()


def test_term_exits_at_graceful_timeout_by_itself(tmp_path: Path) -> None:
    """A request outliving graceful_timeout does not hold the worker: it exits on time, cleanly
    (TERM sent to the worker alone, so no master enforces anything)."""
    marks_path = tmp_path / "marks"
    with serve("--threads", "2", "--graceful-timeout", "1", marks=marks_path) as g:
        pid = g.worker_pid()
        stuck = start_request(g, "/sleep?s=60")
        in_app(marks_path, "/sleep")
        os.kill(pid, signal.SIGTERM)
        assert stuck.closed_by_peer(timeout=30)
        # A hang guard, not a measure: the request would end after 60 s.
        wait_until(lambda: gone(pid), 30, "the worker to exit at graceful_timeout")
        # It exited with the request still in the app: the request never ended.
        assert [m for m in marks(marks_path, "post_request") if m["path"] == "/sleep"] == []
        g.wait_log("Closing 1 connections at exit")
        g.wait_workers(1, exclude=(pid,))
        assert clean_exit(g, pid)


@pytest.mark.parametrize("sig, worker_class", [
    (signal.SIGQUIT, WORKER_CLASSES[0]), (signal.SIGINT, WORKER_CLASSES[0]),
    (signal.SIGQUIT, WORKER_CLASSES[1])])
def test_quit_and_int_exit_fast_with_a_request_in_flight(tmp_path: Path, sig: int,
                                                         worker_class: str) -> None:
    """The master's quick shutdown: app threads stuck in a request do not keep the worker alive
    (gthread's would, until the master's SIGKILL at graceful_timeout)."""
    marks_path = tmp_path / "marks"
    with serve("--threads", "2", "--graceful-timeout", "60", marks=marks_path,
               worker_class=worker_class) as g:
        pid = g.worker_pid()
        stuck = start_request(g, "/sleep?s=120")
        in_app(marks_path, "/sleep")
        g.signal(sig)
        # Well inside the master's own 60 s deadline, after which it would SIGKILL.
        assert g.wait(timeout=20) == 0
        assert gone(pid)
        assert "SIGKILL" not in g.log()
        assert [m["pid"] for m in marks(marks_path, "worker_int")] == [pid]
        assert stuck.closed_by_peer()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
@pytest.mark.parametrize("hook, sig", [("worker_int", signal.SIGQUIT),
                                       ("worker_abort", signal.SIGABRT)])
def test_a_hook_that_raises_is_in_the_error_log_and_the_worker_still_exits(
        tmp_path: Path, hook: str, sig: int, worker_class: str) -> None:
    """gthread logs such a hook's exception, with its traceback, to the error log and exits.
    Ours ran worker_int as a loop callback: asyncio printed it to stderr (not --error-logfile,
    not syslog), and the rest of the quit was skipped, so the exit came late."""
    marks_path = tmp_path / "marks"
    with serve("--graceful-timeout", "60", marks=marks_path, env={"CONTRACT_RAISE": hook},
               worker_class=worker_class) as g:
        pid = g.worker_pid()
        os.kill(pid, sig)
        wait_until(lambda: gone(pid), 10, f"the worker to exit after {hook} raised")
        log = g.wait_log(f"RuntimeError: {hook} raised on purpose")
        entry = log.split(f"[{pid}] [ERROR] Exception in {hook} hook\n", 1)[1]
        assert entry.startswith("Traceback (most recent call last):"), log
        assert "Exception in callback" not in log + g.stdout.read_text()
        assert [m["pid"] for m in marks(marks_path, hook)] == [pid]
        g.wait_workers(1, exclude=(pid,))
        if hook == "worker_int":
            assert clean_exit(g, pid)  # a quick exit, as without the error
        else:
            g.wait_log(f"Worker (pid:{pid}) exited with code 1")  # as without the error


def test_quit_after_term_speeds_the_exit_up(tmp_path: Path) -> None:
    marks_path = tmp_path / "marks"
    with serve("--threads", "2", "--graceful-timeout", "60", marks=marks_path) as g:
        pid = g.worker_pid()
        start_request(g, "/sleep?s=120")
        in_app(marks_path, "/sleep")
        os.kill(pid, signal.SIGTERM)
        g.wait_log(f"Worker draining (pid: {pid})")
        os.kill(pid, signal.SIGQUIT)
        wait_until(lambda: gone(pid), 20, "QUIT to cut the drain short")
        assert [m["pid"] for m in marks(marks_path, "worker_int")] == [pid]
        g.wait_workers(1, exclude=(pid,))
        assert clean_exit(g, pid)


def test_heroku_style_term_to_every_process(tmp_path: Path) -> None:
    """honcho and Heroku signal the whole process group: the worker gets TERM from them and
    again from the master, and still exits cleanly, as does the master."""
    marks_path = tmp_path / "marks"
    with serve(workers=2, marks=marks_path) as g:
        pids = g.worker_pids()
        os.killpg(g.pid, signal.SIGTERM)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        assert g.wait(20) == 0
        assert all(clean_exit(g, pid) for pid in pids)
        assert sorted(m["worker"] for m in marks(marks_path, "worker_exit")) == sorted(pids)


def test_usr1_reopens_log_files() -> None:
    with serve() as g:
        pid = g.worker_pid()
        first = idle_keepalive(g)
        first.close()
        wait_until(lambda: g.access().count("GET /pid") == 1, 10, "the first access line")
        rotated = g.access_log.with_name("access.log.1")
        g.access_log.rename(rotated)
        g.signal(signal.SIGUSR1)  # the master reopens its files and forwards USR1 to workers

        def logged_to_new_file() -> bool:
            conn = idle_keepalive(g)
            conn.close()
            return g.access_log.exists() and "GET /pid" in g.access()

        wait_until(logged_to_new_file, 10, "access lines in the reopened file")
        assert rotated.read_text().count("GET /pid") >= 1
        assert g.worker_pids() == [pid]  # USR1's default action would have killed it


def test_abrt_calls_worker_abort_then_exits(tmp_path: Path) -> None:
    marks_path = tmp_path / "marks"
    with serve(marks=marks_path) as g:
        pid = g.worker_pid()
        os.kill(pid, signal.SIGABRT)
        wait_until(lambda: gone(pid), 10, "the aborted worker to exit")
        assert [m["pid"] for m in marks(marks_path, "worker_abort")] == [pid]
        g.wait_workers(1, exclude=(pid,))
        g.wait_log(f"Worker (pid:{pid}) exited with code 1")


def test_winch_is_ignored() -> None:
    with serve(loglevel="debug") as g:
        pid = g.worker_pid()
        os.kill(pid, signal.SIGWINCH)
        g.wait_log("worker: SIGWINCH ignored.")
        conn = idle_keepalive(g)
        conn.close()
        assert g.worker_pids() == [pid]


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_master_only_signals_are_reset_in_the_worker(worker_class: str) -> None:
    """HUP, USR2 and CHLD are the master's: a worker must not inherit its handlers. TTIN and
    TTOU are too, but a handler that does nothing takes them (not SIG_IGN, which a program the
    app runs would inherit)."""
    with serve(worker_class=worker_class) as g:
        worker, master = g.worker_pid(), g.pid
        caught, ignored = signal_mask(worker, "SigCgt"), signal_mask(worker, "SigIgn")
        assert CAUGHT | HARMLESS <= caught
        assert not RESET & (caught | ignored) and not HARMLESS & ignored
        assert RESET | HARMLESS <= signal_mask(master, "SigCgt")  # they were the master's


# Runs a command as a job of its own, as an interactive shell does: its process group is then
# not orphaned, and the kernel delivers TTIN and TTOU to it (to a master started in a new
# session, as Gunicorn() starts them, it discards them). TERM goes on to the job.
IN_A_JOB = ("import os, signal, subprocess, sys\n"
            "job = subprocess.Popen(sys.argv[1:], preexec_fn=os.setpgrp)\n"
            "signal.signal(signal.SIGTERM, lambda *_: job.terminate())\n"
            "sys.exit(job.wait())\n")


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_ttin_and_ttou_sent_to_the_worker_neither_stop_nor_kill_it(worker_class: str) -> None:
    """As to `pkill -TTIN -f gunicorn` from a shell: gthread's workers serve on."""
    g = Gunicorn.launch(
        [sys.executable, "-c", IN_A_JOB, sys.executable, "-m", "gunicorn", "-k", worker_class,
         "--bind", "127.0.0.1:0", "--error-logfile", "{error_log}", "--timeout", "5",
         *NO_CONTROL_SOCKET, APP],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
        workers=1, cwd=TESTS)
    with g:
        (pid,) = children(g.master_pid())
        for sig in (signal.SIGTTIN, signal.SIGTTOU):
            os.kill(pid, sig)
        # Answered after both were sent, so after both were delivered (a stopped worker would
        # answer nothing), and still running after them.
        status, _headers, body = start_request(g, "/pid").response()
        assert (status, body.split()[0]) == (200, str(pid).encode())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "T"  # stopped: the default action of both
