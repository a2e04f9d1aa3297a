"""Output commit at the receiving end: hold each message until its input is committed.

The service primary sends a reply as soon as it has executed the request, before the request
is committed (held by every backup). The gateway holds such a *tentative* reply and releases it
to the client once it learns the commit, from whichever comes first:

* every backup the primary listed (``Data.requires``) confirmed, in a SECOND_ACK or heartbeat
  of the same *reign* (view number and primary, node and incarnation), that it delivered the
  reply's input (``after``): multicast, so this arrives one hop after the records reached the
  backups; or
* the primary itself announced a commit index covering it (ORDER, heartbeat) in that reign.

A reign, not a view number, names the log an index counts in: on the two sides of a partition
two primaries can number their views alike.

Until released, a reply is not acknowledged, so the primary keeps it on its sent list; when it
installs a new view (a new reign: evidence of the old one stops) it resends those replies under
the new one at once, so they need not wait for its retransmission timer. If the
primary fails first, the input may be lost with it and a new primary may give the same sequence
number to a different reply: a reply from a newer view replaces a held one. A released reply is
committed, so every future primary holds the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.protocols.llmp.receiver import gap_ranges

Reign = tuple[int, int, int]  # (view number, primary node, primary incarnation)


@dataclass(frozen=True, slots=True)
class Held:
    payload: bytes
    after: int
    requires: tuple[int, ...]
    reign: Reign


class CommitGate:
    def __init__(self, window: int) -> None:
        self.window = window
        self.released = 0
        self.held: dict[int, Held] = {}
        self.backup_acks: dict[int, tuple[Reign, int]] = {}  # node -> (reign, delivered)
        self.primary_commit: dict[tuple[int, int], tuple[int, int]] = {}
        """(primary node, incarnation) -> (view number, commit index) it last announced."""
        self.fast_releases = 0
        self.replaced = 0

    def offer(
        self, seq: int, payload: bytes, after: int, requires: tuple[int, ...], reign: Reign
    ) -> None:
        if seq <= self.released or seq > self.released + self.window:
            return
        cur = self.held.get(seq)
        if cur is None or reign[0] > cur.reign[0] or reign == cur.reign:
            if cur is not None and cur.payload != payload:
                self.replaced += 1
            self.held[seq] = Held(payload, after, requires, reign)

    def backup_ack(self, node: int, reign: Reign, delivered: int) -> None:
        old = self.backup_acks.get(node)
        if old is None or old[0] != reign or delivered > old[1]:
            self.backup_acks[node] = (reign, delivered)

    def commit_announced(self, reign: Reign, commit: int) -> None:
        key = (reign[1], reign[2])
        old = self.primary_commit.get(key)
        if old is None or reign[0] > old[0] or (reign[0] == old[0] and commit > old[1]):
            self.primary_commit[key] = (reign[0], commit)
            if len(self.primary_commit) > 64:  # primaries come and go: keep the newest
                oldest = min(self.primary_commit, key=lambda k: self.primary_commit[k][0])
                del self.primary_commit[oldest]

    def _committed(self, h: Held) -> tuple[bool, bool]:
        """(committed, learned from the backups)."""
        announced = self.primary_commit.get((h.reign[1], h.reign[2]))
        if announced is not None and announced[0] == h.reign[0] and announced[1] >= h.after:
            return True, False
        for n in h.requires:
            a = self.backup_acks.get(n)
            if a is None or a[0] != h.reign or a[1] < h.after:
                return False, False
        return True, True

    def release(self) -> list[tuple[int, bytes]]:
        """Replies now committed, in sequence order."""
        out = []
        while (h := self.held.get(self.released + 1)) is not None:
            ok, fast = self._committed(h)
            if not ok:
                break
            self.released += 1
            del self.held[self.released]
            self.fast_releases += fast
            out.append((self.released, h.payload))
        return out

    def gaps(self, max_ranges: int = 16) -> list[tuple[int, int]]:
        """Replies missing before the highest one held: what to NACK."""
        return gap_ranges(self.released, self.held, max_ranges)
