"""Whole-datagram codec: fixed header, ordering records, body, truncated HMAC.

Layout (all integers big-endian, offsets in bytes; ``docs/wire-format.md`` has the full table)::

     0  u8   version        PROTOCOL_VERSION (1)
     1  u8   msg_type       MessageType
     2  u16  flags          Flags; unknown bits are rejected
     4  u32  cluster_id
     8  u16  src_node
    10  u32  incarnation
    14  u64  packet_number
    22  u16  src_group
    24  u16  dst_group
    26  u32  conn_id
    30  u32  view
    34  u64  seq
    42  u64  ack
    50  u16  n_records
    52  u32  body_len
    56       n_records x OrderRecord (index u64, src_group u16, conn_id u32, seq u64) = 22 bytes
     .       body_len bytes of body
     .  16   HMAC-SHA256(key, every byte before it), first 16 bytes

The HMAC is always the last 16 bytes, so it can be checked before any length field is
believed: an unauthenticated sender can only ever cost us one HMAC computation. Only the
version byte is looked at first, so that a node of another protocol version is reported as
such rather than as an authentication failure.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass

from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.header import (
    KNOWN_FLAGS,
    MESSAGE_TYPE_OF,
    PROTOCOL_VERSION,
    RECORD_LAYOUT,
    Header,
    OrderRecord,
)

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "HMAC_LEN",
    "MAX_UDP_PAYLOAD",
    "Datagram",
    "decode",
    "encode",
    "overhead",
]

HMAC_LEN = 16
"""Truncated HMAC-SHA256: 128 bits is ample against forgery and saves 16 bytes per packet."""

DEFAULT_MAX_DATAGRAM = 1472
"""1500-byte Ethernet MTU - 20 (IPv4) - 8 (UDP): the largest datagram that is never fragmented.

A lost IP fragment loses the whole datagram, so fragmentation multiplies loss rates; batching
code uses :func:`overhead` to stay under this.
"""

MAX_UDP_PAYLOAD = 65507
"""Largest UDP payload IPv4 can carry; :func:`encode` refuses anything bigger."""

_HEADER = struct.Struct(">BBHIHIQHHIIQQHI")
_RECORD = RECORD_LAYOUT
HEADER_LEN = _HEADER.size  # 56
RECORD_LEN = _RECORD.size  # 22
_MAX_RECORDS = 0xFFFF

assert HEADER_LEN == 56 and RECORD_LEN == 22  # the documented layout; fails at import if edited


@dataclass(frozen=True, slots=True)
class Datagram:
    """One authenticated UDP datagram: header, piggybacked ordering records, opaque body.

    The body is opaque here on purpose: each message type's engine owns its body format (built
    with :class:`~appliance.protocols.wire.fields.Writer`), while this layer owns only what every
    datagram needs - routing, replay protection, authentication and framing.
    """

    header: Header
    records: tuple[OrderRecord, ...] = ()
    body: bytes = b""


def overhead(n_records: int) -> int:
    """Bytes a datagram spends on header, ``n_records`` ordering records and the HMAC.

    ``max_size - overhead(n)`` is the room left for the body, which is what a batcher needs.
    """
    if n_records < 0:
        raise ValueError(f"n_records={n_records} is negative")
    return HEADER_LEN + RECORD_LEN * n_records + HMAC_LEN


_SHA256_BLOCK = 64


@functools.lru_cache(maxsize=16)
def _pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 already fed with the HMAC inner and outer padded key (RFC 2104).

    ``hmac.digest`` sets up a new OpenSSL context for every call (2.8 us here); copying these
    two prepared states costs a quarter of that, on every datagram sent and received.
    """
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    return (
        hashlib.sha256(key.translate(_IPAD)),
        hashlib.sha256(key.translate(_OPAD)),
    )


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _mac(key: bytes, data: bytes | memoryview) -> bytes:
    """HMAC-SHA256(key, data), truncated to :data:`HMAC_LEN` bytes."""
    inner, outer = _pads(key)
    i = inner.copy()
    i.update(data)
    o = outer.copy()
    o.update(i.digest())
    return o.digest()[:HMAC_LEN]


def encode(d: Datagram, key: bytes) -> bytes:
    """Serialise and authenticate ``d``.

    Raises :class:`ValueError` for anything that cannot be represented (out-of-range fields,
    too many records, a datagram larger than :data:`MAX_UDP_PAYLOAD`, an empty key): those are
    bugs in the caller, not network conditions. Whether it fits the configured MTU is the
    caller's decision (see :func:`overhead`); the receiver enforces its ``max_size``.
    """
    if not key:
        raise ValueError("an empty HMAC key would authenticate nothing")
    h = d.header
    if not isinstance(h, Header):
        raise ValueError(f"header must be a Header, not {type(h).__name__}")
    records = d.records
    if len(records) > _MAX_RECORDS:
        raise ValueError(f"{len(records)} records exceed the u16 count field")
    body = d.body
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError(f"body must be bytes, not {type(body).__name__}")
    total = overhead(len(records)) + len(body)
    if total > MAX_UDP_PAYLOAD:
        raise ValueError(f"datagram of {total} bytes exceeds the UDP maximum {MAX_UDP_PAYLOAD}")

    buf = bytearray(total)
    try:
        _HEADER.pack_into(
            buf,
            0,
            h.version,
            int(h.msg_type),
            int(h.flags),
            h.cluster_id,
            h.src_node,
            h.incarnation,
            h.packet_number,
            h.src_group,
            h.dst_group,
            h.conn_id,
            h.view,
            h.seq,
            h.ack,
            len(records),
            len(body),
        )
        offset = HEADER_LEN
        for r in records:
            if not isinstance(r, OrderRecord):
                raise ValueError(f"records must be OrderRecord, not {type(r).__name__}")
            _RECORD.pack_into(buf, offset, r.index, r.src_group, r.conn_id, r.seq)
            offset += RECORD_LEN
    except struct.error as exc:  # only reachable if a frozen instance was tampered with
        raise ValueError(f"field out of range: {exc}") from exc
    buf[offset : offset + len(body)] = body
    offset += len(body)
    buf[offset:] = _mac(key, memoryview(buf)[:offset])
    return bytes(buf)


def decode(
    data: bytes, key: bytes, cluster_id: int, max_size: int = DEFAULT_MAX_DATAGRAM
) -> Datagram:
    """Parse and authenticate one received datagram; raises only :class:`WireError`.

    Checks run cheapest-and-least-trusting first: size bounds, the version byte, then the
    HMAC, and only then anything that depends on header contents. Replay protection is *not*
    done here (it needs per-sender state): see :class:`~appliance.protocols.wire.ReplayGuard`
    and :class:`~appliance.protocols.wire.DatagramFilter`.
    """
    size = len(data)
    if size > max_size:
        raise WireError(RejectReason.OVERSIZE, f"{size} bytes > max {max_size}")
    if size < HEADER_LEN + HMAC_LEN:
        raise WireError(RejectReason.TRUNCATED, f"{size} bytes < minimum {HEADER_LEN + HMAC_LEN}")
    version = data[0]
    if version != PROTOCOL_VERSION:
        raise WireError(
            RejectReason.BAD_VERSION, f"version {version}, this node speaks {PROTOCOL_VERSION}"
        )
    signed = size - HMAC_LEN
    view = memoryview(data)
    if not hmac.compare_digest(_mac(key, view[:signed]), view[signed:]):
        raise WireError(RejectReason.BAD_HMAC, "authentication failed")

    fields = _HEADER.unpack_from(data, 0)
    _, msg_type, flags, cid = fields[:4]
    n_records, body_len = fields[13:]
    if cid != cluster_id:
        raise WireError(RejectReason.WRONG_CLUSTER, f"cluster {cid}, expected {cluster_id}")
    if msg_type not in MESSAGE_TYPE_OF:
        raise WireError(RejectReason.UNKNOWN_TYPE, f"message type {msg_type}")
    if flags & ~KNOWN_FLAGS:
        raise WireError(RejectReason.MALFORMED, f"unknown flag bits {flags & ~KNOWN_FLAGS:#x}")
    expected = HEADER_LEN + RECORD_LEN * n_records + body_len
    if expected > signed:
        raise WireError(
            RejectReason.TRUNCATED,
            f"{n_records} records + {body_len}-byte body need {expected - signed} more bytes",
        )
    if expected < signed:
        raise WireError(RejectReason.MALFORMED, f"{signed - expected} trailing bytes")

    header = Header.unpacked(fields)  # every field checked above or in range by its width
    records = tuple(
        OrderRecord(*_RECORD.unpack_from(data, HEADER_LEN + i * RECORD_LEN))
        for i in range(n_records)
    )
    body_start = HEADER_LEN + RECORD_LEN * n_records
    body = bytes(data[body_start:signed])
    return Datagram(header=header, records=records, body=body)
