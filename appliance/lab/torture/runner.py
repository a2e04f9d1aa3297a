"""A fault run from start to verdict: lab up, clients, nemesis, recovery, checks, report.

``appliance lab torture`` (and the tests in ``tests/faults/``) call :func:`run`. It starts a lab
in its own directory, spreads redis-py clients over the nodes, carries out a seeded fault
schedule while they write, lets the cluster recover after every fault, and at the end checks:

* **linearizability** of every key's history (registers and counters);
* **no lost acknowledged write**: every live node's final state holds every acknowledged SET
  (or a write that may have followed it) and every acknowledged INCR;
* **one primary at a time** (S1), from the nodes' logs, and **one primary per view** as the
  clients saw it through INFO;
* **fenced before promotion**: every failover's new primary took over only after the old
  primary was fenced;
* **convergence**: every live replica at the same applied index with the same state digest.

The report holds the schedule, op counts, failover gaps (the longest stretch without a
successful op on the nodes the fault did not hit) and the verdicts.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.lab.cli import LabError, run_lab
from appliance.lab.probe import Connection, node_info
from appliance.lab.torture.checks import (
    CheckResult,
    Fence,
    Promotion,
    convergence,
    fences_before_promotions,
    lost_writes,
    overlapping_primaries,
)
from appliance.lab.torture.history import History, Op, OpKind, Outcome
from appliance.lab.torture.linearizability import check_history
from appliance.lab.torture.nemesis import (
    Fault,
    FaultRecord,
    LabControl,
    Nemesis,
    Schedule,
)
from appliance.lab.torture.observe import ViewMonitor, ViewSample, read_logs
from appliance.lab.torture.workload import Target, Workload, WorkloadShape

__all__ = ["Report", "RunConfig", "run"]


@dataclass(frozen=True)
class RunConfig:
    seed: int
    faults: tuple[Fault, ...]
    count: int
    """Faults in the schedule (each kind once before any repeats)."""
    replication: str = "semi-active"
    netns: bool = False
    nodes: int = 3
    clients_per_node: int = 2
    duration_s: float | None = None
    """Soak: keep drawing faults from the seed until this many seconds have passed."""
    lab_dir: Path | None = None
    out_dir: Path | None = None
    """Where the report and the history go (the lab directory when None)."""


@dataclass
class Report:
    config: RunConfig
    schedule: Schedule
    faults: list[FaultRecord] = field(default_factory=list)
    ops: dict[str, dict[str, int]] = field(default_factory=dict)
    gaps_ms: list[float | None] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    linearizability: str = ""
    started: float = 0.0
    finished: float = 0.0
    errors: list[str] = field(default_factory=list)
    history_path: str = ""
    report_path: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        gaps = [g for g in self.gaps_ms if g is not None]
        return {
            "ok": self.ok,
            "seed": c.seed,
            "replication": c.replication,
            "mode": "netns" if c.netns else "processes",
            "nodes": c.nodes,
            "clients": c.nodes * c.clients_per_node,
            "duration_s": round(self.finished - self.started, 1),
            "replay": replay_command(c, len(self.faults)),
            "schedule": [s.as_dict() for s in self.schedule.steps[: len(self.faults)]],
            "faults": [
                {**f.as_dict(), "gap_ms": g}
                for f, g in zip(self.faults, self.gaps_ms, strict=False)
            ],
            "failover_gap_ms": {
                "median": _median(gaps),
                "max": max(gaps) if gaps else None,
            },
            "ops": self.ops,
            "checks": [
                {"name": ch.name, "ok": ch.ok, "checked": ch.checked, "problems": list(ch.problems)}
                for ch in self.checks
            ],
            "linearizability": self.linearizability,
            "errors": self.errors,
            "history": self.history_path,
        }

    def render(self) -> str:
        d = self.as_dict()
        lines = [
            f"fault run: seed {d['seed']}, {d['replication']}, {d['mode']} lab, {d['nodes']} nodes,"
            f" {d['clients']} clients, {d['duration_s']} s",
            f"replay: {d['replay']}",
            "",
            "faults:",
        ]
        for f in d["faults"]:
            gap = "-" if f["gap_ms"] is None else f"{f['gap_ms']:.0f} ms"
            rec = "never" if f["recovery_ms"] is None else f"{f['recovery_ms']:.0f} ms"
            lines.append(
                f"  {f['index']:2d}. {f['fault']:<21} {','.join(f['targets']):<6} "
                f"gap {gap:>7}  recovered in {rec}"
                + ("" if not f["notes"] else "  (" + "; ".join(f["notes"]) + ")")
            )
        g = d["failover_gap_ms"]
        if g["median"] is not None:
            lines.append(f"  failover gap: median {g['median']:.0f} ms, worst {g['max']:.0f} ms")
        lines += ["", "operations:"]
        for kind, counts in sorted(d["ops"].items()):
            lines.append(f"  {kind:<5} " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        lines += ["", "checks:"]
        for ch in self.checks:
            lines.append("  " + ch.explain().replace("\n", "\n  "))
        lines += [f"  error: {e}" for e in self.errors]
        lines += ["", "verdict: " + ("PASS" if self.ok else "FAIL")]
        return "\n".join(lines)


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def replay_command(c: RunConfig, count: int) -> str:
    parts = [
        "appliance lab torture",
        f"--seed {c.seed}",
        f"--faults {','.join(f.value for f in c.faults)}",
        f"--count {count}",
        f"--replication {c.replication}",
    ]
    if c.netns:
        parts.append("--netns")
    if c.nodes != 3:
        parts.append(f"--nodes {c.nodes}")
    return " ".join(parts)


# -- measuring and checking -------------------------------------------------------------------


def failover_gap(ops: list[Op], rec: FaultRecord, process_nodes: dict[int, str]) -> float | None:
    """The longest stretch (ms) without a successful op completing, on the nodes the fault
    did not hit, from the moment it struck until the cluster recovered."""
    if rec.recovered_at is None:
        return None
    hit = set(rec.targets)
    if rec.step.fault is Fault.LOSS:
        hit = set()
    times = sorted(
        op.complete
        for op in ops
        if op.outcome is Outcome.OK
        and op.complete is not None
        and process_nodes.get(op.process) not in hit
        and rec.struck_at <= op.complete <= rec.recovered_at + 1.0
    )
    if not times:
        return None
    edges = [rec.struck_at, *times]
    return round(max(b - a for a, b in itertools.pairwise(edges)) * 1000, 1)


def views_as_seen(samples: list[ViewSample], ids: dict[str, int]) -> CheckResult:
    """What the clients saw through INFO: one primary per view, and a node calling itself
    primary of a view is the primary every other node names for it."""
    named: dict[str, set[str]] = {}
    claimed: dict[str, set[int]] = {}
    for s in samples:
        named.setdefault(s.view, set()).add(s.primary)
        if s.role == "primary":
            claimed.setdefault(s.view, set()).add(ids[s.node])
    problems = []
    for view, primaries in sorted(named.items()):
        if len(primaries) > 1:
            problems.append(f"view {view}: nodes named primaries {sorted(primaries)}")
        if view in claimed and {str(i) for i in claimed[view]} - primaries:
            problems.append(f"view {view}: claimed by {sorted(claimed[view])}, named {primaries}")
    for view, nodes in sorted(claimed.items()):
        if len(nodes) > 1:
            problems.append(f"view {view}: nodes {sorted(nodes)} each answered as its primary")
    return CheckResult(
        "one primary per view (INFO)",
        not problems,
        f"{len(samples)} INFO samples, {len(named)} views",
        tuple(problems),
    )


def _digests(targets: list[Target]) -> dict[str, str] | None:
    """Every node's state digest, if every node answers as primary or backup."""
    out = {}
    for t in targets:
        info = node_info(t.port, timeout=1.0, host=t.host)
        if info is None or info.get("llft_role") not in ("primary", "backup"):
            return None
        try:
            with Connection(t.port, timeout=5.0, host=t.host) as c:
                digest = c.call("DEBUG", "DIGEST")
        except OSError:
            return None
        out[t.node] = digest.decode() if isinstance(digest, bytes) else ""
    return out


def _final_state(target: Target, keys: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    with Connection(target.port, timeout=5.0, host=target.host) as c:
        for k in keys:
            v = c.call("GET", k)
            out[k] = v.decode() if isinstance(v, bytes) else None
    return out


def _promotions(logs_promotions: list[Any]) -> list[Promotion]:
    """The logged promotions, each naming the primary it replaced (None at founding)."""
    out = []
    last: str | None = None
    for p in logs_promotions:
        replaces = None if p.founding or last in (None, p.node) else last
        view = int(p.view) if p.view.isdigit() else -1
        out.append(Promotion(p.node, view, p.at, replaces))
        last = p.node
    return out


# -- the run ----------------------------------------------------------------------------------


def run(config: RunConfig, log: Callable[[str], None] = print) -> Report:
    """Carry out one fault run and check it; the report is also written as JSON."""
    lab_dir = config.lab_dir or Path(tempfile.mkdtemp(prefix="appliance-torture-"))
    out_dir = config.out_dir or lab_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    silence = 0.3
    count = config.count if config.duration_s is None else 10_000
    schedule = Schedule.generate(config.seed, list(config.faults), count, silence)
    report = Report(config, schedule)
    log(f"seed {config.seed}: schedule")
    log(schedule.describe() if config.duration_s is None else "(soak: steps drawn as it goes)")
    up = ["up", "--nodes", str(config.nodes), "--replication", config.replication]
    run_lab(lab_dir, *up, *(["--netns"] if config.netns else []))
    history = History()
    try:
        lab = LabControl(lab_dir)
        state = lab.state
        targets = [Target(n.name, n.address, n.client_port) for n in state.nodes]
        ids = {n.name: n.id for n in state.nodes}
        monitor = ViewMonitor({t.node: (t.host, t.port) for t in targets})
        workload = Workload(targets, history, config.seed, config.clients_per_node, WorkloadShape())
        report.started = time.monotonic()
        monitor.start()
        workload.start()
        nemesis = Nemesis(lab, log=log)
        try:
            time.sleep(1.0)
            for step in schedule.steps:
                if config.duration_s is None and step.index > config.count:
                    break
                if (
                    config.duration_s is not None
                    and time.monotonic() - report.started > config.duration_s
                ):
                    break
                if config.duration_s is not None:
                    log(step.describe())
                rec = nemesis.run(step)
                report.faults.append(rec)
                log(
                    f"  {step.fault.value} on {','.join(rec.targets)}: "
                    + (
                        f"recovered in {(rec.recovered_at - rec.struck_at) * 1000:.0f} ms"
                        if rec.recovered_at is not None
                        else "NOT RECOVERED"
                    )
                )
                if rec.recovered_at is None:
                    report.errors.append(f"step {step.index} ({step.fault.value}): no recovery")
                    break
            time.sleep(1.0)
        finally:
            workload.finish()
            monitor.finish()
        ops = history.ops()
        report.finished = time.monotonic()
        path = out_dir / "history.jsonl"
        history.save(path)
        report.history_path = str(path)

        # Once the clients stop, the replicas settle: the same digest everywhere.
        deadline = time.monotonic() + 30.0
        digests = None
        while time.monotonic() < deadline:
            digests = _digests(targets)
            if digests is not None and len(set(digests.values())) == 1:
                break
            time.sleep(0.1)
        if digests is None:
            report.errors.append("not every node answered as primary or backup within 30 s")
        else:
            report.checks.append(convergence(digests))
        keys = sorted({op.key for op in ops})
        finals = {t.node: _final_state(t, keys) for t in targets}
        report.checks.append(lost_writes(ops, finals))
        verdict = check_history(ops, time_budget=60.0)
        report.linearizability = verdict.explain()
        report.checks.append(
            CheckResult(
                "linearizable",
                verdict.ok,
                f"{len(verdict.keys)} keys, {len(ops)} ops",
                tuple(verdict.explain().splitlines()[1:]),
            )
        )
        offs = [o for r in report.faults for o in r.power_offs]
        logs = read_logs(lab_dir, list(ids), offs, report.started - 60.0, report.finished)
        report.checks.append(
            overlapping_primaries([(t.node, _view(t.view), t.start, t.end) for t in logs.terms])
        )
        report.checks.append(
            fences_before_promotions(
                [Fence(f.target, f.at) for f in logs.fences if f.ok],
                _promotions(logs.promotions),
            )
        )
        report.checks.append(views_as_seen(monitor.samples, ids))
        nodes_of = workload.process_nodes()
        report.gaps_ms = [failover_gap(ops, r, nodes_of) for r in report.faults]
        report.ops = _counts(ops)
    except LabError as e:
        report.errors.append(str(e))
    finally:
        if not report.finished:
            report.finished = time.monotonic()
        try:
            run_lab(lab_dir, "down")
        except (LabError, subprocess.TimeoutExpired) as e:
            report.errors.append(f"lab down: {e}")
    path = out_dir / "report.json"
    path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    report.report_path = str(path)
    return report


def _view(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _counts(ops: list[Op]) -> dict[str, dict[str, int]]:
    c: Counter[tuple[str, str]] = Counter((op.kind.value, op.outcome.value) for op in ops)
    out: dict[str, dict[str, int]] = {}
    for kind in OpKind:
        out[kind.value] = {o.value: c[(kind.value, o.value)] for o in Outcome}
    out["all"] = {o.value: sum(c[(k.value, o.value)] for k in OpKind) for o in Outcome}
    return out
