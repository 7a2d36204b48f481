"""--profile SERVER: py-spy on one server's worker under the hello-world load, summarised.

py-spy itself slows the worker: the req/s printed here are not benchmark numbers. Two passes:
`--gil` (the thread holding the GIL: where the CPU goes) and all non-idle threads.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter

from benchmarks import HOST, LUA, OUT, REPO
from benchmarks.catalog import SCENARIOS, SERVER_BY_NAME
from benchmarks.drivers import pin_child
from benchmarks.machine import log, tool_path
from benchmarks.servers import Running, start_server, stop_server

RATE = 200  # samples per second
# frames that only ever run in an app thread (the pool's run loop, the WSGI call, the app)
POOL_MARKERS = ("threading.py", "ThreadPool._work", "AppCall.run", "/apps.py",
                "concurrent/futures/thread.py")
# the outer frames of every stack (process start, arbiter, loop runner, thread bootstrap)
TRUNK_MARKERS = ("runpy>", "gunicorn/arbiter.py", "gunicorn/app/", "gunicorn/__main__.py",
                 "gunicorn/workers/base.py", "run_forever", "run_until_complete",
                 "Thread._bootstrap", "Thread.run ", "Worker.run (", "Worker.init_process")
MODES = {"gil": (["--gil"], "samples of the thread holding the GIL (where the CPU goes)"),
         "active": ([], "all non-idle samples, incl. threads waiting for the GIL")}


def read_collapsed(path: str) -> tuple[Counter, Counter, Counter, dict, int]:
    """py-spy's raw (collapsed) stacks -> self, inclusive, per-thread-kind and per-kind
    inclusive sample counts, and the total."""
    self_c, incl, roots, total = Counter(), Counter(), Counter(), 0
    group_incl: dict = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames, count = stack.split(";"), int(count)
            total += count
            # --nonblocking samples can lose their outer frames: classify by what is there
            pool = any(m in fr for fr in frames for m in POOL_MARKERS)
            root = "app threads (pool)" if pool else "loop thread (main)"
            roots[root] += count
            self_c[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
                group_incl.setdefault(root, Counter())[fr] += count
    return self_c, incl, roots, group_incl, total


def summarize_collapsed(path: str, rate: int, seconds: int, top: int = 20) -> str:
    """Per-thread activity, then the top frames by self and by inclusive samples."""
    self_c, incl, roots, group_incl, total = read_collapsed(path)
    if not total:
        return "no samples"
    possible = rate * seconds
    out = [f"{total} samples at {rate} Hz over {seconds} s (one thread fully busy = {possible})", ""]
    out += [f"- {k}: {v} samples ({v / possible * 100:.0f}% of one thread's time)"
            for k, v in roots.most_common()]
    out += ["", "Top frames by self samples:", ""]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in self_c.most_common(top)]
    # the trunk of each thread (runpy -> arbiter -> worker.run, Thread._bootstrap ...) says nothing
    trunk = {fr for root, c in group_incl.items() for fr, v in c.items() if v >= 0.98 * roots[root]}
    trunk |= {fr for fr in incl if any(m in fr for m in TRUNK_MARKERS)}
    out += ["", "Top frames by inclusive samples (each thread's common trunk omitted):", ""]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in incl.most_common(300)
            if k not in trunk][: top + 10]
    return "\n".join(out)


def profile_pass(spy: str, run: Running, mode: str, args) -> list[str]:
    """One py-spy pass under a wrk load; the report's lines for it."""
    sc, secs = run.scenario, args.profile_seconds
    out = os.path.join(OUT, f"profile-{run.server.name}-{mode}.txt")
    wrk = subprocess.Popen(
        ["wrk", f"-t{args.wrk_threads}", f"-c{sc.conns}", f"-d{secs + 3}s", "--latency",
         "-s", LUA, f"http://{HOST}:{run.port}{sc.path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=pin_child)
    time.sleep(1.5)
    p = subprocess.run([spy, "record", "-p", str(run.worker_pid), "-d", str(secs), "-r",
                        str(RATE), "--nonblocking", "--format", "raw", "-o", out] + MODES[mode][0],
                       capture_output=True, text=True, timeout=secs + 60)
    wout, _ = wrk.communicate(timeout=secs + 60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", wout)
    body = (summarize_collapsed(out, RATE, secs) if p.returncode == 0 and os.path.exists(out)
            else f"py-spy failed: {p.stderr.strip()[-500:]}")
    return [f"## {mode}: {MODES[mode][1]}", "",
            f"req/s while profiled: {m.group(1) if m else '?'}; "
            f"raw stacks: {os.path.relpath(out, REPO)} "
            "(collapsed format: open in speedscope or flamegraph.pl)", "", "```", body, "```", ""]


def profile_server(name: str, args) -> int:
    """Profile one server's worker; writes benchmarks/out/profile-NAME.md. Exit status."""
    spy = tool_path("py-spy")
    if not spy:
        log("py-spy not found (pip install py-spy)")
        return 1
    srv, sc = SERVER_BY_NAME[name], SCENARIOS["hello"]
    run = start_server(srv, sc, tag="-profile", sketch_dir=args.sketch_dir)
    report = [f"# py-spy profile: {name} ({srv.label}) under wrk -c{sc.conns} hello world", ""]
    try:
        for mode in MODES:
            report += profile_pass(spy, run, mode, args)
    finally:
        stop_server(run)
    text = "\n".join(report)
    path = os.path.join(OUT, f"profile-{name}.md")
    with open(path, "w") as f:
        f.write(text)
    log(text)
    log(f"\nwrote {os.path.relpath(path)}")
    return 0
