from __future__ import annotations

import random

import pytest

from appliance.protocols.wire import RejectReason, ReplayGuard


def accept(g: ReplayGuard, node: int, inc: int, pn: int) -> RejectReason | None:
    """What a receiver does: check, and record only if fresh."""
    reason = g.check(node, inc, pn)
    if reason is None:
        g.record(node, inc, pn)
    return reason


def test_in_order() -> None:
    g = ReplayGuard()
    assert [accept(g, 1, 1, pn) for pn in range(0, 200)] == [None] * 200


def test_out_of_order_within_window() -> None:
    g = ReplayGuard()
    for pn in [10, 5, 9, 1, 8, 2, 70, 7, 30]:
        assert accept(g, 1, 1, pn) is None, pn


def test_duplicates_are_replayed() -> None:
    g = ReplayGuard()
    for pn in [10, 5, 70]:
        accept(g, 1, 1, pn)
    for pn in [10, 70]:
        assert accept(g, 1, 1, pn) is RejectReason.REPLAYED
    assert accept(g, 1, 1, 5) is RejectReason.REPLAYED  # shifted out, too old now anyway
    assert g.check(1, 1, 71) is None


def test_window_edge() -> None:
    g = ReplayGuard(window=64)
    accept(g, 1, 1, 100)
    assert g.check(1, 1, 100 - 63) is None  # oldest position still in the window
    assert g.check(1, 1, 100 - 64) is RejectReason.REPLAYED  # just outside
    assert g.check(1, 1, 0) is RejectReason.REPLAYED


def test_big_jump_clears_bitmap() -> None:
    g = ReplayGuard(window=8)
    for pn in range(1, 9):
        accept(g, 1, 1, pn)
    accept(g, 1, 1, 1000)
    assert g.check(1, 1, 1000) is RejectReason.REPLAYED
    assert g.check(1, 1, 999) is None
    assert g.check(1, 1, 993) is None
    assert g.check(1, 1, 992) is RejectReason.REPLAYED


def test_bits_survive_a_slide() -> None:
    g = ReplayGuard(window=8)
    accept(g, 1, 1, 10)
    accept(g, 1, 1, 8)
    accept(g, 1, 1, 13)
    assert g.check(1, 1, 8) is RejectReason.REPLAYED
    assert g.check(1, 1, 9) is None
    assert g.check(1, 1, 10) is RejectReason.REPLAYED
    assert g.check(1, 1, 5) is not None  # 13 - 5 = 8 >= window


def test_new_incarnation_resets_window() -> None:
    g = ReplayGuard()
    for pn in range(1000, 1010):
        accept(g, 1, 1, pn)
    # the agent restarted: numbering starts over and must be accepted
    assert accept(g, 1, 2, 0) is None
    assert accept(g, 1, 2, 1) is None
    assert accept(g, 1, 2, 1) is RejectReason.REPLAYED


def test_stale_incarnation() -> None:
    g = ReplayGuard()
    accept(g, 1, 5, 10)
    assert g.check(1, 4, 11) is RejectReason.STALE
    assert g.check(1, 0, 10**6) is RejectReason.STALE
    accept(g, 1, 6, 0)
    assert g.check(1, 5, 11) is RejectReason.STALE


def test_check_does_not_record() -> None:
    g = ReplayGuard()
    assert g.check(1, 1, 5) is None
    assert g.check(1, 1, 5) is None
    assert len(g) == 0


def test_record_ignores_what_check_rejects() -> None:
    g = ReplayGuard(window=8)
    g.record(1, 3, 50)
    g.record(1, 2, 10_000)  # stale incarnation: must not roll the node back
    assert g.check(1, 2, 10_001) is RejectReason.STALE
    assert g.check(1, 3, 51) is None
    g.record(1, 3, 1)  # far too old: ignored, no effect on the window
    assert g.check(1, 3, 49) is None
    g.record(1, 3, 50)  # duplicate: harmless
    assert g.check(1, 3, 50) is RejectReason.REPLAYED


def test_nodes_are_independent_and_forget() -> None:
    g = ReplayGuard()
    accept(g, 1, 1, 10)
    accept(g, 2, 9, 10)
    assert g.check(2, 1, 10) is RejectReason.STALE
    assert g.check(1, 1, 10) is RejectReason.REPLAYED
    assert g.check(3, 0, 0) is None
    assert len(g) == 2
    g.forget(1)
    g.forget(42)  # unknown node: no error
    assert len(g) == 1
    assert g.check(1, 1, 10) is None
    assert g.check(2, 9, 10) is RejectReason.REPLAYED


def test_memory_is_one_window_per_node() -> None:
    g = ReplayGuard()
    for pn in range(10_000):
        accept(g, pn % 3, 1, pn)
    assert len(g) == 3


def test_window_of_one_and_invalid_window() -> None:
    g = ReplayGuard(window=1)
    assert g.window == 1
    accept(g, 1, 1, 5)
    assert g.check(1, 1, 5) is RejectReason.REPLAYED
    assert g.check(1, 1, 4) is RejectReason.REPLAYED
    assert g.check(1, 1, 6) is None
    with pytest.raises(ValueError):
        ReplayGuard(window=0)


def test_matches_a_reference_set_model() -> None:
    """Against an unbounded 'seen set' model: same verdicts wherever the model is in range."""
    rng = random.Random(1234)
    g = ReplayGuard(window=16)
    seen: set[int] = set()
    highest = -1
    for _ in range(5000):
        pn = max(0, highest + rng.randint(-20, 5))
        got = accept(g, 1, 1, pn)
        if pn in seen or pn <= highest - 16:
            assert got is RejectReason.REPLAYED
        else:
            assert got is None
            seen.add(pn)
            highest = max(highest, pn)
