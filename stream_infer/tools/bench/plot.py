"""The benchmark's figure: throughput bars, latency against offered load, service RSS over the drain."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot(results: dict, path: Path) -> None:
    fig, (ax_tp, ax_lat, ax_rss) = plt.subplots(1, 3, figsize=(15, 4.2))
    tp = results["throughput_eps"]
    colors = {"ceiling": "#888888", "service": "#2a7ab9", "service_eos": "#5aa05a", "per_event": "#d9822b"}
    modes = [m for m in colors if m in tp]
    bars = ax_tp.bar(modes, [tp[m] for m in modes], color=[colors[m] for m in modes])
    ax_tp.bar_label(bars, labels=[f"{tp[m]:,}" for m in modes])
    ax_tp.set_ylabel("events/s")
    ax_tp.set_title("Sustained throughput (engines pipeline)")

    lat = results.get("latency_ms", {})
    if lat:
        loads = sorted(lat.values(), key=lambda v: v["offered_eps"])
        x = [v["offered_eps"] for v in loads]
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax_lat.plot(x, [v[q] for v in loads], style, label=q)
        ax_lat.set_xscale("log")
        ax_lat.set_yscale("log")
        ax_lat.set_xlabel("offered load, events/s (log)")
        ax_lat.set_ylabel("end-to-end latency, ms (log)")
        ax_lat.set_title("Latency against load (service)")
        ax_lat.legend()

    rss = results.get("service_rss_mb", [])
    if rss:
        ax_rss.plot([c for _, c, _ in rss], [r for _, _, r in rss])
        ax_rss.set_xlabel("events drained (committed)")
        ax_rss.set_ylabel("RSS, MB")
        ax_rss.set_ylim(bottom=0)
        ax_rss.set_title("Service memory while draining the backlog")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
