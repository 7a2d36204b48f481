"""Native aiohttp handlers for ``aiohttp.worker.GunicornWebWorker``.

This is the ceiling for anything built on aiohttp's HTTP server: no WSGI
translation, no thread hop.  Load it with::

    gunicorn -k aiohttp.worker.GunicornWebWorker aiohttp_native:app_factory

Routes mirror benchmarks/apps.py: ``/`` answers "Hello, world!", ``/stream``
sends 1 GiB in 1 MiB chunks, ``/upload`` reads and discards the request body
and answers with its length, ``/ping`` is the readiness probe.
"""

import apps
from aiohttp import web

_HELLO_HEADERS = {"Content-Type": "text/plain"}


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=apps.HELLO_BODY, headers=_HELLO_HEADERS)


async def stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream"},
    )
    resp.content_length = apps.STREAM_TOTAL
    await resp.prepare(request)
    chunk = apps._CHUNK
    for _ in range(apps.STREAM_CHUNKS):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def upload(request: web.Request) -> web.Response:
    total = 0
    async for data in request.content.iter_chunked(apps.CHUNK_SIZE):
        total += len(data)
    return web.Response(text=str(total))


async def ping(request: web.Request) -> web.Response:
    return web.Response(body=apps.PING_BODY)


def make_app() -> web.Application:
    app = web.Application(client_max_size=2 << 30)
    app.router.add_get("/", hello)
    app.router.add_get("/ping", ping)
    app.router.add_get("/stream", stream)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    return app


async def app_factory() -> web.Application:
    return make_app()
