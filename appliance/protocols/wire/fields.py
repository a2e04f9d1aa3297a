"""A tiny big-endian field codec shared by every message body.

Message bodies are small, fixed-shape records (sequence numbers, ids, a few blobs). A
hand-rolled codec over :mod:`struct` keeps them compact, has no dependencies, and - most
importantly - gives the reader a single failure mode: any problem with untrusted input becomes
a :class:`~appliance.protocols.wire.errors.WireError`. Writing, by contrast, only ever sees
values our own code produced, so an out-of-range value there is a bug and raises
:class:`ValueError` loudly instead of being put on the wire truncated or wrapped.
"""

from __future__ import annotations

import struct
from typing import Self

from appliance.protocols.wire.errors import RejectReason, WireError

__all__ = ["Reader", "Writer"]

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")

U8_MAX = 0xFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


def check_uint(name: str, value: object, bits: int) -> int:
    """Return ``value`` if it is an int that fits in an unsigned ``bits``-bit field.

    Shared with the header code so every encoder rejects bad values the same way. Raises
    :class:`ValueError` (never :class:`WireError`): a bad value on the sending side is a bug.
    """
    if not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0 or value >> bits:
        raise ValueError(f"{name}={value} does not fit in u{bits} (0..{(1 << bits) - 1})")
    return value


class Writer:
    """Accumulates big-endian fields; every method returns ``self`` so calls chain."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, v: int) -> Self:
        self._buf += _U8.pack(check_uint("u8", v, 8))
        return self

    def u16(self, v: int) -> Self:
        self._buf += _U16.pack(check_uint("u16", v, 16))
        return self

    def u32(self, v: int) -> Self:
        self._buf += _U32.pack(check_uint("u32", v, 32))
        return self

    def u64(self, v: int) -> Self:
        self._buf += _U64.pack(check_uint("u64", v, 64))
        return self

    def f64(self, v: float) -> Self:
        """IEEE-754 double; NaN and infinities are passed through unchanged."""
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"f64 must be a float, not {type(v).__name__}")
        try:
            self._buf += _F64.pack(float(v))
        except OverflowError as exc:
            raise ValueError(f"f64 value {v!r} is out of range for a double") from exc
        return self

    def blob(self, b: bytes) -> Self:
        """A u32 length prefix followed by the bytes, so the reader knows where it ends."""
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise ValueError(f"blob must be bytes, not {type(b).__name__}")
        n = len(b)
        if n > U32_MAX:
            raise ValueError(f"blob of {n} bytes is too long for a u32 length")
        self._buf += _U32.pack(n)
        self._buf += b
        return self

    def text(self, s: str) -> Self:
        """A UTF-8 blob. Lone surrogates cannot be encoded and raise :class:`ValueError`."""
        if not isinstance(s, str):
            raise ValueError(f"text must be a str, not {type(s).__name__}")
        try:
            encoded = s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"text is not encodable as utf-8: {exc.reason}") from exc
        return self.blob(encoded)

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class Reader:
    """Consumes big-endian fields from untrusted bytes; raises only :class:`WireError`.

    Running out of bytes is :attr:`RejectReason.TRUNCATED`; anything that is present but
    nonsensical (bad utf-8, an absurd item count, leftover bytes) is
    :attr:`RejectReason.MALFORMED`.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int, what: str) -> int:
        """Reserve ``n`` bytes and return their start offset, or raise TRUNCATED."""
        start = self._pos
        if n > len(self._data) - start:
            raise WireError(
                RejectReason.TRUNCATED,
                f"{what} needs {n} bytes at offset {start}, only {len(self._data) - start} left",
            )
        self._pos = start + n
        return start

    def u8(self) -> int:
        value: int = _U8.unpack_from(self._data, self._take(1, "u8"))[0]
        return value

    def u16(self) -> int:
        value: int = _U16.unpack_from(self._data, self._take(2, "u16"))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack_from(self._data, self._take(4, "u32"))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack_from(self._data, self._take(8, "u64"))[0]
        return value

    def f64(self) -> float:
        value: float = _F64.unpack_from(self._data, self._take(8, "f64"))[0]
        return value

    def blob(self) -> bytes:
        n = self.u32()
        start = self._take(n, "blob")
        return self._data[start : start + n]

    def text(self) -> str:
        raw = self.blob()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(
                RejectReason.MALFORMED, f"text is not valid utf-8: {exc.reason}"
            ) from None

    def raw(self, n: int, what: str = "bytes") -> bytes:
        """The next ``n`` bytes as they are: a column whose length the caller already read."""
        start = self._take(n, what)
        return self._data[start : start + n]

    def skip(self, n: int, what: str = "bytes") -> int:
        """Pass over the next ``n`` bytes without copying them; their offset in the buffer
        (for a caller that slices a large column itself)."""
        return self._take(n, what)

    def count(self, max_items: int) -> int:
        """Read a u32 item count and refuse counts above ``max_items``.

        Bodies use this before looping over a list so a forged or corrupted count can never make
        a node allocate or iterate four billion times.
        """
        n = self.u32()
        if n > max_items:
            raise WireError(RejectReason.MALFORMED, f"item count {n} exceeds limit {max_items}")
        return n

    def finish(self) -> None:
        """Insist the whole buffer was consumed: trailing bytes mean we misparsed it."""
        left = self.remaining
        if left:
            raise WireError(RejectReason.MALFORMED, f"{left} trailing bytes")
