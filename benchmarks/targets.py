"""The targets and the reference ratios, as data, and their evaluation against one run's summary.

A target is a figure of one server in one scenario, alone or divided by the same figure of
another server in the same run (only ratios from one run compare), held to a threshold. A
reference ratio has no threshold: it says how close the worker gets to the compiled reference
(granian) and to the design point (the own-protocol sketch of issue 11). Pure: plain values in,
rows of plain values out.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.catalog import IDEAL_SLEEP_RPS
from benchmarks.summary import MAX_KEYS, get


@dataclass(frozen=True)
class Target:
    text: str
    scenario: str
    server: str
    key: str  # a summary key (rps, p99_ms, bytes_per_s, kib_per_conn, ...)
    threshold: float
    versus: str | None = None  # a server: the figure is server's key / versus's key
    higher: bool = True  # higher is better (met: value >= threshold), else value <= threshold
    unit: str = "x"  # "x" (a ratio), "%", or the unit of an absolute figure
    scale: float = 1.0  # applied to an absolute figure (req/s -> % of an ideal)


@dataclass(frozen=True)
class Reference:
    scenario: str
    server: str
    reference: str
    key: str = "rps"


# (our worker, its loop, native aiohttp on that loop, aiohttp-wsgi on that loop)
SAME_LOOP = (("ours", "asyncio", "aiohttp-native", "aiohttp-wsgi"),
             ("ours-uvloop", "uvloop", "aiohttp-native-uvloop", "aiohttp-wsgi-uvloop"))
OURS = ("ours", "ours-uvloop")
TRANSFERS = (("stream", "1 GiB stream"), ("upload", "1 GiB upload"))

# issue 11's speed targets (hello world, 50 kept-alive connections, one worker), beside the
# blocking-app and memory targets that still hold
TARGETS = [
    *(Target(f"hello: {w} >= 1.5x native aiohttp req/s (both {loop})", "hello", w, "rps", 1.5,
             versus=native) for w, loop, native, _ in SAME_LOOP),
    *(Target(f"hello: {w} >= 4x aiohttp-wsgi req/s (both {loop})", "hello", w, "rps", 4,
             versus=wsgi) for w, loop, _, wsgi in SAME_LOOP),
    *(Target(f"hello: {w} >= 8x gthread req/s", "hello", w, "rps", 8, versus="gthread")
      for w in OURS),
    *(Target(f"hello: {w} p99 <= 0.3x gthread p99", "hello", w, "p99_ms", 0.3,
             versus="gthread", higher=False) for w in OURS),
    Target("hello: ours-uvloop no slower than ours (asyncio): >= 1x req/s", "hello",
           "ours-uvloop", "rps", 1.0, versus="ours"),
    *(Target(f"blocking: {w} >= 90% of ideal {IDEAL_SLEEP_RPS:.0f} req/s", "sleep", w, "rps",
             90, unit="%", scale=100 / IDEAL_SLEEP_RPS) for w in OURS),
    *(t for sc, what in TRANSFERS for w in OURS for t in (
        Target(f"{what}: {w} >= 0.9x gthread throughput", sc, w, "bytes_per_s", 0.9,
               versus="gthread"),
        Target(f"{what}: {w} worker peak RSS growth < 32 MiB", sc, w, "rss_growth_mib", 32,
               higher=False, unit="MiB"))),
    *(t for w in OURS for t in (
        Target(f"10k idle: {w} <= 4 KiB RSS per idle connection", "idle", w, "kib_per_conn", 4,
               higher=False, unit="KiB"),
        Target(f"10k idle: {w} active p99 within 1.2x of p99 without idle conns", "idle", w,
               "p99_ratio", 1.2, higher=False))),
]

REFERENCES = [
    Reference("hello", "ours", "granian"),
    Reference("hello", "ours-uvloop", "granian"),
    Reference("hello", "ours", "sketch"),
    Reference("hello", "ours-uvloop", "sketch-uvloop"),
    Reference("hello", "sketch", "granian"),
    Reference("hello", "sketch-uvloop", "granian"),
    Reference("flask", "ours", "granian"),
    Reference("flask", "ours-uvloop", "granian"),
    Reference("flask", "ours", "gthread"),
]

# how a figure reads in a detail: (format, scale, unit)
SHOWN = {"rps": ("{:.0f}", 1, "req/s"), "p99_ms": ("{:.2f}", 1, "ms"),
         "bytes_per_s": ("{:.0f}", 1e-6, "MB/s")}


def figure(summary: dict, t: Target) -> float | None:
    """The measured figure a target is held to (a ratio, or a scaled absolute value)."""
    value = get(summary, t.scenario, t.server, t.key)
    if value is None:
        return None
    if t.versus is None:
        return value * t.scale
    base = get(summary, t.scenario, t.versus, t.key)
    return value / base if base else None


def shown(value: float, unit: str) -> str:
    """A figure as the report prints it."""
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:.2f} {unit}"


def verdict(value: float, t: Target) -> tuple[bool, str]:
    """(met, how far from the threshold in words)."""
    met = value >= t.threshold if t.higher else value <= t.threshold
    if not t.threshold:
        return met, "met" if met else "MISSED"
    margin = (value / t.threshold - 1) if t.higher else (1 - value / t.threshold)
    return met, (f"met with {margin * 100:.0f}% to spare" if met
                 else f"MISSED by {abs(margin) * 100:.0f}%")


def pair_detail(summary: dict, scenario: str, a: str, b: str, key: str) -> str:
    """"18988 vs 3789 req/s": the two figures a ratio divides."""
    fmt, scale, unit = SHOWN.get(key, ("{:.2f}", 1, ""))
    va, vb = get(summary, scenario, a, key), get(summary, scenario, b, key)
    if va is None or vb is None:
        return ""
    return f"{fmt.format(va * scale)} vs {fmt.format(vb * scale)} {unit}".rstrip()


def detail(summary: dict, results: dict, t: Target) -> str:
    """What the figure is made of: the two sides of a ratio, or how rounds were combined."""
    if t.versus is not None:
        return pair_detail(summary, t.scenario, t.server, t.versus, t.key)
    if t.key in MAX_KEYS:
        return "max over rounds"
    if t.key == "p99_ratio":
        rounds = ", ".join(f"{r['p99_base_ms']:.2f}->{r['p99_idle_ms']:.2f} ms "
                           f"(x{r['p99_ratio']:.2f})"
                           for r in results.get(t.scenario, {}).get(t.server, [])
                           if "p99_ratio" in r)
        return f"median of per-round ratios; rounds: {rounds}" if rounds else ""
    raw = get(summary, t.scenario, t.server, t.key)
    fmt, scale, unit = SHOWN.get(t.key, ("{:.2f}", 1, ""))
    return f"{fmt.format(raw * scale)} {unit}".rstrip()


def why_missing(failures: dict, scenario: str, servers: tuple) -> str:
    """"not measured", with the first line of the reason a server gave, if any."""
    for name in servers:
        msg = failures.get(scenario, {}).get(name)
        if msg:
            return f"not measured: {name}: {msg.splitlines()[0][:160]}"
    return "not measured"


def threshold_text(t: Target) -> str:
    """The threshold as the report prints it."""
    return {"x": f"{t.threshold:g}x", "%": f"{t.threshold:g}%"}.get(
        t.unit, f"{t.threshold:g} {t.unit}")


def evaluate_targets(summary: dict, results: dict | None = None,
                     failures: dict | None = None) -> list[dict]:
    """One row per target: target, value (shown), threshold, met (True/False/None), detail."""
    rows = []
    for t in TARGETS:
        row = {"target": t.text, "threshold": threshold_text(t), "unit": t.unit}
        value = figure(summary, t)
        if value is None:
            sides = (t.server,) + ((t.versus,) if t.versus else ())
            rows.append(dict(row, value=None, met=None,
                             detail=why_missing(failures or {}, t.scenario, sides)))
            continue
        met, how = verdict(value, t)
        d = detail(summary, results or {}, t)
        rows.append(dict(row, value=shown(value, t.unit), met=met,
                         detail=(d + "; " if d else "") + how))
    return rows


def evaluate_references(summary: dict, failures: dict | None = None) -> list[dict]:
    """One row per reference ratio: ratio (text), value (shown or None), detail."""
    rows = []
    for r in REFERENCES:
        text = f"{r.scenario}: {r.server} / {r.reference} {SHOWN.get(r.key, ('', 1, r.key))[2]}"
        a, b = get(summary, r.scenario, r.server, r.key), get(summary, r.scenario, r.reference,
                                                               r.key)
        if a is None or not b:
            rows.append({"ratio": text, "value": None, "detail": why_missing(
                failures or {}, r.scenario, (r.server, r.reference))})
            continue
        rows.append({"ratio": text, "value": shown(a / b, "x"),
                     "detail": pair_detail(summary, r.scenario, r.server, r.reference, r.key)})
    return rows
