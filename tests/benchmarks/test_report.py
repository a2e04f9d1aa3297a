"""A run whose phase failed still yields its targets and its tables, saying what is missing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.run import targets

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results" / "2026-12-03.json"


def _results() -> dict[str, Any]:
    r: dict[str, Any] = json.loads(RESULTS.read_text())
    return r


def test_targets_of_a_complete_run_are_the_recorded_ones() -> None:
    r = _results()
    assert targets(r) == r["targets"]


def test_a_failed_failover_and_scaling_phase_leave_their_targets_unmet_not_a_crash() -> None:
    r = _results()
    r["failover"] = {}
    r["scaling"] = {}
    r["failed_phases"] = {"failover": "LabError: the lab did not form", "scaling": "x"}
    rows = {t["what"]: t for t in targets(r)}
    missing = ("failover gap median (ms)", "failover gap worst (ms)", "write p50, 5 / 3 replicas")
    for what in missing:
        assert math.isnan(rows[what]["measured"]) and rows[what]["met"] is False
    assert rows["stall when a backup fails (ms)"]["met"] is True  # the faults phase ran
    r["targets"] = list(rows.values())
    text = report.render(r, "results.json")
    assert "**The failover phase failed** (LabError: the lab did not form)" in text
    assert "**The scaling phase failed** (x)" in text


def test_a_failed_faults_phase_is_reported_as_such() -> None:
    r = _results()
    r["faults"] = {"error": "RuntimeError: a write failed"}
    r["targets"] = targets(r)
    rows = {t["what"]: t for t in r["targets"]}
    assert math.isnan(rows["p99 during a join / normal p99"]["measured"])
    assert "the phase did not complete: RuntimeError: a write failed" in report.render(r, "x")


def test_the_join_cpu_control_is_reported_beside_the_join_when_measured() -> None:
    r = _results()
    del r["faults"]["join_cpu_control"]
    assert "Control:" not in report.render(r, "x")  # a run from before the control
    r["faults"]["join_cpu_control"] = {
        "seconds": [0.41],
        "writes": 120,
        "normal_p99_ms": 2.0,
        "p99_ms": 5.0,
        "p99_ratio": 2.5,
    }
    text = report.render(r, "x")
    assert "client p99 5.0 ms against 2.0 ms before (2.50x, 120 writes)" in text


def test_the_scaling_table_shows_cpu_per_write_where_the_run_recorded_it() -> None:
    r = _results()

    def row(n: str) -> str:
        lines = report.render(r, "x").splitlines()
        return next(line for line in lines if line.startswith(f"| {n} |"))

    assert row("3").endswith("| n/a | n/a |")  # a run from before the CPU was recorded
    r["scaling"]["3"] |= {"primary_cpu_ms_per_write": 0.5412, "backup_cpu_ms_per_write": 0.2}
    assert row("3").endswith("| 0.541 | 0.200 |")
