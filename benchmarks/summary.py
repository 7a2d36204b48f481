"""Rounds to one figure per metric: the median, except RSS (the maximum) and errors (the sum).

Pure: lists of per-round result dicts in, summary dicts out.
"""

from __future__ import annotations

import statistics

MAX_KEYS = ("rss_peak_mib", "rss_growth_mib", "kib_per_conn", "rss_idle_mib")
SUM_KEYS = ("errors",)
RANGE_KEYS = ("rps", "bytes_per_s")


def _numbers(rounds: list[dict], key: str) -> list[float]:
    """The numeric values of `key` over the rounds (bools and missing values left out)."""
    return [r[key] for r in rounds
            if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def summarize(rounds: list[dict]) -> dict:
    """One summary dict for one server in one scenario."""
    out: dict = {"rounds": len(rounds)}
    for k in set().union(*(r.keys() for r in rounds)):
        vals = _numbers(rounds, k)
        if not vals:
            continue
        if k in SUM_KEYS:
            out[k] = sum(vals)
        elif k in MAX_KEYS:
            out[k] = max(vals)
            out[k + "_median"] = statistics.median(vals)
        else:
            out[k] = statistics.median(vals)
            if k in RANGE_KEYS:
                out[k + "_min"], out[k + "_max"] = min(vals), max(vals)
    notes = sorted({r["note"] for r in rounds if r.get("note")})
    if notes:
        out["notes"] = notes
    return out


def summarize_all(results: dict) -> dict:
    """results[scenario][server] = rounds  ->  summary[scenario][server] = summary dict.
    A server with no completed round has no summary (the report says why it was not measured)."""
    return {sc: {srv: summarize(rs) for srv, rs in d.items() if rs} for sc, d in results.items()}


def get(summary: dict, scenario: str, server: str, key: str):
    """One summarized figure, or None when it was not measured."""
    return summary.get(scenario, {}).get(server, {}).get(key)
