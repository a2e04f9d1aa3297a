"""Tests for the LLMP sending end: sent list, window/credit, acks, retransmission, takeover."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from appliance.protocols.llmp.rto import RttEstimator
from appliance.protocols.llmp.sender import OutboundConnection, Outgoing

RTO = 0.05  # RttEstimator's initial RTO: the timeout before any sample


def make(window: int = 8) -> OutboundConnection:
    return OutboundConnection(dst_group=20, conn_id=3, window=window, rtt=RttEstimator())


def seqs(ms: list[Outgoing]) -> list[int]:
    return [m.seq for m in ms]


def transmit(ob: OutboundConnection, now: float) -> list[int]:
    """What a transmitting primary does: take what is due and mark it sent."""
    out = ob.due(now)
    for m in out:
        ob.mark_sent(m, now)
    return seqs(out)


def fill(ob: OutboundConnection, n: int) -> list[int]:
    return [ob.send(b"m%d" % i) for i in range(1, n + 1)]


# -- sequence numbers --------------------------------------------------------------------


def test_initial_state() -> None:
    ob = make()
    assert ob.next_seq == 1
    assert ob.acked == 0
    assert ob.credit == ob.window == 8
    assert ob.unacked == 0
    assert ob.backlog == 0
    assert ob.retransmissions == 0
    assert ob.pending() == []
    assert ob.due(0.0) == []
    assert ob.next_deadline() is None


def test_send_assigns_consecutive_seqs() -> None:
    ob = make()
    assert fill(ob, 3) == [1, 2, 3]
    assert ob.next_seq == 4
    assert ob.unacked == 3
    assert ob.pending() == [(1, b"m1"), (2, b"m2"), (3, b"m3")]


# -- window, credit, backpressure --------------------------------------------------------


def test_due_returns_new_messages_in_order_within_window() -> None:
    ob = make(window=3)
    fill(ob, 5)
    assert ob.limit == 3
    assert seqs(ob.due(0.0)) == [1, 2, 3]
    assert ob.backlog == 2


def test_due_marks_nothing_sent_by_itself() -> None:
    ob = make()
    fill(ob, 2)
    assert seqs(ob.due(0.0)) == [1, 2]
    assert seqs(ob.due(0.0)) == [1, 2]  # still due: the caller did not mark_sent
    assert all(m.first_sent is None for m in ob.due(0.0))


def test_sent_messages_are_not_due_again_before_rto() -> None:
    ob = make()
    fill(ob, 2)
    assert transmit(ob, 0.0) == [1, 2]
    assert ob.due(0.0) == []
    assert ob.due(RTO / 2) == []


def test_credit_limits_the_window() -> None:
    ob = make(window=8)
    fill(ob, 6)
    assert ob.on_ack(0, 0.0, credit=2) is False  # nothing new acked, credit still applies
    assert ob.credit == 2
    assert ob.limit == 2
    assert transmit(ob, 0.0) == [1, 2]
    assert ob.backlog == 4


def test_credit_above_window_is_clamped() -> None:
    ob = make(window=4)
    fill(ob, 10)
    ob.on_ack(0, 0.0, credit=100)
    assert ob.credit == 4
    assert ob.limit == 4
    assert transmit(ob, 0.0) == [1, 2, 3, 4]


def test_zero_credit_still_allows_one_probe() -> None:
    ob = make(window=8)
    fill(ob, 3)
    ob.on_ack(0, 0.0, credit=0)
    assert ob.limit == 1
    assert transmit(ob, 0.0) == [1]


def test_ack_without_credit_keeps_previous_credit() -> None:
    ob = make(window=8)
    fill(ob, 5)
    ob.on_ack(0, 0.0, credit=3)
    transmit(ob, 0.0)
    ob.on_ack(1, 0.001)
    assert ob.credit == 3
    assert ob.limit == 4


def test_limit_moves_with_acks() -> None:
    ob = make(window=2)
    fill(ob, 5)
    assert transmit(ob, 0.0) == [1, 2]
    assert ob.due(0.001) == []
    assert ob.backlog == 3
    assert ob.on_ack(1, 0.002) is True
    assert transmit(ob, 0.002) == [3]
    assert ob.on_ack(3, 0.003) is True
    assert transmit(ob, 0.003) == [4, 5]
    assert ob.backlog == 0


def test_backpressure_never_drops_messages() -> None:
    ob = make(window=3)
    n = 20
    fill(ob, n)
    sent: list[int] = []
    now = 0.0
    while ob.acked < n:
        now += 0.001
        batch = transmit(ob, now)
        assert batch, "a window with unacked messages must make progress after an ack"
        assert max(batch) <= ob.acked + ob.window
        sent += batch
        ob.on_ack(max(batch), now + 0.0005)
    assert sent == list(range(1, n + 1))
    assert ob.unacked == 0
    assert ob.backlog == 0
    assert ob.retransmissions == 0


def test_messages_beyond_limit_have_no_deadline() -> None:
    ob = make(window=1)
    fill(ob, 3)
    transmit(ob, 0.0)
    # Message 2 and 3 are due but outside the window: no "send now" deadline for them.
    assert ob.next_deadline() == pytest.approx(RTO)


# -- acknowledgements --------------------------------------------------------------------


def test_cumulative_ack_removes_acked_entries() -> None:
    ob = make()
    fill(ob, 4)
    transmit(ob, 0.0)
    assert ob.on_ack(2, 0.01) is True
    assert ob.acked == 2
    assert ob.unacked == 2
    assert ob.pending() == [(3, b"m3"), (4, b"m4")]


def test_old_or_repeated_ack_is_not_new() -> None:
    ob = make()
    fill(ob, 4)
    transmit(ob, 0.0)
    ob.on_ack(3, 0.01)
    assert ob.on_ack(3, 0.02) is False
    assert ob.on_ack(1, 0.02) is False
    assert ob.acked == 3
    assert ob.unacked == 1


def test_ack_yields_rtt_sample() -> None:
    ob = make()
    fill(ob, 1)
    transmit(ob, 1.0)
    ob.on_ack(1, 1.004)
    assert ob.rtt.srtt == pytest.approx(0.004)


def test_karn_no_sample_for_retransmitted_message() -> None:
    ob = make()
    fill(ob, 1)
    transmit(ob, 0.0)
    assert transmit(ob, RTO) == [1]  # timed out, retransmitted
    ob.on_ack(1, RTO + 0.001)
    assert ob.rtt.srtt is None  # ambiguous: which transmission does the ack answer?
    assert ob.unacked == 0


def test_karn_sample_from_never_retransmitted_message_in_same_ack() -> None:
    ob = make()
    fill(ob, 1)
    transmit(ob, 0.0)
    ob.on_nack([(1, 1)])
    transmit(ob, 0.010)  # message 1 retransmitted
    fill(ob, 1)
    transmit(ob, 0.020)  # message 2 sent once
    ob.on_ack(2, 0.023)
    assert ob.rtt.srtt == pytest.approx(0.003)


def test_no_sample_for_messages_never_sent() -> None:
    ob = make()
    ob.log(1, b"x")  # a backup: logged, never transmitted
    assert ob.on_ack(1, 5.0) is True
    assert ob.rtt.srtt is None
    assert ob.unacked == 0


def test_sample_resets_backoff() -> None:
    ob = make()
    fill(ob, 2)
    transmit(ob, 0.0)
    transmit(ob, RTO)  # both time out together
    assert ob.rtt.backoff == 2
    fill(ob, 1)
    transmit(ob, 0.2)
    ob.on_ack(3, 0.201)
    assert ob.rtt.backoff == 1


def test_acks_beyond_next_seq_are_accepted() -> None:
    """A backup may hear the destination ack messages it has not generated yet."""
    ob = make()
    assert ob.on_ack(5, 0.0) is True
    assert ob.acked == 5
    assert ob.next_seq == 1
    assert ob.backlog == 0
    assert ob.due(0.0) == []


def test_ack_beyond_next_seq_removes_logged_copies() -> None:
    ob = make()
    ob.log(1, b"a")
    ob.log(2, b"b")
    ob.log(3, b"c")
    ob.on_ack(2, 0.0)
    assert ob.pending() == [(3, b"c")]
    assert ob.next_seq == 1


# -- retransmission ----------------------------------------------------------------------


def test_retransmission_after_rto_with_exponential_backoff() -> None:
    ob = make()
    fill(ob, 1)
    transmit(ob, 0.0)
    first = ob.next_deadline()
    assert first == pytest.approx(RTO)
    assert first is not None
    assert ob.due(first - 1e-6) == []
    assert transmit(ob, first) == [1]
    assert ob.rtt.backoff == 2
    assert ob.retransmissions == 1

    second = ob.next_deadline()
    assert second is not None
    assert second - first == pytest.approx(2 * RTO)
    assert ob.due(second - 1e-6) == []
    assert transmit(ob, second) == [1]
    assert ob.rtt.backoff == 4
    assert ob.retransmissions == 2

    third = ob.next_deadline()
    assert third is not None
    assert third - second == pytest.approx(4 * RTO)


def test_retransmitted_message_is_flagged() -> None:
    ob = make()
    fill(ob, 1)
    transmit(ob, 0.0)
    (m,) = ob.due(RTO)
    assert (m.first_sent, m.last_sent, m.retransmitted) == (0.0, 0.0, False)
    ob.mark_sent(m, RTO)
    assert (m.first_sent, m.last_sent, m.retransmitted, m.due) == (0.0, RTO, True, False)


def test_several_expiries_in_one_call_back_off_once() -> None:
    ob = make()
    fill(ob, 3)
    transmit(ob, 0.0)
    assert transmit(ob, RTO) == [1, 2, 3]
    assert ob.rtt.backoff == 2
    assert ob.retransmissions == 3


def test_new_messages_alone_do_not_back_off() -> None:
    ob = make()
    fill(ob, 3)
    transmit(ob, 0.0)
    fill(ob, 1)
    assert transmit(ob, 0.001) == [4]
    assert ob.rtt.backoff == 1


def test_only_expired_messages_are_retransmitted() -> None:
    ob = make()
    fill(ob, 1)
    transmit(ob, 0.0)
    fill(ob, 1)
    transmit(ob, 0.03)
    assert transmit(ob, RTO) == [1]
    # 2 now expires first, with the backed-off RTO: 0.03 + 2 * RTO < RTO + 2 * RTO.
    assert ob.next_deadline() == pytest.approx(0.03 + 2 * RTO)


def test_next_deadline_is_zero_when_something_is_due() -> None:
    ob = make()
    fill(ob, 1)
    assert ob.next_deadline() == 0.0
    transmit(ob, 1.0)
    assert ob.next_deadline() == pytest.approx(1.0 + RTO)


def test_next_deadline_is_earliest_expiry() -> None:
    ob = make()
    fill(ob, 1)
    transmit(ob, 0.0)
    fill(ob, 1)
    transmit(ob, 0.01)
    assert ob.next_deadline() == pytest.approx(RTO)


# -- NACK (fast retransmit) --------------------------------------------------------------


def test_nack_marks_sent_messages_in_range_due() -> None:
    ob = make()
    fill(ob, 5)
    transmit(ob, 0.0)
    ob.on_nack([(2, 3)])
    assert seqs(ob.due(0.001)) == [2, 3]
    assert ob.rtt.backoff == 1  # fast retransmit is not a timeout
    assert ob.next_deadline() == 0.0
    transmit(ob, 0.001)
    assert ob.retransmissions == 2


def test_nack_several_ranges() -> None:
    ob = make()
    fill(ob, 6)
    transmit(ob, 0.0)
    ob.on_nack([(1, 1), (4, 5)])
    assert seqs(ob.due(0.001)) == [1, 4, 5]


def test_nack_ignores_acked_and_unknown_seqs() -> None:
    ob = make()
    fill(ob, 4)
    transmit(ob, 0.0)
    ob.on_ack(2, 0.001)
    ob.on_nack([(0, 100)])
    assert seqs(ob.due(0.002)) == [3, 4]
    assert ob.unacked == 2


def test_nack_does_not_touch_unsent_messages() -> None:
    ob = make(window=2)
    fill(ob, 4)
    transmit(ob, 0.0)
    ob.on_nack([(1, 4)])
    ob.on_ack(2, 0.001)
    # 3 and 4 go out as first transmissions, not retransmissions.
    assert transmit(ob, 0.002) == [3, 4]
    assert ob.retransmissions == 0
    assert all(not m.retransmitted for m in ob.due(1.0))


def test_nack_on_a_backup_sends_nothing() -> None:
    ob = make()
    ob.log(1, b"a")
    ob.log(2, b"b")
    ob.on_nack([(1, 2)])
    assert ob.due(0.0) == []
    assert ob.next_deadline() is None


# -- backups: log, send after log, take_over ---------------------------------------------


def test_log_stores_without_changing_next_seq() -> None:
    ob = make()
    ob.log(1, b"a")
    ob.log(2, b"b")
    assert ob.next_seq == 1
    assert ob.unacked == 2
    assert ob.pending() == [(1, b"a"), (2, b"b")]
    assert ob.due(0.0) == []
    assert ob.due(100.0) == []  # logged copies never time out: they were never sent
    assert ob.next_deadline() is None


def test_log_keeps_first_copy_and_ignores_acked() -> None:
    ob = make()
    ob.log(1, b"a")
    ob.log(1, b"other")
    assert ob.pending() == [(1, b"a")]
    ob.on_ack(1, 0.0)
    ob.log(1, b"a")
    assert ob.pending() == []


def test_log_out_of_order_keeps_seq_order() -> None:
    ob = make()
    ob.log(3, b"c")
    ob.log(1, b"a")
    ob.log(2, b"b")
    assert ob.pending() == [(1, b"a"), (2, b"b"), (3, b"c")]


def test_send_after_log_of_same_seq_keeps_one_copy() -> None:
    ob = make()
    ob.log(1, b"a")
    ob.log(2, b"b")
    assert ob.send(b"a") == 1
    assert ob.send(b"b") == 2
    assert ob.unacked == 2
    assert ob.pending() == [(1, b"a"), (2, b"b")]
    assert ob.send(b"c") == 3
    assert ob.pending() == [(1, b"a"), (2, b"b"), (3, b"c")]


def test_send_of_already_acked_seq_keeps_nothing() -> None:
    ob = make()
    ob.on_ack(2, 0.0)
    assert ob.send(b"a") == 1
    assert ob.send(b"b") == 2
    assert ob.unacked == 0
    assert ob.send(b"c") == 3
    assert ob.pending() == [(3, b"c")]


def test_resend_unacked_puts_sent_messages_back_on_the_wire_at_once() -> None:
    ob = make()
    fill(ob, 3)
    transmit(ob, 0.0)
    ob.on_ack(1, 0.001)
    transmit(ob, RTO)  # 2 and 3 time out once: the timer backs off
    assert ob.rtt.backoff == 2
    ob.send(b"held back", after=9)
    ob.released = 8  # output commit: message 4 (of input 9) may not leave yet
    ob.resend_unacked()
    assert ob.next_deadline() == 0.0
    assert transmit(ob, RTO + 0.001) == [2, 3]  # long before the backed-off timeout
    assert ob.rtt.backoff == 2  # not a timeout, so no further backoff
    assert ob.retransmissions == 4
    assert ob.due(RTO + 0.002) == []


def test_take_over_marks_everything_due_and_continues_numbering() -> None:
    ob = make()
    ob.log(1, b"a")
    ob.log(2, b"b")
    ob.log(3, b"c")
    ob.take_over()
    assert ob.next_seq == 4
    assert ob.next_deadline() == 0.0
    assert transmit(ob, 0.0) == [1, 2, 3]
    assert ob.send(b"d") == 4


def test_take_over_resends_messages_already_sent() -> None:
    ob = make()
    fill(ob, 2)
    transmit(ob, 0.0)
    ob.take_over()
    assert seqs(ob.due(0.001)) == [1, 2]
    assert ob.rtt.backoff == 1
    assert ob.next_seq == 3


def test_take_over_keeps_own_next_seq_when_ahead() -> None:
    ob = make()
    fill(ob, 3)
    ob.log(2, b"m2")
    ob.take_over()
    assert ob.next_seq == 4


def test_take_over_moves_past_acked() -> None:
    ob = make()
    ob.on_ack(7, 0.0)
    ob.take_over()
    assert ob.next_seq == 8
    assert ob.send(b"x") == 8
    assert ob.pending() == [(8, b"x")]


def test_take_over_respects_window() -> None:
    ob = make(window=2)
    for s in range(1, 5):
        ob.log(s, b"%d" % s)
    ob.take_over()
    assert transmit(ob, 0.0) == [1, 2]
    assert ob.backlog == 2


def test_send_below_a_logged_seq_is_still_sent_after_take_over() -> None:
    ob = make(window=1)
    ob.log(2, b"b")  # overheard 2; the datagram with 1 was lost
    assert ob.send(b"a") == 1  # the backup's own execution produces 1
    ob.take_over()
    assert ob.next_deadline() == 0.0
    assert transmit(ob, 0.0) == [1]


def test_due_is_in_seq_order_after_send_below_a_logged_seq() -> None:
    ob = make(window=8)
    ob.log(2, b"b")
    ob.send(b"a")
    assert ob.pending() == [(1, b"a"), (2, b"b")]
    ob.take_over()
    assert seqs(ob.due(0.0)) == [1, 2]


# -- restore -----------------------------------------------------------------------------


def test_restore_installs_snapshot_state() -> None:
    ob = make()
    fill(ob, 2)
    ob.restore(next_seq=6, acked=3, pending=[(5, b"e"), (4, b"d")])
    assert ob.next_seq == 6
    assert ob.acked == 3
    assert ob.pending() == [(4, b"d"), (5, b"e")]
    assert ob.due(0.0) == []  # a restored backup does not transmit
    assert ob.next_deadline() is None
    assert ob.send(b"f") == 6
    assert ob.pending() == [(4, b"d"), (5, b"e"), (6, b"f")]


def test_restore_then_take_over_resends_pending() -> None:
    ob = make()
    ob.restore(next_seq=6, acked=3, pending=[(4, b"d"), (5, b"e")])
    ob.take_over()
    assert ob.next_seq == 6
    assert transmit(ob, 0.0) == [4, 5]
    assert ob.on_ack(5, 0.001) is True
    assert ob.unacked == 0


def test_restore_round_trips_pending() -> None:
    src = make()
    fill(src, 5)
    transmit(src, 0.0)
    src.on_ack(2, 0.001)
    dst = make()
    dst.restore(src.next_seq, src.acked, src.pending())
    assert (dst.next_seq, dst.acked, dst.pending()) == (src.next_seq, src.acked, src.pending())


# -- property: a lossy link still delivers everything, in order, within the window -------


@settings(max_examples=100, deadline=None)
@given(
    window=st.integers(1, 6),
    n=st.integers(1, 25),
    losses=st.lists(st.booleans(), min_size=1, max_size=60),
    use_nacks=st.booleans(),
)
def test_lossy_link_delivers_everything(
    window: int, n: int, losses: list[bool], use_nacks: bool
) -> None:
    ob = make(window=window)
    fill(ob, n)
    received: set[int] = set()
    delivered = 0
    now = 0.0
    sends = 0
    for _ in range(10_000):
        if ob.acked >= n:
            break
        deadline = ob.next_deadline()
        assert deadline is not None, "unacked messages must always have a deadline"
        now = max(now, deadline)
        batch = ob.due(now)
        assert batch, "the deadline said something is due"
        assert [m.seq for m in batch] == sorted(m.seq for m in batch)
        assert all(ob.acked < m.seq <= ob.acked + window for m in batch)
        for m in batch:
            ob.mark_sent(m, now)
            lost = losses[sends % len(losses)] and sends < 3 * len(losses)
            sends += 1
            if not lost:
                received.add(m.seq)
        while delivered + 1 in received:
            delivered += 1
        ob.on_ack(delivered, now + 0.0001)
        if use_nacks and received and max(received) > delivered:
            ob.on_nack([(delivered + 1, max(received) - 1)])
        now += 0.0001
    assert ob.acked == n
    assert delivered == n
    assert ob.unacked == 0
    assert ob.backlog == 0
