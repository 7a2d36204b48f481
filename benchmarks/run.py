#!/usr/bin/env python3
"""Benchmark gunicorn-aiowsgi against its peers, one worker process each.

    python benchmarks/run.py              # full run (3 rounds), writes RESULTS.md + results.png
    python benchmarks/run.py --quick      # smoke run: 1 round, 2 s per load
    python benchmarks/run.py --only ours,gthread --only idle
    python benchmarks/run.py --only ours/hello --only gthread/hello

Run it with the interpreter of the environment the project is installed in (the repo's
.venv): what it measures (benchmarks/requirements.txt: the peer servers, uvloop, Flask) is
pip-installed into that interpreter's environment (``--no-install`` skips this), and wrk is
installed from Debian's packages when it is missing and this runs as root.

Nothing is ever sent anywhere but 127.0.0.1. The harness is the `benchmarks` package (see
benchmarks/__init__.py); scenarios and targets: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import BENCH, OUT, machine, report, schedule  # noqa: E402
from benchmarks.catalog import GIB, MIB, SCENARIOS, SERVER_BY_NAME, find_sketch_dir  # noqa: E402
from benchmarks.chart import make_chart  # noqa: E402
from benchmarks.drivers import pin_clients  # noqa: E402
from benchmarks.summary import summarize_all  # noqa: E402
from benchmarks.targets import evaluate_references, evaluate_targets  # noqa: E402

OPTIONS = [  # (flags, argparse keywords)
    (("--quick",), dict(action="store_true", help="smoke run: 1 round, 2 s loads")),
    (("--only",), dict(action="append", metavar="SERVER/SCENARIO",
                       help="run only matching pairs; globs allowed; 'ours', 'hello', "
                            "'ours/hello', '*/stream', comma-separated or repeated")),
    (("--rounds",), dict(type=int, default=3)),
    (("--duration",), dict(type=int, default=2, help="seconds per wrk load (default 2)")),
    (("--idle-duration",), dict(type=int, default=3, help="seconds per paced load in the idle "
                                                          "scenario (default 3)")),
    (("--warmup",), dict(type=int, default=1)),
    (("--wrk-threads",), dict(type=int, default=1)),
    (("--size",), dict(type=int, default=GIB, help="stream/upload bytes (default 1 GiB)")),
    (("--transfer-timeout",), dict(type=float, default=90)),
    (("--idle-conns",), dict(type=int, default=10000,
                             help="idle connections in the idle scenario (default 10000)")),
    (("--profile",), dict(metavar="SERVER", help="instead of benchmarking: profile SERVER's "
                          "worker under the hello-world load with py-spy; writes "
                          "benchmarks/out/profile-SERVER.md")),
    (("--profile-seconds",), dict(type=int, default=5)),
    (("--pin",), dict(action="store_true", help="pin wrk and the socket clients to the last "
                      "CPU (default: the kernel schedules everything)")),
    (("--transfer-reps",), dict(type=int, default=4, help="1 GiB transfers per server per "
                                "round in stream/upload (default 4; a single transfer takes "
                                "well under a second and varies a lot: gthread's uploads are "
                                "bimodal here)")),
    (("--no-install",), dict(action="store_true",
                             help="do not pip-install benchmarks/requirements.txt")),
    (("--results",), dict(default=None, help="where to write the markdown report (default: "
                          "benchmarks/RESULTS.md for a full unfiltered run, "
                          "benchmarks/out/RESULTS-partial.md otherwise)")),
    (("--sketch-dir",), dict(default=None, help="folder holding own_protocol.py (default: "
                             "shared/sketches beside the checkout; absent: not measured)")),
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="servers: " + ", ".join(SERVER_BY_NAME)
                                + "\nscenarios: " + ", ".join(SCENARIOS))
    for flags, kw in OPTIONS:
        p.add_argument(*flags, **kw)
    return p


def prepare(p: argparse.ArgumentParser, args) -> None:
    """Apply --quick/--size/--pin/--sketch-dir, and install what the run needs."""
    if args.quick:
        args.rounds, args.duration, args.idle_duration, args.transfer_reps = 1, 2, 2, 1
    if args.size % MIB:
        p.error("--size must be a multiple of 1 MiB")
    os.environ["BENCH_STREAM_CHUNKS"] = str(args.size // MIB)  # read by apps.py in the servers
    cpus = sorted(os.sched_getaffinity(0))
    pin_clients({cpus[-1]} if args.pin and len(cpus) >= 2 else None)
    args.sketch_dir = find_sketch_dir(args.sketch_dir)
    machine.ensure_wrk()
    args.notes = machine.ensure_deps(not args.no_install)
    for x in args.notes:
        machine.log(f"note: {x}")


def output_paths(args, full: bool) -> tuple[str, str]:
    """(RESULTS markdown, chart): the committed files only for a full, unfiltered run."""
    results_path = args.results or (os.path.join(BENCH, "RESULTS.md") if full
                                    else os.path.join(OUT, "RESULTS-partial.md"))
    chart = "results.png" if full and not args.results else "results-partial.png"
    return results_path, os.path.join(os.path.dirname(os.path.abspath(results_path)), chart)


def start_meta(argv) -> dict:
    """The command, date, machine and versions; warns when the machine is already busy."""
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"command": ("python benchmarks/run.py " + shown).rstrip(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine.machine(), "versions": machine.versions()}
    machine.log(f"machine: {meta['machine']}")
    busy = meta["machine"]["cpu_busy_before_start"]
    if busy != "?" and float(busy.split("%")[0]) > 10:
        machine.log(f"WARNING: the machine is already {busy} busy; results will be skewed")
    machine.log(f"versions: {meta['versions']}")
    return meta


def write_outputs(args, meta: dict, results: dict, failures: dict, full: bool) -> None:
    """Summaries, targets, stdout, results.json, the chart and the markdown report."""
    summary = summarize_all(results)
    tables = {"summary": summary, "failures": failures,
              "targets": evaluate_targets(summary, results, failures),
              "references": evaluate_references(summary, failures)}
    report.print_summary(tables)
    notes = list(args.notes) + [f"{sc}/{srv}: {msg.splitlines()[0][:300]}"
                                for sc, d in failures.items() for srv, msg in d.items()]
    json_path = os.path.join(OUT, "results.json")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "args": vars(args), "results": results, **tables},
                  f, indent=1, default=str)
    results_path, chart_path = output_paths(args, full)
    err = make_chart(chart_path, summary, tables["targets"], tables["references"])
    if err:
        notes.append(err)
    report.write_results_md(results_path, meta, tables, notes, args,
                            os.path.basename(chart_path))
    machine.log(f"\nwrote {os.path.relpath(results_path)}"
                + ("" if err else f", {os.path.relpath(chart_path)}")
                + f", {os.path.relpath(json_path)} in {meta['elapsed_s']:.0f} s")


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    prepare(p, args)
    os.makedirs(OUT, exist_ok=True)
    if args.profile:
        if args.profile not in SERVER_BY_NAME:
            p.error(f"--profile: unknown server {args.profile}; servers: "
                    f"{', '.join(SERVER_BY_NAME)}")
        from benchmarks.profiling import profile_server

        return profile_server(args.profile, args)
    filters = schedule.parse_only(args.only)
    unknown = schedule.unknown_filters(filters)
    if unknown:
        p.error(f"--only: no server/scenario matches {unknown}; servers: "
                f"{', '.join(SERVER_BY_NAME)}; scenarios: {', '.join(SCENARIOS)}")
    meta = start_meta(argv)
    t0 = time.monotonic()
    results, failures = schedule.run_all(filters, args)
    meta["elapsed_s"] = time.monotonic() - t0
    write_outputs(args, meta, results, failures, full=not args.quick and not filters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
