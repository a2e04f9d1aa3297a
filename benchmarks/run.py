"""``python -m benchmarks``: every system, the same client, in one run; results as JSON.

The machine is shared and noisy, so systems are interleaved rather than run back to back:
every measurement is done in rounds, and every round visits every system (in a rotated order)
for an equal share of the work. The peers (Redis, PySyncObj) stay up for the whole phase; an
appliance lab is brought up for its turn in the round and down after it, so at most one lab's
agents run at a time (an idle agent still heartbeats, and its CPU would tax the others).
Ratios are computed from the pooled samples of all rounds, and per round as well, to show how
much the noise moves them.

The quick mode (a smoke run: it proves every phase works, it measures nothing) trades that
isolation for time: its peers and its Sentinel group start in the background during its one
lab's turn, and that lab and the PySyncObj cluster stay up from the latency phase to the
failover trials and the backup faults (see :class:`Standing`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from appliance.lab.cli import LabError
from benchmarks import failover, faults, keepalived
from benchmarks.client import connect, sequential_writes
from benchmarks.lab import Lab
from benchmarks.load import LoadSpec, run_load
from benchmarks.machine import describe
from benchmarks.peers import (
    SENTINEL_AGGRESSIVE,
    SENTINEL_DEFAULT,
    PySyncObjCluster,
    RedisPair,
    RedisServer,
    SentinelGroup,
)
from benchmarks.resources import cpu_while, measure
from benchmarks.stats import summary

__all__ = ["Mode", "main"]


APPLIANCE_LABS = {
    "appliance semi-active (3 nodes)": (3, "semi-active", "asyncio"),
    "appliance semi-active (3 nodes, uvloop)": (3, "semi-active", "uvloop"),
    "appliance semi-passive (3 nodes)": (3, "semi-passive", "asyncio"),
    "appliance single node": (1, "semi-active", "asyncio"),
}
REDIS = "redis alone"
REDIS_WAIT = "redis + replica, WAIT 1 0"
PYSYNCOBJ = "pysyncobj (3 nodes, no batching)"
PYSYNCOBJ_BATCH = "pysyncobj (3 nodes, default batching)"
HEADLINE = "appliance semi-active (3 nodes)"


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    rounds: int
    writes_per_round: int
    load_seconds: float
    loads: tuple[tuple[int, int], ...]
    """(clients, pipeline depth) per throughput run."""
    scaling: tuple[int, ...]
    failover_trials: int
    sentinel_default_trials: int
    fault_trials: int
    join_keys: int
    idle_seconds: float
    systems: tuple[str, ...]
    """What the latency and throughput phase runs."""
    failover_labs: tuple[str, ...]
    """Replication styles of the appliance's failover trials."""
    fault_baseline_s: float = faults.BASELINE
    """Seconds of writes before a backup's plug is pulled: the normal p99 a join's is
    compared with."""
    faults_on_failover_lab: bool = False
    """Run the backup-fault phase on the semi-active failover lab instead of a fresh one (the
    quick mode: every lab started costs seconds, and the smoke run only proves the phases)."""
    keepalived: bool = False
    """Whether to measure keepalived VIP failover too (root only; ``failover_trials`` each)."""
    redis_sync_delay_s: int | None = None
    """The Redis primaries' ``repl-diskless-sync-delay``: seconds a replica waits for its first
    sync, so that more replicas share it; ``None`` keeps Redis's default, 5 s (the quick mode's
    0 links every pair at once; only the start of a pair waits for it, no write does)."""
    prestart: bool = False
    """Start the peers and the first aggressive Sentinel group in the background once the
    first lab has formed, while its turn runs (the quick mode: they take a few seconds, most
    of it waiting; the full mode starts every system when its phase does, and keeps every trial
    alone on the machine). Not while the lab boots: the connections they open take ephemeral
    ports, one of which could be a port the lab derived for an agent that has yet to bind it."""
    reuse: bool = False
    """Keep the latency phase's 3-node lab of a failover style (and its PySyncObj cluster) up
    for the failover trials instead of starting fresh ones (the quick mode: a lab's ``up``
    and ``down`` cost ~2 s each; the full mode brings every lab down after its turn, so no
    idle agents tax the next system)."""


FULL = Mode(
    name="full",
    rounds=3,
    writes_per_round=1500,
    load_seconds=2.0,
    loads=((1, 1), (8, 1), (32, 1), (8, 16)),
    scaling=(2, 3, 4, 5),
    failover_trials=10,
    sentinel_default_trials=10,
    fault_trials=3,
    join_keys=100_000,
    idle_seconds=3.0,
    systems=(*APPLIANCE_LABS, REDIS, REDIS_WAIT, PYSYNCOBJ, PYSYNCOBJ_BATCH),
    failover_labs=("semi-active", "semi-passive"),
    keepalived=True,
)
QUICK = Mode(
    name="quick",
    rounds=1,
    writes_per_round=150,
    load_seconds=0.5,
    loads=((8, 1),),
    scaling=(),
    failover_trials=1,
    sentinel_default_trials=0,
    fault_trials=1,
    join_keys=2_000,
    idle_seconds=0.5,
    systems=(HEADLINE, REDIS, REDIS_WAIT, PYSYNCOBJ),
    failover_labs=("semi-active",),
    fault_baseline_s=0.5,
    faults_on_failover_lab=True,
    redis_sync_delay_s=0,
    prestart=True,
    reuse=True,
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one system takes writes: its port, ``WAIT n`` after writes, its processes."""

    port: int
    wait_replicas: int
    pids: list[int]
    pipelining: bool = True


class Peers:
    """The comparison systems, up for the whole latency/throughput phase."""

    def __init__(self, workdir: Path, with_batching: bool, sync_delay: int | None = None) -> None:
        self.redis = RedisServer(workdir, sync_delay=sync_delay)
        self.pair = RedisPair(workdir, sync_delay)
        self.raft = PySyncObjCluster(workdir, batch=False)
        self.raft_batch = PySyncObjCluster(workdir, batch=True) if with_batching else None

    def targets(self) -> dict[str, Target]:
        out = {
            REDIS: Target(self.redis.port, 0, [self.redis.process.pid]),
            REDIS_WAIT: Target(self.pair.primary.port, 1, [p.pid for p in self.pair.processes]),
            PYSYNCOBJ: Target(self.raft.ports[0], 0, [p.pid for p in self.raft.processes], False),
        }
        if self.raft_batch is not None:
            out[PYSYNCOBJ_BATCH] = Target(
                self.raft_batch.ports[0], 0, [p.pid for p in self.raft_batch.processes], False
            )
        return out

    def close(self) -> None:
        for c in (self.raft_batch, self.raft, self.pair, self.redis):
            if c is not None:
                c.close()


class Standing:
    """The systems of a run that outlive one phase: the peers, and what the quick mode starts
    ahead of its phase or keeps up after it (``Mode.prestart``, ``Mode.reuse``).

    Whatever no phase closed is closed by :meth:`close` when the run ends, failed or not.
    """

    def __init__(self, workdir: Path, mode: Mode) -> None:
        self.workdir = workdir
        self.mode = mode
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="prestart")
        self._peers: concurrent.futures.Future[Peers] | Peers | None = None
        self._sentinel: concurrent.futures.Future[SentinelGroup] | None = None
        self._started = not mode.prestart
        self._labs: dict[str, Lab] = {}
        if not mode.prestart:  # up for the whole latency phase, the appliance's turns included
            self._peers = self._new_peers()

    def _new_peers(self) -> Peers:
        batching = PYSYNCOBJ_BATCH in self.mode.systems
        return Peers(self.workdir, batching, self.mode.redis_sync_delay_s)

    def prestart(self) -> None:
        """Start the peers and the first aggressive Sentinel group in the background, if the
        mode prestarts them and they are not started yet (see ``Mode.prestart``)."""
        if self._started:
            return
        self._started = True
        self._peers = self._pool.submit(self._new_peers)
        self._sentinel = self._pool.submit(
            SentinelGroup, self.workdir, SENTINEL_AGGRESSIVE, self.mode.redis_sync_delay_s
        )

    def peers(self) -> Peers:
        """The peers, once they are up (a prestarted start's failure is raised here)."""
        self.prestart()
        if isinstance(self._peers, concurrent.futures.Future):
            self._peers = self._peers.result()
        if self._peers is None:
            raise RuntimeError("the peers were closed at the end of the latency phase")
        return self._peers

    def latency_done(self) -> None:
        """The peers are closed now, before the phases that do not use them, unless the
        failover trials reuse their PySyncObj cluster (then they close them)."""
        if not self.mode.reuse:
            self.close_peers()

    def kept_raft(self) -> PySyncObjCluster | None:
        """The latency phase's PySyncObj cluster (no batching), if the failovers reuse it."""
        return self.peers().raft if self.mode.reuse and self._peers is not None else None

    def keep_lab(self, lab: Lab) -> bool:
        """Keep ``lab`` up for the failover trials, if they reuse it; else it is closed."""
        keep = (
            self.mode.reuse
            and (lab.nodes, lab.event_loop) == (3, "asyncio")
            and lab.replication in self.mode.failover_labs
            and lab.replication not in self._labs
        )
        if keep:
            self._labs[lab.replication] = lab
        return keep

    def take_lab(self, replication: str) -> Lab | None:
        """The kept lab of ``replication`` (the taker closes it), if there is one."""
        return self._labs.pop(replication, None)

    def take_sentinel(self) -> SentinelGroup | None:
        """The prestarted aggressive Sentinel group (the taker closes it), if there is one."""
        future, self._sentinel = self._sentinel, None
        return None if future is None else future.result()

    def close_peers(self) -> None:
        """Close the peers now (a no-op once closed): no idle peer taxes a later phase."""
        peers, self._peers = self._peers, None
        if isinstance(peers, concurrent.futures.Future):
            with contextlib.suppress(Exception):  # its failure was raised where it was used
                peers.result().close()
        elif peers is not None:
            peers.close()

    def close(self) -> None:
        try:
            for lab in self._labs.values():
                lab.close()
            self._labs.clear()
            self.close_peers()
            future, self._sentinel = self._sentinel, None
            if future is not None:  # started, never used: a phase before it failed
                with contextlib.suppress(Exception):  # its failure is no run's concern then
                    future.result().close()
        finally:
            self._pool.shutdown()


@contextlib.contextmanager
def lab_target(
    workdir: Path,
    nodes: int,
    replication: str,
    event_loop: str = "asyncio",
    keep: Callable[[Lab], bool] = lambda _: False,
) -> Iterator[tuple[Lab, Target]]:
    """A formed lab for the block; closed after it, unless ``keep(lab)`` took it over."""
    lab = Lab(workdir, nodes, replication, event_loop)
    try:
        primary = lab.wait_formed()
        yield lab, Target(lab.port(primary), 0, lab.agent_pids())
    except BaseException:
        lab.close()
        raise
    if not keep(lab):
        lab.close()


_STARTED = time.monotonic()


def _say(text: str) -> None:
    """A progress line, with the seconds since the harness started: where a run's time goes."""
    elapsed = time.monotonic() - _STARTED
    print(f"[{time.strftime('%H:%M:%S')} {elapsed:6.1f} s] {text}", flush=True)


def _rotated(items: list[str], r: int) -> list[str]:
    k = r % len(items)
    return items[k:] + items[:k]


def latency_and_throughput(workdir: Path, mode: Mode, standing: Standing) -> dict[str, Any]:
    lat: dict[str, list[float]] = {}
    per_round: dict[str, list[float]] = {}
    load: dict[str, dict[str, list[dict[str, float]]]] = {}
    res: dict[str, dict[str, dict[str, float]]] = {}
    try:
        names = list(mode.systems)
        for r in range(mode.rounds):
            for name in _rotated(names, r):
                _say(f"round {r + 1}/{mode.rounds}: {name}")
                with contextlib.ExitStack() as stack:
                    if name in APPLIANCE_LABS:
                        nodes, style, loop = APPLIANCE_LABS[name]
                        booted = lab_target(workdir, nodes, style, loop, keep=standing.keep_lab)
                        _, t = stack.enter_context(booted)
                        standing.prestart()  # formed: its agents hold their ports
                    else:
                        t = standing.peers().targets()[name]
                    writes = mode.writes_per_round
                    if name == PYSYNCOBJ_BATCH:
                        writes = max(20, writes // 20)  # ~100-200 ms a write: keep it short
                    c = connect("127.0.0.1", t.port)
                    sequential_writes(c, 20, f"warm{r}", t.wait_replicas)
                    samples = sequential_writes(c, writes, f"seq{r}", t.wait_replicas)
                    c.close()
                    lat.setdefault(name, []).extend(samples)
                    per_round.setdefault(name, []).append(summary(samples)["p50_ms"])
                    if r == 0:
                        res[name] = {"idle": measure(t.pids, lambda: time.sleep(mode.idle_seconds))}
                    for clients, depth in mode.loads:
                        if depth > 1 and not t.pipelining:
                            continue
                        if name == PYSYNCOBJ_BATCH and clients > 8:
                            continue  # bounded by its tick, not by clients: skip the longest
                        spec = LoadSpec(t.port, clients, mode.load_seconds, depth, t.wait_replicas)
                        key = f"{clients} clients" + (f", pipeline {depth}" if depth > 1 else "")
                        box: dict[str, float] = {}

                        def go(spec: LoadSpec = spec, box: dict[str, float] = box) -> None:
                            box.update(run_load(spec))

                        m = measure(t.pids, go)
                        load.setdefault(name, {}).setdefault(key, []).append(box)
                        if r == 0 and clients == 8 and depth == 1:
                            res[name]["load (8 clients)"] = m
    finally:
        standing.latency_done()
    latency: dict[str, dict[str, Any]] = {
        n: {**summary(s), "p50_ms_per_round": per_round[n]} for n, s in lat.items()
    }
    throughput = {
        n: {k: _pool_load(runs) for k, runs in loads.items()} for n, loads in load.items()
    }
    return {"latency": latency, "throughput": throughput, "resources": res}


def _pool_load(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Throughput over rounds: the median of the rounds' rates, and each round's."""
    rates = [r["ops_per_s"] for r in runs]
    return {
        "ops_per_s": round(statistics.median(rates), 1),
        "ops_per_s_per_round": rates,
        "p50_ms": statistics.median(r.get("p50_ms", 0.0) for r in runs),
        "p99_ms": statistics.median(r.get("p99_ms", 0.0) for r in runs),
        "errors": sum(r.get("errors", 0) for r in runs),
    }


_IDLE_SAMPLE_S = 1.5
"""Seconds an idle lab's CPU is sampled for before its writes (/proc counts in 10 ms ticks:
one tick over 1.5 s is about 0.7% of a core, against an agent's idle 5-9%)."""


def _cpu_rates(pids: list[int], seconds: float) -> dict[int, float]:
    """CPU seconds per second each process spends over the next ``seconds``."""
    _, spent, elapsed = cpu_while(pids, lambda: time.sleep(seconds))
    return {p: s / elapsed for p, s in spent.items()}


def _primary_pid(lab: Lab, t: Target) -> int:
    """The pid of the agent ``t`` writes to (the lab's primary, which serves ``t.port``)."""
    name = lab.wait_formed()
    pid = lab.pid(name)
    if lab.port(name) != t.port or pid not in t.pids:
        raise RuntimeError(f"the primary of {lab.dir} moved from the agent the writes go to")
    return pid


def scaling(workdir: Path, mode: Mode) -> dict[str, Any]:
    """Sequential writes to labs of each size, and the CPU each write cost the primary and,
    on average, each backup (user + system, each agent's idle rate, measured just before,
    subtracted; with the ticks' rounding a figure near zero can come out slightly below it).
    On separate boards an added replica costs the critical path what it adds to the
    primary's CPU; here it is also one more process on the same cores."""
    lat: dict[int, list[float]] = {}
    primary_cpu: dict[int, list[float]] = {}
    backup_cpu: dict[int, list[float]] = {}
    for r in range(mode.rounds):
        for n in [mode.scaling[(i + r) % len(mode.scaling)] for i in range(len(mode.scaling))]:
            _say(f"scaling round {r + 1}/{mode.rounds}: {n} replicas")
            with lab_target(workdir, n, "semi-active") as (lab, t):
                primary = _primary_pid(lab, t)
                conn = connect("127.0.0.1", t.port)
                sequential_writes(conn, 20, f"warm{r}")
                idle = _cpu_rates(t.pids, _IDLE_SAMPLE_S)
                writes, cpu, elapsed = cpu_while(
                    t.pids,
                    functools.partial(sequential_writes, conn, mode.writes_per_round, f"s{r}"),
                )
                conn.close()
                spent = {p: (s - idle[p] * elapsed) * 1000 / len(writes) for p, s in cpu.items()}
                primary_cpu.setdefault(n, []).append(round(spent.pop(primary), 3))
                if spent:  # a single node has no backup: its column stays "n/a"
                    backup_cpu.setdefault(n, []).append(round(statistics.fmean(spent.values()), 3))
                lat.setdefault(n, []).extend(writes)
    out: dict[str, Any] = {}
    for n, s in sorted(lat.items()):
        row: dict[str, Any] = {**summary(s)}
        for key, per_round in (("primary", primary_cpu[n]), ("backup", backup_cpu.get(n))):
            if per_round:
                row[f"{key}_cpu_ms_per_write"] = round(statistics.median(per_round), 3)
                row[f"{key}_cpu_ms_per_write_per_round"] = per_round
        out[str(n)] = row
    return out


def failovers(
    workdir: Path, mode: Mode, labs: dict[str, Lab], standing: Standing
) -> dict[str, Any]:
    """The failover trials; ``labs``: the appliance's, by name (the caller closes them)."""
    trials: dict[str, list[dict[str, float]]] = {}
    kept = standing.kept_raft()
    raft: PySyncObjCluster | None = kept
    try:
        if raft is None:
            raft = PySyncObjCluster(workdir, batch=False)
        for i in range(mode.failover_trials):
            for name, lab in labs.items():
                _say(f"failover trial {i + 1}/{mode.failover_trials}: {name}")
                primary = lab.wait_formed()
                via = next(n for n in lab.state.nodes if n.name != primary)
                target = functools.partial(_local, via.client_port)
                pull = functools.partial(lab.pull_power, primary)
                trials.setdefault(name, []).append(failover.run_trial(target, pull))
            _say(f"failover trial {i + 1}/{mode.failover_trials}: pysyncobj")
            last = i + 1 == mode.failover_trials
            trials.setdefault("pysyncobj", []).append(_raft_trial(raft, restart=not last))
            _say(f"failover trial {i + 1}/{mode.failover_trials}: redis sentinel aggressive")
            group = standing.take_sentinel()
            trials.setdefault(f"redis sentinel {SENTINEL_AGGRESSIVE.name}", []).append(
                _sentinel_trial(workdir, mode, SENTINEL_AGGRESSIVE, group=group)
            )
    finally:
        if raft is not None and raft is not kept:
            raft.close()
        standing.close_peers()  # reused or not: the backup faults need no peer
    if mode.sentinel_default_trials:
        # ~30 s of waiting each, all of it idle: run them side by side, writers paced
        _say(f"{mode.sentinel_default_trials} Sentinel trials at default settings, in parallel")
        out: list[dict[str, float]] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                out.append(_sentinel_trial(workdir, mode, SENTINEL_DEFAULT, pace=0.002))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(mode.sentinel_default_trials)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        if errors:
            raise errors[0]
        trials[f"redis sentinel {SENTINEL_DEFAULT.name}"] = out
    return {
        name: {
            "median_ms": round(statistics.median(t["gap_ms"] for t in ts), 2),
            "worst_ms": max(t["gap_ms"] for t in ts),
            "trials": ts,
        }
        for name, ts in trials.items()
    }


def _local(port: int) -> tuple[str, int]:
    return ("127.0.0.1", port)


def _raft_trial(raft: PySyncObjCluster, restart: bool = True) -> dict[str, float]:
    """One leader kill; ``restart``: start the old leader again and wait for it to catch up,
    for the next trial (after the last one the cluster is closed: no waiting for that)."""
    leader = raft.leader()
    if leader is None:
        raise RuntimeError("no PySyncObj leader before the trial")
    via = next(i for i in range(len(raft.ports)) if i != leader)

    def kill() -> float:
        t = time.time()
        raft.nodes[leader].kill()
        return t

    result = failover.run_trial(lambda: ("127.0.0.1", raft.ports[via]), kill)
    if restart:
        raft.restart(leader)
    return result


def _sentinel_trial(
    workdir: Path,
    mode: Mode,
    settings: Any,
    pace: float = 0.0,
    group: SentinelGroup | None = None,
) -> dict[str, float]:
    """One Sentinel failover trial, on ``group`` (started already) or a new group; closes it."""
    if group is None:
        group = SentinelGroup(workdir, settings, mode.redis_sync_delay_s)
    try:

        def target() -> tuple[str, int] | None:
            port = group.master_port()
            return None if port is None else ("127.0.0.1", port)

        def kill() -> float:
            t = time.time()
            group.pair.primary.process.kill()
            return t

        return failover.run_trial(target, kill, pace=pace, timeout=240)
    finally:
        group.close()


PHASE_ERRORS = (OSError, RuntimeError, LookupError, redis.RedisError, LabError)
"""What a phase's failure looks like (a lab that does not form, a peer that does not answer, a
log line that never came): recorded in ``failed_phases``, and the run goes on."""


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    lat = results["latency"]
    p50 = lat[HEADLINE]["p50_ms"]
    nan = float("nan")
    fo = results["failover"].get("appliance semi-active", {"median_ms": nan, "worst_ms": nan})
    sc = results["scaling"]
    rows: list[tuple[str, str, float, float]] = [
        (
            "replicated write p50 / Redis+WAIT",
            "<= 1.5",
            _ratio(p50, lat[REDIS_WAIT]["p50_ms"]),
            1.5,
        ),
        ("replicated write p50 / PySyncObj", "<= 0.6", _ratio(p50, lat[PYSYNCOBJ]["p50_ms"]), 0.6),
        ("failover gap median (ms)", "< 200", fo["median_ms"], 200),
        ("failover gap worst (ms)", "< 400", fo["worst_ms"], 400),
    ]
    scale = _ratio(sc["5"]["p50_ms"], sc["3"]["p50_ms"]) if "3" in sc and "5" in sc else nan
    rows.append(("write p50, 5 / 3 replicas", "<= 1.25", scale, 1.25))
    f = results["faults"]
    stall = f["backup_failure"]["worst_stall_ms"] if "error" not in f else nan
    join = f["join"]["p99_ratio"] if "error" not in f else nan
    rows.append(("stall when a backup fails (ms)", "< 200", stall, 200))
    rows.append(("p99 during a join / normal p99", "<= 1.5", join, 1.5))
    return [
        {"what": w, "target": t, "measured": m, "met": bool(m <= limit if "<=" in t else m < limit)}
        for w, t, m, limit in rows
    ]


@contextlib.contextmanager
def _workdir(keep: Callable[[], bool] = lambda: False) -> Iterator[Path]:
    """The run's scratch directory (labs, peers, their logs): removed after a run that
    completes, kept after one that fails (or where ``keep()`` says a phase failed), so that
    the agents' logs say what happened."""
    path = Path(tempfile.mkdtemp(prefix="appliance-bench-"))
    try:
        yield path
    except BaseException:
        _say(f"the run failed: its labs and their logs are kept in {path}")
        raise
    if keep():
        _say(f"a phase failed: its labs and their logs are kept in {path}")
        return
    shutil.rmtree(path, ignore_errors=True)


def run(mode: Mode, out_dir: Path, plot: bool) -> Path:
    started = time.time()
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "mode": mode.name,
        "machine": describe(),
        "settings": {
            "value_bytes": 100,
            "rounds": mode.rounds,
            "writes_per_round": mode.writes_per_round,
            "load_seconds": mode.load_seconds,
            "failover_trials": mode.failover_trials,
            "join_keys": mode.join_keys,
            "sentinel": {
                s.name: {
                    "down_after_ms": s.down_after_ms,
                    "failover_timeout_ms": s.failover_timeout_ms,
                }
                for s in (SENTINEL_DEFAULT, SENTINEL_AGGRESSIVE)
            },
        },
    }
    failed: dict[str, str] = {}

    def phase(name: str, body: Callable[[], None]) -> None:
        """Run one phase; if it fails, record why and go on: a 15-minute run keeps what the
        other phases measured (the scratch directory, agents' logs included, is kept)."""
        try:
            body()
        except PHASE_ERRORS as e:
            _say(f"{name} phase failed: {e!r}; the run goes on")
            failed[name] = f"{type(e).__name__}: {e}"

    with (
        _workdir(keep=lambda: bool(failed)) as workdir,
        contextlib.closing(Standing(workdir, mode)) as standing,
    ):
        results |= latency_and_throughput(workdir, mode, standing)
        results["scaling"] = {}
        results["failover"] = {}

        def scale() -> None:
            results["scaling"] = scaling(workdir, mode)

        def fail_over() -> None:
            labs: dict[str, Lab] = {}
            try:
                for style in mode.failover_labs:
                    lab = standing.take_lab(style) or Lab(workdir, 3, style)
                    labs[f"appliance {style}"] = lab
                results["failover"] = failovers(workdir, mode, labs, standing)
                if mode.faults_on_failover_lab:
                    lab = labs["appliance semi-active"]
                    phase("faults", lambda: faults_on(lab))
            finally:
                for lab in labs.values():
                    lab.close()

        def faults_on(lab: Lab | None) -> None:
            results["faults"] = faults.run(
                workdir, mode.fault_trials, mode.join_keys, _say, lab, mode.fault_baseline_s
            )

        def vip() -> None:
            ka = keepalived.run(workdir, mode.failover_trials, _say)
            results["failover"] |= ka["failover"]
            results["keepalived"] = ka["keepalived"]

        phase("scaling", scale)
        phase("failover", fail_over)
        if mode.keepalived:  # after the labs are down: their idle agents would tax it
            phase("keepalived", vip)
        if not mode.faults_on_failover_lab:
            phase("faults", lambda: faults_on(None))
        if "faults" in failed:
            results["faults"] = {"error": failed["faults"]}
        elif "faults" not in results:
            results["faults"] = {"error": "not run: the failover phase failed first"}
        if "keepalived" in failed:
            results["keepalived"] = {"skipped": f"the phase failed: {failed['keepalived']}"}
        if failed:
            results["failed_phases"] = failed
    lat = results["latency"]
    results["ratios"] = {
        f"{n} / {REDIS_WAIT}": _ratio(lat[n]["p50_ms"], lat[REDIS_WAIT]["p50_ms"]) for n in lat
    } | {f"{n} / {PYSYNCOBJ}": _ratio(lat[n]["p50_ms"], lat[PYSYNCOBJ]["p50_ms"]) for n in lat}
    results["targets"] = targets(results)
    results["seconds"] = round(time.time() - started, 1)
    results["machine"]["load_average_end"] = describe()["load_average"]
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if mode is FULL else f"-{mode.name}"
    path = out_dir / f"{results['date']}{suffix}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    _say(f"results: {path} ({results['seconds']:.0f} s)")
    if plot:
        from benchmarks.plot import render

        png = render(results, path.with_suffix(".png"))
        _say(f"plot: {png}")
    return path


def run_only(phase: str, mode: Mode, out_dir: Path) -> Path:
    """One phase alone (``--only``), into ``<date>-only-<phase>.json`` (the report skips it)."""
    started = time.time()
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "mode": mode.name,
        "machine": describe(),
    }
    with _workdir() as workdir:
        if phase == "keepalived":
            results |= keepalived.run(workdir, mode.failover_trials, _say)
        elif phase == "faults":
            results["faults"] = faults.run(
                workdir, mode.fault_trials, mode.join_keys, _say, baseline=mode.fault_baseline_s
            )
    results["seconds"] = round(time.time() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{results['date']}-only-{phase}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    _say(f"results: {path} ({results['seconds']:.0f} s)")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smoke run of every phase")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG (needs matplotlib)")
    ap.add_argument(
        "--only",
        choices=["keepalived", "faults"],
        help="run one phase alone, with the mode's trial count (--quick: 1 trial)",
    )
    args = ap.parse_args(argv)
    if args.only:
        run_only(args.only, QUICK if args.quick else FULL, args.out)
        return 0
    run(QUICK if args.quick else FULL, args.out, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
