"""gunicorn-aiowsgi: a gunicorn worker serving WSGI apps from an asyncio loop (aiohttp's C parser) and a thread pool."""

__version__ = "0.1.0"

from .worker import UVLoopWorker, Worker  # noqa: E402

__all__ = ["Worker", "UVLoopWorker", "__version__"]
