"""A gunicorn.conf.py whose server hooks write marks (one JSON line each) to $CONTRACT_MARKS."""

import json
import os


def _mark(hook, **fields):
    line = json.dumps({"hook": hook, "pid": os.getpid(), **fields}) + "\n"
    # O_APPEND and one write per line: marks from several processes never interleave.
    fd = os.open(os.environ["CONTRACT_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def post_fork(server, worker):
    # max_requests: this worker's own limit, the setting plus its max_requests_jitter draw.
    _mark("post_fork", worker=worker.pid, max_requests=worker.max_requests)


def post_worker_init(worker):
    reloader = getattr(worker, "reloader", None)
    _mark("post_worker_init", loop=getattr(worker, "loop", None) is not None,
          reloader=type(reloader).__name__ if reloader is not None else None)


def pre_request(worker, req):
    _mark("pre_request", method=req.method, path=req.path, query=req.query, uri=req.uri,
          version=list(req.version), headers=[list(h) for h in req.headers],
          peer=list(req.peer_addr) if isinstance(req.peer_addr, tuple) else req.peer_addr)


def post_request(worker, req, environ, resp):
    # getattr: gthread calls this with a response whose start_response never ran (app error).
    _mark("post_request", path=req.path, status=getattr(resp, "status", None),
          status_code=getattr(resp, "status_code", None),
          headers=[list(h) for h in getattr(resp, "headers", None) or []],
          sent=getattr(resp, "sent", None), path_info=environ.get("PATH_INFO"), nr=worker.nr)


def _raise_if_asked(hook):
    """$CONTRACT_RAISE names a hook that raises after its mark."""
    if os.environ.get("CONTRACT_RAISE") == hook:
        raise RuntimeError(f"{hook} raised on purpose")


def worker_int(worker):
    _mark("worker_int")
    _raise_if_asked("worker_int")


def worker_abort(worker):
    _mark("worker_abort")
    _raise_if_asked("worker_abort")


def worker_exit(server, worker):
    _mark("worker_exit", worker=worker.pid)


def child_exit(server, worker):
    _mark("child_exit", worker=worker.pid)
