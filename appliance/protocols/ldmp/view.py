"""Membership views.

A view is decided by its primary (LDMP is leader-determined, not voted round by round), so a
primary plus one backup is a working group. Ranks follow precedence: the order in which
members joined. Rank 1 is the primary. Each member is named with its incarnation so that a node
which restarted (and lost its state) is never mistaken for the member it used to be.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.fields import Reader, Writer

MAX_MEMBERS = 64


@dataclass(frozen=True, slots=True, order=True)
class Member:
    """One replica: a node id and the incarnation of its agent that joined."""

    node: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class View:
    """Primary view number plus the members in rank order (index 0 is the primary)."""

    number: int
    members: tuple[Member, ...]

    @property
    def primary(self) -> Member:
        return self.members[0]

    @property
    def nodes(self) -> tuple[int, ...]:
        return tuple(m.node for m in self.members)

    @property
    def backups(self) -> tuple[Member, ...]:
        return self.members[1:]

    def rank(self, node: int) -> int | None:
        """Rank of ``node`` (1 = primary), or None when it is not a member."""
        for i, m in enumerate(self.members):
            if m.node == node:
                return i + 1
        return None

    def member(self, node: int) -> Member | None:
        for m in self.members:
            if m.node == node:
                return m
        return None

    def __contains__(self, node: object) -> bool:
        return any(m.node == node for m in self.members)

    def without(self, nodes: set[int] | frozenset[int], number: int) -> View:
        return View(number, tuple(m for m in self.members if m.node not in nodes))

    def with_primary(self, node: int, number: int) -> View:
        """The view in which ``node`` is primary, the others keeping their precedence."""
        first = [m for m in self.members if m.node == node]
        rest = [m for m in self.members if m.node != node]
        return View(number, tuple(first + rest))

    def plus(self, member: Member, number: int) -> View:
        rest = tuple(m for m in self.members if m.node != member.node)
        return View(number, (*rest, member))

    def describe(self) -> str:
        return (
            f"view {self.number} ["
            + ", ".join(f"{m.node}#{m.incarnation}" for m in self.members)
            + "]"
        )


def write_members(w: Writer, members: tuple[Member, ...]) -> None:
    w.u16(len(members))
    for m in members:
        w.u16(m.node).u32(m.incarnation)


def read_members(r: Reader) -> tuple[Member, ...]:
    n = r.u16()
    if n > MAX_MEMBERS:
        raise WireError(RejectReason.MALFORMED, f"{n} members exceeds {MAX_MEMBERS}")
    return tuple(Member(r.u16(), r.u32()) for _ in range(n))
