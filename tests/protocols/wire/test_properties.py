"""Property tests: the codec round-trips and decoding fails only with WireError."""

from __future__ import annotations

import contextlib

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from appliance.protocols.wire import (
    DEFAULT_MAX_DATAGRAM,
    HMAC_LEN,
    Datagram,
    Flags,
    Header,
    MessageType,
    OrderRecord,
    Reader,
    WireError,
    decode,
    encode,
    overhead,
)

from ._support import KEY, sign

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def uint(bits: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=(1 << bits) - 1)


headers = st.builds(
    Header,
    msg_type=st.sampled_from(MessageType),
    cluster_id=uint(32),
    src_node=uint(16),
    incarnation=uint(32),
    packet_number=uint(64),
    src_group=uint(16),
    dst_group=uint(16),
    conn_id=uint(32),
    view=uint(32),
    seq=uint(64),
    ack=uint(64),
    flags=st.sampled_from([Flags(i) for i in range(8)]),
)
records = st.builds(OrderRecord, index=uint(64), src_group=uint(16), conn_id=uint(32), seq=uint(64))
datagrams = st.builds(
    Datagram,
    header=headers,
    records=st.lists(records, max_size=8).map(tuple),
    body=st.binary(max_size=400),
)
keys = st.binary(min_size=1, max_size=64)


@SETTINGS
@given(datagrams, keys)
def test_round_trip(d: Datagram, key: bytes) -> None:
    wire = encode(d, key)
    assert len(wire) == overhead(len(d.records)) + len(d.body)
    assert decode(wire, key, d.header.cluster_id, max_size=len(wire)) == d


@SETTINGS
@given(st.binary(max_size=DEFAULT_MAX_DATAGRAM + 50), uint(32))
def test_any_bytes_decode_or_wire_error(data: bytes, cluster: int) -> None:
    with contextlib.suppress(WireError):
        decode(data, KEY, cluster)


@SETTINGS
@given(
    st.binary(min_size=56, max_size=600),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=0, max_value=0xFFFF),
    uint(32),
)
def test_any_authenticated_bytes_decode_or_wire_error(
    data: bytes, msg_type: int, n_records: int, body_len: int
) -> None:
    """Random contents *with a valid HMAC*, so every check after authentication is exercised."""
    raw = bytearray(data)
    raw[0] = 1
    raw[1] = msg_type if msg_type % 3 else raw[1]
    if n_records % 2:
        raw[50:52] = n_records.to_bytes(2, "big")
        raw[52:56] = body_len.to_bytes(4, "big")
    try:
        d = decode(sign(bytes(raw)), KEY, int.from_bytes(raw[4:8], "big"), max_size=10_000)
    except WireError:
        return
    assert encode(d, KEY) == sign(bytes(raw))


@SETTINGS
@given(datagrams, st.data())
def test_single_byte_mutation_is_rejected(d: Datagram, data: st.DataObject) -> None:
    wire = encode(d, KEY)
    pos = data.draw(st.integers(min_value=0, max_value=len(wire) - 1), label="pos")
    xor = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    mutated = bytearray(wire)
    mutated[pos] ^= xor
    try:
        decode(bytes(mutated), KEY, d.header.cluster_id, max_size=len(wire))
    except WireError:
        return
    raise AssertionError(f"mutation at {pos} accepted")


@SETTINGS
@given(datagrams, st.data())
def test_truncation_and_extension_are_rejected(d: Datagram, data: st.DataObject) -> None:
    wire = encode(d, KEY)
    cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1), label="cut")
    extra = data.draw(st.binary(min_size=1, max_size=HMAC_LEN + 30), label="extra")
    for bad in (wire[:cut], wire + extra, wire[:cut] + extra):
        if bad == wire:
            continue
        try:
            decode(bad, KEY, d.header.cluster_id, max_size=len(bad))
        except WireError:
            continue
        raise AssertionError(f"altered datagram of {len(bad)} bytes accepted")


_OPS = st.sampled_from(["u8", "u16", "u32", "u64", "f64", "blob", "text", "count", "finish"])


@SETTINGS
@given(st.binary(max_size=64), st.lists(_OPS, max_size=12), st.integers(0, 10))
def test_reader_raises_only_wire_error(data: bytes, ops: list[str], limit: int) -> None:
    r = Reader(data)
    try:
        for op in ops:
            if op == "count":
                r.count(limit)
            else:
                getattr(r, op)()
            assert 0 <= r.remaining <= len(data)
    except WireError:
        pass


@SETTINGS
@given(key=st.binary(min_size=1, max_size=200), data=st.binary(max_size=1500))
def test_the_mac_is_hmac_sha256_truncated(key: bytes, data: bytes) -> None:
    """The prepared-pad HMAC is RFC 2104's, for keys shorter and longer than the block."""
    import hmac

    from appliance.protocols.wire.datagram import _mac

    assert _mac(key, data) == hmac.digest(key, data, "sha256")[:HMAC_LEN]
    assert _mac(key, memoryview(data)) == _mac(key, data)


@SETTINGS
@given(
    msg_type=st.sampled_from(list(MessageType)),
    flags=st.integers(0, int(Flags.RETRANSMISSION | Flags.URGENT | Flags.LOGGED)),
    fields=st.tuples(
        uint(32),
        uint(16),
        uint(32),
        uint(64),
        uint(16),
        uint(16),
        uint(32),
        uint(32),
        uint(64),
        uint(64),
    ),
)
def test_a_decoded_header_is_the_constructed_one(
    msg_type: MessageType, flags: int, fields: tuple[int, ...]
) -> None:
    """The decoder's unchecked construction gives what the validating constructor gives."""
    h = Header(msg_type, *fields, flags=Flags(flags))
    got = decode(encode(Datagram(h), KEY), KEY, h.cluster_id).header
    assert got == h and repr(got) == repr(h)
    assert type(got.msg_type) is MessageType and type(got.flags) is Flags
