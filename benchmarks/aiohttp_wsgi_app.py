"""The prior art: aiohttp-wsgi's ``WSGIHandler`` under aiohttp's gunicorn worker.

    BENCH_APP=hello BENCH_THREADS=8 \\
        gunicorn -k aiohttp.worker.GunicornWebWorker aiohttp_wsgi_app:app_factory

``BENCH_APP`` picks the WSGI app from benchmarks/apps.py (hello, flask_json, sleep,
stream, upload); ``BENCH_THREADS`` sizes the executor the WSGI app runs in (the
equivalent of ``--threads`` for the threaded gunicorn workers).

Note how aiohttp-wsgi works (0.10.0, checked against aiohttp 3.14): it reads the
whole request body into a SpooledTemporaryFile (spilling to a temp file past
512 KiB) before calling the app, and joins the whole response body into one
bytes object before sending it, so the 1 GiB stream/upload scenarios show that
buffering rather than a streaming bridge.  It imports and runs unpatched on
aiohttp 3.14; its defaults are kept.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import apps
from aiohttp import web
from aiohttp_wsgi import WSGIHandler


def make_app() -> web.Application:
    name = os.environ.get("BENCH_APP", "hello")
    threads = int(os.environ.get("BENCH_THREADS", "8"))
    handler = WSGIHandler(
        apps.wsgi_app(name),
        executor=ThreadPoolExecutor(threads, thread_name_prefix="aiohttp-wsgi"),
        # everything else at its defaults: bodies over 512 KiB spill to a temp file,
        # max_request_body_size is exactly 1 GiB (the upload scenario fits)
    )
    app = web.Application()
    app.router.add_route("*", "/{path_info:.*}", handler)
    return app


async def app_factory() -> web.Application:
    return make_app()
