"""The receive path's front door: every datagram from the socket goes through here first.

It composes :func:`decode` (size, version, HMAC, cluster, structure) with :class:`ReplayGuard`
and turns every failure into a counter instead of an exception, so the transport can hand it
raw bytes and the protocol engines only ever see authenticated, fresh datagrams. The counters
are what an operator reads to tell "someone on the LAN has the wrong key" from "the network
duplicates packets" from "a node runs another version".
"""

from __future__ import annotations

from appliance.protocols.wire.datagram import (
    DEFAULT_MAX_DATAGRAM,
    HEADER_LEN,
    HMAC_LEN,
    Datagram,
    decode,
)
from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.header import PROTOCOL_VERSION
from appliance.protocols.wire.replay import ReplayGuard

__all__ = ["DatagramFilter"]


class DatagramFilter:
    """Decode + authenticate + replay-check every received datagram; never raises.

    Rejects are counted by :class:`RejectReason` so operators can see *why* traffic is dropped.
    """

    __slots__ = (
        "_accepted",
        "_cluster_id",
        "_cluster_prefix",
        "_guard",
        "_key",
        "_max_size",
        "_own",
        "_own_node",
        "_own_prefix",
        "_rejected",
        "last_error",
    )

    def __init__(
        self,
        key: bytes,
        cluster_id: int,
        max_size: int = DEFAULT_MAX_DATAGRAM,
        own_node: int | None = None,
    ) -> None:
        if not key:
            raise ValueError("an empty HMAC key would authenticate nothing")
        self._key = bytes(key)
        self._cluster_id = cluster_id
        self._cluster_prefix = cluster_id.to_bytes(4, "big")
        self._max_size = max_size
        self._own_node = own_node
        self._guard = ReplayGuard()
        self._rejected: dict[RejectReason, int] = {}
        self._accepted = 0
        self._own = 0
        self._own_prefix = (
            None
            if own_node is None
            else bytes([PROTOCOL_VERSION])
            + cluster_id.to_bytes(4, "big")
            + own_node.to_bytes(2, "big")
        )
        self.last_error: WireError | None = None
        """The most recent rejection, for logs and debugging (counters keep the totals)."""

    def looped_back(self, data: bytes) -> bool:
        """Whether ``data`` claims to be our own datagram, which multicast loopback returns.

        Checked on the raw header (version, cluster id, source node) before any decoding or
        HMAC: on a host with several nodes (the lab) a third of what arrives is our own, and
        verifying it only to drop it cost as much as a peer's datagram. A forged datagram
        claiming to be ours is dropped unverified, which is what would happen to it anyway:
        nothing from ourselves is ever acted upon. Counted in :attr:`own`.
        """
        p = self._own_prefix
        if p is None or len(data) < HEADER_LEN + HMAC_LEN or data[0] != p[0] or data[4:10] != p[1:]:
            return False
        self._own += 1
        return True

    def claims_type(self, data: bytes, msg_type: int) -> bool:
        """Whether ``data``'s raw header claims to be a ``msg_type`` datagram of our cluster.

        Unverified (no HMAC): for dropping what this node has no use for before paying to
        authenticate it, never for acting on it.
        """
        return (
            len(data) >= HEADER_LEN + HMAC_LEN
            and data[1] == msg_type
            and data[0] == PROTOCOL_VERSION
            and data[4:8] == self._cluster_prefix
        )

    def accept(self, data: bytes) -> Datagram | None:
        """Return the datagram if it is authentic, fresh and well formed; else count and ``None``.

        Datagrams from ``own_node`` (multicast loopback delivers our own sends back to us) are
        dropped and counted in :attr:`own`, not as errors, and never touch replay state.
        """
        if self.looped_back(data):
            return None
        try:
            d = decode(data, self._key, self._cluster_id, self._max_size)
        except WireError as exc:
            self._reject(exc)
            return None
        except Exception as exc:  # a decoder bug must not let one packet crash every node
            self._reject(
                WireError(RejectReason.MALFORMED, f"decoder bug: {type(exc).__name__}: {exc}")
            )
            return None
        h = d.header
        if h.src_node == self._own_node:
            self._own += 1
            return None
        reason = self._guard.check(h.src_node, h.incarnation, h.packet_number)
        if reason is not None:
            self._reject(
                WireError(
                    reason,
                    f"node {h.src_node} incarnation {h.incarnation} packet {h.packet_number}",
                )
            )
            return None
        self._guard.record(h.src_node, h.incarnation, h.packet_number)
        self._accepted += 1
        return d

    def _reject(self, exc: WireError) -> None:
        self._rejected[exc.reason] = self._rejected.get(exc.reason, 0) + 1
        self.last_error = exc

    def forget(self, src_node: int) -> None:
        """Drop replay state for a node that left the configuration (see ReplayGuard.forget)."""
        self._guard.forget(src_node)

    @property
    def rejected(self) -> dict[str, int]:
        """``reason.value -> count`` for every reason seen at least once (a fresh copy)."""
        return {reason.value: n for reason, n in self._rejected.items() if n}

    @property
    def accepted(self) -> int:
        return self._accepted

    @property
    def own(self) -> int:
        """Our own datagrams looped back by multicast and dropped (expected, not an error)."""
        return self._own
