"""Shared builders for the wire tests."""

from __future__ import annotations

import hmac
import struct

from appliance.protocols.wire import (
    HMAC_LEN,
    Datagram,
    Flags,
    Header,
    MessageType,
    OrderRecord,
)

KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
CLUSTER = 0xC0FFEE


def header(msg_type: MessageType = MessageType.DATA, /, **overrides: int | Flags) -> Header:
    fields: dict[str, int | Flags] = {
        "cluster_id": CLUSTER,
        "src_node": 2,
        "incarnation": 7,
        "packet_number": 1000,
        "src_group": 10,
        "dst_group": 20,
        "conn_id": 3,
        "view": 4,
        "seq": 55,
        "ack": 54,
    }
    fields.update(overrides)
    return Header(msg_type, **fields)  # type: ignore[arg-type]


def datagram(
    msg_type: MessageType = MessageType.DATA,
    /,
    n_records: int = 2,
    body: bytes = b"hello body",
    **overrides: int | Flags,
) -> Datagram:
    records = tuple(OrderRecord(100 + i, 10, 3, 50 + i) for i in range(n_records))
    return Datagram(header(msg_type, **overrides), records, body)


def sign(unsigned: bytes, key: bytes = KEY) -> bytes:
    """Append a valid truncated HMAC, to build datagrams that get past authentication."""
    return unsigned + hmac.digest(key, unsigned, "sha256")[:HMAC_LEN]


def patch_and_sign(signed: bytes, offset: int, fmt: str, value: int, key: bytes = KEY) -> bytes:
    """Overwrite one big-endian field of an encoded datagram and re-authenticate it."""
    raw = bytearray(signed[:-HMAC_LEN])
    struct.pack_into(fmt, raw, offset, value)
    return sign(bytes(raw), key)
