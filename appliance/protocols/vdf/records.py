"""VDF records: what the primary writes down about each non-deterministic event.

LLFT's generic determinizer algorithm records, for every non-deterministic operation, "the
thread id, the operation id, the operation counter and the operation's metadata", in order, and
ships them to the backups so they obtain the same results in the same order. A
:class:`VdfRecord` is exactly that tuple:

``thread_id``
    the stable *logical* id of the application thread (assigned in creation order, identical on
    every replica; never an OS thread ident).
``op_id``
    the index, in the group's ordered log, of the operation (client request) being executed.
``counter``
    the position of this event within that thread's sequence of non-deterministic events for
    that operation (0, 1, 2, ... per thread, shared by all kinds).
``kind`` and ``value``
    which instance of the algorithm produced it and its metadata: the clock reading for
    :attr:`Kind.TIME`, the random draw for :attr:`Kind.RANDOM`, the mutex id for
    :attr:`Kind.LOCK`, the id of the input consumed for :attr:`Kind.INPUT`.

The order of the records in a stream is meaningful: for :attr:`Kind.LOCK` it *is* the order in
which threads acquired each mutex on the primary.

The stream codec is canonical (``encode_records(decode_records(b)) == b`` for every ``b`` that
decodes) and an operation without non-deterministic events costs nothing on the wire: the empty
stream is ``b""``. Decoding untrusted bytes raises only
:class:`~appliance.protocols.wire.errors.WireError`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from appliance.protocols.wire.errors import RejectReason, WireError
from appliance.protocols.wire.fields import Reader, Writer, check_uint

__all__ = [
    "FORMAT_VERSION",
    "MAX_RECORDS",
    "Kind",
    "VdfRecord",
    "decode_records",
    "encode_records",
]

FORMAT_VERSION = 1
"""First byte of a non-empty record stream."""

MAX_RECORDS = 1 << 20
"""Refuse streams claiming more records than this (a forged count must not cost memory)."""

# thread_id u32, op_id u64, counter u32, kind u8, value length u32 (value may be empty).
_MIN_RECORD_SIZE = 4 + 8 + 4 + 1 + 4


class Kind(enum.IntEnum):
    """Which source of non-determinism a record masks."""

    TIME = 1
    """A clock read; value: the primary's reading in ms, signed 64-bit big-endian."""
    RANDOM = 2
    """A random draw; value: a tagged bound and result, or tagged raw bytes."""
    LOCK = 3
    """A mutex acquisition; value: the mutex id, unsigned 64-bit big-endian."""
    INPUT = 4
    """Which of several ready inputs the thread consumed; value: that input's id."""


@dataclass(frozen=True, slots=True)
class VdfRecord:
    """One non-deterministic event, as recorded by the primary."""

    thread_id: int
    op_id: int
    counter: int
    kind: Kind
    value: bytes

    def __post_init__(self) -> None:
        check_uint("thread_id", self.thread_id, 32)
        check_uint("op_id", self.op_id, 64)
        check_uint("counter", self.counter, 32)
        if not isinstance(self.kind, Kind):
            raise ValueError(f"kind must be a Kind, not {self.kind!r}")
        if not isinstance(self.value, bytes):
            raise ValueError(f"value must be bytes, not {type(self.value).__name__}")


def encode_records(records: Iterable[VdfRecord]) -> bytes:
    """Encode a record stream, preserving order. No records encode to ``b""``."""
    items = tuple(records)
    if not items:
        return b""
    if len(items) > MAX_RECORDS:
        raise ValueError(f"{len(items)} records exceed the limit of {MAX_RECORDS}")
    w = Writer().u8(FORMAT_VERSION).u32(len(items))
    for rec in items:
        w.u32(rec.thread_id).u64(rec.op_id).u32(rec.counter).u8(rec.kind).blob(rec.value)
    return w.getvalue()


def decode_records(data: bytes) -> tuple[VdfRecord, ...]:
    """Decode a record stream from untrusted bytes; raises only :class:`WireError`."""
    if not data:
        return ()
    r = Reader(data)
    version = r.u8()
    if version != FORMAT_VERSION:
        raise WireError(RejectReason.MALFORMED, f"unknown VDF record format version {version}")
    n = r.count(MAX_RECORDS)
    if n == 0:
        raise WireError(RejectReason.MALFORMED, "empty VDF record stream must be encoded as b''")
    if n * _MIN_RECORD_SIZE > r.remaining:
        raise WireError(
            RejectReason.TRUNCATED,
            f"{n} VDF records need at least {n * _MIN_RECORD_SIZE} bytes, {r.remaining} left",
        )
    out: list[VdfRecord] = []
    for _ in range(n):
        thread_id = r.u32()
        op_id = r.u64()
        counter = r.u32()
        raw_kind = r.u8()
        value = r.blob()
        try:
            kind = Kind(raw_kind)
        except ValueError:
            raise WireError(RejectReason.MALFORMED, f"unknown VDF record kind {raw_kind}") from None
        out.append(VdfRecord(thread_id, op_id, counter, kind, value))
    r.finish()
    return tuple(out)
