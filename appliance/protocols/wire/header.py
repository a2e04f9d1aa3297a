"""The fixed header every datagram carries, and the ordering records piggybacked on it.

LLFT puts routing (groups, virtual connection), reliability (sequence and ack numbers) and
membership (the primary view) into every message, so one fixed header shape serves every
message type and the protocol engines can route a datagram before looking at its body. The
header also carries what authentication needs beyond the HMAC: the cluster id, and the
(src_node, incarnation, packet_number) triple that replay protection keys on.

Both classes validate their fields on construction: an out-of-range value is a bug in the
sender and should fail where it was made, not later inside :func:`encode`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from appliance.protocols.wire.fields import check_uint

__all__ = ["PROTOCOL_VERSION", "Flags", "Header", "MessageType", "OrderRecord"]

PROTOCOL_VERSION = 1
"""Bumped on any incompatible layout change, so mixed-version clusters reject, not misparse."""


class MessageType(enum.IntEnum):
    """What a datagram is; its value is the ``msg_type`` byte on the wire."""

    DATA = 1
    """LLMP application messages on a virtual connection (a batch)."""
    FIRST_ACK = 2
    """Standalone cumulative ack from the destination primary when it has nothing to send."""
    SECOND_ACK = 3
    """A backup's confirmation of what it holds (acks + ordering position)."""
    NACK = 4
    """Gap report asking for retransmission of messages or ordering records."""
    HEARTBEAT = 5
    PROPOSE_PRIMARY = 6
    PRIMARY_VOTE = 7
    NEW_VIEW = 8
    PROPOSE_BACKUP = 9
    ACCEPT_BACKUP = 10
    ACCEPT_ACK = 11
    REMOVE_BACKUP = 12
    STATE = 13
    """State-transfer chunk."""
    ORDER = 14
    """Standalone ordering records when the primary has nothing else to send."""
    STATE_OFFER = 15
    """A snapshot is ready for a joiner: fetch it over the point-to-point channel."""
    HANDOVER = 16
    """A primary stepping down offers the primary role to its successor (graceful hand-over)."""


class Flags(enum.IntFlag):
    """Per-datagram hints; unknown bits are rejected so they can be given meaning later."""

    NONE = 0
    RETRANSMISSION = 1
    """A resend from the sent list (lets receivers and counters tell loss from first sends)."""
    URGENT = 2
    """Ask the receiver to ack immediately instead of waiting to piggyback."""
    LOGGED = 4
    """The sender logged the contents before sending (backups can rely on the log)."""


KNOWN_FLAGS = int(Flags.RETRANSMISSION | Flags.URGENT | Flags.LOGGED)
MESSAGE_TYPE_OF: dict[int, MessageType] = {int(t): t for t in MessageType}
"""Every known message type by its wire value (what the codec accepts)."""
_FLAGS_OF: dict[int, Flags] = {f: Flags(f) for f in range(KNOWN_FLAGS + 1) if not f & ~KNOWN_FLAGS}
_VALID_FLAGS = frozenset(_FLAGS_OF)
_HEADER_RANGES = struct.Struct(">BIHIQHHIIQQ")
"""The widths of (version, cluster_id, src_node, incarnation, packet_number, src_group,
dst_group, conn_id, view, seq, ack): packing them is the range check of all of them."""
RECORD_LAYOUT = struct.Struct(">QHIQ")
"""An :class:`OrderRecord` on the wire (index, src_group, conn_id, seq): the codec packs it,
and packing it is the range check of all four fields."""


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed part of every datagram; see ``docs/wire-format.md`` for the byte layout."""

    msg_type: MessageType
    cluster_id: int
    """u32: lets several clusters share a LAN/multicast group without cross-talk."""
    src_node: int
    """u16: sending node id."""
    incarnation: int
    """u32: grows each time the node's agent starts, so old packets of a restarted node lose."""
    packet_number: int
    """u64: strictly increasing per (src_node, incarnation); what replay protection checks."""
    src_group: int
    """u16: virtual port of the sending group."""
    dst_group: int
    """u16: virtual port of the destination group."""
    conn_id: int
    """u32: virtual connection id."""
    view: int
    """u32: sender's primary view number."""
    seq: int
    """u64: sequence number (meaning depends on the message type)."""
    ack: int
    """u64: cumulative ack."""
    flags: Flags = Flags.NONE
    version: int = PROTOCOL_VERSION
    """u8: kept settable so tests (and a future v2 sender) can produce other versions."""

    def __post_init__(self) -> None:
        # Every datagram sent builds one: the usual case (enums given, every field in range)
        # is one struct pack, a C loop over the ranges; anything else gets the checks below,
        # which say which field is wrong.
        if (
            type(self.msg_type) is MessageType
            and isinstance(self.flags, int)
            and self.flags in _VALID_FLAGS
        ):
            try:
                _HEADER_RANGES.pack(
                    self.version,
                    self.cluster_id,
                    self.src_node,
                    self.incarnation,
                    self.packet_number,
                    self.src_group,
                    self.dst_group,
                    self.conn_id,
                    self.view,
                    self.seq,
                    self.ack,
                )
            except struct.error:
                pass
            else:
                if type(self.flags) is not Flags:
                    object.__setattr__(self, "flags", _FLAGS_OF[self.flags])
                return
        self._check()

    def _check(self) -> None:
        # Normalise plain ints to the enums so `header.msg_type.name` always works and a
        # decoded header compares and prints like a constructed one.
        if check_uint("msg_type", self.msg_type, 8) not in MESSAGE_TYPE_OF:
            raise ValueError(f"msg_type={self.msg_type!r} is not a known MessageType")
        object.__setattr__(self, "msg_type", MessageType(self.msg_type))
        flags = check_uint("flags", self.flags, 16)
        if flags & ~KNOWN_FLAGS:
            raise ValueError(f"flags={flags:#x} has unknown bits (known: {KNOWN_FLAGS:#x})")
        object.__setattr__(self, "flags", Flags(flags))
        check_uint("cluster_id", self.cluster_id, 32)
        check_uint("src_node", self.src_node, 16)
        check_uint("incarnation", self.incarnation, 32)
        check_uint("packet_number", self.packet_number, 64)
        check_uint("src_group", self.src_group, 16)
        check_uint("dst_group", self.dst_group, 16)
        check_uint("conn_id", self.conn_id, 32)
        check_uint("view", self.view, 32)
        check_uint("seq", self.seq, 64)
        check_uint("ack", self.ack, 64)
        check_uint("version", self.version, 8)

    @classmethod
    def unpacked(cls, fields: tuple[int, ...]) -> Header:
        """A header from the codec's unpack of the fixed layout, without ``__post_init__``.

        ``fields`` are (version, msg_type, flags, cluster_id, src_node, incarnation,
        packet_number, src_group, dst_group, conn_id, view, seq, ack) as fixed-width unsigned
        integers, so every range check would pass; the codec has checked ``msg_type`` and
        ``flags`` (a ``KeyError`` here means it did not). Decoding runs on every datagram
        received, and the checks and enum conversions were half of it.
        """
        h = object.__new__(cls)
        put = object.__setattr__
        put(h, "version", fields[0])
        put(h, "msg_type", MESSAGE_TYPE_OF[fields[1]])
        put(h, "flags", _FLAGS_OF[fields[2]])
        put(h, "cluster_id", fields[3])
        put(h, "src_node", fields[4])
        put(h, "incarnation", fields[5])
        put(h, "packet_number", fields[6])
        put(h, "src_group", fields[7])
        put(h, "dst_group", fields[8])
        put(h, "conn_id", fields[9])
        put(h, "view", fields[10])
        put(h, "seq", fields[11])
        put(h, "ack", fields[12])
        return h


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """The destination primary delivered message (src_group, conn_id, seq) as its index-th input.

    The primary alone decides delivery order; shipping these records (piggybacked on whatever
    it sends, reflected back until acknowledged) is how backups replay exactly its order.
    """

    index: int
    """u64: position in the primary's total order of delivered inputs."""
    src_group: int
    """u16"""
    conn_id: int
    """u32"""
    seq: int
    """u64"""

    def __post_init__(self) -> None:
        try:
            RECORD_LAYOUT.pack(self.index, self.src_group, self.conn_id, self.seq)
        except struct.error:
            pass
        else:
            return
        check_uint("index", self.index, 64)
        check_uint("src_group", self.src_group, 16)
        check_uint("conn_id", self.conn_id, 32)
        check_uint("seq", self.seq, 64)
