"""Fault schedules replay from their seed; fault names parse with precise errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.lab.torture.cli import parse_faults
from appliance.lab.torture.nemesis import NETWORK_FAULTS, PROCESS_FAULTS, Fault, Schedule


@given(st.integers(0, 2**32), st.integers(1, 30))
def test_a_seed_gives_the_same_schedule(seed: int, count: int) -> None:
    a = Schedule.generate(seed, list(Fault), count)
    b = Schedule.generate(seed, list(Fault), count)
    assert a == b
    assert a.describe() == b.describe()
    assert [s.index for s in a.steps] == list(range(1, count + 1))


@given(st.integers(0, 2**32))
def test_every_kind_occurs_before_any_repeats(seed: int) -> None:
    kinds = list(Fault)
    steps = Schedule.generate(seed, kinds, 2 * len(kinds)).steps
    assert {s.fault for s in steps[: len(kinds)]} == set(kinds)
    assert {s.fault for s in steps[len(kinds) :]} == set(kinds)


def test_freezes_reach_past_the_suspicion_timeout() -> None:
    holds = [
        s.hold_s
        for seed in range(50)
        for s in Schedule.generate(seed, [Fault.FREEZE_PRIMARY], 4, silence_s=0.3).steps
    ]
    assert min(holds) < 0.3 < max(holds)
    assert all(0.06 <= h <= 0.9 for h in holds)


def test_different_seeds_differ() -> None:
    assert Schedule.generate(1, list(Fault), 8) != Schedule.generate(2, list(Fault), 8)


def test_fault_names() -> None:
    assert parse_faults("all", netns_lab=False) == PROCESS_FAULTS
    assert set(parse_faults("all", netns_lab=True)) == set(Fault)
    assert parse_faults("pull-power-primary, loss", netns_lab=True) == (
        Fault.PULL_POWER_PRIMARY,
        Fault.LOSS,
    )
    with pytest.raises(ValueError, match=r"unknown fault 'pull-plug'.*known: all, process"):
        parse_faults("pull-plug", netns_lab=True)
    for f in NETWORK_FAULTS:
        with pytest.raises(ValueError, match="needs a netns lab"):
            parse_faults(f.value, netns_lab=False)
    with pytest.raises(ValueError, match="names no fault"):
        parse_faults(",", netns_lab=False)
