"""The VDF record codec: round trips, canonical form, and untrusted bytes raising only WireError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.protocols.vdf import Kind, VdfRecord, decode_records, encode_records
from appliance.protocols.vdf.records import FORMAT_VERSION, MAX_RECORDS
from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.fields import Writer

records_st = st.builds(
    VdfRecord,
    thread_id=st.integers(0, 2**32 - 1),
    op_id=st.integers(0, 2**64 - 1),
    counter=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(Kind),
    value=st.binary(max_size=64),
)


def sample() -> tuple[VdfRecord, ...]:
    return (
        VdfRecord(1, 7, 0, Kind.TIME, (1234).to_bytes(8, "big", signed=True)),
        VdfRecord(2, 7, 0, Kind.LOCK, (9).to_bytes(8, "big")),
        VdfRecord(1, 7, 1, Kind.RANDOM, b"\x02abc"),
        VdfRecord(2, 7, 1, Kind.INPUT, b"conn-3"),
        VdfRecord(3, 7, 0, Kind.RANDOM, b""),
    )


def test_round_trip_preserves_order() -> None:
    recs = sample()
    data = encode_records(recs)
    assert decode_records(data) == recs
    assert data[0] == FORMAT_VERSION


def test_empty_stream_is_empty_bytes() -> None:
    assert encode_records([]) == b""
    assert decode_records(b"") == ()


def test_kind_values_are_stable() -> None:
    assert [(k.name, int(k)) for k in Kind] == [
        ("TIME", 1),
        ("RANDOM", 2),
        ("LOCK", 3),
        ("INPUT", 4),
    ]


@given(st.lists(records_st, max_size=20))
def test_round_trip_property(recs: list[VdfRecord]) -> None:
    assert decode_records(encode_records(recs)) == tuple(recs)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        recs = decode_records(data)
    except WireError:
        return
    assert encode_records(recs) == data  # whatever decodes is canonical


@given(st.lists(records_st, min_size=1, max_size=5), st.data())
def test_mutated_encodings_raise_only_wire_error(
    recs: list[VdfRecord], data: st.DataObject
) -> None:
    wire = bytearray(encode_records(recs))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if op == "flip" and wire:
            i = data.draw(st.integers(0, len(wire) - 1))
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut" and wire:
            del wire[data.draw(st.integers(0, len(wire) - 1)) :]
        else:
            wire += data.draw(st.binary(min_size=1, max_size=8))
    try:
        decoded = decode_records(bytes(wire))
    except WireError:
        return
    assert encode_records(decoded) == bytes(wire)


def _one_record(kind: int) -> bytes:
    return Writer().u8(FORMAT_VERSION).u32(1).u32(0).u64(0).u32(0).u8(kind).blob(b"").getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x09" + b"\x00" * 30, RejectReason.MALFORMED),  # unknown version
        (Writer().u8(FORMAT_VERSION).u32(0).getvalue(), RejectReason.MALFORMED),  # non-canonical
        (Writer().u8(FORMAT_VERSION).u32(MAX_RECORDS + 1).getvalue(), RejectReason.MALFORMED),
        (Writer().u8(FORMAT_VERSION).u32(1000).getvalue(), RejectReason.TRUNCATED),
        (_one_record(0), RejectReason.MALFORMED),  # unknown kind
        (_one_record(5), RejectReason.MALFORMED),
        (_one_record(1) + b"\x00", RejectReason.MALFORMED),  # trailing byte
        (_one_record(1)[:-1], RejectReason.TRUNCATED),
    ],
)
def test_specific_rejections(data: bytes, reason: RejectReason) -> None:
    with pytest.raises(WireError) as info:
        decode_records(data)
    assert info.value.reason is reason


def test_one_valid_record_decodes() -> None:
    assert decode_records(_one_record(1)) == (VdfRecord(0, 0, 0, Kind.TIME, b""),)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"thread_id": -1},
        {"thread_id": 2**32},
        {"op_id": 2**64},
        {"counter": -1},
        {"kind": 3},
        {"value": "text"},
        {"value": bytearray(b"x")},
    ],
)
def test_record_validates_fields(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "thread_id": 0,
        "op_id": 0,
        "counter": 0,
        "kind": Kind.TIME,
        "value": b"",
    }
    fields.update(kwargs)
    with pytest.raises(ValueError) as info:
        VdfRecord(**fields)  # type: ignore[arg-type]
    assert not isinstance(info.value, WireError)


def test_record_is_frozen() -> None:
    rec = sample()[0]
    with pytest.raises(AttributeError):
        rec.counter = 5  # type: ignore[misc]
