from __future__ import annotations

import math

import pytest

from appliance.protocols.wire import Reader, RejectReason, WireError, Writer

WIDTHS = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}


def test_round_trip_all_field_kinds_and_chaining() -> None:
    data = (
        Writer()
        .u8(0xAB)
        .u16(0xBEEF)
        .u32(0xDEADBEEF)
        .u64(2**64 - 1)
        .f64(-1.5)
        .blob(b"\x00\x01")
        .text("olá, 世界")
        .blob(b"")
        .getvalue()
    )
    r = Reader(data)
    assert r.u8() == 0xAB
    assert r.u16() == 0xBEEF
    assert r.u32() == 0xDEADBEEF
    assert r.u64() == 2**64 - 1
    assert r.f64() == -1.5
    assert r.blob() == b"\x00\x01"
    assert r.text() == "olá, 世界"
    assert r.blob() == b""
    assert r.remaining == 0
    r.finish()


def test_big_endian_layout() -> None:
    data = Writer().u16(0x0102).u32(0x03040506).blob(b"z").getvalue()
    assert data == b"\x01\x02\x03\x04\x05\x06\x00\x00\x00\x01z"


@pytest.mark.parametrize("name", list(WIDTHS))
def test_integer_ranges_are_enforced_on_write(name: str) -> None:
    bits = WIDTHS[name]
    w = Writer()
    getattr(w, name)(0)
    getattr(w, name)((1 << bits) - 1)
    with pytest.raises(ValueError, match="does not fit"):
        getattr(w, name)(1 << bits)
    with pytest.raises(ValueError, match="does not fit") as info:
        getattr(w, name)(-1)
    assert not isinstance(info.value, WireError)  # a sender bug, not network input
    with pytest.raises(ValueError, match="must be an int"):
        getattr(w, name)(1.0)
    assert w.getvalue() == b"\x00" * (bits // 8) + b"\xff" * (bits // 8)


def test_f64_special_values_and_type_checks() -> None:
    data = Writer().f64(math.inf).f64(math.nan).f64(3).getvalue()
    r = Reader(data)
    assert r.f64() == math.inf
    assert math.isnan(r.f64())
    assert r.f64() == 3.0
    with pytest.raises(ValueError):
        Writer().f64("1.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Writer().f64(True)
    with pytest.raises(ValueError, match="out of range"):
        Writer().f64(10**400)


def test_blob_and_text_type_checks() -> None:
    with pytest.raises(ValueError):
        Writer().blob("str")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Writer().text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="utf-8"):
        Writer().text("\ud800")


@pytest.mark.parametrize("name", [*WIDTHS, "f64", "blob", "text"])
def test_underflow_is_truncated(name: str) -> None:
    with pytest.raises(WireError) as info:
        getattr(Reader(b""), name)()
    assert info.value.reason is RejectReason.TRUNCATED


def test_partial_integer_is_truncated() -> None:
    with pytest.raises(WireError) as info:
        Reader(b"\x00\x00\x00").u32()
    assert info.value.reason is RejectReason.TRUNCATED


def test_blob_longer_than_data_is_truncated() -> None:
    with pytest.raises(WireError) as info:
        Reader(b"\x00\x00\x00\x05abc").blob()
    assert info.value.reason is RejectReason.TRUNCATED
    with pytest.raises(WireError) as info:
        Reader(b"\xff\xff\xff\xff").blob()
    assert info.value.reason is RejectReason.TRUNCATED


def test_bad_utf8_is_malformed() -> None:
    with pytest.raises(WireError) as info:
        Reader(b"\x00\x00\x00\x02\xc3\x28").text()
    assert info.value.reason is RejectReason.MALFORMED


def test_count_limit() -> None:
    data = Writer().u32(3).u32(4).getvalue()
    r = Reader(data)
    assert r.count(3) == 3
    with pytest.raises(WireError) as info:
        r.count(3)
    assert info.value.reason is RejectReason.MALFORMED
    assert "exceeds" in info.value.detail


def test_finish_reports_trailing_bytes() -> None:
    r = Reader(b"\x01\x02\x03")
    r.u8()
    assert r.remaining == 2
    with pytest.raises(WireError) as info:
        r.finish()
    assert info.value.reason is RejectReason.MALFORMED
    assert info.value.detail == "2 trailing bytes"


def test_failed_read_does_not_consume() -> None:
    r = Reader(b"\x01\x02")
    with pytest.raises(WireError):
        r.u32()
    assert r.remaining == 2
    assert r.u16() == 0x0102
