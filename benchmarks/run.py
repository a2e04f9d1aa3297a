"""``python -m benchmarks``: every system, the same client, in one run; results as JSON.

The machine is shared and noisy, so systems are interleaved rather than run back to back:
every measurement is done in rounds, and every round visits every system (in a rotated order)
for an equal share of the work. The peers (Redis, PySyncObj) stay up for the whole phase; an
appliance lab is brought up for its turn in the round and down after it, so at most one lab's
agents run at a time (an idle agent still heartbeats, and its CPU would tax the others).
Ratios are computed from the pooled samples of all rounds, and per round as well, to show how
much the noise moves them.
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
from benchmarks.resources import measure
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
    faults_on_failover_lab: bool = False
    """Run the backup-fault phase on the semi-active failover lab instead of a fresh one (the
    quick mode: every lab started costs seconds, and the smoke run only proves the phases)."""
    keepalived: bool = False
    """Whether to measure keepalived VIP failover too (root only; ``failover_trials`` each)."""
    prestart_sentinel: bool = False
    """Start the first aggressive Sentinel group while the other failover trials run (the
    quick mode: its Sentinels take ~7 s to discover each other; the full mode keeps every
    trial alone on the machine)."""


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
    faults_on_failover_lab=True,
    prestart_sentinel=True,
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

    def __init__(self, workdir: Path, with_batching: bool) -> None:
        self.redis = RedisServer(workdir)
        self.pair = RedisPair(workdir)
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


@contextlib.contextmanager
def lab_target(
    workdir: Path, nodes: int, replication: str, event_loop: str = "asyncio"
) -> Iterator[tuple[Lab, Target]]:
    lab = Lab(workdir, nodes, replication, event_loop)
    try:
        primary = lab.wait_formed()
        yield lab, Target(lab.port(primary), 0, lab.agent_pids())
    finally:
        lab.close()


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _rotated(items: list[str], r: int) -> list[str]:
    k = r % len(items)
    return items[k:] + items[:k]


def latency_and_throughput(workdir: Path, mode: Mode) -> dict[str, Any]:
    peers = Peers(workdir, with_batching=PYSYNCOBJ_BATCH in mode.systems)
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
                        _, t = stack.enter_context(lab_target(workdir, *APPLIANCE_LABS[name]))
                    else:
                        t = peers.targets()[name]
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
        peers.close()
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


def scaling(workdir: Path, mode: Mode) -> dict[str, Any]:
    lat: dict[int, list[float]] = {}
    for r in range(mode.rounds):
        for n in [mode.scaling[(i + r) % len(mode.scaling)] for i in range(len(mode.scaling))]:
            _say(f"scaling round {r + 1}/{mode.rounds}: {n} replicas")
            with lab_target(workdir, n, "semi-active") as (_, t):
                c = connect("127.0.0.1", t.port)
                sequential_writes(c, 20, f"warm{r}")
                lat.setdefault(n, []).extend(sequential_writes(c, mode.writes_per_round, f"s{r}"))
                c.close()
    return {str(n): summary(s) for n, s in sorted(lat.items())}


def failovers(workdir: Path, mode: Mode, labs: dict[str, Lab]) -> dict[str, Any]:
    """The failover trials; ``labs``: the appliance's, by name (the caller closes them)."""
    trials: dict[str, list[dict[str, float]]] = {}
    pool = concurrent.futures.ThreadPoolExecutor(1)
    early = (
        pool.submit(SentinelGroup, workdir, SENTINEL_AGGRESSIVE) if mode.prestart_sentinel else None
    )
    raft: PySyncObjCluster | None = None
    try:
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
            trials.setdefault("pysyncobj", []).append(_raft_trial(raft))
            _say(f"failover trial {i + 1}/{mode.failover_trials}: redis sentinel aggressive")
            group, early = (None if early is None else early.result()), None
            trials.setdefault(f"redis sentinel {SENTINEL_AGGRESSIVE.name}", []).append(
                _sentinel_trial(workdir, SENTINEL_AGGRESSIVE, group=group)
            )
    finally:
        if raft is not None:
            raft.close()
        if early is not None:  # started, never used: a trial before it failed
            with contextlib.suppress(Exception):
                early.result().close()
        pool.shutdown()
    if mode.sentinel_default_trials:
        # ~30 s of waiting each, all of it idle: run them side by side, writers paced
        _say(f"{mode.sentinel_default_trials} Sentinel trials at default settings, in parallel")
        out: list[dict[str, float]] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                out.append(_sentinel_trial(workdir, SENTINEL_DEFAULT, pace=0.002))
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


def _raft_trial(raft: PySyncObjCluster) -> dict[str, float]:
    leader = raft.leader()
    if leader is None:
        raise RuntimeError("no PySyncObj leader before the trial")
    via = next(i for i in range(len(raft.ports)) if i != leader)

    def kill() -> float:
        t = time.time()
        raft.nodes[leader].kill()
        return t

    result = failover.run_trial(lambda: ("127.0.0.1", raft.ports[via]), kill)
    raft.restart(leader)
    return result


def _sentinel_trial(
    workdir: Path, settings: Any, pace: float = 0.0, group: SentinelGroup | None = None
) -> dict[str, float]:
    """One Sentinel failover trial, on ``group`` (started already) or a new group; closes it."""
    if group is None:
        group = SentinelGroup(workdir, settings)
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

    with _workdir(keep=lambda: bool(failed)) as workdir:
        results |= latency_and_throughput(workdir, mode)
        results["scaling"] = {}
        results["failover"] = {}

        def scale() -> None:
            results["scaling"] = scaling(workdir, mode)

        def fail_over() -> None:
            labs: dict[str, Lab] = {}
            try:
                for style in mode.failover_labs:
                    labs[f"appliance {style}"] = Lab(workdir, 3, style)
                results["failover"] = failovers(workdir, mode, labs)
                if mode.faults_on_failover_lab:
                    lab = labs["appliance semi-active"]
                    phase("faults", lambda: faults_on(lab))
            finally:
                for lab in labs.values():
                    lab.close()

        def faults_on(lab: Lab | None) -> None:
            results["faults"] = faults.run(
                workdir, mode.fault_trials, mode.join_keys, _say, lab=lab
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
            results["faults"] = faults.run(workdir, mode.fault_trials, mode.join_keys, _say)
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
