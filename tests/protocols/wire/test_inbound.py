from __future__ import annotations

import pytest

from appliance.protocols.wire import (
    DatagramFilter,
    MessageType,
    RejectReason,
    WireError,
    encode,
)
from appliance.protocols.wire import datagram as datagram_module

from ._support import CLUSTER, KEY, OTHER_KEY, datagram, patch_and_sign


def wire(**kw: int) -> bytes:
    return encode(datagram(**kw), KEY)  # type: ignore[arg-type]


def last_reason(f: DatagramFilter) -> RejectReason | None:
    return None if f.last_error is None else f.last_error.reason


def test_accepts_valid_and_counts() -> None:
    f = DatagramFilter(KEY, CLUSTER, own_node=1)
    d = f.accept(wire(src_node=2, packet_number=1))
    assert d is not None and d.header.src_node == 2
    assert f.accepted == 1
    assert f.rejected == {}
    assert f.last_error is None
    assert f.own == 0


def test_drops_own_datagrams_without_error() -> None:
    f = DatagramFilter(KEY, CLUSTER, own_node=2)
    assert f.accept(wire(src_node=2, packet_number=1)) is None
    assert f.accept(wire(src_node=2, packet_number=1)) is None  # own: not even replay-checked
    assert (f.own, f.accepted, f.rejected, f.last_error) == (2, 0, {}, None)


def test_without_own_node_everything_is_a_peer() -> None:
    f = DatagramFilter(KEY, CLUSTER)
    assert f.accept(wire(src_node=0, packet_number=1)) is not None
    assert f.own == 0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01" * 2000, RejectReason.OVERSIZE),
        (b"\x01" * 10, RejectReason.TRUNCATED),
        (encode(datagram(version=2), KEY), RejectReason.BAD_VERSION),
        (encode(datagram(), OTHER_KEY), RejectReason.BAD_HMAC),
        (encode(datagram(cluster_id=CLUSTER + 1), KEY), RejectReason.WRONG_CLUSTER),
        (patch_and_sign(encode(datagram(), KEY), 1, ">B", 77), RejectReason.UNKNOWN_TYPE),
        (patch_and_sign(encode(datagram(), KEY), 2, ">H", 0x40), RejectReason.MALFORMED),
        (patch_and_sign(encode(datagram(), KEY), 52, ">I", 999), RejectReason.TRUNCATED),
    ],
)
def test_decode_rejects_are_counted(data: bytes, reason: RejectReason) -> None:
    f = DatagramFilter(KEY, CLUSTER)
    assert f.accept(data) is None
    assert f.rejected == {reason.value: 1}
    assert f.last_error is not None and f.last_error.reason is reason
    assert f.accepted == 0


def test_replay_and_stale_are_counted() -> None:
    f = DatagramFilter(KEY, CLUSTER, own_node=1)
    first = wire(incarnation=5, packet_number=100)
    assert f.accept(first) is not None
    assert f.accept(first) is None  # a duplicate delivered by the network, or a replay
    assert last_reason(f) is RejectReason.REPLAYED
    assert f.accept(wire(incarnation=5, packet_number=20)) is None  # older than the window
    assert f.accept(wire(incarnation=4, packet_number=500)) is None
    assert last_reason(f) is RejectReason.STALE
    assert f.accept(wire(incarnation=6, packet_number=0)) is not None  # node restarted
    assert f.rejected == {"replayed": 2, "stale": 1}
    assert f.accepted == 2


def test_rejects_do_not_advance_replay_state() -> None:
    f = DatagramFilter(KEY, CLUSTER)
    forged = encode(datagram(incarnation=99, packet_number=10**9), OTHER_KEY)
    assert f.accept(forged) is None
    assert f.accept(wire(incarnation=7, packet_number=1)) is not None


def test_forget() -> None:
    f = DatagramFilter(KEY, CLUSTER)
    w = wire(packet_number=3)
    assert f.accept(w) is not None
    f.forget(2)
    assert f.accept(w) is not None


def test_rejected_is_a_copy() -> None:
    f = DatagramFilter(KEY, CLUSTER)
    f.accept(b"")
    snapshot = f.rejected
    snapshot["truncated"] = 99
    assert f.rejected == {"truncated": 1}


def test_max_size_is_honoured() -> None:
    big = encode(datagram(body=b"x" * 3000), KEY)
    assert DatagramFilter(KEY, CLUSTER).accept(big) is None
    assert DatagramFilter(KEY, CLUSTER, max_size=9000).accept(big) is not None


def test_empty_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        DatagramFilter(b"", CLUSTER)


def test_a_decoder_bug_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.protocols.wire.inbound as inbound

    def broken(*_: object, **__: object) -> None:
        raise IndexError("oops")

    monkeypatch.setattr(inbound, "decode", broken)
    f = DatagramFilter(KEY, CLUSTER)
    assert f.accept(wire()) is None
    assert f.rejected == {"malformed": 1}
    assert isinstance(f.last_error, WireError)
    assert "decoder bug" in f.last_error.detail


def test_every_message_type_passes() -> None:
    f = DatagramFilter(KEY, CLUSTER)
    for pn, t in enumerate(MessageType):
        assert f.accept(encode(datagram(t, packet_number=pn), KEY)) is not None
    assert f.accepted == len(MessageType)
    assert datagram_module.DEFAULT_MAX_DATAGRAM == 1472


def test_own_datagrams_are_recognised_before_the_hmac() -> None:
    """Multicast loopback returns every send: they are dropped from the raw header, unverified."""
    f = DatagramFilter(KEY, CLUSTER, own_node=2)
    own = wire(src_node=2, packet_number=7)
    assert f.looped_back(own)
    assert f.looped_back(own[:-1] + bytes([own[-1] ^ 1]))  # not verified: dropped all the same
    assert not f.looped_back(wire(src_node=3, packet_number=7))
    assert not f.looped_back(own[:20])  # too short to be a datagram: for accept() to reject
    assert f.own == 2 and f.rejected == {}
    other_cluster = DatagramFilter(KEY, CLUSTER + 1, own_node=2)
    assert not other_cluster.looped_back(own)  # another cluster's node 2 is not us
    assert not DatagramFilter(KEY, CLUSTER).looped_back(own)  # no own node: nothing is ours
