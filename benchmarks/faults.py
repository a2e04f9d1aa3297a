"""Client latency through faults of a backup: its failure, and its return by state transfer.

A 3-node lab is loaded with ``keys`` keys, then a client writes through the primary while a
backup's plug is pulled. The primary suspects the backup (flat wire + silence), fences it
(power-cycle through the strip) and drops it from the view; writes stall meanwhile, since a
reply waits for every backup of the view. Then the backup boots and joins by state transfer of
the whole store (TCP, from the primary) while the client keeps writing.

* **stall**: the longest interval between two acknowledged writes from the pull until the
  backup boots again;
* **join**: the p99 latency of the writes sent while the backup was joining (from its boot to
  its log lines ``accepted into view`` and ``restored the snapshot``, whichever is later: it
  is admitted while it may still be loading the snapshot), against the p99 before the pull;
* **join CPU control**: the same, while a process outside the cluster spends the CPU a join
  spends (:mod:`benchmarks.join_cpu`: :data:`CONTROL_WORK`), against the p99 before it
  starts. Every lab node shares this machine's cores; the control tells how much of the
  join's figure that sharing alone accounts for.
"""

from __future__ import annotations

import functools
import itertools
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.client import VALUE, connect
from benchmarks.failover import Op, WriterProcess
from benchmarks.join_cpu import write_snapshot
from benchmarks.lab import Lab
from benchmarks.stats import percentile

__all__ = ["run"]

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
BASELINE = 1.5
"""Seconds of writes before the pull: the normal latency (the full mode's)."""


def _log_time(path: Path, pattern: str, after: float) -> float:
    """Wall-clock time of the first log line after ``after`` matching ``pattern``."""
    rx = re.compile(pattern)
    for line in path.read_text(errors="replace").splitlines():
        if not rx.search(line) or (m := _LOG_TIME.match(line)) is None:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if t >= after:
            return t
    raise LookupError(f"no line matching {pattern!r} in {path} after the pull")


CONTROL_WORK = (
    "the joiner's start-up, its fetch of the snapshot over TCP (hashed as it arrives) and its "
    "restore, the primary's encoding child"
)
"""What the join CPU control spends (results before 2026-12-04 spent no transfer)."""

_RESTORED = r"restored the snapshot of index"
_ACCEPTED = r"role BACKUP: accepted into view"


def _wait_logged(path: Path, pattern: str, after: float, timeout: float) -> None:
    """Until ``path`` has a line matching ``pattern`` after ``after``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _log_time(path, pattern, after)
            return
        except LookupError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _load(port: int, keys: int) -> None:
    r = connect("127.0.0.1", port, 30.0)
    for base in range(0, keys, 200):
        pipe = r.pipeline(transaction=False)
        for i in range(base, min(keys, base + 200)):
            pipe.set(f"preload:{i}", VALUE)
        pipe.execute()
    if (n := r.dbsize()) < keys:
        raise RuntimeError(f"preloaded {keys} keys but the store holds {n}")
    r.close()


def _addr(port: int) -> tuple[str, int]:
    return ("127.0.0.1", port)


def _longest_gap(ops: list[Op], start: float, end: float) -> float:
    acks = sorted(o.end for o in ops if o.ok)
    before = [a for a in acks if a <= start]
    points = ([before[-1]] if before else [start]) + [a for a in acks if start < a <= end]
    if len(points) < 2:
        return end - points[0]
    return max(b - a for a, b in itertools.pairwise(points))


def run(
    workdir: Path,
    trials: int,
    keys: int,
    say: Callable[[str], None],
    lab: Lab | None = None,
    baseline: float = BASELINE,
) -> dict[str, Any]:
    """Backup power pulls and joins on ``lab`` (left running) or on a fresh semi-active lab.

    ``baseline``: seconds of writes before each pull (a smoke run needs fewer than a
    measurement to have a normal p99 to compare the join's with).
    """
    own = lab is None
    if lab is None:
        lab = Lab(workdir, 3, "semi-active")
    stalls: list[float] = []
    joins: list[float] = []
    normal: list[float] = []
    joining: list[float] = []
    try:
        primary = lab.wait_formed()
        say(f"faults: loading {keys} keys")
        t0 = time.monotonic()
        _load(lab.port(primary), keys)
        load_s = time.monotonic() - t0
        for i in range(trials):
            primary = lab.wait_formed(120)
            backups = [n.name for n in lab.state.nodes if n.name != primary]
            victim = backups[i % len(backups)]
            say(f"faults trial {i + 1}/{trials}: pull {victim}'s plug (a backup)")
            port = lab.port(primary)
            w = WriterProcess(functools.partial(_addr, port))
            w.start()
            try:
                time.sleep(baseline)
                t_pull = lab.pull_power(victim)
                # From its log, not by asking every node's INFO (the lab's status) while the
                # join runs: those requests would be part of what the writes wait behind.
                _wait_logged(lab.log(victim), _ACCEPTED, t_pull, 120.0)
                _wait_logged(lab.log(victim), _RESTORED, t_pull, 60.0)
                time.sleep(0.3)
            finally:
                w.stop()
            if any(not o.ok for o in w.ops):
                raise RuntimeError("a write through the primary failed while a backup was down")
            log = lab.log(victim)
            t_boot = _log_time(log, r"incarnation=", t_pull)
            # Accepted into the view while it may still be loading the snapshot (in steps):
            # the join lasts until both are done.
            t_joined = max(
                _log_time(log, _ACCEPTED, t_boot),
                _log_time(log, _RESTORED, t_boot),
            )
            stalls.append(_longest_gap(w.ops, t_pull, t_boot))
            joins.append(t_joined - t_boot)
            normal += [o.end - o.start for o in w.ops if o.end < t_pull]
            joining += [o.end - o.start for o in w.ops if t_boot <= o.start <= t_joined]
        control = _join_cpu_control(workdir, lab, trials, keys, say, baseline)
    finally:
        if own:
            lab.close()
    base_p99 = percentile(normal, 99) * 1000
    join_p99 = percentile(joining, 99) * 1000 if joining else float("nan")
    return {
        "backup_failure": {
            "stalls_ms": [round(s * 1000, 2) for s in stalls],
            "median_stall_ms": round(statistics.median(stalls) * 1000, 2),
            "worst_stall_ms": round(max(stalls) * 1000, 2),
        },
        "join": {
            "keys": keys,
            "preload_seconds": round(load_s, 2),
            "join_seconds": [round(j, 3) for j in joins],
            "writes_during_joins": len(joining),
            "normal_p99_ms": round(base_p99, 3),
            "joining_p99_ms": round(join_p99, 3),
            "p99_ratio": round(join_p99 / base_p99, 3),
        },
        "join_cpu_control": control,
    }


def _join_cpu_control(
    workdir: Path, lab: Lab, trials: int, keys: int, say: Callable[[str], None], baseline: float
) -> dict[str, Any]:
    """Client p99 while :mod:`benchmarks.join_cpu` runs beside the lab, ``trials`` times."""
    snapshot = workdir / "join-cpu-control.snapshot"
    write_snapshot(snapshot, keys, VALUE)
    seconds: list[float] = []
    normal: list[float] = []
    during: list[float] = []
    try:
        for i in range(trials):
            say(f"faults: join CPU control {i + 1}/{trials}")
            port = lab.port(lab.wait_formed(120))
            w = WriterProcess(functools.partial(_addr, port))
            w.start()
            try:
                time.sleep(baseline)
                t_spawn = time.time()
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.join_cpu", str(snapshot)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                t_end = time.time()
                time.sleep(0.3)
            finally:
                w.stop()
            if done.returncode != 0:
                raise RuntimeError(f"the join CPU control failed: {done.stderr.strip()}")
            t_start = float(done.stdout.split()[-1])
            seconds.append(t_end - t_start)
            normal += [o.end - o.start for o in w.ops if o.end < t_spawn]
            during += [o.end - o.start for o in w.ops if t_start <= o.start <= t_end]
    finally:
        snapshot.unlink(missing_ok=True)
    base_p99 = percentile(normal, 99) * 1000
    p99 = percentile(during, 99) * 1000 if during else float("nan")
    return {
        "work": CONTROL_WORK,
        "seconds": [round(t, 3) for t in seconds],
        "writes": len(during),
        "normal_p99_ms": round(base_p99, 3),
        "p99_ms": round(p99, 3),
        "p99_ratio": round(p99 / base_p99, 3),
    }
