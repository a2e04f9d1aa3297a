"""The end-of-run checks: lost writes, primaries, fences before promotions, convergence."""

from __future__ import annotations

import pytest

from appliance.lab.torture.checks import (
    Fence,
    PrimaryInterval,
    Promotion,
    convergence,
    fences_before_promotions,
    lost_writes,
    overlapping_primaries,
)
from appliance.lab.torture.history import Outcome
from tests.faults.histories import get, incr, set_

UNKNOWN, FAIL = Outcome.UNKNOWN, Outcome.FAIL


def test_register_ends_with_a_write_nothing_acknowledged_followed() -> None:
    ops = [
        set_(1, 0, 1, "a"),
        set_(2, 2, 5, "b"),
        set_(3, 3, 6, "c"),  # overlaps b: either may be last
        get(1, 7, 8, "c"),
        set_(4, 9, 9.5, "d", FAIL),
    ]
    for final in ("b", "c"):
        assert lost_writes(ops, {"n1": {"k": final}, "n2": {"k": final}}).ok
    lost = lost_writes(ops, {"n1": {"k": "c"}, "n2": {"k": "a"}})
    assert not lost.ok
    assert lost.problems == ("n2: 'k' holds 'a', but the last writes were 'b', 'c'",)
    assert "FAILED (1 keys on 2 nodes)" in lost.explain()
    assert not lost_writes(ops, {"n1": {"k": None}}).ok  # the key vanished
    assert not lost_writes(ops, {"n1": {"k": "d"}}).ok  # a refused write applied


def test_an_unknown_write_may_supersede_an_acknowledged_one() -> None:
    ops = [set_(1, 0, 1, "a"), set_(2, 2, None, "b", UNKNOWN), set_(1, 3, 4, "c")]
    for final in ("b", "c"):
        assert lost_writes(ops, {"n1": {"k": final}}).ok
    assert not lost_writes(ops, {"n1": {"k": "a"}}).ok
    only_unknown = [set_(2, 2, None, "b", UNKNOWN)]
    assert lost_writes(only_unknown, {"n1": {"k": None}}).ok
    assert lost_writes(only_unknown, {"n1": {"k": "x"}}, initial={"k": "x"}).ok


def test_counter_counts_every_acknowledged_incr_and_at_most_the_unknown_ones() -> None:
    ops = [incr(1, 0, 1, 1), incr(2, 2, 3, 2), incr(3, 4, None, None, UNKNOWN)]
    assert lost_writes(ops, {"n1": {"k": "2"}, "n2": {"k": "3"}}).ok
    for bad in ("1", "4", None, "x"):
        result = lost_writes(ops, {"n1": {"k": bad}})
        assert not result.ok, bad
    assert lost_writes(ops, {"n1": {"k": "1"}}).problems == (
        "n1: counter 'k' is '1', expected 2..3 (2 acknowledged INCRs, 1 unknown)",
    )
    assert lost_writes(ops, {"n1": {"k": "12"}}, initial={"k": "10"}).ok


def test_lost_writes_refuses_an_incomplete_final_state_and_leaves_mixed_keys() -> None:
    with pytest.raises(ValueError, match=r"final state of n2 has no entry for keys \['k'\]"):
        lost_writes([set_(1, 0, 1, "a")], {"n1": {"k": "a"}, "n2": {}})
    mixed = lost_writes([set_(1, 0, 1, "5"), incr(1, 2, 3, 6)], {"n1": {"k": "anything"}})
    assert mixed.ok and "1 keys with both SET and INCR left to linearizability" in mixed.checked


def test_overlapping_primaries() -> None:
    clean = [("n1", 1, 0.0, 5.0), ("n2", 2, 5.0, 9.0), PrimaryInterval("n1", 3, 9.5, None)]
    assert overlapping_primaries(clean).ok
    result = overlapping_primaries([*clean, ("n3", 4, 8.0, 10.0)])
    assert not result.ok
    assert result.problems == (
        "n2 (view 2) and n3 (view 4) both primary from 8.000000 to 9.000000",
        "n3 (view 4) and n1 (view 3) both primary from 9.500000 to 10.000000",
    )
    two_in_a_view = overlapping_primaries([("n1", 1, 0.0, 1.0), ("n2", 1, 2.0, 3.0)])
    assert two_in_a_view.problems == ("view 1 has primaries ['n1', 'n2']",)
    with pytest.raises(ValueError, match=r"ends at 1\.0 before it starts at 2\.0"):
        overlapping_primaries([("n1", 1, 2.0, 1.0)])


def test_fence_must_come_before_the_promotion_that_replaces_a_failed_primary() -> None:
    promotions = [
        Promotion("n1", 1, 0.0, None),  # founding
        Promotion("n2", 2, 5.0, "n1"),
        Promotion("n1", 3, 20.0, None),  # graceful hand-over back: no fence needed
        Promotion("n2", 4, 30.0, "n1"),
    ]
    fences = [Fence("n1", 4.9), Fence("n1", 29.0)]
    assert fences_before_promotions(fences, promotions).ok
    late = fences_before_promotions([Fence("n1", 4.9), Fence("n1", 30.5)], promotions)
    assert late.problems == (
        "n2 became primary of view 4 at 30.000000 replacing n1, which was not fenced since it "
        "became primary at 20.000000",
    )
    assert "2 failovers, 2 fences" in late.checked
    never = fences_before_promotions([], promotions[:2])
    assert never.problems == (
        "n2 became primary of view 2 at 5.000000 replacing n1, which was not fenced since it "
        "became primary at 0.000000",
    )


def test_convergence() -> None:
    assert convergence({"n1": "abc", "n2": "abc", "n3": "abc"}).ok
    split = convergence({"n1": "abc", "n2": "abd", "n3": "abc"})
    assert not split.ok
    assert split.problems == ("digest abc: n1, n3", "digest abd: n2")
    assert convergence({}).problems == ("no live replica reported a digest",)
