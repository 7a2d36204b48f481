"""Which server/scenario pairs run (--only) and in what order: interleaved rounds.

Every server of a scenario is started, then each round measures each of them in turn, the
order rotated by one each round, so a slow drift of the machine spreads over all servers
instead of landing on one. The idle scenario starts a fresh server per round. A server that
cannot start or fails a round is recorded in `failures`, never fatal to the others.
"""

from __future__ import annotations

import fnmatch
import traceback

from benchmarks.catalog import SCENARIOS, SERVER_BY_NAME, SERVERS, Scenario, Server
from benchmarks.drivers import measure_transfer, measure_wrk
from benchmarks.idle import measure_idle
from benchmarks.machine import log
from benchmarks.servers import Running, StartError, start_server, stop_server, unavailable


def parse_only(items: list[str] | None) -> list[tuple[str, str]]:
    """--only values -> list of (server_glob, scenario_glob)."""
    filters = []
    for item in items or []:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            if "/" in part:
                a, b = part.split("/", 1)
                filters.append((a or "*", b or "*"))
            elif any(fnmatch.fnmatch(s, part) for s in SCENARIOS):
                filters.append(("*", part))
            else:
                filters.append((part, "*"))
    return filters


def unknown_filters(filters: list[tuple[str, str]]) -> list[str]:
    """The --only globs that match no server or no scenario."""
    bad = [a for a, _ in filters if a != "*" and not any(
        fnmatch.fnmatch(s, a) for s in SERVER_BY_NAME)]
    return bad + [b for _, b in filters if b != "*" and not any(
        fnmatch.fnmatch(s, b) for s in SCENARIOS)]


def selected(filters: list[tuple[str, str]], server: str, scenario: str) -> bool:
    """Whether --only selects the pair; bare servers and bare scenarios combine with AND."""
    if not filters:
        return True
    srv_f = [f for f in filters if f[1] == "*" and f[0] != "*"]
    sc_f = [f for f in filters if f[0] == "*" and f[1] != "*"]
    pair_f = [f for f in filters if f not in srv_f and f not in sc_f]
    if any(fnmatch.fnmatch(server, a) and fnmatch.fnmatch(scenario, b) for a, b in pair_f):
        return True
    if not srv_f and not sc_f:
        return False
    ok_srv = not srv_f or any(fnmatch.fnmatch(server, a) for a, _ in srv_f)
    ok_sc = not sc_f or any(fnmatch.fnmatch(scenario, b) for _, b in sc_f)
    return ok_srv and ok_sc


def rotated(names: list, rnd: int) -> list:
    """The round's order: rotated by one each round."""
    k = rnd % len(names) if names else 0
    return names[k:] + names[:k]


def log_wrk(sc: Scenario, rnd: int, name: str, res: dict) -> None:
    log(f"  [{sc.name} r{rnd + 1}] {name:22s} {res['rps']:9.0f} req/s  "
        f"p50 {res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  "
        f"err {res['errors']}  peak RSS {res['rss_peak_mib']:.1f} MiB  "
        f"CPU {res['worker_cpu_pct'] or 0:.0f}%")


def log_transfer(sc: Scenario, rnd: int, name: str, res: dict) -> None:
    log(f"  [{sc.name} r{rnd + 1}] {name:22s} {res['bytes_per_s'] / 1e6:9.0f} MB/s  "
        f"{res['seconds']:6.2f} s  RSS growth {res['rss_growth_mib']:.1f} MiB  "
        f"CPU {res['worker_cpu_pct'] or 0:.0f}%  err {res['errors']}"
        + (f"  ({res['note']})" if res.get("note") else ""))


def log_idle(rnd: int, name: str, res: dict) -> None:
    log(f"  [idle r{rnd + 1}] {name:22s} {res['idle_open']} open "
        f"({res['idle_alive_after']} alive after load) "
        f"{res['kib_per_conn']:.2f} KiB/conn  p99 {res['p99_base_ms']:.2f} -> "
        f"{res['p99_idle_ms']:.2f} ms (x{res['p99_ratio']:.2f})  "
        f"req/s {res['rps_base']:.0f} -> {res['rps_idle']:.0f}")


def measure_round(run: Running, rnd: int, args, into: list) -> None:
    """One round of one server: one wrk load, or `transfer_reps` transfers, appended to `into`
    as each completes (a failed second transfer keeps the first)."""
    sc, name = run.scenario, run.server.name
    if sc.kind == "wrk":
        res = measure_wrk(run, args.duration, args.warmup if rnd == 0 else 0, args.wrk_threads)
        log_wrk(sc, rnd, name, res)
        into.append(res)
        return
    # a capped peer (aiohttp-wsgi buffers 1 GiB) makes one transfer per round
    for _ in range(1 if sc.name in run.server.max_rounds else args.transfer_reps):
        res = measure_transfer(run, args.size, args.transfer_timeout)
        log_transfer(sc, rnd, name, res)
        into.append(res)


def start_all(sc: Scenario, servers: list[Server], args, failures: dict) -> dict:
    """Start every server of the scenario; name -> Running for those that came up."""
    running = {}
    for srv in servers:
        log(f"  starting {srv.name} ...")
        try:
            running[srv.name] = r = start_server(srv, sc, sketch_dir=args.sketch_dir)
            log(f"    port {r.port}, worker pid {r.worker_pid}")
        except StartError as e:
            failures.setdefault(sc.name, {})[srv.name] = f"failed to start: {e}"
            log(f"    FAILED to start {srv.name}: {e}")
    return running


def run_interleaved(sc: Scenario, servers: list[Server], args, results: dict,
                    failures: dict) -> None:
    """Start every server for `sc`, then run the rounds interleaved; stop them all."""
    running = start_all(sc, servers, args, failures)
    try:
        for rnd in range(args.rounds):
            for name in rotated([s.name for s in servers if s.name in running], rnd):
                run = running[name]
                if rnd >= run.server.max_rounds.get(sc.name, args.rounds):
                    continue
                if not run.worker_alive():
                    failures.setdefault(sc.name, {})[name] = (
                        f"worker gone before round {rnd + 1}:\n{run.log_tail()}")
                    continue
                try:
                    measure_round(run, rnd, args,
                                  results.setdefault(sc.name, {}).setdefault(name, []))
                except Exception as e:  # noqa: BLE001 - one server's failure is reported
                    failures.setdefault(sc.name, {})[name] = (
                        f"round {rnd + 1}: {type(e).__name__}: {e}")
                    log(f"  [{sc.name} r{rnd + 1}] {name}: ERROR {failures[sc.name][name]}")
    finally:
        for run in running.values():
            stop_server(run)


def idle_round(sc: Scenario, srv: Server, rnd: int, args, results: dict,
               failures: dict) -> None:
    """One round of the idle scenario on a fresh server."""
    try:
        run = start_server(srv, sc, tag=f"-r{rnd + 1}", sketch_dir=args.sketch_dir)
    except StartError as e:
        failures.setdefault(sc.name, {})[srv.name] = f"failed to start: {e}"
        log(f"  FAILED to start {srv.name}: {e}")
        return
    try:
        res = measure_idle(run, args.idle_conns, args.idle_duration, args.warmup,
                           args.wrk_threads)
        results.setdefault(sc.name, {}).setdefault(srv.name, []).append(res)
        log_idle(rnd, srv.name, res)
    except Exception as e:  # noqa: BLE001 - one server's failure is reported
        failures.setdefault(sc.name, {})[srv.name] = f"round {rnd + 1}: {type(e).__name__}: {e}"
        log(f"  [idle r{rnd + 1}] {srv.name}: ERROR {failures[sc.name][srv.name]}")
    finally:
        stop_server(run)


def run_idle(sc: Scenario, servers: list[Server], args, results: dict, failures: dict) -> None:
    """Idle connections: a fresh server per round, servers interleaved round by round."""
    for rnd in range(args.rounds):
        for srv in rotated(servers, rnd):
            if rnd >= srv.max_rounds.get(sc.name, args.rounds):
                continue
            if failures.get(sc.name, {}).get(srv.name, "").startswith("failed to start"):
                continue
            idle_round(sc, srv, rnd, args, results, failures)


def servers_for(sc: Scenario, filters, args, failures: dict) -> list[Server]:
    """The selected servers of a scenario that can run here (the others go to `failures`)."""
    out = []
    for srv in SERVERS:
        if sc.name not in srv.scenarios or not selected(filters, srv.name, sc.name):
            continue
        why = unavailable(srv, args.sketch_dir)
        if why:
            failures.setdefault(sc.name, {})[srv.name] = why
            continue
        out.append(srv)
    return out


def run_all(filters, args) -> tuple[dict, dict]:
    """Every selected scenario in turn; returns (results, failures)."""
    results: dict = {}
    failures: dict = {}
    for sc in SCENARIOS.values():
        servers = servers_for(sc, filters, args, failures)
        if not servers:
            continue
        log(f"\n== {sc.name}: {sc.title} — {', '.join(s.name for s in servers)}")
        try:
            (run_idle if sc.kind == "idle" else run_interleaved)(sc, servers, args, results,
                                                                 failures)
        except KeyboardInterrupt:
            log("interrupted; writing partial results")
            break
        except Exception:  # noqa: BLE001 - a broken scenario must not lose the others
            log(traceback.format_exc())
            failures.setdefault(sc.name, {})["harness"] = traceback.format_exc()
    return results, failures
