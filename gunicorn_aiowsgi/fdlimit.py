"""The worker's file descriptors against RLIMIT_NOFILE: what worker_connections may need, and the soft limit raised toward the hard one at boot."""

from __future__ import annotations

import resource
from typing import Any, NamedTuple

# Descriptors one connection may hold at once: its socket, and its request body's spool file.
FDS_PER_CONNECTION = 2
# Descriptors of the worker's own besides its connections: the listening sockets, the log
# files, the heartbeat file, the loop's selector and wake-up pipe, and room for the app's own
# (database connections, files it opens).
FD_MARGIN = 64


class FdPlan(NamedTuple):
    need: int       # descriptors worker_connections may take, with the margin
    soft: int       # the soft limit to run with (the current one when nothing is to change)
    shortfall: int  # how far that soft limit stays below `need` (0: enough)


def unlimited(value: int) -> bool:
    return value == resource.RLIM_INFINITY or value < 0


def plan(connections: int, soft: int, hard: int) -> FdPlan:
    """Pure: raise the soft limit to what `connections` need, as far as the hard limit allows;
    never lower it."""
    need = connections * FDS_PER_CONNECTION + FD_MARGIN
    if unlimited(soft) or soft >= need:
        return FdPlan(need, soft, 0)
    target = need if unlimited(hard) else max(soft, min(need, hard))
    return FdPlan(need, target, need - target)


def connections_within(limit: int) -> int:
    """The worker_connections that `limit` descriptors hold with certainty."""
    return max(1, (limit - FD_MARGIN) // FDS_PER_CONNECTION)


def ensure(connections: int, log: Any) -> FdPlan:
    """At worker boot: raise RLIMIT_NOFILE's soft limit toward the hard one if worker_connections
    may need more, and say once, as a warning, when it still falls short. Without this, a full
    worker fails its uploads' spool files (503) and pauses accepting (EMFILE) under a 1024 limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = plan(connections, soft, hard)
    result = wanted
    if wanted.soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted.soft, hard))
            log.info("Open file limit (RLIMIT_NOFILE) raised from %d to %d for "
                     "worker_connections %d", soft, wanted.soft, connections)
        except (ValueError, OSError) as exc:  # a sandbox that refuses it
            log.debug("Cannot raise the open file limit from %d to %d: %s", soft, wanted.soft, exc)
            result = FdPlan(wanted.need, soft, wanted.need - soft)
    if result.shortfall:
        log.warning(
            "worker_connections %d may need %d file descriptors (a socket and a spooled request "
            "body each, and %d for the worker), but the open file limit (RLIMIT_NOFILE) is %d "
            "(hard limit %s): past it, uploads get 503 and new connections wait. Raise the limit "
            "(ulimit -n, systemd LimitNOFILE=, docker --ulimit nofile=) or set worker_connections "
            "to %d or less", connections, result.need, FD_MARGIN, result.soft,
            "unlimited" if unlimited(hard) else hard, connections_within(result.soft))
    return result
