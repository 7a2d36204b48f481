"""gunicorn-aiowsgi: a gunicorn worker serving WSGI apps through aiohttp's HTTP server and a thread pool."""

__version__ = "0.1.0"

from .worker import UVLoopWorker, Worker  # noqa: E402

__all__ = ["Worker", "UVLoopWorker", "__version__"]
