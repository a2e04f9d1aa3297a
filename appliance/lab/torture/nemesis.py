"""The nemesis: seeded fault schedules, and carrying them out on a running lab.

A schedule is drawn from a seed before the run starts and printed, so a run replays: the same
seed, fault kinds and count give the same faults in the same order with the same pauses and
durations. Targets are roles ("the primary", "a backup"), resolved when the fault strikes, since
which node holds a role is the cluster's business.

Every fault ends with a recovery: the nemesis heals the network, thaws what it froze, powers on
what is still off (a fenced node normally comes back by itself: the lab fences by power-cycle),
and waits until every node is a member of one view again while the clients keep writing. A
cluster that does not recover within the deadline fails the run.
"""

from __future__ import annotations

import contextlib
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from appliance.lab import netns
from appliance.lab.cli import LabError, running_state, signal_node, snapshot, switch_outlet
from appliance.lab.layout import LabState

__all__ = ["Fault", "FaultRecord", "LabControl", "Nemesis", "Schedule", "Step"]


class Fault(Enum):
    """The fault kinds, named as the suite's options spell them."""

    PULL_POWER_PRIMARY = "pull-power-primary"
    PULL_POWER_BACKUP = "pull-power-backup"
    PULL_POWER_BACKUPS = "pull-power-backups"
    """Every backup at once: the primary must fence them all and go on alone."""
    FREEZE_PRIMARY = "freeze-primary"
    RAPID_FAILURES = "rapid-failures"
    """The primary loses power, then its successor too, before the first is back."""
    PULL_NETWORK_PRIMARY = "pull-network-primary"
    PARTITION_PRIMARY = "partition-primary"
    PARTITION_BACKUP = "partition-backup"
    LOSS = "loss"
    """20 % of every node's input dropped."""

    @property
    def needs_netns(self) -> bool:
        return self in NETWORK_FAULTS


NETWORK_FAULTS = frozenset(
    {Fault.PULL_NETWORK_PRIMARY, Fault.PARTITION_PRIMARY, Fault.PARTITION_BACKUP, Fault.LOSS}
)
PROCESS_FAULTS = tuple(f for f in Fault if f not in NETWORK_FAULTS)
POWER_PULLS = frozenset(
    {Fault.PULL_POWER_PRIMARY, Fault.PULL_POWER_BACKUP, Fault.PULL_POWER_BACKUPS}
)


@dataclass(frozen=True, slots=True)
class Step:
    """One fault of a schedule: a pause, the fault, how long it lasts."""

    index: int
    fault: Fault
    pause_s: float
    """Quiet time (clients writing, no fault) before the fault strikes."""
    hold_s: float
    """How long the fault lasts before the nemesis undoes it (freeze, partition, loss, cable)."""
    pick: float
    """Which backup, for faults aimed at one ([0, 1) scaled over the backups)."""

    def describe(self) -> str:
        held = (
            ""
            if self.fault in (Fault.PULL_POWER_PRIMARY, Fault.PULL_POWER_BACKUP)
            else (f" for {self.hold_s * 1000:.0f} ms")
        )
        if self.fault is Fault.RAPID_FAILURES:
            held = ""
        return f"{self.index:2d}. after {self.pause_s:.2f} s: {self.fault.value}{held}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "fault": self.fault.value,
            "pause_s": round(self.pause_s, 3),
            "hold_s": round(self.hold_s, 3),
            "pick": round(self.pick, 3),
        }


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    steps: tuple[Step, ...]

    @classmethod
    def generate(
        cls, seed: int, faults: list[Fault], count: int, silence_s: float = 0.3
    ) -> Schedule:
        """``count`` steps; every kind in ``faults`` occurs (in a seeded order) before any
        repeats. Freezes last from well under to well over the suspicion timeout."""
        rng = random.Random(seed)
        steps: list[Step] = []
        order: list[Fault] = []
        for i in range(count):
            if not order:
                order = list(faults)
                rng.shuffle(order)
            fault = order.pop()
            if fault is Fault.FREEZE_PRIMARY:
                hold = rng.uniform(0.2 * silence_s, 3.0 * silence_s)
            elif fault is Fault.LOSS:
                hold = rng.uniform(2.0, 4.0)
            else:
                hold = rng.uniform(0.8, 2.0)
            steps.append(Step(i + 1, fault, rng.uniform(0.5, 1.5), hold, rng.random()))
        return cls(seed, tuple(steps))

    def describe(self) -> str:
        return "\n".join(s.describe() for s in self.steps)


@dataclass
class FaultRecord:
    """What happened when a step ran (monotonic times)."""

    step: Step
    targets: list[str] = field(default_factory=list)
    """The nodes the fault hit, in order."""
    struck_at: float = 0.0
    undone_at: float = 0.0
    recovered_at: float | None = None
    """When every node was a member of one view again (None: it never was)."""
    power_offs: list[tuple[str, float]] = field(default_factory=list)
    """(node, time) of every power cut the nemesis made: the node was dead by then."""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.step.as_dict(),
            "targets": self.targets,
            "struck_at": round(self.struck_at, 6),
            "undone_at": round(self.undone_at, 6),
            "recovered_at": None if self.recovered_at is None else round(self.recovered_at, 6),
            "recovery_ms": (
                None
                if self.recovered_at is None
                else round((self.recovered_at - self.struck_at) * 1000, 1)
            ),
            "notes": self.notes,
        }


class LabControl:
    """The lab's levers, for a program: power, signals, network, and who holds which role."""

    def __init__(self, lab_dir: Path) -> None:
        self.dir = lab_dir
        self.state: LabState = running_state(lab_dir)
        self.net = (
            netns.LabNetwork.for_lab(lab_dir, [n.name for n in self.state.nodes])
            if self.state.mode == "netns"
            else None
        )

    def refresh(self) -> LabState:
        self.state = running_state(self.dir)
        return self.state

    def status(self) -> dict[str, Any]:
        return snapshot(self.refresh())

    def primary(self) -> str | None:
        p = self.status()["primary"]
        return None if p is None else str(p)

    def power(self, node: str, on: bool) -> None:
        switch_outlet(self.state, node, on)

    def signal(self, node: str, sig: signal.Signals) -> bool:
        """Signal the node's agent (its process group); False if it is not running."""
        try:
            signal_node(self.refresh(), node, sig)
        except LabError:
            return False
        return True

    def network(self) -> netns.LabNetwork:
        if self.net is None:
            raise LabError("network faults need a lab started with --netns")
        return self.net

    def heal(self) -> None:
        if self.net is not None:
            self.net.heal()

    def recovered(self) -> bool:
        """Every node powered, and all of them members of one view with one primary."""
        snap = self.status()
        return bool(snap["formed"]) and all(n["power"] == "on" for n in snap["nodes"])


class Nemesis:
    """Runs a schedule's steps against a lab, one at a time, recording what it did."""

    def __init__(
        self,
        lab: LabControl,
        recover_timeout: float = 30.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.lab = lab
        self.recover_timeout = recover_timeout
        self.log = log

    def _wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise LabError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.02)

    def _new_primary(self, old: str) -> str | None:
        p = self.lab.primary()
        return p if p is not None and p != old else None

    def run(self, step: Step, stop: Callable[[], bool] = lambda: False) -> FaultRecord:
        rec = FaultRecord(step)
        time.sleep(step.pause_s)
        primary = self._wait("a primary before the fault", self.lab.primary, 30.0)
        names = [n.name for n in self.lab.state.nodes]
        backups = [n for n in names if n != primary]
        backup = backups[min(int(step.pick * len(backups)), len(backups) - 1)]
        f = step.fault
        if f is Fault.PULL_POWER_PRIMARY:
            rec.targets = [primary]
            self._cut(rec, primary)
        elif f is Fault.PULL_POWER_BACKUP:
            rec.targets = [backup]
            self._cut(rec, backup)
        elif f is Fault.PULL_POWER_BACKUPS:
            rec.targets = backups
            for i, b in enumerate(backups):
                self._cut(rec, b, first=i == 0)
        elif f is Fault.FREEZE_PRIMARY:
            rec.targets = [primary]
            rec.struck_at = time.monotonic()
            self.lab.signal(primary, signal.SIGSTOP)
            time.sleep(step.hold_s)
            if not self.lab.signal(primary, signal.SIGCONT):
                rec.notes.append(f"{primary} was fenced while frozen")
        elif f is Fault.RAPID_FAILURES:
            rec.targets = [primary]
            self._cut(rec, primary)
            try:
                second = self._wait(
                    "a new primary after the first power pull",
                    lambda: self._new_primary(primary),
                    10.0,
                )
            except LabError as e:
                rec.notes.append(str(e))
            else:
                rec.targets.append(second)
                self._cut(rec, second, first=False)
                back = self.lab.refresh().node(primary).power == "on"
                rec.notes.append(
                    f"{second} lost power "
                    f"{(time.monotonic() - rec.struck_at) * 1000:.0f} ms after {primary}; "
                    f"{primary} was {'already back on' if back else 'still off'}"
                )
        elif f is Fault.PULL_NETWORK_PRIMARY:
            rec.targets = [primary]
            rec.struck_at = time.monotonic()
            self.lab.network().link(primary, False)
            time.sleep(step.hold_s)
            self.lab.network().link(primary, True)
        elif f in (Fault.PARTITION_PRIMARY, Fault.PARTITION_BACKUP):
            alone = primary if f is Fault.PARTITION_PRIMARY else backup
            rec.targets = [alone]
            rec.struck_at = time.monotonic()
            self.lab.network().partition([[alone], [n for n in names if n != alone]])
            time.sleep(step.hold_s)
            self.lab.network().heal()
        elif f is Fault.LOSS:
            rec.targets = list(names)
            rec.struck_at = time.monotonic()
            self.lab.network().loss(20)
            time.sleep(step.hold_s)
            self.lab.network().heal()
        rec.undone_at = time.monotonic()
        self.recover(rec)
        return rec

    def _cut(self, rec: FaultRecord, node: str, first: bool = True) -> None:
        t = time.monotonic()
        if first:
            rec.struck_at = t
        self.lab.power(node, False)  # the strip answers once the node's processes are gone
        rec.power_offs.append((node, t))

    def recover(self, rec: FaultRecord) -> None:
        """Undo whatever is still undone, then wait for every node to be back in the view."""
        self.lab.heal()
        for n in self.lab.state.nodes:
            self.lab.signal(n.name, signal.SIGCONT)
        deadline = time.monotonic() + self.recover_timeout
        powered_on_by_hand = False
        while time.monotonic() < deadline:
            if self.lab.recovered():
                rec.recovered_at = time.monotonic()
                return
            if not powered_on_by_hand and time.monotonic() > rec.undone_at + 5.0:
                # A fence by power-cycle brings a node back within a second; if one is still
                # off, nobody fenced it (or its power-on failed): switch it on, as a user would.
                for n in self.lab.refresh().nodes:
                    if n.power == "off":
                        rec.notes.append(f"{n.name} still off 5 s after the fault: powered on")
                        with contextlib.suppress(LabError):
                            self.lab.power(n.name, True)
                powered_on_by_hand = True
            time.sleep(0.05)
        rec.notes.append(f"the cluster did not recover within {self.recover_timeout:.0f} s")
