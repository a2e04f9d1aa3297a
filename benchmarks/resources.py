"""CPU and memory of the processes under test, read from /proc."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

__all__ = ["cpu_seconds", "measure", "rss_mib"]

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


def measure(pids: Sequence[int], during: Callable[[], object]) -> dict[str, float]:
    """CPU (percent of one core, per process on average) and RSS while ``during`` runs."""
    before = {p: cpu_seconds(p) for p in pids}
    t0 = time.monotonic()
    during()
    elapsed = time.monotonic() - t0
    cpu = [(cpu_seconds(p) - before[p]) / elapsed * 100 for p in pids]
    rss = [rss_mib(p) for p in pids]
    return {
        "processes": len(pids),
        "cpu_percent_per_process": round(sum(cpu) / len(cpu), 1),
        "rss_mib_per_process": round(sum(rss) / len(rss), 1),
        "seconds": round(elapsed, 2),
    }
