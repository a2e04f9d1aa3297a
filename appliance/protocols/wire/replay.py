"""Replay protection: reject datagrams we have already accepted, or that are too old.

An HMAC proves a datagram came from a cluster member, not that it is fresh. Without replay
protection anyone on the LAN could record an authenticated PROPOSE_PRIMARY or REMOVE_BACKUP
and play it back later. The scheme is the one IPsec (RFC 4303) and DTLS (RFC 6347) use: each
sender numbers its datagrams, and the receiver keeps the highest number seen plus a bitmap of
the ``window`` numbers below it. That tolerates the reordering multicast does produce while
using constant memory per sender.

A sender's numbering restarts when its agent restarts, so numbers are scoped by an
*incarnation* that the agent increases on every start. A newer incarnation replaces the old
window outright (the node rebooted: its old numbers mean nothing); an older incarnation is
stale - the leftovers or a replay of a process that no longer exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.protocols.wire.errors import RejectReason

__all__ = ["ReplayGuard"]


@dataclass(slots=True)
class _Window:
    incarnation: int
    highest: int
    """Highest packet number accepted in this incarnation."""
    bitmap: int
    """Bit i set = packet number ``highest - i`` was accepted (bit 0 is ``highest`` itself)."""


class ReplayGuard:
    """Per-sender sliding window (64 packet numbers, like IPsec/DTLS) plus incarnation tracking.

    :meth:`check` and :meth:`record` are separate so the caller records only datagrams it has
    authenticated and decided to accept: recording before authentication would let a forger
    advance the window and blind us to the genuine sender.
    """

    __slots__ = ("_mask", "_nodes", "_window")

    def __init__(self, window: int = 64) -> None:
        if window < 1:
            raise ValueError(f"window={window} must be at least 1")
        self._window = window
        self._mask = (1 << window) - 1
        self._nodes: dict[int, _Window] = {}

    @property
    def window(self) -> int:
        return self._window

    def check(self, src_node: int, incarnation: int, packet_number: int) -> RejectReason | None:
        """Why this packet must be dropped (``STALE`` / ``REPLAYED``), or ``None`` if fresh.

        Does not change any state.
        """
        w = self._nodes.get(src_node)
        if w is None or incarnation > w.incarnation:
            return None
        if incarnation < w.incarnation:
            return RejectReason.STALE
        if packet_number > w.highest:
            return None
        age = w.highest - packet_number
        if age >= self._window or (w.bitmap >> age) & 1:
            return RejectReason.REPLAYED
        return None

    def record(self, src_node: int, incarnation: int, packet_number: int) -> None:
        """Remember an accepted packet. A packet :meth:`check` would reject is ignored."""
        w = self._nodes.get(src_node)
        if w is None or incarnation > w.incarnation:
            self._nodes[src_node] = _Window(incarnation, packet_number, 1)
            return
        if incarnation < w.incarnation:
            return
        if packet_number > w.highest:
            shift = packet_number - w.highest
            w.bitmap = ((w.bitmap << shift) | 1) & self._mask if shift < self._window else 1
            w.highest = packet_number
            return
        age = w.highest - packet_number
        if age < self._window:
            w.bitmap |= 1 << age

    def forget(self, src_node: int) -> None:
        """Drop everything known about a node (e.g. it left the cluster configuration).

        After this, that node's *old* datagrams would be accepted again until a fresh one is
        recorded, so only forget nodes that can no longer be heard from.
        """
        self._nodes.pop(src_node, None)

    def __len__(self) -> int:
        """Number of senders tracked (memory is one small window per sender)."""
        return len(self._nodes)
