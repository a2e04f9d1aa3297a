from __future__ import annotations

import dataclasses

import pytest

from appliance.protocols.wire import (
    PROTOCOL_VERSION,
    Flags,
    MessageType,
    OrderRecord,
)

from ._support import header

HEADER_WIDTHS = {
    "cluster_id": 32,
    "src_node": 16,
    "incarnation": 32,
    "packet_number": 64,
    "src_group": 16,
    "dst_group": 16,
    "conn_id": 32,
    "view": 32,
    "seq": 64,
    "ack": 64,
    "version": 8,
}
RECORD_WIDTHS = {"index": 64, "src_group": 16, "conn_id": 32, "seq": 64}


def test_message_type_values_are_stable() -> None:
    # These numbers are on the wire; renumbering one breaks mixed-version clusters.
    assert {t.name: t.value for t in MessageType} == {
        "DATA": 1,
        "FIRST_ACK": 2,
        "SECOND_ACK": 3,
        "NACK": 4,
        "HEARTBEAT": 5,
        "PROPOSE_PRIMARY": 6,
        "PRIMARY_VOTE": 7,
        "NEW_VIEW": 8,
        "PROPOSE_BACKUP": 9,
        "ACCEPT_BACKUP": 10,
        "ACCEPT_ACK": 11,
        "REMOVE_BACKUP": 12,
        "STATE": 13,
        "ORDER": 14,
        "STATE_OFFER": 15,
        "HANDOVER": 16,
    }
    assert (Flags.RETRANSMISSION, Flags.URGENT, Flags.LOGGED) == (1, 2, 4)


def test_defaults() -> None:
    h = header()
    assert h.flags is Flags.NONE
    assert h.version == PROTOCOL_VERSION == 1


@pytest.mark.parametrize("name", list(HEADER_WIDTHS))
def test_header_field_ranges(name: str) -> None:
    top = (1 << HEADER_WIDTHS[name]) - 1
    assert getattr(header(**{name: top}), name) == top
    assert getattr(header(**{name: 0}), name) == 0
    with pytest.raises(ValueError, match=name):
        header(**{name: top + 1})
    with pytest.raises(ValueError, match=name):
        header(**{name: -1})


@pytest.mark.parametrize("name", list(RECORD_WIDTHS))
def test_record_field_ranges(name: str) -> None:
    top = (1 << RECORD_WIDTHS[name]) - 1
    base = {"index": 1, "src_group": 1, "conn_id": 1, "seq": 1}
    assert getattr(OrderRecord(**{**base, name: top}), name) == top
    with pytest.raises(ValueError, match=name):
        OrderRecord(**{**base, name: top + 1})
    with pytest.raises(ValueError, match=name):
        OrderRecord(**{**base, name: -1})


def test_msg_type_and_flags_are_normalised_to_enums() -> None:
    h = header(2, flags=5)  # type: ignore[arg-type]
    assert h.msg_type is MessageType.FIRST_ACK
    assert type(h.flags) is Flags
    assert h.flags == Flags.RETRANSMISSION | Flags.LOGGED


@pytest.mark.parametrize("bad", [0, 99, 255, 256, -1])
def test_unknown_msg_type_rejected(bad: int) -> None:
    with pytest.raises(ValueError):
        header(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [8, 0x8000, 0x10000])
def test_unknown_flags_rejected(bad: int) -> None:
    with pytest.raises(ValueError):
        header(flags=bad)


def test_frozen_and_replace_revalidates() -> None:
    h = header()
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.seq = 1  # type: ignore[misc]
    assert dataclasses.replace(h, seq=9).seq == 9
    with pytest.raises(ValueError):
        dataclasses.replace(h, src_node=1 << 16)


@pytest.mark.parametrize("bad", [1.0, "1", None, b"\x01"])
@pytest.mark.parametrize("name", ["seq", "src_node", "version"])
def test_a_field_that_is_not_an_int_is_rejected_by_name(name: str, bad: object) -> None:
    with pytest.raises(ValueError, match=f"{name} must be an int"):
        header(**{name: bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seq must be an int"):
        OrderRecord(1, 1, 1, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [[], 1.0, "URGENT"])
def test_flags_that_are_not_an_int_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="flags"):
        header(flags=bad)  # type: ignore[arg-type]


def test_plain_int_flags_beside_an_enum_type_are_normalised() -> None:
    h = header(MessageType.DATA, flags=6)  # type: ignore[arg-type]
    assert type(h.flags) is Flags and h.flags == Flags.URGENT | Flags.LOGGED
