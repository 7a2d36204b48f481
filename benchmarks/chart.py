"""The chart (results.png): one panel per scenario plus the reference ratios; our worker in red.

Thresholds drawn on the panels come from `targets.TARGETS`, so the chart and the report
cannot disagree about a target.
"""

from __future__ import annotations

import os

from benchmarks.catalog import IDEAL_SLEEP_RPS, SERVER_BY_NAME, SERVERS
from benchmarks.summary import get
from benchmarks.targets import TARGETS

OURS_COLOR, PEER_COLOR, REF_COLOR = "#d62728", "#7f7f7f", "#1f77b4"
ORDER = [s.name for s in SERVERS]


def threshold(scenario: str, key: str, versus: str | None = None) -> float | None:
    """The threshold of ours' target on (scenario, key[, versus]), if there is one."""
    for t in TARGETS:
        if (t.scenario, t.server, t.key, t.versus) == (scenario, "ours", key, versus):
            return t.threshold
    return None


def color(name: str) -> str:
    return OURS_COLOR if SERVER_BY_NAME[name].ours else PEER_COLOR


def label_ticks(ax, names: list[str]) -> None:
    """Server names under the bars, ours in bold red."""
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=9)
    for lbl, name in zip(ax.get_xticklabels(), names):
        if SERVER_BY_NAME[name].ours:
            lbl.set_color(OURS_COLOR)
            lbl.set_fontweight("bold")


def reference_line(ax, ref: float | None, text: str, width: int) -> None:
    if ref is not None:
        ax.axhline(ref, color=REF_COLOR, ls="--", lw=1)
        ax.annotate(text, (width - 0.5, ref), ha="right", va="bottom", fontsize=8,
                    color=REF_COLOR)


def bars(ax, data: dict, key: str, title: str, ylabel: str, fmt: str = "{:.0f}", extra=None):
    """One bar per server that has `key` in this scenario's summaries; returns the names."""
    names = [s for s in ORDER if s in data and data[s].get(key) is not None]
    if not names:
        ax.set_title(title + " (not measured)")
        ax.axis("off")
        return []
    vals = [data[s][key] for s in names]
    drawn = ax.bar(range(len(names)), vals, color=[color(s) for s in names])
    label_ticks(ax, names)
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    for rect, v, name in zip(drawn, vals, names):
        ax.annotate(fmt.format(v) + (extra(data[name]) if extra else ""),
                    (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.margins(y=0.15)
    return names


def p99_label(d: dict) -> str:
    return f"\n{d['p99_ms']:.1f}" if d.get("p99_ms") is not None else ""


def rps_panel(ax, summary: dict, scenario: str, title: str) -> None:
    """req/s per server (labels: req/s and p99 ms), with the "n x gthread" target line."""
    names = bars(ax, summary.get(scenario, {}), "rps", title + " (label: req/s, p99 ms)", "req/s",
                 extra=p99_label)
    g, k = get(summary, scenario, "gthread", "rps"), threshold(scenario, "rps", "gthread")
    if names and g and k:
        reference_line(ax, k * g, f"target: {k:g}x gthread", len(names))


def sleep_panel(ax, summary: dict) -> None:
    names = bars(ax, summary.get("sleep", {}), "rps",
                 "blocking app (10 ms sleep, 16 threads, 100 conns)", "req/s")
    if names:
        reference_line(ax, IDEAL_SLEEP_RPS, f"ideal {IDEAL_SLEEP_RPS:.0f} req/s (target >= 90%)",
                       len(names))


def transfer_panel(ax, summary: dict) -> None:
    """Grouped bars: 1 GiB stream and upload MB/s, labelled with the peak RSS growth."""
    names = [s for s in ORDER if s in summary.get("stream", {}) or s in summary.get("upload", {})]
    if not names:
        ax.set_title("streaming (not measured)")
        ax.axis("off")
        return
    w = 0.4
    for i, (sc, col) in enumerate((("stream", "#ff7f0e"), ("upload", "#2ca02c"))):
        vals = [(get(summary, sc, s, "bytes_per_s") or 0) / 1e6 for s in names]
        drawn = ax.bar([x + (i - 0.5) * w for x in range(len(names))], vals, w,
                       label=f"1 GiB {sc}", color=col)
        for rect, v, s in zip(drawn, vals, names):
            growth = get(summary, sc, s, "rss_growth_mib")
            if v:
                ax.annotate(f"{v:.0f}\n+{growth:.0f}MiB" if growth is not None else f"{v:.0f}",
                            (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                            ha="center", va="bottom", fontsize=7)
    label_ticks(ax, names)
    ax.set_ylabel("MB/s")
    ax.set_title("1 GiB stream / upload throughput (labels: MB/s, peak RSS growth)", fontsize=11)
    ax.legend(fontsize=8)
    ax.margins(y=0.2)


def idle_panel(ax, summary: dict) -> None:
    names = bars(ax, summary.get("idle", {}), "kib_per_conn",
                 "10k idle keep-alive conns: worker RSS per conn (label: p99 with/without idle)",
                 "KiB / connection", fmt="{:.2f} KiB",
                 extra=lambda d: f"\np99 x{d['p99_ratio']:.2f}" if d.get("p99_ratio") else "")
    k = threshold("idle", "kib_per_conn")
    if names and k:
        reference_line(ax, k, f"target <= {k:g} KiB", len(names))


def references_panel(ax, refs: list[dict]) -> None:
    """Horizontal bars: how close the worker gets to granian and to the sketch."""
    shown = [r for r in refs if r["value"]]
    if not shown:
        ax.set_title("reference ratios (not measured)")
        ax.axis("off")
        return
    vals = [float(r["value"].rstrip("x")) for r in shown]
    ax.barh(range(len(shown)), vals,
            color=[OURS_COLOR if ": ours" in r["ratio"] else PEER_COLOR for r in shown])
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([r["ratio"] for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color=REF_COLOR, ls="--", lw=1)
    for i, v in enumerate(vals):
        ax.annotate(f"{v:.2f}x", (v, i), va="center", fontsize=8)
    ax.set_title("ratios to the references (granian, the sketch), same run", fontsize=11)


def make_chart(path: str, summary: dict, targets: list[dict], refs: list[dict]) -> str | None:
    """Write the chart; return why not if matplotlib is missing, else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not available: no chart"
    fig, axes = plt.subplots(3, 2, figsize=(14, 14))
    fig.suptitle("gunicorn-aiowsgi vs peers — one worker process, loopback, "
                 f"{os.cpu_count()} cores (medians)", fontsize=13)
    rps_panel(axes[0][0], summary, "hello", "hello world, 50 keep-alive conns")
    rps_panel(axes[0][1], summary, "flask", "Flask JSON view, 50 keep-alive conns")
    sleep_panel(axes[1][0], summary)
    transfer_panel(axes[1][1], summary)
    idle_panel(axes[2][0], summary)
    references_panel(axes[2][1], refs)
    met = sum(1 for t in targets if t["met"] is True)
    missed = sum(1 for t in targets if t["met"] is False)
    fig.text(0.01, 0.005, f"targets met: {met}, missed: {missed} — red = gunicorn-aiowsgi; "
             "see RESULTS.md for the ratios", fontsize=9)
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
