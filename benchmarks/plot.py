"""The results' picture: write latency per system, throughput, failover gaps, scaling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["render"]


def render(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    lat = results["latency"]
    names = list(lat)
    ax = axes[0][0]
    y = range(len(names))
    ax.barh([i - 0.2 for i in y], [lat[n]["p50_ms"] for n in names], 0.4, label="p50")
    ax.barh([i + 0.2 for i in y], [lat[n]["p99_ms"] for n in names], 0.4, label="p99")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("sequential write latency (ms, log)")
    ax.legend()
    ax.set_title("write latency (100 B values, one client)")

    ax = axes[0][1]
    tp = results["throughput"]
    loads = sorted({k for v in tp.values() for k in v}, key=lambda k: (len(k), k))
    width = 0.8 / max(1, len(loads))
    for j, load in enumerate(loads):
        ax.barh(
            [i + (j - len(loads) / 2) * width for i in range(len(names))],
            [tp.get(n, {}).get(load, {}).get("ops_per_s", 0) for n in names],
            width,
            label=load,
        )
    ax.set_yticks(list(range(len(names))), names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("writes per second (log)")
    ax.legend(fontsize=8)
    ax.set_title("throughput")

    ax = axes[1][0]
    fo = results["failover"]
    fnames = list(fo)
    for i, n in enumerate(fnames):
        gaps = [t["gap_ms"] for t in fo[n]["trials"]]
        ax.scatter(gaps, [i] * len(gaps), alpha=0.6)
        if fo[n]["median_ms"] is not None:  # None: every trial timed out
            ax.plot([fo[n]["median_ms"]], [i], "k|", markersize=20)
    ax.set_yticks(list(range(len(fnames))), fnames, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("failover gap per trial (ms, log; bar = median)")
    ax.set_title("failover: primary/leader SIGKILLed under a writing client")

    ax = axes[1][1]
    sc = results["scaling"]
    ns = sorted(sc, key=int)
    ax.plot([int(n) for n in ns], [sc[n]["p50_ms"] for n in ns], "o-", label="p50")
    ax.plot([int(n) for n in ns], [sc[n]["p99_ms"] for n in ns], "s--", label="p99")
    ax.set_xlabel("replicas (semi-active)")
    ax.set_ylabel("write latency (ms)")
    ax.set_xticks([int(n) for n in ns])
    ax.legend()
    ax.set_title("scaling")

    m = results["machine"]
    fig.suptitle(
        f"{results['date']} ({results['mode']}): {m['cpu']}, {m['cores']} cores, "
        f"Linux {m['kernel']}, Python {m['python']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
