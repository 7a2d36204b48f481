"""Production gunicorn settings for gunicorn-aiowsgi.

    gunicorn -c deploy/gunicorn.conf.py --chdir deploy example_app:app

Every value can still be overridden on the command line or in GUNICORN_CMD_ARGS
(command line > GUNICORN_CMD_ARGS > this file). The timeouts here must line up with the
load balancer and the platform in front of gunicorn: see deploy/README.md.
"""

import os

# --- The worker ---------------------------------------------------------------------------
# aiohttp parses HTTP and holds the sockets; the WSGI app runs in a pool of `threads`
# threads per worker process.
worker_class = "gunicorn_aiowsgi.Worker"  # or "gunicorn_aiowsgi.UVLoopWorker" (pip install uvloop)

# --- Where to listen ------------------------------------------------------------------------
# Containers / Kubernetes: all interfaces on $PORT (8000 by default; kubernetes.yaml's
# containerPort). Behind nginx on the same machine, prefer a unix socket:
#     gunicorn -c deploy/gunicorn.conf.py --bind unix:/run/gunicorn.sock ...   (nginx.conf's upstream)
# Under systemd socket activation (gunicorn.socket) this is ignored: gunicorn uses the
# socket systemd passes in (LISTEN_FDS).
bind = [f"0.0.0.0:{os.environ.get('PORT', '8000')}"]


# --- How many -----------------------------------------------------------------------------
# Processes: one per CPU core is a good start (each has its own event loop and GIL).
# WEB_CONCURRENCY is what Heroku and others set; on Kubernetes set it to the CPU limit.
def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may run on (Linux)
    except AttributeError:
        return os.cpu_count() or 1


workers = int(os.environ.get("WEB_CONCURRENCY") or _cpus())
# Threads per process = WSGI calls in progress at once per worker. A server-sent-events
# stream holds one thread for as long as it is open, so count open streams in here.
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Open connections per worker, idle keep-alive ones included. Past it the worker stops accepting
# and new clients wait in the listen backlog, unless a kept-alive connection is idle: the one
# idle longest is closed for each client waiting. Each connection may hold two file descriptors
# (its socket, a spooled upload's file): the worker raises its soft open file limit to
# 2 x this + 64 as far as the hard limit goes (systemd's and Docker's default hard limits allow
# it), and warns at boot if that is not enough.
worker_connections = 1000

# --- Timeouts (line these up with the balancer and the platform: deploy/README.md) ----------
# Keep idle keep-alive connections open LONGER than the balancer's idle timeout, so the
# balancer always closes first. Otherwise it may send a request on a connection gunicorn is
# closing at that very moment, and the client gets a 502. 75 s > AWS ALB's default 60 s, and
# > nginx's upstream keepalive_timeout (60 s in deploy/nginx.conf). Google Cloud's external
# Application Load Balancer (also what GKE Ingress creates) keeps idle connections to backends
# for 600 s, a value that cannot be changed: behind it, keep them longer, e.g.
# GUNICORN_CMD_ARGS="--keep-alive 620" (see
# https://cloud.google.com/load-balancing/docs/https/request-distribution).
# Heroku's router: 90 s, so deploy/Procfile sets 95.
keepalive = 75
# After TERM, in-flight requests get this long to finish before the worker is killed.
# Keep it below the platform's kill timeout: Heroku 30 s, Kubernetes
# terminationGracePeriodSeconds minus the preStop pause, `docker stop -t` (10 s by default!),
# systemd TimeoutStopSec. Streams still open at the end are cut.
graceful_timeout = 25
# A worker that does not check in with the master for this long is killed and replaced.
# The app runs in threads, so a slow request does not block the check-in; this catches a
# wedged event loop, not slow requests.
timeout = 30
# Heartbeat files on tmpfs: a container's overlay /tmp can stall and get workers killed.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# --- Behind a proxy -----------------------------------------------------------------------
# Trust X-Forwarded-Proto/-For (and the other secure_scheme_headers) only from these
# addresses. nginx on the same host (deploy/nginx.conf) connects over a unix socket, which
# gunicorn always trusts, or from 127.0.0.1. Behind a cloud balancer set FORWARDED_ALLOW_IPS
# to its subnet, e.g. "10.0.0.0/8" (gunicorn 23.x takes addresses only: there "*", with only the
# balancer able to reach the port); "*" only when nothing else can reach the port. On Heroku,
# "*" (its router is not loopback: deploy/README.md).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# --- Logs: to stdout/stderr, for the platform to collect ----------------------------------
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# client (and the address it came through) "request line" status bytes duration-ms
# "referer" "user agent" request-id
access_log_format = (
    '%({x-forwarded-for}i)s %(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(f)s" "%(a)s" %({x-request-id}i)s'
)

# --- Metrics (optional) ---------------------------------------------------------------------
# Request counts, durations and worker counts to a statsd / Datadog agent:
# statsd_host = "localhost:8125"
# statsd_prefix = "myapp"
# dogstatsd_tags = "env:prod,service:myapp"

# --- Other knobs you may want ---------------------------------------------------------------
# max_requests = 10000          # recycle workers now and then if the app leaks memory...
# max_requests_jitter = 1000    # ...but not all at the same time
# preload_app = True            # import the app once in the master: less memory, but HUP
#                               # then no longer reloads code
