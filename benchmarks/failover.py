"""Failover gap: a client writing continuously while the primary (or leader) is SIGKILLed.

The writer records when every write was sent and when it completed or failed. The gap of a
trial is the time from the kill to the first write acknowledged after the outage, where the
outage is the longest interval between two consecutive acknowledgements after the last one
before the kill: a write in flight at the kill and answered only after the failover ends it,
and so does the first success after a run of failed writes (refused connections, errors).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from benchmarks.client import VALUE, connect

__all__ = ["Op", "Writer", "WriterProcess", "gap_after", "run_trial", "write_until"]

STABLE = 0.3
"""Seconds of acknowledged writes, with no failure, that count as recovered."""


@dataclass(frozen=True, slots=True)
class Op:
    start: float
    end: float
    ok: bool


def write_until(
    target: Callable[[], tuple[str, int] | None],
    pace: float,
    timeout: float,
    halted: Callable[[], bool],
    record: Callable[[Op], None],
) -> None:
    """``SET`` after ``SET`` through ``target()`` (asked again after every failure), each one
    recorded, until ``halted()``."""
    r: redis.Redis | None = None
    i = 0
    while not halted():
        i += 1
        t0 = time.time()
        try:
            if r is None:
                addr = target()
                if addr is None:
                    raise ConnectionError("no target")
                r = connect(*addr, timeout=timeout)
            r.set(f"failover:{i}", VALUE)
        except (redis.RedisError, OSError):
            record(Op(t0, time.time(), False))
            if r is not None:
                r.close()
            r = None
            time.sleep(0.001)
            continue
        record(Op(t0, time.time(), True))
        if pace:
            time.sleep(pace)


@dataclass(eq=False)
class Writer(threading.Thread):
    """:func:`write_until` in a thread, its writes readable while it runs (``recovered``)."""

    target: Callable[[], tuple[str, int] | None]
    pace: float = 0.0
    """Seconds to sleep between writes (0: back to back)."""
    timeout: float = 2.0
    """Socket (connect and read) timeout: how long a write may hang on a vanished server."""
    ops: list[Op] = field(default_factory=list)
    halt: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        write_until(self.target, self.pace, self.timeout, self.halt.is_set, self.ops.append)

    def recovered(self, since: float) -> bool:
        """Writes acknowledged for :data:`STABLE` s after the kill and after the last failure."""
        ops = list(self.ops)
        fails = [o.end for o in ops if not o.ok and o.end >= since]
        calm = max([since, *fails])
        acked = [o.end for o in ops if o.ok and o.start > calm]
        return bool(acked) and acked[-1] - acked[0] >= STABLE

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


class WriterProcess:
    """:func:`write_until` in a process of its own; its writes are read once it stops.

    For latencies measured while the benchmark itself is busy (reading logs and polling the
    lab during a join): in a thread of the benchmark's process the writer waited for that
    work to let go of the interpreter lock, up to its 5 ms switch interval, and the wait
    counted as the cluster's latency.
    """

    def __init__(
        self, target: Callable[[], tuple[str, int] | None], pace: float = 0.0, timeout: float = 2.0
    ) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._halt = ctx.Event()
        self._results, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_write_in_process, args=(target, pace, timeout, self._halt, send), daemon=True
        )
        self.ops: list[Op] = []

    def start(self) -> None:
        """Once the process runs and is about to write."""
        self._proc.start()
        if not self._results.poll(60) or self._results.recv() != "writing":
            raise RuntimeError("the writer process did not start")

    def stop(self) -> None:
        self._halt.set()
        if not self._results.poll(30):
            self._proc.kill()
            raise RuntimeError("the writer process did not report its writes")
        self.ops = [Op(*o) for o in self._results.recv()]
        self._proc.join(10)


def _write_in_process(
    target: Callable[[], tuple[str, int] | None],
    pace: float,
    timeout: float,
    halt: Any,
    send: Any,
) -> None:
    ops: list[Op] = []
    send.send("writing")
    write_until(target, pace, timeout, halt.is_set, ops.append)
    send.send([(o.start, o.end, o.ok) for o in ops])
    send.close()


def gap_after(ops: list[Op], kill: float) -> tuple[float, int]:
    """(seconds from ``kill`` to the first write acknowledged after the outage, failed writes)."""
    acks = sorted(o.end for o in ops if o.ok)
    before = [a for a in acks if a <= kill]
    after = [a for a in acks if a > kill]
    if not after:
        raise ValueError("no write was acknowledged after the kill")
    points = ([before[-1]] if before else [kill]) + after
    longest = max(range(1, len(points)), key=lambda i: points[i] - points[i - 1])
    failed = sum(1 for o in ops if not o.ok and o.end >= kill)
    return points[longest] - kill, failed


def run_trial(
    target: Callable[[], tuple[str, int] | None],
    kill: Callable[[], float],
    pace: float = 0.0,
    timeout: float = 120.0,
    socket_timeout: float = 2.0,
) -> dict[str, float]:
    """Write, kill (``kill`` returns when it struck), wait for recovery; the trial's figures."""
    w = Writer(target, pace, socket_timeout)
    w.start()
    try:
        deadline = time.monotonic() + 30
        while sum(1 for o in list(w.ops) if o.ok) < 50 or w.ops[-1].end - w.ops[0].start < STABLE:
            if time.monotonic() > deadline:
                raise TimeoutError("the writer did not get going before the kill")
            time.sleep(0.01)
        t_kill = kill()
        deadline = time.monotonic() + timeout
        while not w.recovered(t_kill):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no recovery within {timeout:.0f} s of the kill")
            time.sleep(0.01)
    finally:
        w.stop()
    gap, failed = gap_after(w.ops, t_kill)
    return {"gap_ms": round(gap * 1000, 2), "failed_writes": failed}
