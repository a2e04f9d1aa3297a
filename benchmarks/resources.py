"""CPU and memory of the processes under test, read from /proc."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["cpu_seconds", "cpu_while", "measure", "rss_mib"]

R = TypeVar("R")

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_while(pids: Sequence[int], during: Callable[[], R]) -> tuple[R, dict[int, float], float]:
    """What ``during()`` returned, the CPU seconds each process spent while it ran, and the
    wall-clock seconds it took."""
    before = {p: cpu_seconds(p) for p in pids}
    t0 = time.monotonic()
    result = during()
    elapsed = time.monotonic() - t0
    return result, {p: cpu_seconds(p) - before[p] for p in pids}, elapsed


def measure(pids: Sequence[int], during: Callable[[], object]) -> dict[str, float]:
    """CPU (percent of one core, per process on average) and RSS while ``during`` runs."""
    _, spent, elapsed = cpu_while(pids, during)
    cpu = [spent[p] / elapsed * 100 for p in pids]
    rss = [rss_mib(p) for p in pids]
    return {
        "processes": len(pids),
        "cpu_percent_per_process": round(sum(cpu) / len(cpu), 1),
        "rss_mib_per_process": round(sum(rss) / len(rss), 1),
        "seconds": round(elapsed, 2),
    }
