"""Tests for the LLMP receiving end: in-order delivery, duplicates, window, gaps, credit."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from appliance.protocols.llmp.receiver import InboundConnection


def make(window: int = 8) -> InboundConnection:
    return InboundConnection(src_group=10, conn_id=3, window=window)


def p(seq: int) -> bytes:
    return b"m%d" % seq


def offer_all(ib: InboundConnection, seqs: list[int]) -> list[bool]:
    return [ib.offer(s, p(s)) for s in seqs]


# -- in-order delivery -------------------------------------------------------------------


def test_initial_state() -> None:
    ib = make()
    assert ib.delivered == 0
    assert ib.stable == 0
    assert ib.buffered == 0
    assert ib.duplicates == 0
    assert ib.overflows == 0
    assert ib.pop_ready() == []
    assert ib.peek_next() is None
    assert ib.gaps() == []
    assert ib.credit == 8


def test_in_order_pop() -> None:
    ib = make()
    assert offer_all(ib, [1, 2, 3]) == [True, True, True]
    assert ib.buffered == 3
    assert ib.pop_ready() == [(1, b"m1"), (2, b"m2"), (3, b"m3")]
    assert ib.delivered == 3
    assert ib.buffered == 0
    assert ib.pop_ready() == []


def test_pop_one_at_a_time() -> None:
    ib = make()
    ib.offer(1, p(1))
    assert ib.pop_ready() == [(1, b"m1")]
    ib.offer(2, p(2))
    assert ib.pop_ready() == [(2, b"m2")]
    assert ib.delivered == 2


def test_reordering_is_held_until_the_gap_fills() -> None:
    ib = make()
    offer_all(ib, [3, 2])
    assert ib.pop_ready() == []
    assert ib.delivered == 0
    assert ib.peek_next() is None
    ib.offer(1, p(1))
    assert ib.peek_next() == (1, b"m1")
    assert ib.pop_ready() == [(1, b"m1"), (2, b"m2"), (3, b"m3")]


def test_pop_stops_at_the_first_gap() -> None:
    ib = make()
    offer_all(ib, [1, 2, 4, 5])
    assert ib.pop_ready() == [(1, b"m1"), (2, b"m2")]
    assert ib.delivered == 2
    assert ib.buffered == 2
    ib.offer(3, p(3))
    assert ib.pop_ready() == [(3, b"m3"), (4, b"m4"), (5, b"m5")]


def test_peek_and_payload_do_not_consume() -> None:
    ib = make()
    offer_all(ib, [1, 3])
    assert ib.peek_next() == (1, b"m1")
    assert ib.peek_next() == (1, b"m1")
    assert ib.payload(3) == b"m3"
    assert ib.payload(2) is None
    assert ib.buffered == 2
    assert ib.delivered == 0


# -- duplicates --------------------------------------------------------------------------


def test_duplicate_of_buffered_message_is_counted_and_keeps_first_copy() -> None:
    ib = make()
    assert ib.offer(2, b"first") is True
    assert ib.offer(2, b"second") is False
    assert ib.duplicates == 1
    assert ib.payload(2) == b"first"
    assert ib.buffered == 1


def test_duplicate_of_delivered_message_is_counted() -> None:
    ib = make()
    offer_all(ib, [1, 2])
    ib.pop_ready()
    assert offer_all(ib, [1, 2, 1]) == [False, False, False]
    assert ib.duplicates == 3
    assert ib.buffered == 0
    assert ib.pop_ready() == []


def test_seq_zero_is_a_duplicate() -> None:
    ib = make()
    assert ib.offer(0, b"x") is False
    assert ib.duplicates == 1


# -- window ------------------------------------------------------------------------------


def test_window_overflow_is_rejected_and_counted() -> None:
    ib = make(window=4)
    assert ib.offer(4, p(4)) is True  # delivered + window is still inside
    assert ib.offer(5, p(5)) is False
    assert ib.offer(100, p(100)) is False
    assert ib.overflows == 2
    assert ib.duplicates == 0
    assert ib.payload(5) is None
    assert ib.buffered == 1


def test_window_slides_with_delivery() -> None:
    ib = make(window=2)
    assert ib.offer(3, p(3)) is False
    offer_all(ib, [1, 2])
    ib.pop_ready()
    assert ib.offer(3, p(3)) is True
    assert ib.offer(4, p(4)) is True
    assert ib.offer(5, p(5)) is False
    assert ib.overflows == 2


def test_overflow_then_resend_is_accepted() -> None:
    ib = make(window=1)
    assert ib.offer(2, p(2)) is False
    ib.offer(1, p(1))
    ib.pop_ready()
    assert ib.offer(2, p(2)) is True
    assert ib.pop_ready() == [(2, b"m2")]


# -- gaps --------------------------------------------------------------------------------


def test_no_gaps_when_contiguous_or_empty() -> None:
    ib = make()
    assert ib.gaps() == []
    offer_all(ib, [1, 2])
    assert ib.gaps() == []


def test_gaps_ranges_are_inclusive_and_below_highest() -> None:
    ib = make(window=32)
    offer_all(ib, [3, 4, 7, 10])
    assert ib.gaps() == [(1, 2), (5, 6), (8, 9)]


def test_single_seq_gap() -> None:
    ib = make()
    offer_all(ib, [1, 3])
    ib.pop_ready()
    assert ib.gaps() == [(2, 2)]


def test_gaps_start_after_delivered() -> None:
    ib = make(window=32)
    offer_all(ib, [1, 2, 3, 6])
    ib.pop_ready()
    assert ib.gaps() == [(4, 5)]


def test_gaps_are_capped() -> None:
    ib = make(window=64)
    offer_all(ib, list(range(2, 41, 2)))  # gaps at every odd number 1..39
    assert len(ib.gaps()) == 16
    assert ib.gaps(max_ranges=3) == [(1, 1), (3, 3), (5, 5)]


def test_gaps_shrink_as_holes_fill() -> None:
    ib = make()
    offer_all(ib, [2, 4])
    assert ib.gaps() == [(1, 1), (3, 3)]
    ib.offer(1, p(1))
    ib.pop_ready()
    assert ib.gaps() == [(3, 3)]
    ib.offer(3, p(3))
    assert ib.gaps() == []


# -- mark_delivered (backups deliver in the primary's order) -----------------------------


def test_mark_delivered_discards_buffered_up_to_seq() -> None:
    ib = make()
    offer_all(ib, [1, 2, 4, 5])
    ib.mark_delivered(4)
    assert ib.delivered == 4
    assert ib.buffered == 1
    assert ib.payload(5) == b"m5"
    assert ib.payload(2) is None
    assert ib.pop_ready() == [(5, b"m5")]


def test_mark_delivered_across_a_gap_clears_it() -> None:
    ib = make()
    offer_all(ib, [1, 3])
    ib.mark_delivered(2)  # 2 came from a repair, not from this buffer
    assert ib.gaps() == []
    assert ib.pop_ready() == [(3, b"m3")]


def test_mark_delivered_backwards_is_ignored() -> None:
    ib = make()
    offer_all(ib, [1, 2, 3])
    ib.mark_delivered(2)
    ib.mark_delivered(1)
    assert ib.delivered == 2
    assert ib.payload(3) == b"m3"


def test_offer_after_mark_delivered_is_duplicate() -> None:
    ib = make()
    ib.mark_delivered(3)
    assert ib.offer(2, p(2)) is False
    assert ib.duplicates == 1
    assert ib.offer(4, p(4)) is True


def test_mark_delivered_moves_the_window() -> None:
    ib = make(window=2)
    ib.mark_delivered(10)
    assert ib.offer(12, p(12)) is True
    assert ib.offer(13, p(13)) is False


# -- credit ------------------------------------------------------------------------------


def test_credit_shrinks_with_buffered_messages() -> None:
    ib = make(window=8)
    offer_all(ib, [2, 3, 4])
    assert ib.credit == 5


def test_credit_is_relative_to_the_stable_point() -> None:
    ib = make(window=8)
    offer_all(ib, [1, 2, 3])
    ib.pop_ready()
    assert ib.credit == 11  # delivered, but not yet stable: relative to the old ack (0)
    ib.stable = 3
    assert ib.credit == 8


def test_credit_never_exceeds_what_offer_accepts() -> None:
    """The sender's limit (stable + credit) never passes delivered + window."""
    ib = make(window=4)
    offer_all(ib, [1, 2, 4])
    ib.pop_ready()
    ib.stable = 1
    assert ib.stable + ib.credit <= ib.delivered + ib.window
    limit = ib.stable + ib.credit
    for s in range(ib.delivered + 1, limit + 1):
        if ib.payload(s) is None:
            assert ib.offer(s, p(s)) is True


def test_credit_is_never_negative() -> None:
    ib = make(window=2)
    offer_all(ib, [1, 2])
    ib.stable = 5
    assert ib.credit == 0


# -- properties --------------------------------------------------------------------------


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn) -> tuple[int, list[int]]:
    n = draw(st.integers(0, 40))
    base = list(range(1, n + 1))
    extra = draw(st.lists(st.sampled_from(base), max_size=2 * n)) if n else []
    return n, draw(st.permutations(base + extra))


@settings(max_examples=200, deadline=None)
@given(shuffled_with_duplicates(), st.booleans())
def test_any_order_with_duplicates_delivers_each_once_in_order(
    case: tuple[int, list[int]], pop_each_time: bool
) -> None:
    n, arrivals = case
    ib = make(window=max(n, 1))
    out: list[tuple[int, bytes]] = []
    for s in arrivals:
        ib.offer(s, p(s))
        if pop_each_time:
            out += ib.pop_ready()
    out += ib.pop_ready()
    assert out == [(s, p(s)) for s in range(1, n + 1)]
    assert ib.delivered == n
    assert ib.buffered == 0
    assert ib.duplicates == len(arrivals) - n
    assert ib.overflows == 0
    assert ib.gaps() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 30), max_size=60), st.integers(1, 8))
def test_gaps_describe_exactly_the_missing_seqs(arrivals: list[int], window: int) -> None:
    ib = make(window=window)
    for s in arrivals:
        ib.offer(s, p(s))
    ib.pop_ready()
    missing = {s for lo, hi in ib.gaps(max_ranges=1000) for s in range(lo, hi + 1)}
    if ib.buffered:
        top = max(
            s
            for s in range(ib.delivered + 1, ib.delivered + window + 1)
            if ib.payload(s) is not None
        )
        expected = {s for s in range(ib.delivered + 1, top) if ib.payload(s) is None}
    else:
        expected = set()
    assert missing == expected
    assert all(s > ib.delivered for s in missing)
