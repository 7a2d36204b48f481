"""The machine and the software a run measured, and installing what the benchmark measures.

`ensure_deps` pip-installs benchmarks/requirements.txt (the peers, uvloop, Flask, the chart)
into the running interpreter's environment and `ensure_wrk` installs wrk from Debian's packages
when it can (root, apt-get), so the README's one command works on a fresh clone.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import resource
import shutil
import subprocess
import sys

import sysinfo  # tests/sysinfo.py (benchmarks/__init__.py puts tests/ on the path)

from benchmarks import BENCH, REPO

# requirement name -> module that shows it is installed (None: a console script, not a module)
REQ_MODULES = {"aiohttp-wsgi": "aiohttp_wsgi", "py-spy": None, "flask": "flask"}
VERSIONED = ("gunicorn", "aiohttp", "uvloop", "aiohttp-wsgi", "waitress", "a2wsgi", "granian",
             "flask", "matplotlib")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def module_available(mod: str) -> bool:
    """Whether the server processes can import `mod`."""
    if mod == "gunicorn_aiowsgi":
        # the package under test lives in the repo; servers get it via PYTHONPATH
        return os.path.exists(os.path.join(REPO, "gunicorn_aiowsgi", "__init__.py"))
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def tool_path(name: str) -> str | None:
    """A console script of this interpreter's environment, or one on PATH."""
    cand = os.path.join(os.path.dirname(sys.executable), name)
    return cand if os.access(cand, os.X_OK) else shutil.which(name)


def requirements() -> list[str]:
    """The lines of benchmarks/requirements.txt, comments dropped."""
    with open(os.path.join(BENCH, "requirements.txt")) as f:
        return [ln.split("#", 1)[0].strip() for ln in f if ln.split("#", 1)[0].strip()]


def installed(req: str) -> bool:
    name = re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower()
    mod = REQ_MODULES.get(name, name.replace("-", "_"))
    return tool_path(name) is not None if mod is None else module_available(mod)


def ensure_deps(install: bool) -> list[str]:
    """pip-install the missing requirements; return notes on those still missing."""
    for mod in ("gunicorn", "aiohttp"):
        if not module_available(mod):
            sys.exit(f"{mod} is not importable by {sys.executable}; run this script with the "
                     f"project's environment (e.g. .venv/bin/python benchmarks/run.py)")
    missing = [req for req in requirements() if not installed(req)]
    if missing and not install:
        return [f"{req}: not installed (--no-install)" for req in missing]
    if missing:
        log(f"installing benchmark dependencies: {' '.join(missing)} ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", *missing], capture_output=True, text=True)
        importlib.invalidate_caches()
    notes = []
    for req in missing:
        if not installed(req):
            # one at a time, so one that cannot install does not keep the others out
            p = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                                "--disable-pip-version-check", req],
                               capture_output=True, text=True)
            importlib.invalidate_caches()
            if p.returncode != 0:
                tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
                notes.append(f"{req}: pip install failed ({tail[0]})")
    return notes


def ensure_wrk() -> None:
    """wrk on PATH: installed from Debian's packages when root with apt-get, else say how."""
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk not found: installing Debian's wrk package (apt-get) ...")
        subprocess.run("apt-get update -qq && apt-get install -y -qq wrk", shell=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if shutil.which("wrk"):
            return
    sys.exit("wrk not found. Install it first, e.g. on Debian/Ubuntu:\n"
             "    sudo apt-get update && sudo apt-get install -y wrk\n"
             "(macOS: brew install wrk)")


def _run(argv: list[str], **kw) -> str | None:
    """stdout of a short command, or None if it failed."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def source_fingerprint() -> str:
    """sha256 of the worker's source: it may be uncommitted, this names what was measured."""
    h = hashlib.sha256()
    pkg = os.path.join(REPO, "gunicorn_aiowsgi")
    for name in sorted(os.listdir(pkg)) if os.path.isdir(pkg) else []:
        if name.endswith(".py"):
            with open(os.path.join(pkg, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:12]


def ours_version() -> str:
    """gunicorn-aiowsgi's version, source fingerprint and git commit."""
    v = _run([sys.executable, "-c", "import gunicorn_aiowsgi as m; "
              "print(getattr(m, '__version__', '?'))"], cwd=REPO) or "import failed"
    v += f" [source sha256 {source_fingerprint()}]"
    head = _run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    if head:
        dirty = _run(["git", "-C", REPO, "status", "--porcelain", "gunicorn_aiowsgi"])
        v += f" (git {head}" + (", worktree modified)" if dirty else ")")
    return v


def versions() -> dict:
    """Versions of everything measured, and of wrk."""
    v = {}
    for dist in VERSIONED:
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = "not installed"
    v["gunicorn-aiowsgi"] = ours_version()
    try:
        p = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        v["wrk"] = (p.stdout + p.stderr).split("\n")[0].split(" [")[0].replace("wrk ", "")
    except (OSError, subprocess.TimeoutExpired):
        v["wrk"] = "?"
    return v


def _or_unknown(reading, fmt: str = "{}") -> str:
    """A /proc reading formatted, or "?" where /proc does not have it."""
    try:
        return fmt.format(reading())
    except (OSError, ValueError, IndexError):
        return "?"


def machine() -> dict:
    """The facts the report prints under "Machine" (a busy machine skews everything)."""
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpu": _or_unknown(sysinfo.cpu_model),
        "cores": os.cpu_count(),
        "memory": f"{mem / (1 << 30):.1f} GiB",
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cpu_busy_before_start": _or_unknown(sysinfo.machine_busy_pct, "{:.0f}% (1 s sample)"),
        "nofile": " / ".join(str(x) for x in resource.getrlimit(resource.RLIMIT_NOFILE)),
    }
