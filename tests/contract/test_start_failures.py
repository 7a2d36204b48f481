"""A worker that cannot start: settings the master refuses before any fork, and a later worker
start that fails (a recycle, a reload) while the server runs, against what gthread does."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trustme
from server import Conn, Gunicorn, gone, wait_until

UPLOAD = bytes(range(256)) * 256  # 64 KiB: past the 1 KiB memory limit these masters set
SPOOLING = {"AIOWSGI_BODY_MEMORY_LIMIT": "1024"}
BOOT_ERROR = "gunicorn_aiowsgi cannot start: "


def upload(g: Gunicorn) -> tuple[int, bytes]:
    """POST UPLOAD to /digest on a new connection: (status, body)."""
    with Conn.to(g) as conn:
        conn.send(b"POST /digest HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                  + f"Content-Length: {len(UPLOAD)}\r\n\r\n".encode() + UPLOAD)
        status, _, body = conn.response()
    return status, body


DIGEST = f"{len(UPLOAD)} {hashlib.sha256(UPLOAD).hexdigest()}".encode()


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "[ERROR]" in line]


def alive(pid: int) -> bool:
    return not gone(pid)


# -- settings the master refuses ---------------------------------------------------------
@pytest.mark.parametrize("flags", [(), ("--preload",)], ids=["plain", "preload"])
@pytest.mark.parametrize("setting", ["AIOWSGI_SEND_TIMEOUT=0", "AIOWSGI_MAX_BODY_SIZE=lots"])
def test_a_bad_setting_is_one_master_error_before_any_worker_starts(setting: str, flags: tuple) -> None:
    """raw_env is in os.environ when gunicorn calls check_config: the master says it once and
    exits 1 before forking; before, each of the two workers logged a traceback, then the
    master stopped with a boot error."""
    name = setting.partition("=")[0]
    with Gunicorn("apps:hello", "-e", setting, *flags, workers=2, wait_ready=False) as g:
        assert g.wait(20) == 1
        log, out = g.log(), g.stdout.read_text()
        [line] = error_lines(log)
        assert f"[ERROR] {BOOT_ERROR}" in line and name in line
        assert "Booting worker" not in log
        assert "Traceback" not in log + out


def test_a_bad_setting_brought_by_a_reload_stops_the_master_as_gthread_does_a_broken_app(
        tmp_path: Path) -> None:
    """gunicorn does not call check_config again on HUP: the new worker finds the setting bad,
    says it in one line and exits with gunicorn's boot error, so the master stops (exit 3), as
    gthread's does when a HUP brings an app that fails to import."""
    conf = tmp_path / "conf.py"
    conf.write_text("raw_env = ['AIOWSGI_SEND_TIMEOUT=5']\n")
    with Gunicorn("apps:hello", config=str(conf)) as g:
        first = g.worker_pid()
        # Another size: gunicorn loads the file with importlib, whose cached bytecode (written
        # unless PYTHONDONTWRITEBYTECODE is set, as under tox) stands while the source's mtime,
        # in whole seconds, and size are unchanged: a rewrite within the second went unseen.
        conf.write_text("raw_env = ['AIOWSGI_SEND_TIMEOUT=0']  # bad\n")
        g.signal(signal.SIGHUP)
        try:
            status = g.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the master still runs 30 s after the HUP; its log:\n{g.log()}")
        assert status == 3, g.log()
        log = g.log()
        assert "Reason: Worker failed to boot." in log
        [line] = [x for x in error_lines(log) if BOOT_ERROR in x]
        assert "AIOWSGI_SEND_TIMEOUT" in line
        assert "Traceback" not in log
        wait_until(lambda: gone(first), 10, "the old worker to exit")


# -- tmp_upload_dir: a setting gunicorn itself never uses --------------------------------
def spool_conf(tmp_path: Path) -> tuple[Path, Path]:
    spool = tmp_path / "spool"
    spool.mkdir()
    conf = tmp_path / "spool.conf.py"
    conf.write_text(f"tmp_upload_dir = {str(spool)!r}\n")
    return conf, spool


def test_tmp_upload_dir_removed_while_serving_uploads_go_on_and_recycles_boot(tmp_path: Path) -> None:
    """gunicorn's doc says the directory may disappear; gthread never uses it and serves on.
    The running worker's next upload spools to the default temporary directory (one warning);
    the worker started by max_requests says so at start and serves uploads too. Before: 500s,
    then the recycled worker failed to boot and the master stopped."""
    conf, spool = spool_conf(tmp_path)
    with Gunicorn("apps:router", "--max-requests", "3", config=str(conf), env=SPOOLING) as g:
        first = g.worker_pid()
        assert upload(g) == (200, DIGEST)
        shutil.rmtree(spool)
        assert upload(g) == (200, DIGEST)
        assert upload(g) == (200, DIGEST)  # the third request: the worker retires after it
        g.wait_log(re.compile(rf"\[{first}\] \[WARNING\] tmp_upload_dir .*spool"))
        wait_until(lambda: gone(first), 10, "the first worker to retire")
        [second] = g.wait_workers(1, exclude=(first,))
        g.wait_log(f"serving with 1 threads, 1000 connections max (pid: {second})")
        assert upload(g) == (200, DIGEST)
        assert alive(g.pid)
        log = g.log()
        assert re.search(rf"\[{second}\] \[WARNING\] tmp_upload_dir .*{re.escape(str(spool))}", log)
        assert len(re.findall(rf"\[{first}\] \[WARNING\] tmp_upload_dir", log)) == 1
        assert "Worker failed to boot" not in log and "cannot spool" not in log


def test_tmp_upload_dir_the_workers_user_cannot_write_spools_to_the_default_directory(
        tmp_path: Path) -> None:
    """A directory made by root for a server whose workers run as nobody: gthread never uses
    it; ours says so once per worker and spools where nobody may write. Before: every upload
    over the memory limit got 500 ("Permission denied")."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the workers as nobody")
    spool = Path(tempfile.mkdtemp(prefix="root-spool-"))  # nobody reaches /tmp (not tmp_path)
    try:
        os.chmod(spool, 0o755)  # root's: nobody may look in, not create files
        conf = tmp_path / "spool.conf.py"
        conf.write_text(f"tmp_upload_dir = {str(spool)!r}\n")
        # --preload: the app's imports come from root's Python; the worker only runs them.
        with Gunicorn("apps:router", "--user", "nobody", "--group", "nogroup", "--preload",
                      config=str(conf), env=SPOOLING) as g:
            assert upload(g) == (200, DIGEST)
            pid = g.worker_pid()
            g.wait_log(re.compile(rf"\[{pid}\] \[WARNING\] tmp_upload_dir "
                                  rf"{re.escape(repr(str(spool)))} .*\(uid 65534\)"))
            assert os.listdir(spool) == []
    finally:
        shutil.rmtree(spool)


# -- TLS: a certificate file caught broken ------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, Any]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    return {"ca": ca, "chain": cert.cert_chain_pems[0].bytes(), "key": cert.private_key_pem.bytes()}


def tls_files(tmp_path: Path, pki: dict) -> tuple[Path, Path]:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(pki["chain"])
    key.write_bytes(pki["key"])
    return cert, key


def tls_get(g: Gunicorn, pki: dict) -> int:
    context = ssl.create_default_context()
    pki["ca"].configure_trust(context)
    port = int(g.url.rpartition(":")[2])
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                               server_hostname="127.0.0.1")
    with Conn(sock) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        return conn.response()[0]


def test_a_certificate_broken_when_a_worker_recycles_is_retried_until_it_is_fixed(
        tmp_path: Path, pki: dict) -> None:
    """certbot rewrites the file just as max_requests recycles the worker: the new worker
    cannot build its TLS context. As any worker that fails after the master checked the
    settings, it exits and the master starts another, until the file is whole again (gthread
    serves on, failing handshakes meanwhile). Before: the master stopped (boot error)."""
    cert, key = tls_files(tmp_path, pki)
    with Gunicorn("apps:hello", "--certfile", str(cert), "--keyfile", str(key),
                  "--max-requests", "2") as g:
        first = g.worker_pid()
        assert tls_get(g, pki) == 200
        cert.write_bytes(b"")  # caught half-written
        assert tls_get(g, pki) == 200  # the running worker keeps its context; it retires
        wait_until(lambda: gone(first), 10, "the first worker to retire")
        g.wait_log("Exception in worker process", count=2)  # a second start was tried
        assert alive(g.pid)
        cert.write_bytes(pki["chain"])
        g.wait_log("aiowsgi: serving", count=2, timeout=20)
        assert tls_get(g, pki) == 200
        assert alive(g.pid)
        assert "Worker failed to boot" not in g.log()


def test_a_key_only_the_master_can_read_is_one_boot_error_not_a_respawn_loop(pki: dict) -> None:
    """A root-only key (0600) with workers run as nobody: the master's check reads it, each
    worker cannot. That never heals, so the worker says it in one line and exits with gunicorn's
    boot error, and the master stops, instead of starting a worker that fails again at once,
    for ever (a traceback and a fork each time)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the workers as nobody")
    where = Path(tempfile.mkdtemp(prefix="root-key-"))  # nobody reaches /tmp (not tmp_path)
    try:
        os.chmod(where, 0o755)
        cert, key = tls_files(where, pki)
        os.chmod(cert, 0o644)
        os.chmod(key, 0o600)
        with Gunicorn("apps:hello", "--certfile", str(cert), "--keyfile", str(key), "--user",
                      "nobody", "--group", "nogroup", "--preload", wait_ready=False) as g:
            assert g.wait(30) == 3
            log = g.log()
            assert "Reason: Worker failed to boot." in log
            [line] = [x for x in error_lines(log) if BOOT_ERROR in x]
            assert "uid 65534" in line and "Permission denied" in line
            assert log.count("Booting worker") == 1 and "Traceback" not in log
    finally:
        shutil.rmtree(where)


def test_a_certificate_broken_at_first_boot_is_one_master_error(tmp_path: Path, pki: dict) -> None:
    cert, key = tls_files(tmp_path, pki)
    cert.write_bytes(b"")
    with Gunicorn("apps:hello", "--certfile", str(cert), "--keyfile", str(key), workers=2,
                  wait_ready=False) as g:
        assert g.wait(20) == 1
        log = g.log()
        [line] = error_lines(log)
        assert BOOT_ERROR in line and str(cert) in line
        assert "Booting worker" not in log and "Traceback" not in log
