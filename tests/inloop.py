"""In-process harness: our real Worker's server on a loopback socket inside the test's own loop (no master)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, AsyncIterator, Callable

from gunicorn.config import Config
from gunicorn.glogging import Logger

from gunicorn_aiowsgi.worker import Worker

# Failure detection only: how long `until` lets the loop run before the test fails (seconds).
WAIT = 10.0


async def until(ready: Callable[[], Any], what: str) -> None:
    """Let the loop run until `ready()` (a state the worker reaches), or fail naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not ready():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def serving(app: Callable[..., Any], unix: str | None = None,
                  **settings: Any) -> AsyncIterator[tuple[Worker, Any]]:
    """Yield (worker, port) with `app` served by a real Worker's server on the running loop;
    (worker, path) on a unix socket at `unix` (gunicorn's `unix:` bind)."""
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    sock = socket.socket(socket.AF_UNIX) if unix else socket.socket()
    sock.bind(unix or ("127.0.0.1", 0))
    sock.listen(128)
    worker = Worker(1, os.getppid(), [sock], None, cfg.timeout, cfg, Logger(cfg))
    worker.loop = asyncio.get_running_loop()
    worker.wsgi = app
    worker.start()
    try:
        yield worker, unix or sock.getsockname()[1]
    finally:
        assert worker.listener is not None and worker.server is not None and worker.pool is not None
        worker.listener.stop()
        worker.server.close_all()
        worker.pool.shutdown(timeout=1)
        worker.server.spools.shutdown(timeout=1)
        sock.close()
        worker.tmp.close()
        await asyncio.sleep(0)


async def fetch(port: int, raw: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read() if read_until_close else await reader.read(65536)
    writer.close()
    return data
