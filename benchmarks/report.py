"""The report: RESULTS.md (machine, versions, settings, targets, reference ratios, one table per
scenario, notes) and the same tables on stdout.

Pure formatting: summaries, failures and evaluated rows in, markdown text out (only
`write_results_md` writes a file).
"""

from __future__ import annotations

from benchmarks.catalog import GIB, IDEAL_SLEEP_RPS, SCENARIOS, SERVER_BY_NAME, SERVERS
from benchmarks.drivers import client_cpus
from benchmarks.machine import log

WRK_HEADERS = ["server", "what", "req/s (median)", "range", "p50 ms", "p99 ms", "errors",
               "peak RSS MiB", "worker CPU"]
TRANSFER_HEADERS = ["server", "what", "MB/s (median)", "seconds", "peak RSS growth MiB (max)",
                    "peak RSS MiB", "worker CPU", "errors"]
IDLE_HEADERS = ["server", "what", "idle conns open / alive after load",
                "RSS per idle conn KiB (max)", "RSS before MiB", "RSS with idle MiB",
                "p99 w/o idle ms", "p99 with idle ms", "p99 ratio", "req/s w/o / with idle",
                "errors"]
VERDICTS = {True: "met", False: "**MISSED**", None: "n/a"}


def md_table(headers: list, rows: list) -> str:
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def n(x, f: str = "{:.0f}") -> str:
    return "–" if x is None else f.format(x)


def server_cell(name: str) -> str:
    return f"**{name}**" if SERVER_BY_NAME[name].ours else name


def headers_for(sc) -> list[str]:
    if sc.kind == "wrk":
        hdr = list(WRK_HEADERS)
        if sc.name == "sleep":
            hdr.insert(4, f"% of ideal {IDEAL_SLEEP_RPS:.0f}")
        return hdr
    return list(TRANSFER_HEADERS if sc.kind in ("download", "upload") else IDLE_HEADERS)


def wrk_row(sc, d: dict) -> list:
    row = [n(d.get("rps")), f"{n(d.get('rps_min'))}–{n(d.get('rps_max'))}",
           n(d.get("p50_ms"), "{:.2f}"), n(d.get("p99_ms"), "{:.2f}"), n(d.get("errors")),
           n(d.get("rss_peak_mib"), "{:.1f}"), n(d.get("worker_cpu_pct"), "{:.0f}%")]
    if sc.name == "sleep":
        row.insert(2, n(d["rps"] / IDEAL_SLEEP_RPS * 100 if d.get("rps") else None, "{:.1f}%"))
    return row


def transfer_row(d: dict) -> list:
    return [n(d.get("bytes_per_s") and d["bytes_per_s"] / 1e6), n(d.get("seconds"), "{:.2f}"),
            n(d.get("rss_growth_mib"), "{:.1f}"), n(d.get("rss_peak_mib"), "{:.1f}"),
            n(d.get("worker_cpu_pct"), "{:.0f}%"), n(d.get("errors"))]


def idle_row(d: dict) -> list:
    return [f"{n(d.get('idle_open'))} / {n(d.get('idle_alive_after'))}",
            n(d.get("kib_per_conn"), "{:.2f}"),
            n(d.get("rss_before_mib"), "{:.1f}"), n(d.get("rss_idle_mib"), "{:.1f}"),
            n(d.get("p99_base_ms"), "{:.2f}"), n(d.get("p99_idle_ms"), "{:.2f}"),
            n(d.get("p99_ratio"), "{:.2f}x"),
            f"{n(d.get('rps_base'))} / {n(d.get('rps_idle'))}", n(d.get("errors"))]


def result_row(sc, name: str, d: dict | None, most: int, fails: dict, width: int) -> list:
    """One server's row: its figures, or "not measured" and why."""
    label = SERVER_BY_NAME[name].label
    if d is None:
        msg = fails.get(name, "no result").splitlines()[0][:120]
        return [name, label, f"not measured: {msg}"] + [""] * (width - 3)
    if d.get("rounds", most) < most:
        label += f" ({d['rounds']} of {most} runs)"
    if sc.kind == "wrk":
        figures = wrk_row(sc, d)
    elif sc.kind in ("download", "upload"):
        figures = transfer_row(d)
    else:
        figures = idle_row(d)
    return [server_cell(name), label] + figures


def scenario_table(sc, data: dict, fails: dict) -> list[str]:
    """The "### scenario" section: its table and what went wrong during the run."""
    hdr = headers_for(sc)
    names = [s.name for s in SERVERS if s.name in data or s.name in fails]
    most = max((d.get("rounds", 0) for d in data.values()), default=0)
    rows = [result_row(sc, name, data.get(name), most, fails, len(hdr)) for name in names]
    parts = [f"### {sc.name}: {sc.title}\n", md_table(hdr, rows)]
    extra = [f"- {name}: {msg.splitlines()[0][:200]}" for name, msg in fails.items()
             if name in data]
    notes = [f"- {name}: {', '.join(d['notes'])}" for name, d in data.items() if d.get("notes")]
    if extra or notes:
        parts.append("\nIssues during the run:\n" + "\n".join(extra + notes))
    return parts + [""]


def scenario_tables(summary: dict, failures: dict) -> str:
    parts: list[str] = []
    for sc in SCENARIOS.values():
        data, fails = summary.get(sc.name, {}), failures.get(sc.name, {})
        if data or fails:
            parts += scenario_table(sc, data, fails)
    return "\n".join(parts)


def targets_table(targets: list[dict]) -> str:
    rows = [[t["target"], t["value"] or "–", t["threshold"], VERDICTS[t["met"]], t["detail"]]
            for t in targets]
    return md_table(["target", "measured", "threshold", "verdict", "detail"], rows)


def references_table(refs: list[dict]) -> str:
    rows = [[r["ratio"], r["value"] or "–", r["detail"]] for r in refs]
    return md_table(["ratio", "measured", "detail"], rows)


def tally(targets: list[dict]) -> str:
    return (f"Met: {sum(1 for t in targets if t['met'] is True)}, "
            f"missed: {sum(1 for t in targets if t['met'] is False)}, "
            f"not measured: {sum(1 for t in targets if t['met'] is None)}.")


def settings_lines(meta: dict, args) -> list[str]:
    """The "## Settings" bullets: how this run was made."""
    idle, cpus = SCENARIOS["idle"], client_cpus()
    return [
        f"- one worker process per server, loopback only; servers interleaved round by round, "
        f"{args.rounds} round(s); medians reported (peak RSS figures: max over rounds)",
        f"- wrk {args.wrk_threads} thread(s), {args.duration} s per measured load "
        f"({args.warmup} s warm-up in round 1), --timeout 5s; idle scenario: {args.idle_duration} s"
        f" paced loads ({idle.conns} connections, {idle.delay_ms} ms "
        f"pause between requests), {args.idle_conns} idle connections, fresh server per round",
        f"- load generators {'pinned to CPU ' + str(sorted(cpus)) if cpus else 'not pinned'}; "
        f"load average at start: {meta['machine']['loadavg_at_start']}",
        f"- gunicorn: `--workers 1 --keep-alive 60 --worker-connections 12000 --backlog 2048`; "
        f"threads per scenario: hello/flask/stream/upload/idle {SCENARIOS['hello'].threads}, "
        f"blocking {SCENARIOS['sleep'].threads} (`--threads` for gunicorn workers, "
        f"executor size for aiohttp-wsgi and a2wsgi, `--threads` for waitress, "
        f"`--blocking-threads` for granian)",
        f"- transfers: {args.size / GIB:g} GiB, 1 MiB chunks, Python socket client "
        f"(benchmarks/loadclient.py), {args.transfer_reps} per server per round (median of all); "
        f"RSS growth = worker peak RSS (VmHWM reset via clear_refs, "
        f"plus 10 ms VmRSS sampling) minus RSS just before the transfer",
    ]


def results_md(meta: dict, tables: dict, notes: list[str], args, chart_name: str) -> str:
    """The whole RESULTS.md; `tables` holds summary, failures, targets, references."""
    lines = [
        "# gunicorn-aiowsgi benchmark results", "",
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"({meta['elapsed_s']:.0f} s). Do not edit by hand: rerun the script.", "",
        "## Machine", "", md_table(["", ""], [[k, v] for k, v in meta["machine"].items()]), "",
        "## Versions", "",
        md_table(["package", "version"], [[k, v] for k, v in meta["versions"].items()]), "",
        "## Settings", "", *settings_lines(meta, args), "",
        "## Targets", "", targets_table(tables["targets"]), "", tally(tables["targets"]), "",
        "How close the worker gets to granian (the compiled reference) and to the own-protocol "
        "sketch (the design point), in the same run:", "",
        references_table(tables["references"]), "",
        f"![results]({chart_name})", "",
        "## Results", "", scenario_tables(tables["summary"], tables["failures"]),
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {x}" for x in notes] + [""]
    return "\n".join(lines)


def write_results_md(path: str, meta: dict, tables: dict, notes: list[str], args,
                     chart_name: str) -> None:
    with open(path, "w") as f:
        f.write(results_md(meta, tables, notes, args, chart_name))


def print_summary(tables: dict) -> None:
    """The scenario tables, the targets and the reference ratios on stdout."""
    log("")
    log("=" * 100)
    log(scenario_tables(tables["summary"], tables["failures"]))
    log("Targets (ratios from this run):")
    for t in tables["targets"]:
        verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
        log(f"  [{verdict}] {t['target']}: {t['value'] or '–'} (threshold {t['threshold']})"
            f"  {t['detail']}")
    log("Reference ratios:")
    for r in tables["references"]:
        log(f"  {r['ratio']}: {r['value'] or '–'}  {r['detail']}")
