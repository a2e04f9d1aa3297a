"""The benchmark harness in its quick mode: every phase runs and every system yields numbers.

This is no measurement (a few hundred writes, one failover trial each); it proves that
``make bench`` works on this machine: the peers start, the lab starts, every system is driven
and the results file has the structure the report and the docs table read.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pysyncobj", reason="pysyncobj (the dev extra) is not installed")
pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)

ROOT = Path(__file__).resolve().parents[2]


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_run_writes_complete_results(tmp_path: Path) -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "benchmarks",
            "--quick",
            "--no-plot",
            "--out",
            tmp_path,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    [path] = tmp_path.glob("*-quick.json")
    results = json.loads(path.read_text())

    assert results["mode"] == "quick"
    # a failed phase no longer aborts a run, so the smoke run must say none failed
    assert "failed_phases" not in results, results["failed_phases"]
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["kernel"]
    for name in ("appliance", "redis-server", "pysyncobj", "redis-py"):
        assert machine["versions"][name] not in ("", "not installed"), name

    systems = set(results["latency"])
    assert {
        "appliance semi-active (3 nodes)",
        "redis alone",
        "redis + replica, WAIT 1 0",
        "pysyncobj (3 nodes, no batching)",
    } <= systems
    for name, lat in results["latency"].items():
        assert lat["n"] > 0, name
        assert all(_positive(lat[k]) for k in ("p50_ms", "p99_ms", "max_ms")), (name, lat)
        assert lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"], (name, lat)
    assert set(results["throughput"]) == systems
    for name, loads in results["throughput"].items():
        for load, figures in loads.items():
            assert _positive(figures["ops_per_s"]), (name, load, figures)
            assert figures["errors"] == 0, (name, load, figures)
    assert set(results["resources"]) == systems
    for name, res in results["resources"].items():
        assert _positive(res["idle"]["rss_mib_per_process"]), name

    assert {"appliance semi-active", "pysyncobj", "redis sentinel aggressive"} <= set(
        results["failover"]
    )
    # keepalived VIP failover needs root and keepalived: the full run's, never the smoke test's
    assert "keepalived" not in results
    assert not any(name.startswith("keepalived") for name in results["failover"])
    for name, fo in results["failover"].items():
        assert fo["trials"] and all(_positive(t["gap_ms"]) for t in fo["trials"]), name
        assert fo["median_ms"] <= fo["worst_ms"], name

    assert results["scaling"] == {}  # the full run only: it is the latency phase's code

    faults = results["faults"]
    assert _positive(faults["backup_failure"]["worst_stall_ms"])
    assert faults["join"]["keys"] == 2000 and faults["join"]["writes_during_joins"] > 0
    assert _positive(faults["join"]["p99_ratio"])
    control = faults["join_cpu_control"]  # the join's CPU spent outside the cluster
    assert control["writes"] > 0 and _positive(control["p99_ratio"])
    assert all(_positive(t) for t in control["seconds"])

    assert results["targets"] and all(isinstance(t["met"], bool) for t in results["targets"])
    assert all(_positive(v) for v in results["ratios"].values())
