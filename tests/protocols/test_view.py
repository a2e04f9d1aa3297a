"""Tests for LDMP membership views: ranks follow precedence (join order), rank 1 is primary."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from appliance.protocols.ldmp.view import Member, View, read_members, write_members
from appliance.protocols.wire.fields import Reader, Writer

A = Member(1, 10)
B = Member(2, 20)
C = Member(3, 30)
D = Member(4, 40)

ABC = View(5, (A, B, C))

distinct_members = st.lists(
    st.builds(Member, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF_FFFF)),
    unique_by=lambda m: m.node,
    min_size=1,
    max_size=12,
)


# -- rank, primary, backups --------------------------------------------------------------


def test_primary_is_rank_one() -> None:
    assert ABC.primary == A
    assert ABC.rank(1) == 1


def test_backups_follow_the_primary_in_rank_order() -> None:
    assert ABC.backups == (B, C)
    assert ABC.rank(2) == 2
    assert ABC.rank(3) == 3


def test_rank_of_non_member_is_none() -> None:
    assert ABC.rank(99) is None
    assert View(1, ()).rank(1) is None


def test_rank_is_by_node_not_incarnation() -> None:
    assert ABC.rank(B.node) == 2
    assert ABC.member(B.node) == B
    assert ABC.member(99) is None


def test_single_member_view_has_no_backups() -> None:
    v = View(1, (A,))
    assert v.primary == A
    assert v.backups == ()
    assert v.nodes == (1,)


def test_nodes_in_rank_order() -> None:
    assert ABC.nodes == (1, 2, 3)
    assert View(2, (C, A, B)).nodes == (3, 1, 2)


@given(distinct_members)
def test_rank_matches_position(members: list[Member]) -> None:
    v = View(0, tuple(members))
    for i, m in enumerate(members):
        assert v.rank(m.node) == i + 1
        assert v.member(m.node) == m
        assert m.node in v
    assert v.primary == members[0]
    assert v.backups == tuple(members[1:])


# -- membership --------------------------------------------------------------------------


def test_contains_by_node_id() -> None:
    assert 1 in ABC
    assert 3 in ABC
    assert 4 not in ABC


def test_contains_member_object_is_false() -> None:
    """Membership is tested with node ids; a Member (or anything else) is never a node."""
    assert A not in ABC
    assert "1" not in ABC


def test_views_are_immutable_values() -> None:
    assert View(5, (A, B)) == View(5, (A, B))
    assert View(5, (A, B)) != View(6, (A, B))
    assert View(5, (A, B)) != View(5, (B, A))
    with pytest.raises(AttributeError):
        ABC.number = 6  # type: ignore[misc]
    assert hash(View(5, (A, B))) == hash(View(5, (A, B)))


# -- without -----------------------------------------------------------------------------


def test_without_a_backup_keeps_the_others_in_order() -> None:
    v = ABC.without({2}, 6)
    assert v == View(6, (A, C))
    assert v.rank(3) == 2


def test_without_the_primary_promotes_next_in_rank() -> None:
    v = ABC.without(frozenset({1}), 6)
    assert v.primary == B
    assert v.members == (B, C)


def test_without_several_and_unknown_nodes() -> None:
    v = View(1, (A, B, C, D)).without({2, 4, 99}, 2)
    assert v.members == (A, C)


def test_without_nothing_only_changes_the_number() -> None:
    v = ABC.without(set(), 9)
    assert v.members == ABC.members
    assert v.number == 9


def test_without_does_not_mutate_the_original() -> None:
    ABC.without({1, 2}, 6)
    assert ABC.members == (A, B, C)
    assert ABC.number == 5


# -- with_primary ------------------------------------------------------------------------


def test_with_primary_moves_node_to_rank_one_keeping_precedence() -> None:
    v = View(1, (A, B, C, D)).with_primary(3, 2)
    assert v == View(2, (C, A, B, D))
    assert v.primary == C
    assert v.backups == (A, B, D)


def test_with_primary_of_current_primary_keeps_order() -> None:
    assert ABC.with_primary(1, 6) == View(6, (A, B, C))


def test_with_primary_after_primary_removed() -> None:
    """The usual failover: drop the old primary, then the proposer leads."""
    v = View(1, (A, B, C, D)).without({1}, 2).with_primary(3, 2)
    assert v.members == (C, B, D)


@given(distinct_members, st.data())
def test_with_primary_property(members: list[Member], data: st.DataObject) -> None:
    v = View(0, tuple(members))
    chosen = data.draw(st.sampled_from(members))
    w = v.with_primary(chosen.node, 1)
    assert w.primary == chosen
    assert w.backups == tuple(m for m in members if m != chosen)
    assert sorted(w.members) == sorted(members)


# -- plus --------------------------------------------------------------------------------


def test_plus_appends_with_lowest_precedence() -> None:
    v = ABC.plus(D, 6)
    assert v == View(6, (A, B, C, D))
    assert v.rank(4) == 4
    assert v.primary == A


def test_ranks_follow_join_order() -> None:
    v = View(1, (C,))
    for number, m in enumerate((A, D, B), start=2):
        v = v.plus(m, number)
    assert v.members == (C, A, D, B)
    assert [v.rank(n) for n in (3, 1, 4, 2)] == [1, 2, 3, 4]
    assert v.number == 4


def test_plus_of_a_restarted_node_replaces_its_old_incarnation_and_rejoins_last() -> None:
    a2 = Member(1, 11)
    v = View(1, (B, A, C)).plus(a2, 2)
    assert v.members == (B, C, a2)
    assert v.member(1) == a2
    assert len(v.members) == 3


def test_plus_into_empty_view_makes_primary() -> None:
    v = View(0, ()).plus(A, 1)
    assert v.primary == A
    assert v.backups == ()


def test_plus_then_without_round_trip() -> None:
    assert ABC.plus(D, 6).without({4}, 7).members == ABC.members


@given(distinct_members)
def test_plus_builds_views_in_join_order(members: list[Member]) -> None:
    v = View(0, ())
    for i, m in enumerate(members, start=1):
        v = v.plus(m, i)
        assert v.rank(m.node) == i
    assert v.members == tuple(members)


# -- describe ----------------------------------------------------------------------------


def test_describe() -> None:
    assert ABC.describe() == "view 5 [1#10, 2#20, 3#30]"


def test_describe_empty_view() -> None:
    assert View(0, ()).describe() == "view 0 []"


def test_describe_follows_rank_order() -> None:
    assert ABC.with_primary(3, 6).describe() == "view 6 [3#30, 1#10, 2#20]"


# -- member codec ------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(distinct_members)
def test_members_codec_round_trip(members: list[Member]) -> None:
    w = Writer()
    write_members(w, tuple(members))
    r = Reader(w.getvalue())
    assert read_members(r) == tuple(members)
    r.finish()


def test_members_sort_by_node_then_incarnation() -> None:
    assert sorted([Member(2, 1), Member(1, 5), Member(1, 3)]) == [
        Member(1, 3),
        Member(1, 5),
        Member(2, 1),
    ]
