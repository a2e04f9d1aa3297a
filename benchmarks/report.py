"""The markdown tables of docs/performance.md, rendered from a results file.

``python -m benchmarks.report [RESULTS.json] [--update docs/performance.md]``: without
``--update`` the tables are printed; with it they replace what lies between the
``<!-- results -->`` and ``<!-- /results -->`` markers. Without a file, the newest one in
benchmarks/results is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["render"]

BEGIN, END = "<!-- results -->", "<!-- /results -->"
RESULTS = Path(__file__).parent / "results"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _cpu_per_write(s: dict[str, Any]) -> list[str]:
    """The scaling row's CPU columns ("n/a" in a run from before they were recorded)."""
    return [
        f"{s[k]:.3f}" if k in s else "n/a"
        for k in ("primary_cpu_ms_per_write", "backup_cpu_ms_per_write")
    ]


def render(r: dict[str, Any], source: str) -> str:
    m = r["machine"]
    v = m["versions"]
    lines = [
        f"Results: `{source}` ({r['mode']} mode, {r['seconds']:.0f} s), {m['cpu']}, "
        f"{m['cores']} cores, Linux {m['kernel']}, Python {m['python']}; appliance "
        f"{v['appliance']}, redis-server {v['redis-server']}, pysyncobj {v['pysyncobj']}, "
        f"redis-py {v['redis-py']}; load average at the start {m['load_average']}.",
        "",
        "**Targets**",
        "",
    ]
    lines += _table(
        ["what", "target", "measured", "met"],
        [
            [t["what"], t["target"], f"{t['measured']:g}", "yes" if t["met"] else "**no**"]
            for t in r["targets"]
        ],
    )
    for name, why in r.get("failed_phases", {}).items():
        lines += ["", f"**The {name} phase failed** ({why}): its figures are missing."]
    lines += ["", "**Sequential writes** (one client, 100-byte values)", ""]
    lat = r["latency"]
    wait = next((n for n in lat if "WAIT" in n), None)
    raft = next((n for n in lat if "no batching" in n), None)
    rows = []
    for n, s in lat.items():
        rows.append(
            [
                n,
                f"{s['p50_ms']:.3f}",
                f"{s['p99_ms']:.3f}",
                f"{s['max_ms']:.1f}",
                f"{s['p50_ms'] / lat[wait]['p50_ms']:.2f}x" if wait else "-",
                f"{s['p50_ms'] / lat[raft]['p50_ms']:.2f}x" if raft else "-",
            ]
        )
    lines += _table(
        ["system", "p50 ms", "p99 ms", "max ms", "p50 / Redis+WAIT", "p50 / PySyncObj"], rows
    )
    lines += ["", "**Throughput** (writes per second; p99 of a round trip in ms)", ""]
    loads = sorted({k for t in r["throughput"].values() for k in t}, key=lambda k: (len(k), k))
    rows = []
    for n, t in r["throughput"].items():
        cells = [n]
        for k in loads:
            f = t.get(k)
            cells.append("n/a" if f is None else f"{f['ops_per_s']:.0f} ({f['p99_ms']:.1f})")
        rows.append(cells)
    lines += _table(["system", *loads], rows)
    lines += ["", "**Failover gap** (SIGKILL of the primary/leader under a writing client)", ""]
    lines += _table(
        ["system", "trials", "median ms", "worst ms"],
        [
            [
                n,
                str(len(f["trials"]))
                + (f" (+{f['timed_out']} timed out)" if f.get("timed_out") else "")
                + (
                    f", {f['spurious_takeovers']} false takeovers"
                    if f.get("spurious_takeovers")
                    else ""
                ),
                "-" if f["median_ms"] is None else f"{f['median_ms']:.0f}",
                "-" if f["worst_ms"] is None else f"{f['worst_ms']:.0f}",
            ]
            for n, f in r["failover"].items()
        ],
    )
    ka = r.get("keepalived", {})
    if ka.get("skipped"):
        lines += ["", f"keepalived VIP failover: not measured ({ka['skipped']})."]
    elif ka:
        lines += [
            "",
            f"keepalived {ka['version']}: two network namespaces on a bridge, unicast VRRP, "
            f"client socket timeout {ka['socket_timeout_s'] * 1000:.0f} ms; the address moves, "
            "the data does not (the two Redis servers behind it are not replicated).",
        ]
    lines += ["", "**Scaling** (appliance, semi-active)", ""]
    lines += _table(
        ["replicas", "p50 ms", "p99 ms", "primary CPU ms / write", "CPU ms / write per backup"],
        [
            [n, f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", *_cpu_per_write(s)]
            for n, s in r["scaling"].items()
        ],
    )
    f = r["faults"]
    if "faults_source" in r:
        lines += ["", f"The backup faults below were {r['faults_source']}."]
    if "error" in f:
        lines += ["", f"**Faults of a backup**: the phase did not complete: {f['error']}"]
    else:
        b, j = f["backup_failure"], f["join"]
        lines += [
            "",
            f"**Faults of a backup**: write stall when a backup's plug is pulled: median "
            f"{b['median_stall_ms']:.0f} ms, worst {b['worst_stall_ms']:.0f} ms "
            f"({len(b['stalls_ms'])} trials). Join by state transfer of {j['keys']} keys: "
            f"{j['join_seconds']} s, client p99 {j['joining_p99_ms']:.1f} ms during the join "
            f"against {j['normal_p99_ms']:.1f} ms before ({j['p99_ratio']:.2f}x, "
            f"{j['writes_during_joins']} writes).",
        ]
        if (c := f.get("join_cpu_control")) is not None:
            lines[-1] += (
                " Control: a process outside the cluster spending a join's CPU ("
                + c.get("work", "the joiner's start-up and restore, the primary's encoding child")
                + "; `benchmarks/join_cpu.py`)"
                f" for {c['seconds']} s: client p99 {c['p99_ms']:.1f} ms against"
                f" {c['normal_p99_ms']:.1f} ms before ({c['p99_ratio']:.2f}x, {c['writes']}"
                " writes)."
            )
    lines += [
        "",
        "**Resources** (per process: CPU % of one core, RSS MiB)",
        "",
    ]
    rows = []
    for n, res in r["resources"].items():
        idle, load = res["idle"], res.get("load (8 clients)")
        rows.append(
            [
                n,
                str(idle["processes"]),
                f"{idle['cpu_percent_per_process']:.1f}",
                f"{load['cpu_percent_per_process']:.1f}" if load else "-",
                f"{idle['rss_mib_per_process']:.1f}",
            ]
        )
    lines += _table(["system", "processes", "CPU idle", "CPU 8 clients", "RSS"], rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    ap.add_argument("results", nargs="?", type=Path)
    ap.add_argument("--update", type=Path, help="the markdown file whose tables to replace")
    args = ap.parse_args(argv)
    path: Path | None = args.results
    if path is None:
        files = sorted(
            (p for p in RESULTS.glob("*.json") if "-only-" not in p.name),  # one phase alone
            key=lambda p: p.stat().st_mtime,
        )
        if not files:
            print(f"no results in {RESULTS}: run make bench first", file=sys.stderr)
            return 1
        path = files[-1]
    text = render(json.loads(path.read_text()), f"benchmarks/results/{path.name}")
    if args.update is None:
        print(text)
        return 0
    doc = args.update.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{args.update}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.update.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
