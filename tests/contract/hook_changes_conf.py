"""A gunicorn.conf.py whose pre_request hook changes req as the request's X-Change field says
(comma-separated: append, strip, assign, path, close), for test_hooks_logging.py to compare with
gthread. Each request's headers as the hook found them are marked to $CONTRACT_MARKS."""

from contract.hooks_conf import _mark


def pre_request(worker, req):
    found = [list(field) for field in req.headers]
    for change in dict(req.headers).get("X-CHANGE", "").split(","):
        if change == "append":
            req.headers.append(("X-HOOK", "added"))
        elif change == "strip":  # in place, as a hook removing a secret would
            for field in [f for f in req.headers if f[0] == "X-SECRET"]:
                req.headers.remove(field)
        elif change == "assign":
            req.headers = [f for f in req.headers if f[0] != "X-CHANGE"] + [("X-ASSIGNED", "1")]
        elif change == "path":
            req.path = "/rewritten/environ"
        elif change == "close":
            req.force_close()
    _mark("pre_request", headers=found)
