"""The scaling phase: each lab size's latency and the CPU a write cost its primary and backups."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from benchmarks import run


def test_scaling_records_latency_and_cpu_per_write_for_each_size(tmp_path: Path) -> None:
    mode = dataclasses.replace(run.QUICK, rounds=1, writes_per_round=300, scaling=(2,))
    result = run.scaling(tmp_path, mode)
    assert list(result) == ["2"]
    two = result["2"]
    assert two["n"] == 300 and two["p50_ms"] > 0
    # 300 writes take the primary about a dozen ticks of CPU beyond its idle rate; its backup,
    # which executes each write but reads no request and sends no reply, less than it.
    assert 0.05 < two["primary_cpu_ms_per_write"] < 5
    assert 0 < two["backup_cpu_ms_per_write"] < two["primary_cpu_ms_per_write"]
    assert two["primary_cpu_ms_per_write_per_round"] == [two["primary_cpu_ms_per_write"]]
