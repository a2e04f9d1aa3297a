"""Message bodies, one frozen dataclass per message type.

The envelope (header, piggybacked ordering records, HMAC) lives in :mod:`.wire`; this module
gives each message type its body. Decoding a body raises only :class:`WireError`, like the
envelope, so a node drops and counts a malformed body exactly as it drops a bad datagram.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from appliance.protocols.ldmp.view import MAX_MEMBERS, Member, read_members, write_members
from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.fields import Reader, Writer
from appliance.protocols.wire.header import MessageType

MAX_BATCH = 1024
MAX_RANGES = 64


class Body(Protocol):
    TYPE: ClassVar[MessageType]

    def encode(self) -> bytes: ...


class Role(enum.IntEnum):
    """What a node is doing in its process group."""

    JOINING = 0  # no view yet: discovering, or proposing itself as a backup
    LEARNING = 1  # state transferred, catching up before the primary accepts it
    BACKUP = 2
    CANDIDATE = 3  # a backup fencing the old primary / proposing itself / recovering state
    PRIMARY = 4


class NackKind(enum.IntEnum):
    MESSAGES = 1  # sequence numbers of a virtual connection (header names it)
    ENTRIES = 2  # indices of the group's ordered log
    STATE = 3  # chunks of a state-transfer snapshot


class AckKind(enum.IntEnum):
    STATE_INSTALLED = 1
    VIEW = 2


@dataclass(frozen=True, slots=True)
class DataEntry:
    seq: int
    payload: bytes
    after: int = 0
    """Output commit: the sending group's log index this message depends on (0: none)."""


@dataclass(frozen=True, slots=True)
class Data:
    """A batch of application messages on one virtual connection (header: groups, conn).

    ``requires`` lists the backups of the sender's view: a message whose ``after`` index every
    one of them has confirmed (SECOND_ACK, same view) is committed, so the receiver may release
    it without waiting for the sending primary to say so (one hop sooner).
    """

    TYPE: ClassVar[MessageType] = MessageType.DATA
    entries: tuple[DataEntry, ...]
    requires: tuple[int, ...] = ()

    def encode(self) -> bytes:
        w = Writer().u32(len(self.entries))
        for e in self.entries:
            w.u64(e.seq).u64(e.after).blob(e.payload)
        w.u16(len(self.requires))
        for n in self.requires:
            w.u16(n)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        n = r.count(MAX_BATCH)
        entries = tuple(_data_entry(r) for _ in range(n))
        k = r.u16()
        if k > MAX_MEMBERS:
            raise WireError(RejectReason.MALFORMED, f"{k} required backups exceeds {MAX_MEMBERS}")
        requires = tuple(r.u16() for _ in range(k))
        r.finish()
        return cls(entries, requires)


DATA_ENTRY_OVERHEAD = 20  # seq, after, payload length


def data_size(n_requires: int) -> int:
    """Bytes of a DATA body before its entries (entry count, required-backup list)."""
    return 4 + 2 + 2 * n_requires


def _data_entry(r: Reader) -> DataEntry:
    seq, after = r.u64(), r.u64()
    return DataEntry(seq, r.blob(), after)


@dataclass(frozen=True, slots=True)
class FirstAck:
    """Standalone cumulative ack (header.ack) with the receiver's remaining credit."""

    TYPE: ClassVar[MessageType] = MessageType.FIRST_ACK
    credit: int

    def encode(self) -> bytes:
        return Writer().u32(self.credit).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        v = cls(r.u32())
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class SecondAck:
    """A backup confirms what it holds: its delivered index in the log of ``primary``.

    Naming the primary it follows (with the header's view number) identifies *which* log the
    index counts in: two views can share a number on the two sides of a partition.
    """

    TYPE: ClassVar[MessageType] = MessageType.SECOND_ACK
    delivered: int
    primary: Member

    def encode(self) -> bytes:
        w = Writer().u64(self.delivered)
        return w.u16(self.primary.node).u32(self.primary.incarnation).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        v = cls(r.u64(), Member(r.u16(), r.u32()))
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class Nack:
    """Asks ``target`` to resend the listed ranges (inclusive) of messages, entries or chunks."""

    TYPE: ClassVar[MessageType] = MessageType.NACK
    target: int
    kind: NackKind
    ranges: tuple[tuple[int, int], ...]
    snapshot_id: int = 0

    def encode(self) -> bytes:
        w = Writer().u16(self.target).u8(self.kind).u32(self.snapshot_id).u32(len(self.ranges))
        for lo, hi in self.ranges:
            w.u64(lo).u64(hi)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        target = r.u16()
        kind_raw = r.u8()
        try:
            kind = NackKind(kind_raw)
        except ValueError:
            raise WireError(RejectReason.MALFORMED, f"unknown NACK kind {kind_raw}") from None
        snap = r.u32()
        n = r.count(MAX_RANGES)
        ranges = []
        for _ in range(n):
            lo, hi = r.u64(), r.u64()
            if hi < lo:
                raise WireError(RejectReason.MALFORMED, f"NACK range {lo}..{hi} is inverted")
            ranges.append((lo, hi))
        r.finish()
        return cls(target, kind, tuple(ranges), snap)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Periodic liveness plus a summary of the sender's replica state.

    A primary's heartbeat carries its view (so a backup that missed a membership message
    catches up), its log end and commit index; a backup's carries its delivered index, so it
    doubles as a SecondAck.
    """

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    role: Role
    members: tuple[Member, ...]
    delivered: int
    commit: int

    def encode(self) -> bytes:
        w = Writer().u8(self.role)
        write_members(w, self.members)
        return w.u64(self.delivered).u64(self.commit).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        raw = r.u8()
        try:
            role = Role(raw)
        except ValueError:
            raise WireError(RejectReason.MALFORMED, f"unknown role {raw}") from None
        v = cls(role, read_members(r), r.u64(), r.u64())
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class ProposePrimary:
    """A backup that fenced the old primary proposes itself for view header.view."""

    TYPE: ClassVar[MessageType] = MessageType.PROPOSE_PRIMARY
    members: tuple[Member, ...]

    def encode(self) -> bytes:
        w = Writer()
        write_members(w, self.members)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        v = cls(read_members(r))
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class PrimaryVote:
    """A member's answer to ProposePrimary: its promise and how far its log goes."""

    TYPE: ClassVar[MessageType] = MessageType.PRIMARY_VOTE
    proposer: int
    accept: bool
    promised: int
    delivered: int

    def encode(self) -> bytes:
        w = Writer().u16(self.proposer).u8(1 if self.accept else 0)
        return w.u32(self.promised).u64(self.delivered).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        proposer = r.u16()
        acc = r.u8()
        if acc > 1:
            raise WireError(RejectReason.MALFORMED, f"vote flag {acc} is not 0 or 1")
        v = cls(proposer, acc == 1, r.u32(), r.u64())
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class NewView:
    """The new primary's announcement once it recovered the state: view and log end."""

    TYPE: ClassVar[MessageType] = MessageType.NEW_VIEW
    members: tuple[Member, ...]
    log_end: int

    def encode(self) -> bytes:
        w = Writer()
        write_members(w, self.members)
        return w.u64(self.log_end).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        v = cls(read_members(r), r.u64())
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class Handover:
    """A primary stepping down: ``successor`` may take over without fencing it.

    Sent only once every backup holds everything the primary delivered (``delivered``), and
    repeated every ``proposal_retry`` until the successor proposes itself.
    """

    TYPE: ClassVar[MessageType] = MessageType.HANDOVER
    successor: Member
    delivered: int

    def encode(self) -> bytes:
        s = self.successor
        return Writer().u16(s.node).u32(s.incarnation).u64(self.delivered).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        v = cls(Member(r.u16(), r.u32()), r.u64())
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class ProposeBackup:
    """A node without a view asks the primary to admit it (header names node+incarnation)."""

    TYPE: ClassVar[MessageType] = MessageType.PROPOSE_BACKUP

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        Reader(data).finish()
        return cls()


@dataclass(frozen=True, slots=True)
class AcceptBackup:
    """The primary admits ``joiner``: the new membership, ranks in order."""

    TYPE: ClassVar[MessageType] = MessageType.ACCEPT_BACKUP
    members: tuple[Member, ...]
    joiner: int
    confirmed: bool = False
    """False: existing members, install and acknowledge. True: all did; joiner, you are in."""

    def encode(self) -> bytes:
        w = Writer()
        write_members(w, self.members)
        return w.u16(self.joiner).u8(1 if self.confirmed else 0).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        members, joiner, flag = read_members(r), r.u16(), r.u8()
        r.finish()
        if flag > 1:
            raise WireError(RejectReason.MALFORMED, f"confirmed flag {flag} is not 0 or 1")
        return cls(members, joiner, flag == 1)


@dataclass(frozen=True, slots=True)
class AcceptAck:
    """A joiner confirms it installed the snapshot, or a member confirms a view."""

    TYPE: ClassVar[MessageType] = MessageType.ACCEPT_ACK
    kind: AckKind
    snapshot_id: int
    delivered: int

    def encode(self) -> bytes:
        return Writer().u8(self.kind).u32(self.snapshot_id).u64(self.delivered).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        raw = r.u8()
        try:
            kind = AckKind(raw)
        except ValueError:
            raise WireError(RejectReason.MALFORMED, f"unknown ack kind {raw}") from None
        v = cls(kind, r.u32(), r.u64())
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class RemoveBackup:
    """The primary removed (after fencing) ``removed``; the new membership."""

    TYPE: ClassVar[MessageType] = MessageType.REMOVE_BACKUP
    members: tuple[Member, ...]
    removed: int

    def encode(self) -> bytes:
        w = Writer()
        write_members(w, self.members)
        return w.u16(self.removed).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        v = cls(read_members(r), r.u16())
        r.finish()
        return v


@dataclass(frozen=True, slots=True)
class StateChunk:
    """One chunk of a snapshot streamed to a joiner (snapshot taken at log ``index``)."""

    TYPE: ClassVar[MessageType] = MessageType.STATE
    target: int
    snapshot_id: int
    index: int
    chunk: int
    total: int
    data: bytes

    def encode(self) -> bytes:
        w = Writer().u16(self.target).u32(self.snapshot_id).u64(self.index)
        return w.u32(self.chunk).u32(self.total).blob(self.data).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        v = cls(r.u16(), r.u32(), r.u64(), r.u32(), r.u32(), r.blob())
        r.finish()
        if v.total == 0 or v.chunk >= v.total:
            raise WireError(RejectReason.MALFORMED, f"chunk {v.chunk} of {v.total}")
        return v


DIGEST_LEN = 32
"""SHA-256."""


@dataclass(frozen=True, slots=True)
class StateOffer:
    """A snapshot (taken at log ``index``) the joiner ``target`` may fetch point-to-point.

    ``target_incarnation`` names the joiner's run: a node that restarted meanwhile must not
    chase the snapshot made for its predecessor (its host would refuse to serve it anyway).

    The blob itself does not travel over multicast: a large state would hold up the group's
    traffic. This small authenticated offer carries what the joiner needs to trust the blob it
    fetches over an unauthenticated stream: its size and SHA-256 digest.
    """

    TYPE: ClassVar[MessageType] = MessageType.STATE_OFFER
    target: int
    target_incarnation: int
    snapshot_id: int
    index: int
    size: int
    digest: bytes

    def encode(self) -> bytes:
        w = Writer().u16(self.target).u32(self.target_incarnation).u32(self.snapshot_id)
        return w.u64(self.index).u64(self.size).blob(self.digest).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        v = cls(r.u16(), r.u32(), r.u32(), r.u64(), r.u64(), r.blob())
        r.finish()
        if len(v.digest) != DIGEST_LEN:
            raise WireError(RejectReason.MALFORMED, f"digest of {len(v.digest)} bytes")
        return v


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An ordered-log entry with its payload, sent to repair a member's gaps."""

    index: int
    src_group: int
    conn_id: int
    seq: int
    payload: bytes
    annex: bytes = b""
    """What the primary's host attached after executing it (VDF records or state update).
    Not part of the entry on the wire: annexes travel in ``Order.annexes``."""


ORDER_ENTRY_OVERHEAD = 26
"""A whole log entry's framing in an ORDER body: index, source group, connection id, seq and
payload length."""


@dataclass(frozen=True, slots=True)
class Order:
    """Ordering records in the header; in the body, the commit point, whole entries (when
    repairing, and the primary's own gateway's requests when ordering them), and the
    annexes of the entries (replication styles: VDF records or effects)."""

    TYPE: ClassVar[MessageType] = MessageType.ORDER
    commit: int
    entries: tuple[LogEntry, ...] = ()
    annexes: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        w = Writer().u64(self.commit).u32(len(self.entries))
        for e in self.entries:
            w.u64(e.index).u16(e.src_group).u32(e.conn_id).u64(e.seq).blob(e.payload)
        w.u32(len(self.annexes))
        for index, annex in self.annexes:
            w.u64(index).blob(annex)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        r = Reader(data)
        commit = r.u64()
        n = r.count(MAX_BATCH)
        entries = tuple(LogEntry(r.u64(), r.u16(), r.u32(), r.u64(), r.blob()) for _ in range(n))
        n = r.count(MAX_BATCH)
        annexes = tuple((r.u64(), r.blob()) for _ in range(n))
        r.finish()
        return cls(commit, entries, annexes)


BODY_TYPES: dict[MessageType, type] = {
    cls.TYPE: cls
    for cls in (
        Data,
        FirstAck,
        SecondAck,
        Nack,
        Heartbeat,
        ProposePrimary,
        PrimaryVote,
        NewView,
        ProposeBackup,
        AcceptBackup,
        AcceptAck,
        RemoveBackup,
        StateChunk,
        Order,
        Handover,
        StateOffer,
    )
}


def decode_body(msg_type: MessageType, data: bytes) -> object:
    """Decode the body of a message of ``msg_type``; raises only WireError."""
    cls = BODY_TYPES.get(msg_type)
    if cls is None:
        raise WireError(RejectReason.UNKNOWN_TYPE, f"no body codec for {msg_type!r}")
    body: object = cls.decode(data)  # type: ignore[attr-defined]
    return body
