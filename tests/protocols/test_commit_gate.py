"""The receiving end of output commit: replies held until their input is committed."""

from __future__ import annotations

from appliance.protocols.llmp.commit_gate import CommitGate

REIGN = (5, 1, 1)  # view 5, primary node 1 incarnation 1


def test_a_reply_waits_for_every_required_backup_of_the_same_reign() -> None:
    g = CommitGate(window=16)
    g.offer(1, b"+OK", after=10, requires=(2, 3), reign=REIGN)
    assert g.release() == []
    g.backup_ack(2, REIGN, 10)
    assert g.release() == []
    g.backup_ack(3, REIGN, 9)
    assert g.release() == []
    g.backup_ack(3, REIGN, 12)
    assert g.release() == [(1, b"+OK")]
    assert g.fast_releases == 1


def test_the_primarys_commit_announcement_releases_too() -> None:
    g = CommitGate(window=16)
    g.offer(1, b"a", 3, (2,), REIGN)
    g.commit_announced(REIGN, 2)
    assert g.release() == []
    g.commit_announced(REIGN, 3)
    assert g.release() == [(1, b"a")]
    assert g.fast_releases == 0


def test_same_view_number_of_another_primary_is_no_evidence() -> None:
    g = CommitGate(window=16)
    g.offer(1, b"a", 3, (2,), REIGN)
    other = (5, 3, 1)  # view 5 too, but on the other side of a partition
    g.commit_announced(other, 100)
    g.backup_ack(2, other, 100)
    assert g.release() == []


def test_a_newer_reign_replaces_a_held_reply_but_never_a_released_one() -> None:
    g = CommitGate(window=16)
    g.offer(1, b"old", 3, (2,), REIGN)
    g.offer(2, b"old2", 4, (2,), REIGN)
    g.backup_ack(2, REIGN, 3)
    assert g.release() == [(1, b"old")]
    newer = (6, 2, 1)
    g.offer(1, b"new", 3, (), newer)  # released: ignored
    g.offer(2, b"new2", 5, (), newer)  # held: replaced (its input may have died)
    assert g.replaced == 1
    assert g.release() == [(2, b"new2")]  # no backups required in the new view


def test_an_older_reign_does_not_replace() -> None:
    g = CommitGate(window=16)
    g.offer(1, b"new", 3, (2,), (6, 2, 1))
    g.offer(1, b"stale", 3, (), REIGN)
    assert g.held[1].payload == b"new"


def test_in_order_release_and_gaps() -> None:
    g = CommitGate(window=4)
    g.offer(2, b"b", 1, (), REIGN)
    g.offer(4, b"d", 1, (), REIGN)
    g.offer(9, b"far", 1, (), REIGN)  # beyond the window: dropped
    assert g.release() == []  # 1 is missing
    assert g.gaps() == [(1, 1), (3, 3)]
    g.offer(1, b"a", 1, (), REIGN)
    assert g.release() == [(1, b"a"), (2, b"b")]
    assert g.gaps() == [(3, 3)]
