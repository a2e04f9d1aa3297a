from __future__ import annotations

import struct

import pytest

from appliance.protocols.wire import (
    DEFAULT_MAX_DATAGRAM,
    HMAC_LEN,
    Datagram,
    Flags,
    MessageType,
    OrderRecord,
    RejectReason,
    WireError,
    decode,
    encode,
    overhead,
)
from appliance.protocols.wire.datagram import MAX_UDP_PAYLOAD

from ._support import CLUSTER, KEY, OTHER_KEY, datagram, header, patch_and_sign, sign


def reject(data: bytes, *, key: bytes = KEY, cluster: int = CLUSTER, **kw: int) -> WireError:
    with pytest.raises(WireError) as info:
        decode(data, key, cluster, **kw)
    return info.value


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("msg_type", list(MessageType))
@pytest.mark.parametrize("n_records", [0, 1, 5])
@pytest.mark.parametrize("body", [b"", b"x", bytes(range(256))])
def test_round_trip_every_type(msg_type: MessageType, n_records: int, body: bytes) -> None:
    d = datagram(msg_type, n_records, body, flags=Flags.RETRANSMISSION | Flags.URGENT)
    wire = encode(d, KEY)
    assert len(wire) == overhead(n_records) + len(body)
    out = decode(wire, KEY, CLUSTER)
    assert out == d
    assert out.header.msg_type is msg_type
    assert type(out.body) is bytes


def test_round_trip_extreme_values() -> None:
    d = Datagram(
        header(
            MessageType.ORDER,
            cluster_id=2**32 - 1,
            src_node=2**16 - 1,
            incarnation=2**32 - 1,
            packet_number=2**64 - 1,
            src_group=2**16 - 1,
            dst_group=0,
            conn_id=2**32 - 1,
            view=2**32 - 1,
            seq=2**64 - 1,
            ack=2**64 - 1,
            flags=Flags.RETRANSMISSION | Flags.URGENT | Flags.LOGGED,
        ),
        (OrderRecord(2**64 - 1, 2**16 - 1, 2**32 - 1, 2**64 - 1), OrderRecord(0, 0, 0, 0)),
    )
    assert decode(encode(d, KEY), KEY, 2**32 - 1) == d


def test_documented_byte_layout() -> None:
    h = header(
        MessageType.NACK,
        flags=Flags.LOGGED,
        cluster_id=0x01020304,
        src_node=0x0506,
        incarnation=0x0708090A,
        packet_number=0x0B0C0D0E0F101112,
        src_group=0x1314,
        dst_group=0x1516,
        conn_id=0x1718191A,
        view=0x1B1C1D1E,
        seq=0x1F20212223242526,
        ack=0x2728292A2B2C2D2E,
    )
    rec = OrderRecord(0x3132333435363738, 0x393A, 0x3B3C3D3E, 0x4142434445464748)
    wire = encode(Datagram(h, (rec,), b"BODY"), KEY)
    expected_header = bytes.fromhex(
        "01 04 0004 01020304 0506 0708090a 0b0c0d0e0f101112 1314 1516 1718191a 1b1c1d1e"
        " 1f20212223242526 2728292a2b2c2d2e 0001 00000004"
    )
    assert len(expected_header) == 56
    assert wire[:56] == expected_header
    assert wire[56:78] == bytes.fromhex("3132333435363738 393a 3b3c3d3e 4142434445464748")
    assert wire[78:82] == b"BODY"
    assert wire[82:] == sign(wire[:82])[82:]
    assert len(wire[82:]) == HMAC_LEN == 16


def test_overhead() -> None:
    assert overhead(0) == 56 + 16
    assert overhead(3) == 56 + 3 * 22 + 16
    with pytest.raises(ValueError):
        overhead(-1)


def test_exactly_max_size_is_accepted_one_more_is_oversize() -> None:
    room = DEFAULT_MAX_DATAGRAM - overhead(1)
    d = datagram(n_records=1, body=b"b" * room)
    wire = encode(d, KEY)
    assert len(wire) == DEFAULT_MAX_DATAGRAM
    assert decode(wire, KEY, CLUSTER) == d
    big = encode(datagram(n_records=1, body=b"b" * (room + 1)), KEY)
    assert reject(big).reason is RejectReason.OVERSIZE
    assert decode(big, KEY, CLUSTER, max_size=len(big)) is not None


def test_decode_accepts_bytes_like_views() -> None:
    wire = encode(datagram(), KEY)
    assert decode(bytearray(wire), KEY, CLUSTER) == datagram()  # type: ignore[arg-type]


# --- every reject reason ---------------------------------------------------------------------


def test_oversize() -> None:
    err = reject(b"\x01" * (DEFAULT_MAX_DATAGRAM + 1))
    assert err.reason is RejectReason.OVERSIZE
    assert reject(encode(datagram(), KEY), max_size=50).reason is RejectReason.OVERSIZE


@pytest.mark.parametrize("size", [0, 1, 55, 71])
def test_too_short_for_header_and_hmac(size: int) -> None:
    wire = encode(datagram(n_records=0, body=b""), KEY)
    assert len(wire) == 72
    assert reject(wire[:size]).reason is RejectReason.TRUNCATED


@pytest.mark.parametrize("version", [0, 2, 255])
def test_bad_version_checked_before_hmac(version: int) -> None:
    wire = encode(datagram(version=version), KEY)
    err = reject(wire)
    assert err.reason is RejectReason.BAD_VERSION
    # even without a valid HMAC, so a v2 node is reported as such and not as an attacker
    assert reject(wire[:-1] + bytes([wire[-1] ^ 1])).reason is RejectReason.BAD_VERSION


def test_bad_hmac_wrong_key() -> None:
    err = reject(encode(datagram(), OTHER_KEY))
    assert err.reason is RejectReason.BAD_HMAC


@pytest.mark.parametrize("where", [1, 10, 56, 80, -16, -1])
def test_bad_hmac_on_any_bit_flip(where: int) -> None:
    wire = bytearray(encode(datagram(), KEY))
    wire[where] ^= 0x01
    assert reject(bytes(wire)).reason is RejectReason.BAD_HMAC


def test_bad_hmac_hides_header_contents() -> None:
    # A forged datagram with a wrong cluster and unknown type is reported only as BAD_HMAC:
    # nothing past the version byte is interpreted before authentication.
    raw = bytearray(encode(datagram(), KEY)[:-HMAC_LEN])
    raw[1] = 200
    struct.pack_into(">I", raw, 4, 999)
    struct.pack_into(">I", raw, 52, 2**32 - 1)
    assert reject(bytes(raw) + b"\x00" * HMAC_LEN).reason is RejectReason.BAD_HMAC


def test_wrong_cluster() -> None:
    err = reject(encode(datagram(cluster_id=CLUSTER + 1), KEY))
    assert err.reason is RejectReason.WRONG_CLUSTER


@pytest.mark.parametrize("msg_type", [0, 99, 255])
def test_unknown_type(msg_type: int) -> None:
    wire = patch_and_sign(encode(datagram(), KEY), 1, ">B", msg_type)
    assert reject(wire).reason is RejectReason.UNKNOWN_TYPE


@pytest.mark.parametrize("flags", [8, 0x80, 0x8000, 0xFFFF])
def test_unknown_flag_bits(flags: int) -> None:
    wire = patch_and_sign(encode(datagram(), KEY), 2, ">H", flags)
    err = reject(wire)
    assert err.reason is RejectReason.MALFORMED
    assert "flag" in err.detail


@pytest.mark.parametrize(
    ("offset", "fmt", "value"),
    [
        (50, ">H", 3),  # one more record than present
        (50, ">H", 0xFFFF),
        (52, ">I", 11),  # one more body byte than present
        (52, ">I", 0xFFFF_FFFF),
    ],
)
def test_length_fields_larger_than_datagram(offset: int, fmt: str, value: int) -> None:
    wire = patch_and_sign(
        encode(datagram(n_records=2, body=b"0123456789"), KEY), offset, fmt, value
    )
    assert reject(wire).reason is RejectReason.TRUNCATED


@pytest.mark.parametrize(("offset", "fmt", "value"), [(50, ">H", 1), (52, ">I", 0), (52, ">I", 9)])
def test_length_fields_smaller_than_datagram(offset: int, fmt: str, value: int) -> None:
    wire = patch_and_sign(
        encode(datagram(n_records=2, body=b"0123456789"), KEY), offset, fmt, value
    )
    err = reject(wire)
    assert err.reason is RejectReason.MALFORMED
    assert "trailing" in err.detail


def test_appended_bytes_are_rejected() -> None:
    wire = encode(datagram(), KEY)
    assert reject(wire + b"\x00").reason is RejectReason.BAD_HMAC
    assert reject(sign(wire[:-HMAC_LEN] + b"\x00")).reason is RejectReason.MALFORMED


def test_check_order() -> None:
    # oversize beats everything, version beats HMAC, HMAC beats cluster and type
    bad_everything = bytes([2]) + b"\xff" * (DEFAULT_MAX_DATAGRAM + 10)
    assert reject(bad_everything).reason is RejectReason.OVERSIZE
    assert reject(bad_everything[:100]).reason is RejectReason.BAD_VERSION
    assert reject(bytes([2]) + b"\xff" * 10).reason is RejectReason.TRUNCATED
    foreign = encode(datagram(cluster_id=CLUSTER + 1), OTHER_KEY)
    assert reject(foreign).reason is RejectReason.BAD_HMAC
    wrong_both = patch_and_sign(encode(datagram(cluster_id=CLUSTER + 1), KEY), 1, ">B", 99)
    assert reject(wrong_both).reason is RejectReason.WRONG_CLUSTER


# --- encode refuses what cannot be represented -----------------------------------------------


def test_encode_rejects_empty_key() -> None:
    with pytest.raises(ValueError, match="key"):
        encode(datagram(), b"")


def test_encode_rejects_too_many_records() -> None:
    recs = tuple(OrderRecord(i, 0, 0, 0) for i in range(0x10000))
    with pytest.raises(ValueError, match="records"):
        encode(Datagram(header(), recs), KEY)


def test_encode_rejects_more_than_udp_can_carry() -> None:
    room = MAX_UDP_PAYLOAD - overhead(0)
    assert len(encode(Datagram(header(), (), b"x" * room), KEY)) == MAX_UDP_PAYLOAD
    with pytest.raises(ValueError, match="UDP"):
        encode(Datagram(header(), (), b"x" * (room + 1)), KEY)


def test_encode_rejects_wrong_types() -> None:
    with pytest.raises(ValueError):
        encode(Datagram(header(), (), "text"), KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode(Datagram(header(), ((1, 2, 3, 4),)), KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode(Datagram("h"), KEY)  # type: ignore[arg-type]


def test_encode_rejects_tampered_out_of_range_field() -> None:
    h = header()
    object.__setattr__(h, "src_node", 1 << 16)  # bypasses __post_init__ on purpose
    with pytest.raises(ValueError, match="out of range"):
        encode(Datagram(h), KEY)
