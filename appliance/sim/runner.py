"""Seeded simulation runs with a random nemesis, and their replay.

``run_seed(seed)`` builds a cluster, lets clients write while a nemesis (seeded from the same
seed) pulls power, freezes nodes, partitions the network and drops packets; then it heals
everything, lets the cluster settle and checks the final invariants. A failing seed is replayed
with ``appliance sim --seed N --trace``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from appliance.protocols.config import StateTransfer
from appliance.protocols.replication import Style
from appliance.sim.cluster import InvariantViolation, SimCluster

STYLES: tuple[Style | None, ...] = (None, Style.SEMI_ACTIVE, Style.SEMI_PASSIVE)
STYLE_NAMES = {"log": None, "semi-active": Style.SEMI_ACTIVE, "semi-passive": Style.SEMI_PASSIVE}


@dataclass
class SeedResult:
    seed: int
    style: str
    ok: bool
    error: str
    requests: int
    acknowledged: int
    primary_changes: int
    fences: int
    faults: list[str]
    step_downs: int = 0
    handovers: int = 0
    fetches: int = 0
    fetch_failures: int = 0

    @property
    def replay(self) -> str:
        return f"appliance sim --seed {self.seed} --style {self.style} --trace"


def _nemesis(c: SimCluster, rng: random.Random, start: float, end: float) -> list[str]:
    """Schedule random faults in [start, end); returns their description (printed on failure)."""
    faults: list[str] = []
    t = start
    nodes = list(c.nodes)
    while True:
        t += rng.uniform(0.3, 1.2)
        if t >= end:
            break
        kind = rng.choice(
            [
                "crash",
                "crash_primary",
                "pause",
                "pause_primary",
                "partition",
                "loss",
                "rapid",
                "step_down",
                "step_down_crash",
            ]
        )
        victim = rng.choice(nodes)
        dur = rng.uniform(0.05, 0.8)
        faults.append(f"t={t:.3f} {kind} node={victim} for {dur:.3f}s")

        def act(kind: str = kind, victim: int = victim, dur: float = dur) -> None:
            prim = c.primaries()
            target = (
                prim[0] if kind in ("crash_primary", "pause_primary", "rapid") and prim else victim
            )
            others = [n for n in c.holders() if n != target]
            if kind in ("crash", "crash_primary", "rapid"):
                if not others:
                    return  # never power off the last node holding the data
                c.power_off(target, "nemesis pulled the power")
                c.at(c.now + dur + 0.3, "power_on", target)
                if kind == "rapid":
                    c.at(c.now + 0.25, "call", lambda: _crash_next_primary(c, dur))
            elif kind in ("step_down", "step_down_crash") and prim:
                # A graceful hand-over; with _crash, the old primary or its successor also loses
                # power a moment later (mid-hand-over, or just after it).
                successor = c.step_down(prim[0])
                if kind == "step_down_crash" and successor is not None:
                    doomed = rng.choice([prim[0], successor])
                    c.at(c.now + dur / 100, "call", lambda: _crash(c, doomed, dur))
            elif kind in ("pause", "pause_primary"):
                c.pause(target)
                c.at(c.now + dur, "thaw", target)
            elif kind == "partition":
                side = {n: (1 if n == target or rng.random() < 0.3 else 0) for n in nodes}
                c.net.faults.sides = side
                c.net.faults.witness_side = rng.choice([0, 1])
                c.log(f"partition {side}, witness on side {c.net.faults.witness_side}")
                c.at(c.now + dur, "call", lambda: _heal(c))
            elif kind == "loss":
                c.net.faults.loss = rng.uniform(0.05, 0.25)
                c.log(f"packet loss {c.net.faults.loss:.2f}")
                c.at(c.now + dur, "call", lambda: _heal(c))

        c.at(t, "call", act)
    return faults


def _crash(c: SimCluster, node: int, dur: float) -> None:
    if [n for n in c.holders() if n != node]:
        c.power_off(node, "nemesis pulled the power (during a hand-over)")
        c.at(c.now + dur + 0.3, "power_on", node)


def _crash_next_primary(c: SimCluster, dur: float) -> None:
    prim = c.primaries()
    if prim and [n for n in c.holders() if n != prim[0]]:
        c.power_off(prim[0], "nemesis pulled the power (second failure)")
        c.at(c.now + dur + 0.3, "power_on", prim[0])


def _heal(c: SimCluster) -> None:
    c.net.faults.sides = {}
    c.net.faults.witness_side = 0
    c.net.faults.loss = 0.0
    c.log("network healed")


def run_seed(
    seed: int,
    nodes: int = 3,
    duration: float = 4.0,
    settle: float = 4.0,
    trace: Callable[[str], None] | None = None,
    style: Style | str | None = "mixed",
) -> SeedResult:
    """One seeded run. ``style`` "mixed" picks by seed: a bare log, semi-active KV, or
    semi-passive KV (seed % 3), so a seed always replays in the same mode. The state transfer
    is the agent's stream transfer, except in one seed of four (``transfer_for``), and a
    joiner restores in steps, except in one seed of four (``restore_step_for``)."""
    if style == "mixed":
        style = STYLES[seed % 3]
    assert not isinstance(style, str)
    transfer = transfer_for(seed)
    c = SimCluster(seed, nodes=nodes, trace=trace, style=style, state_transfer=transfer)
    c.restore_step = restore_step_for(seed)
    rng = random.Random(seed * 7919 + 1)
    faults = _nemesis(c, rng, 1.0, duration)
    error = ""
    try:
        c.run_until(duration)
        # Heal the world: network whole, every node thawed and powered on, clients stop.
        _heal(c)
        for n, sn in c.nodes.items():
            if sn.paused:
                c.at(c.now, "thaw", n)
            if not sn.alive:
                c.at(c.now + 0.01, "power_on", n)
        c.clients_on = False
        c.run_until(duration + settle)
        c.check_final()
    except InvariantViolation as e:
        error = str(e)
    return SeedResult(
        seed,
        style.value if style is not None else "log",
        not error,
        error,
        c.stats.requests,
        c.stats.acknowledged,
        c.stats.primary_changes,
        c.stats.fences,
        faults,
        c.stats.step_downs,
        c.stats.handovers,
        c.stats.fetches,
        c.stats.fetch_failures,
    )


def transfer_for(seed: int) -> StateTransfer:
    """Stream transfer (the agent's) for three seeds of four; the core's multicast transfer
    for the rest, so that it stays covered too. Independent of the style (seed % 3)."""
    return StateTransfer.MULTICAST if (seed // 3) % 4 == 3 else StateTransfer.STREAM


def restore_step_for(seed: int) -> float:
    """A joiner restores in steps 10 ms apart (as the agent does, slowed down so that faults
    land mid-restore) in three seeds of four; in one call in the rest, as a host without
    stepped restores would. Independent of the style and the transfer."""
    return 0.0 if (seed // 12) % 4 == 3 else 0.01


def _run_one(args: tuple[int, int, str]) -> SeedResult:
    return run_seed(args[0], nodes=args[1], style=_style(args[2]))


def _style(name: str) -> Style | str | None:
    return "mixed" if name == "mixed" else STYLE_NAMES[name]


def run_many(
    seeds: list[int],
    nodes: int = 3,
    jobs: int = 1,
    trace: Callable[[str], None] | None = None,
    style: str = "mixed",
) -> Iterator[SeedResult]:
    """Run seeds, in parallel processes when ``jobs`` > 1 (each seed is independent)."""
    if jobs <= 1 or len(seeds) < 2 or trace is not None:
        for s in seeds:
            yield run_seed(s, nodes=nodes, trace=trace, style=_style(style))
        return
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap(_run_one, [(s, nodes, style) for s in seeds], chunksize=4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="appliance sim", description=__doc__)
    ap.add_argument("--seed", type=int, help="run (replay) one seed")
    ap.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1")
    ap.add_argument("--first", type=int, default=0, help="first seed of the range")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="print every protocol event")
    ap.add_argument(
        "--style",
        choices=["mixed", *STYLE_NAMES],
        default="mixed",
        help="what is replicated: a bare log, or the KV service semi-actively or "
        "semi-passively; mixed (default) picks by seed",
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = ap.parse_args(argv)
    trace = print if args.trace else None
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    failed = 0
    t0 = time.monotonic()
    for r in run_many(list(seeds), args.nodes, args.jobs, trace, args.style):
        s = r.seed
        if not r.ok:
            failed += 1
            print(f"seed {s} FAILED: {r.error}\n  faults: {r.faults}\n  replay: {r.replay}")
        elif args.seed is not None:
            print(
                f"seed {s} ({r.style}) ok: {r.requests} requests, {r.acknowledged} acknowledged, "
                f"{r.primary_changes} primary changes, {r.fences} fences, "
                f"{transfer_for(s).value} state transfer: {r.fetches} fetches "
                f"({r.fetch_failures} failed)"
            )
    n = len(seeds)
    print(f"{n - failed} passed, {failed} failed ({time.monotonic() - t0:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
