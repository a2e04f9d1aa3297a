"""Seeded random-fault simulation: the protocol's safety and liveness under a nemesis.

``make test`` runs 500 seeds (``--sim-seeds``); ``make soak`` runs 20,000. A failing seed
prints the one command that replays it exactly.
"""

from __future__ import annotations

import os

import pytest

from appliance.sim.runner import run_many, run_seed


def test_random_fault_seeds(request: pytest.FixtureRequest) -> None:
    n = int(request.config.getoption("--sim-seeds"))
    first = int(request.config.getoption("--sim-first"))
    results = list(run_many(list(range(first, first + n)), jobs=os.cpu_count() or 1))
    assert len(results) == n
    failures = [r for r in results if not r.ok]
    report = "\n".join(
        f"seed {r.seed}: {r.error}\n  faults: {r.faults}\n  replay: {r.replay}" for r in failures
    )
    assert not failures, f"{len(failures)} of {n} seeds violated an invariant:\n{report}"
    # The runs did exercise what they claim to: writes, failovers and fences.
    assert sum(r.acknowledged for r in results) > 100 * n
    assert sum(r.primary_changes for r in results) > n
    assert sum(r.fences for r in results) > n / 2
    assert sum(r.handovers for r in results) > n / 10  # graceful hand-overs, some completed


def test_a_seed_replays_exactly() -> None:
    first: list[str] = []
    second: list[str] = []
    a = run_seed(9, trace=first.append)
    b = run_seed(9, trace=second.append)
    assert first == second
    assert len(first) > 10
    assert (a.requests, a.acknowledged, a.faults) == (b.requests, b.acknowledged, b.faults)


def test_different_seeds_explore_different_schedules() -> None:
    assert run_seed(1).faults != run_seed(2).faults
