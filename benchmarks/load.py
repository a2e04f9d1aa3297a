"""Throughput: C concurrent clients writing for a fixed time, spread over worker processes.

One Python process cannot drive a fast server with many threads (the GIL serialises them), so
the clients are spread over up to ``MAX_PROCESSES`` processes, each running its share as
threads with one connection per thread. Every client writes ``SET`` (or ``SET`` + ``WAIT``)
back to back, or ``depth`` commands per round trip when pipelining.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from benchmarks.client import VALUE, command, connect
from benchmarks.stats import summary

__all__ = ["LoadSpec", "run_load"]

MAX_PROCESSES = 4


@dataclass(frozen=True, slots=True)
class LoadSpec:
    port: int
    clients: int
    seconds: float
    depth: int = 1
    """Commands per round trip: 1 is no pipelining."""
    wait_replicas: int = 0
    """Follow every round trip's writes with ``WAIT n 0`` (Redis primary + replica)."""


def _client(
    spec: LoadSpec,
    r: redis.Redis,
    name: str,
    go: threading.Event,
    out: list[tuple[int, list[float], int]],
) -> None:
    ops, errors, lat = 0, 0, []
    i = 0
    go.wait()
    end = time.monotonic() + spec.seconds
    while (now := time.perf_counter()) and time.monotonic() < end:
        try:
            if spec.depth == 1 and not spec.wait_replicas:
                r.set(f"{name}:{i}", VALUE)
            else:
                pipe = r.pipeline(transaction=False)
                for j in range(spec.depth):
                    pipe.set(f"{name}:{i}:{j}", VALUE)
                if spec.wait_replicas:
                    command(pipe, "WAIT", spec.wait_replicas, 0)
                pipe.execute()
        except (redis.RedisError, OSError):
            errors += 1
            continue
        lat.append(time.perf_counter() - now)
        ops += spec.depth
        i += 1
    out.append((ops, lat, errors))


def _worker(spec: LoadSpec, threads: int, wid: int, barrier: Any, results: Any) -> None:
    """Connect every client, wait for every worker to be ready, write for ``spec.seconds``."""
    out: list[tuple[int, list[float], int]] = []
    go = threading.Event()
    conns = [connect("127.0.0.1", spec.port, 10.0) for _ in range(threads)]
    for c in conns:
        c.ping()
    ts = [
        threading.Thread(target=_client, args=(spec, c, f"w{wid}c{t}", go, out))
        for t, c in enumerate(conns)
    ]
    for t in ts:
        t.start()
    barrier.wait()
    go.set()
    for t in ts:
        t.join(spec.seconds + 60)
    ops = sum(o for o, _, _ in out)
    lat = [x for _, ls, _ in out for x in ls]
    results.put((ops, lat, sum(e for _, _, e in out)))


def run_load(spec: LoadSpec) -> dict[str, float]:
    """Writes per second over the run, round-trip latency percentiles, and failed calls."""
    procs = min(spec.clients, MAX_PROCESSES)
    shares = [spec.clients // procs + (1 if i < spec.clients % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs)
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(spec, n, i, barrier, queue), daemon=True)
        for i, n in enumerate(shares)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=spec.seconds + 120) for _ in workers]
    for w in workers:
        w.join(30)
    ops = sum(o for o, _, _ in results)
    lat = [x for _, ls, _ in results for x in ls]
    out: dict[str, float] = {"ops_per_s": round(ops / spec.seconds, 1)}
    out |= summary(lat) if lat else {"n": 0}
    out["errors"] = sum(e for _, _, e in results)
    return out
