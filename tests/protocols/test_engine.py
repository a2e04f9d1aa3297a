"""The node engine as a host sees it: garbage in never hurts, and its interface is sans-I/O."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocols.config import ProtocolConfig
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import (
    Delivered,
    Event,
    FenceRequested,
    ReplyReceived,
    RoleChanged,
    SnapshotRequested,
    Stalled,
)
from appliance.protocols.messages import Role
from appliance.protocols.wire.datagram import decode
from appliance.protocols.wire.header import MessageType

KEY = b"k" * 32


def config(nodes: tuple[int, ...] = (1, 2)) -> ProtocolConfig:
    return ProtocolConfig(cluster_id=7, nodes=nodes, key=KEY)


def pump(
    engines: list[NodeEngine],
    start: float,
    until: float,
    seen: dict[int, list[Event]] | None = None,
) -> None:
    """A perfect network (1 ms per hop) and a minimal host answering every request."""
    now = start
    step = 0.001
    while now < until:
        now += step
        for e in engines:
            if e.get_timer() <= now:
                e.handle_timer(now)
            while (ev := e.next_event()) is not None:
                if seen is not None:
                    seen.setdefault(e.node, []).append(ev)
                if isinstance(ev, SnapshotRequested):
                    e.provide_snapshot(ev.snapshot_id, b"", now)
        outputs = [(e, e.datagrams_to_send(now)) for e in engines]
        for src, datagrams in outputs:
            for d in datagrams:
                for dst in engines:
                    if dst is not src:
                        dst.receive_datagram(d, now)


def test_two_nodes_form_a_group_and_serve_a_request() -> None:
    a, b = NodeEngine(config(), 1, 1, 0.0), NodeEngine(config(), 2, 1, 0.0)
    seen: dict[int, list[Event]] = {}
    pump([a, b], 0.0, 1.5, seen)
    assert a.role is Role.PRIMARY and b.role is Role.BACKUP
    seq = b.submit(b"hello")
    pump([a, b], 1.5, 1.6, seen)
    for node in (1, 2):
        assert [ev.payload for ev in seen[node] if isinstance(ev, Delivered)] == [b"hello"]
    assert b.gateway.stable >= seq  # held by both members, so acknowledged
    assert any(isinstance(ev, ReplyReceived) for ev in seen[2]) is False  # no app replied
    roles = [ev.role for ev in seen[1] if isinstance(ev, RoleChanged)]
    assert roles == [Role.PRIMARY]


def test_a_fenced_backup_is_removed_when_the_fence_reports_not_at_the_next_tick() -> None:
    a, b = NodeEngine(config(), 1, 1, 0.0), NodeEngine(config(), 2, 1, 0.0)
    seen: dict[int, list[Event]] = {}
    pump([a, b], 0.0, 1.5, seen)
    assert a.role is Role.PRIMARY and a.member.view is not None and 2 in a.member.view
    pump([a], 1.5, 1.5 + a.cfg.silence_timeout + 0.01, seen)  # b lost its power
    assert [ev.node for ev in seen[1] if isinstance(ev, FenceRequested)] == [2]
    done = a.get_timer() - 0.001  # the fence completes between two timers
    a.fence_result(2, True, done)
    assert a.member.view is not None and a.member.view.nodes == (1,)
    assert a.get_timer() >= done  # nothing left undone for the timer


def test_wrong_key_and_wrong_cluster_are_counted_not_obeyed() -> None:
    a = NodeEngine(config(), 1, 1, 0.0)
    stranger = NodeEngine(ProtocolConfig(cluster_id=7, nodes=(1, 2), key=b"x" * 32), 2, 1, 0.0)
    other = NodeEngine(ProtocolConfig(cluster_id=8, nodes=(1, 2), key=KEY), 2, 1, 0.0)
    stranger.handle_timer(0.0)
    other.handle_timer(0.0)
    for d in stranger.datagrams_to_send(0.0) + other.datagrams_to_send(0.0):
        a.receive_datagram(d, 0.0)
    assert a.filter.rejected == {"bad_hmac": 1, "wrong_cluster": 1}
    assert a.filter.accepted == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_any_bytes_never_raise(blobs: list[bytes]) -> None:
    a = NodeEngine(config(), 1, 1, 0.0)
    for i, blob in enumerate(blobs):
        a.receive_datagram(blob, i * 0.001)
    a.handle_timer(1.0)
    a.datagrams_to_send(1.0)
    assert a.filter.accepted == 0
    assert sum(a.filter.rejected.values()) + a.filter.own + a.acks_skipped == len(blobs)


def test_mutated_peer_datagrams_never_raise() -> None:
    rng = random.Random(5)
    a, b = NodeEngine(config(), 1, 1, 0.0), NodeEngine(config(), 2, 1, 0.0)
    pump([a, b], 0.0, 0.8)
    b.submit(b"x" * 50)
    b.handle_timer(0.9)
    datagrams = b.datagrams_to_send(0.9)
    assert datagrams
    for _ in range(2000):
        d = bytearray(rng.choice(datagrams))
        for _ in range(rng.randint(1, 4)):
            d[rng.randrange(len(d))] = rng.randrange(256)
        a.receive_datagram(bytes(d), 1.0)
    assert a.role is Role.PRIMARY
    assert a.filter.rejected  # counted by reason


def test_timer_is_a_deadline_not_a_busy_loop() -> None:
    a = NodeEngine(config((1,)), 1, 1, 0.0)
    a.handle_timer(0.0)
    t = a.get_timer()
    assert 0.0 < t <= a.cfg.heartbeat_interval


def test_a_thawed_primary_fences_nobody_for_the_silence_it_slept_through() -> None:
    engines = [NodeEngine(config((1, 2, 3)), n, 1, 0.0) for n in (1, 2, 3)]
    pump(engines, 0.0, 2.0)
    a = engines[0]
    assert a.role is Role.PRIMARY and a.member.view is not None and len(a.member.view.nodes) == 3
    # a stands still for three silence timeouts; the others do not matter here (they would
    # replace it; what counts is what a does the moment it wakes up).
    woke = 2.0 + 3 * a.cfg.silence_timeout
    a.handle_timer(woke)
    events = []
    while (ev := a.next_event()) is not None:
        events.append(ev)
    assert [type(ev) for ev in events if isinstance(ev, Stalled | FenceRequested)] == [Stalled]
    stall = next(ev for ev in events if isinstance(ev, Stalled))
    assert stall.seconds > 3 * a.cfg.silence_timeout - 0.01
    assert a.suspicions(woke) == []
    assert a.status()["stalls"] == 1
    # Silence it does hear, once awake, still counts: the peers stay quiet, a suspects them.
    later = woke + a.cfg.silence_timeout + 0.001
    for t in (woke + 0.01 * i for i in range(1, 100)):
        if t > later:
            break
        a.handle_timer(t)
    assert {s.node for s in a.suspicions(later)} == {2, 3}


def test_calls_at_heartbeat_pace_are_not_a_stall() -> None:
    a = NodeEngine(config((1,)), 1, 1, 0.0)
    now = 0.0
    for _ in range(200):
        now = a.get_timer()
        a.handle_timer(now)
    assert a.stalls == 0 and now > 1.0


def test_peers_report_last_heard_wire_and_suspicion() -> None:
    cfg = ProtocolConfig(cluster_id=1, nodes=(1, 2, 3), key=b"k" * 32)
    eng = NodeEngine(cfg, 1, 1, 10.0)
    peers = eng.peers(10.05)
    assert [p["node"] for p in peers] == [2, 3]
    assert peers[0]["last_heard_ago"] == pytest.approx(0.05)
    assert peers[0]["wire"] == "unknown" and peers[0]["health"] == "alive"
    assert peers[0]["suspicion"] is None
    late = eng.peers(10.5)[0]
    assert late["health"] == "silent" and "no datagram for 0.500 s" in str(late["suspicion"])


def test_replies_to_our_own_gateway_never_leave_the_process() -> None:
    """Nobody else listens to a node's gateway group: its replies are handed over in-process,
    and released at once (not at the next datagram that happens to be sent)."""
    from appliance.protocols.config import gateway_group
    from appliance.protocols.wire.datagram import decode

    a = NodeEngine(config((1,)), 1, 1, 0.0)
    pump([a], 0.0, 1.5)
    assert a.role is Role.PRIMARY
    seq = a.submit(b"request")
    now = 1.6
    sent = a.datagrams_to_send(now)
    replies: list[ReplyReceived] = []
    for _ in range(3):  # the host's turn: execute, reply, flush, as the driver does
        while (ev := a.next_event()) is not None:
            if isinstance(ev, Delivered) and ev.payload == b"request":
                a.send(ev.src_group, ev.conn_id, b"reply", after=ev.index)
            elif isinstance(ev, ReplyReceived):
                replies.append(ev)
        sent += a.datagrams_to_send(now)
    assert replies == [ReplyReceived(seq, b"reply")]
    headers = [decode(d, KEY, 7).header for d in sent]
    assert headers, "the request itself still goes to the group"
    assert all(h.dst_group != gateway_group(1) for h in headers)
    assert a.out.local_only >= 1


def test_a_backup_with_no_reply_awaited_drops_other_backups_confirmations_unread() -> None:
    """Another backup's SECOND_ACK serves the primary, and a gateway holding a reply for its
    commit; a backup whose gateway awaits nothing would authenticate it only to drop it."""
    from appliance.protocols.wire.datagram import decode
    from appliance.protocols.wire.header import MessageType

    engines = [NodeEngine(config((1, 2, 3)), n, 1, 0.0) for n in (1, 2, 3)]
    pump(engines, 0.0, 2.0)
    a, b, c = engines
    assert a.role is Role.PRIMARY and b.role is Role.BACKUP and c.role is Role.BACKUP
    a.submit(b"write")
    now = 2.001
    for d in a.datagrams_to_send(now):  # the request and its ordering reach both backups
        b.receive_datagram(d, now)
        c.receive_datagram(d, now)
    confirmation = [
        d
        for d in c.datagrams_to_send(now)
        if decode(d, KEY, 7).header.msg_type is MessageType.SECOND_ACK
    ]
    assert len(confirmation) == 1
    accepted = b.filter.accepted
    assert b.gateway.idle
    assert b.receive_datagram(confirmation[0], now) is False  # no flush, no re-arm after it
    assert (b.acks_skipped, b.filter.accepted) == (1, accepted)
    assert b.status()["acks_skipped"] == 1
    # A backup whose gateway has a request in flight reads it (its reply will need it), and
    # when that releases nothing, says no flush is needed ...
    b.submit(b"read")
    assert not b.gateway.idle
    assert b.receive_datagram(confirmation[0], now) is False
    assert b.filter.accepted == accepted + 1
    # ... and the primary always does: its commit is made of them. One that does not move it
    # (the other backup has not confirmed yet) needs no flush either; the last one does.
    before = a.member.acks.get(3, 0)
    commit = a.member.commit
    assert a.receive_datagram(confirmation[0], now) is False
    assert a.member.acks[3] > before and a.acks_skipped == 0 and a.member.commit == commit
    last = [
        d
        for d in b.datagrams_to_send(now)
        if decode(d, KEY, 7).header.msg_type is MessageType.SECOND_ACK
    ]
    assert a.receive_datagram(last[0], now) is True
    assert a.member.commit > commit


def test_a_flush_is_skipped_for_a_side_handed_nothing_since_its_last() -> None:
    """Flushing is idempotent at one instant: after a reply reached the host (an event that
    fed neither the replica nor the gateway), another flush scans nothing, and what falls due
    by time alone (a retransmission) still leaves, from the timer."""
    a, b = NodeEngine(config(), 1, 1, 0.0), NodeEngine(config(), 2, 1, 0.0)
    pump([a, b], 0.0, 1.5)
    assert a.role is Role.PRIMARY
    calls: list[str] = []
    for side, engine in (("member", b.member), ("gateway", b.gateway)):
        real = engine.flush

        def counted(now: float, real: Any = real, side: str = side) -> None:
            calls.append(side)
            real(now)

        engine.flush = counted  # type: ignore[method-assign]
    b.submit(b"request")
    sent = b.datagrams_to_send(1.6)
    assert sent and calls[0] == "gateway"  # only the gateway was handed something
    calls.clear()
    assert b.datagrams_to_send(1.6) == [] and calls == []  # nothing handed over since
    later = 2.6  # the request unacknowledged (a never heard it): its RTO has run out
    b.handle_timer(later)
    again = b.datagrams_to_send(later)
    assert calls[:2] == ["member", "gateway"]
    assert any(decode(d, KEY, 7).header.msg_type is MessageType.DATA for d in again)
