"""Tests for the message bodies: round trips, and untrusted bytes failing only with WireError."""

from __future__ import annotations

import struct
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from appliance.protocols.ldmp.view import MAX_MEMBERS, Member
from appliance.protocols.messages import (
    BODY_TYPES,
    MAX_BATCH,
    MAX_RANGES,
    AcceptAck,
    AcceptBackup,
    AckKind,
    Data,
    DataEntry,
    FirstAck,
    Handover,
    Heartbeat,
    LogEntry,
    Nack,
    NackKind,
    NewView,
    Order,
    PrimaryVote,
    ProposeBackup,
    ProposePrimary,
    RemoveBackup,
    Role,
    SecondAck,
    StateChunk,
    StateOffer,
    decode_body,
)
from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.header import MessageType

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies --------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
payloads = st.binary(max_size=64)

members_st = st.lists(st.builds(Member, u16, u32), max_size=MAX_MEMBERS).map(tuple)


@st.composite
def nack_ranges(draw: st.DrawFn) -> tuple[tuple[int, int], ...]:
    pairs = draw(st.lists(st.tuples(u64, u64), max_size=MAX_RANGES))
    return tuple((min(a, b), max(a, b)) for a, b in pairs)


@st.composite
def state_chunks(draw: st.DrawFn) -> StateChunk:
    total = draw(st.integers(1, 0xFFFF_FFFF))
    chunk = draw(st.integers(0, total - 1))
    return StateChunk(draw(u16), draw(u32), draw(u64), chunk, total, draw(payloads))


BODY_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Data: st.builds(Data, st.lists(st.builds(DataEntry, u64, payloads), max_size=20).map(tuple)),
    FirstAck: st.builds(FirstAck, u32),
    SecondAck: st.builds(SecondAck, u64, st.builds(Member, u16, u32)),
    Nack: st.builds(Nack, u16, st.sampled_from(NackKind), nack_ranges(), u32),
    Heartbeat: st.builds(Heartbeat, st.sampled_from(Role), members_st, u64, u64),
    ProposePrimary: st.builds(ProposePrimary, members_st),
    PrimaryVote: st.builds(PrimaryVote, u16, st.booleans(), u32, u64),
    NewView: st.builds(NewView, members_st, u64),
    ProposeBackup: st.just(ProposeBackup()),
    AcceptBackup: st.builds(AcceptBackup, members_st, u16, st.booleans()),
    AcceptAck: st.builds(AcceptAck, st.sampled_from(AckKind), u32, u64),
    RemoveBackup: st.builds(RemoveBackup, members_st, u16),
    Handover: st.builds(Handover, st.builds(Member, u16, u32), u64),
    StateChunk: state_chunks(),
    StateOffer: st.builds(StateOffer, u16, u32, u32, u64, u64, st.binary(min_size=32, max_size=32)),
    Order: st.builds(
        Order,
        u64,
        st.lists(st.builds(LogEntry, u64, u16, u32, u64, payloads), max_size=20).map(tuple),
    ),
}

any_body = st.one_of(*BODY_STRATEGIES.values())


def reject_reason(msg_type: MessageType, data: bytes) -> RejectReason:
    with pytest.raises(WireError) as info:
        decode_body(msg_type, data)
    return info.value.reason


def patch(raw: bytes, offset: int, value: int) -> bytes:
    """``raw`` with the byte at ``offset`` replaced (a u8 field set to a forged value)."""
    assert 0 <= offset < len(raw)
    return raw[:offset] + bytes([value]) + raw[offset + 1 :]


# -- registry ----------------------------------------------------------------------------


def test_every_message_type_has_a_body_class() -> None:
    assert set(BODY_TYPES) == set(MessageType)
    for msg_type, cls in BODY_TYPES.items():
        body_cls: Any = cls
        assert body_cls.TYPE is msg_type


def test_every_body_class_has_a_strategy() -> None:
    assert set(BODY_STRATEGIES) == set(BODY_TYPES.values())


def test_unknown_message_type_is_unknown_type() -> None:
    assert reject_reason(99, b"") is RejectReason.UNKNOWN_TYPE  # type: ignore[arg-type]


# -- round trips -------------------------------------------------------------------------


@SETTINGS
@given(any_body)
def test_every_body_round_trips(body: Any) -> None:
    decoded = decode_body(body.TYPE, body.encode())
    assert decoded == body
    assert type(decoded) is type(body)


@pytest.mark.parametrize("cls", list(BODY_STRATEGIES), ids=lambda c: c.__name__)
def test_each_body_class_round_trips(cls: type) -> None:
    """Per class, so a failure names the class (the one_of property may miss rare ones)."""

    @settings(max_examples=40, deadline=None)
    @given(BODY_STRATEGIES[cls])
    def check(body: Any) -> None:
        assert decode_body(body.TYPE, body.encode()) == body
        assert type(body) is cls

    check()


def test_decoded_enums_are_enum_members() -> None:
    nack = decode_body(MessageType.NACK, Nack(3, NackKind.STATE, ((1, 2),), 9).encode())
    assert isinstance(nack, Nack)
    assert nack.kind is NackKind.STATE
    hb = decode_body(MessageType.HEARTBEAT, Heartbeat(Role.PRIMARY, (), 1, 2).encode())
    assert isinstance(hb, Heartbeat)
    assert hb.role is Role.PRIMARY
    ack = decode_body(MessageType.ACCEPT_ACK, AcceptAck(AckKind.VIEW, 1, 2).encode())
    assert isinstance(ack, AcceptAck)
    assert ack.kind is AckKind.VIEW


def test_boundary_values_round_trip() -> None:
    top = 0xFFFF_FFFF_FFFF_FFFF
    bodies: list[Any] = [
        Data(tuple(DataEntry(i, b"") for i in range(MAX_BATCH))),
        Nack(0xFFFF, NackKind.MESSAGES, tuple((i, i) for i in range(MAX_RANGES)), 0xFFFF_FFFF),
        Nack(1, NackKind.ENTRIES, ((top, top), (0, top))),
        Heartbeat(Role.BACKUP, tuple(Member(n, 0xFFFF_FFFF) for n in range(MAX_MEMBERS)), top, top),
        StateChunk(1, 2, 3, 0, 1, b""),
        StateChunk(1, 2, 3, 0xFFFF_FFFE, 0xFFFF_FFFF, b"x" * 1000),
        PrimaryVote(1, False, 0, 0),
        Order(top),
        Order(0, tuple(LogEntry(i, 1, 2, 3, b"p") for i in range(MAX_BATCH))),
    ]
    for body in bodies:
        assert decode_body(body.TYPE, body.encode()) == body


def test_propose_backup_is_empty() -> None:
    assert ProposeBackup().encode() == b""
    assert decode_body(MessageType.PROPOSE_BACKUP, b"") == ProposeBackup()


def test_member_order_is_preserved() -> None:
    members = (Member(5, 1), Member(2, 9), Member(7, 3))
    nv = decode_body(MessageType.NEW_VIEW, NewView(members, 10).encode())
    assert isinstance(nv, NewView)
    assert nv.members == members


# -- untrusted bytes ---------------------------------------------------------------------


@SETTINGS
@given(st.sampled_from(MessageType), st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_wire_error(msg_type: MessageType, data: bytes) -> None:
    try:
        body: Any = decode_body(msg_type, data)
    except WireError:
        return
    # Whatever decodes must be a body of the right type that re-encodes to the same bytes.
    assert body.encode() == data
    assert type(body) is BODY_TYPES[msg_type]


@SETTINGS
@given(any_body, st.data())
def test_mutated_bodies_raise_only_wire_error(body: Any, data: st.DataObject) -> None:
    raw = bytearray(body.encode())
    op = data.draw(st.sampled_from(["flip", "truncate", "extend", "retype"]))
    msg_type = body.TYPE
    if op == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(u8)
    elif op == "truncate" and raw:
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif op == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=16))
    else:
        msg_type = data.draw(st.sampled_from(MessageType))
    try:
        decoded = decode_body(msg_type, bytes(raw))
    except WireError:
        return
    assert type(decoded) is BODY_TYPES[msg_type]


@SETTINGS
@given(any_body, st.binary(min_size=1, max_size=16))
def test_trailing_bytes_are_malformed(body: Any, extra: bytes) -> None:
    assert reject_reason(body.TYPE, body.encode() + extra) is RejectReason.MALFORMED


@SETTINGS
@given(any_body, st.data())
def test_truncated_bodies_are_rejected(body: Any, data: st.DataObject) -> None:
    raw = body.encode()
    if not raw:
        return
    cut = data.draw(st.integers(0, len(raw) - 1))
    # Every proper prefix of a valid body is a valid start that runs out of bytes.
    assert reject_reason(body.TYPE, raw[:cut]) is RejectReason.TRUNCATED


@pytest.mark.parametrize(
    "msg_type", [t for t in MessageType if t is not MessageType.PROPOSE_BACKUP]
)
def test_empty_body_is_truncated(msg_type: MessageType) -> None:
    assert reject_reason(msg_type, b"") is RejectReason.TRUNCATED


# -- specific malformed cases ------------------------------------------------------------


@pytest.mark.parametrize("kind", [0, 4, 0xFF])
def test_unknown_nack_kind(kind: int) -> None:
    raw = patch(Nack(1, NackKind.MESSAGES, ((1, 2),)).encode(), 2, kind)
    assert reject_reason(MessageType.NACK, raw) is RejectReason.MALFORMED


def test_known_nack_kind_bytes_decode() -> None:
    raw = struct.pack(">HBII", 1, int(NackKind.ENTRIES), 7, 1) + struct.pack(">QQ", 4, 4)
    assert decode_body(MessageType.NACK, raw) == Nack(1, NackKind.ENTRIES, ((4, 4),), 7)


def test_inverted_nack_range() -> None:
    raw = Nack(1, NackKind.MESSAGES, ((1, 5), (9, 8))).encode()  # the encoder does not check
    assert reject_reason(MessageType.NACK, raw) is RejectReason.MALFORMED


def test_too_many_nack_ranges() -> None:
    n = MAX_RANGES + 1
    raw = struct.pack(">HBII", 1, int(NackKind.MESSAGES), 0, n) + struct.pack(">QQ", 1, 1) * n
    assert reject_reason(MessageType.NACK, raw) is RejectReason.MALFORMED


@pytest.mark.parametrize("role", [5, 0xFF])
def test_unknown_role(role: int) -> None:
    raw = patch(Heartbeat(Role.BACKUP, (Member(1, 1),), 0, 0).encode(), 0, role)
    assert reject_reason(MessageType.HEARTBEAT, raw) is RejectReason.MALFORMED


@pytest.mark.parametrize("kind", [0, 3, 0xFF])
def test_unknown_ack_kind(kind: int) -> None:
    raw = patch(AcceptAck(AckKind.VIEW, 0, 0).encode(), 0, kind)
    assert reject_reason(MessageType.ACCEPT_ACK, raw) is RejectReason.MALFORMED


@pytest.mark.parametrize("flag", [2, 3, 0xFF])
def test_vote_flag_must_be_0_or_1(flag: int) -> None:
    raw = patch(PrimaryVote(1, True, 0, 0).encode(), 2, flag)
    assert reject_reason(MessageType.PRIMARY_VOTE, raw) is RejectReason.MALFORMED


@pytest.mark.parametrize("flag", [2, 0xFF])
def test_accept_backup_confirmed_flag_must_be_0_or_1(flag: int) -> None:
    good = AcceptBackup((Member(1, 1),), 1, True).encode()
    raw = patch(good, len(good) - 1, flag)
    assert reject_reason(MessageType.ACCEPT_BACKUP, raw) is RejectReason.MALFORMED


@pytest.mark.parametrize("confirmed", [False, True])
def test_accept_backup_confirmed_flag_round_trips(confirmed: bool) -> None:
    body = AcceptBackup((Member(1, 1), Member(2, 2)), 2, confirmed)
    assert body.encode()[-1] == int(confirmed)
    assert decode_body(MessageType.ACCEPT_BACKUP, body.encode()) == body


@pytest.mark.parametrize("flag", [0, 1])
def test_vote_flag_0_and_1_decode(flag: int) -> None:
    raw = patch(PrimaryVote(3, True, 4, 5).encode(), 2, flag)
    assert decode_body(MessageType.PRIMARY_VOTE, raw) == PrimaryVote(3, flag == 1, 4, 5)


def _chunk_bytes(chunk: int, total: int) -> bytes:
    return StateChunk(1, 2, 3, chunk, total, b"").encode()  # the encoder does not check


@pytest.mark.parametrize(("chunk", "total"), [(0, 0), (1, 1), (5, 5), (6, 5), (0xFFFF_FFFF, 1)])
def test_chunk_at_or_beyond_total(chunk: int, total: int) -> None:
    assert reject_reason(MessageType.STATE, _chunk_bytes(chunk, total)) is RejectReason.MALFORMED


def test_last_chunk_is_accepted() -> None:
    assert decode_body(MessageType.STATE, _chunk_bytes(4, 5)) == StateChunk(1, 2, 3, 4, 5, b"")


def test_chunk_trailing_bytes() -> None:
    raw = _chunk_bytes(0, 1) + b"\x00"
    assert reject_reason(MessageType.STATE, raw) is RejectReason.MALFORMED


def _with_members(cls: type, members: tuple[Member, ...]) -> Any:
    others: dict[type, Any] = {
        Heartbeat: lambda ms: Heartbeat(Role.PRIMARY, ms, 1, 2),
        ProposePrimary: lambda ms: ProposePrimary(ms),
        NewView: lambda ms: NewView(ms, 3),
        AcceptBackup: lambda ms: AcceptBackup(ms, 4),
        RemoveBackup: lambda ms: RemoveBackup(ms, 5),
    }
    return others[cls](members)


@pytest.mark.parametrize(
    "cls",
    [Heartbeat, ProposePrimary, NewView, AcceptBackup, RemoveBackup],
    ids=lambda c: c.__name__,
)
def test_too_many_members(cls: type) -> None:
    ok = _with_members(cls, tuple(Member(i, 1) for i in range(MAX_MEMBERS)))
    assert decode_body(ok.TYPE, ok.encode()) == ok
    # The encoder does not check the limit, so it can build the forged body for us.
    too_many = _with_members(cls, tuple(Member(i, 1) for i in range(MAX_MEMBERS + 1)))
    assert reject_reason(too_many.TYPE, too_many.encode()) is RejectReason.MALFORMED


def test_member_count_is_checked_before_reading_members() -> None:
    """A forged huge count is refused as MALFORMED, not read until it runs out of bytes."""
    raw = struct.pack(">H", 0xFFFF)
    assert reject_reason(MessageType.PROPOSE_PRIMARY, raw) is RejectReason.MALFORMED


@pytest.mark.parametrize("msg_type", [MessageType.DATA, MessageType.ORDER])
def test_too_many_batch_entries(msg_type: MessageType) -> None:
    head = struct.pack(">Q", 0) if msg_type is MessageType.ORDER else b""
    raw = head + struct.pack(">I", MAX_BATCH + 1)
    assert reject_reason(msg_type, raw) is RejectReason.MALFORMED


def test_data_blob_longer_than_body_is_truncated() -> None:
    raw = struct.pack(">IQI", 1, 1, 100) + b"short"
    assert reject_reason(MessageType.DATA, raw) is RejectReason.TRUNCATED


@pytest.mark.parametrize(
    "body",
    [
        FirstAck(1),
        SecondAck(1, Member(2, 3)),
        PrimaryVote(1, True, 2, 3),
        AcceptAck(AckKind.STATE_INSTALLED, 1, 2),
        Data((DataEntry(1, b"x"),)),
        Order(1, (LogEntry(1, 2, 3, 4, b"y"),)),
        ProposeBackup(),
    ],
    ids=lambda b: type(b).__name__,
)
def test_trailing_byte_is_malformed(body: Any) -> None:
    assert reject_reason(body.TYPE, body.encode() + b"\x00") is RejectReason.MALFORMED


def test_state_offer_carries_a_sha256_digest() -> None:
    offer = StateOffer(3, 2, 7, 100, 1 << 40, bytes(range(32)))
    assert decode_body(MessageType.STATE_OFFER, offer.encode()) == offer
    short = StateOffer(3, 2, 7, 100, 5, b"x" * 31).encode()  # the encoder does not check
    assert reject_reason(MessageType.STATE_OFFER, short) is RejectReason.MALFORMED
