"""A primary's own gateway's requests travel whole in the ORDER that orders them.

While a node's replica is the primary of an annexed group (both replication styles), the
requests its own gateway sends reach that replica in-process only: the ORDER carrying their
ordering records and annexes carries them too. The backups get one datagram per request
instead of two, and still deliver every request with its annex; the gateway's
acknowledgements of replies, which no request carries to them any more, reach them by a
FirstAck within a heartbeat interval.
"""

from __future__ import annotations

from appliance.protocols.config import ProtocolConfig, gateway_group
from appliance.protocols.engine import NodeEngine
from appliance.protocols.events import Delivered, Event, SnapshotRequested
from appliance.protocols.messages import FirstAck, Order, Role, decode_body
from appliance.protocols.wire.datagram import Datagram, decode
from appliance.protocols.wire.header import MessageType

KEY = b"k" * 32
NODES = (1, 2, 3)


def config(**kw: object) -> ProtocolConfig:
    return ProtocolConfig(cluster_id=7, nodes=NODES, key=KEY, annexed=True, **kw)  # type: ignore[arg-type]


class Net:
    """A perfect network (1 ms per step) and a host that executes, annexes and replies."""

    def __init__(self, cfg: ProtocolConfig) -> None:
        self.engines = [NodeEngine(cfg, n, 1, 0.0) for n in NODES]
        self.now = 0.0
        self.wire: list[tuple[int, Datagram]] = []
        """Every datagram sent, decoded, with its sender."""
        self.delivered: dict[int, list[Delivered]] = {n: [] for n in NODES}

    def _host(self, e: NodeEngine) -> None:
        while (ev := e.next_event()) is not None:
            if isinstance(ev, SnapshotRequested):
                e.provide_snapshot(ev.snapshot_id, b"", self.now)
            elif isinstance(ev, Delivered):
                self.delivered[e.node].append(ev)
                if ev.annex is None:  # ordered here: execute, then annex
                    e.annex(ev.index, b"annex:" + ev.payload[:8])
                e.send(ev.src_group, ev.conn_id, b"ok:" + ev.payload[:8], after=ev.index)

    def step(self, dt: float = 0.001) -> None:
        self.now += dt
        for e in self.engines:
            if e.get_timer() <= self.now:
                e.handle_timer(self.now)
            self._host(e)
        for _ in range(4):  # the host's turn after each flush, as the driver gives it
            outputs = [(e, e.datagrams_to_send(self.now)) for e in self.engines]
            for e in self.engines:
                self._host(e)
            for src, datagrams in outputs:
                for d in datagrams:
                    self.wire.append((src.node, decode(d, KEY, 7)))
                    for dst in self.engines:
                        if dst is not src:
                            dst.receive_datagram(d, self.now)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step()

    def formed(self) -> tuple[NodeEngine, NodeEngine, NodeEngine]:
        self.run(2.0)
        a, b, c = self.engines
        assert [e.role for e in self.engines] == [Role.PRIMARY, Role.BACKUP, Role.BACKUP]
        return a, b, c


def sent(
    net: Net, since: int, msg_type: MessageType, src_group: int | None = None
) -> list[Datagram]:
    return [
        d
        for _, d in net.wire[since:]
        if d.header.msg_type is msg_type and (src_group is None or d.header.src_group == src_group)
    ]


def test_the_primarys_own_requests_are_not_multicast_but_carried_whole_in_the_order() -> None:
    net = Net(config())
    a = net.formed()[0]
    mark = len(net.wire)
    for i in range(5):
        a.submit(b"request %d" % i)
        net.run(0.005)
    assert sent(net, mark, MessageType.DATA, gateway_group(1)) == []
    assert a.out.requests_withheld == 5
    carried = [
        e.payload
        for d in sent(net, mark, MessageType.ORDER)
        for e in decode_body(MessageType.ORDER, d.body).entries  # type: ignore[attr-defined]
    ]
    assert carried == [b"request %d" % i for i in range(5)]
    for node in NODES:  # every replica delivers each once, in the same order ...
        got = [ev.payload for ev in net.delivered[node] if ev.src_group == gateway_group(1)]
        assert got == [b"request %d" % i for i in range(5)]
    for ev in net.delivered[2] + net.delivered[3]:  # ... the backups with the primary's annex
        assert ev.annex == b"annex:" + ev.payload[:8]
    assert a.gateway.stable == 5  # committed: every member holds them


def test_a_backups_gateway_still_multicasts_its_requests() -> None:
    net = Net(config())
    b = net.formed()[1]
    mark = len(net.wire)
    b.submit(b"from a backup")
    net.run(0.01)
    assert len(sent(net, mark, MessageType.DATA, gateway_group(2))) >= 1
    assert b.out.requests_withheld == 0
    assert b.gateway.stable == 1


def test_backups_learn_the_gateways_acks_lazily_and_trim_their_logged_replies() -> None:
    cfg = config()
    net = Net(cfg)
    a, b, c = net.formed()
    mark = len(net.wire)
    for i in range(20):  # a client writing back to back: each request carries the ack
        a.submit(b"w%d" % i)
        net.run(0.002)
    acks = sent(net, mark, MessageType.FIRST_ACK, gateway_group(1))
    assert len(acks) <= 20 * 0.002 / cfg.heartbeat_interval + 1  # not one per request
    net.run(cfg.heartbeat_interval + 0.005)
    key = (gateway_group(1), a.gateway.conn_id)
    for e in (a, b, c):  # every member's copy of the replies is acknowledged, and trimmed
        ob = e.member.outbound[key]
        assert ob.acked == 20 and ob.unacked == 0, e.node
    assert a.member.outbound[key].retransmissions == 0
    assert isinstance(decode_body(MessageType.FIRST_ACK, acks[-1].body), FirstAck)


def test_a_request_too_large_to_share_a_datagram_with_its_annex_goes_on_its_own() -> None:
    cfg = config()
    net = Net(cfg)
    a = net.formed()[0]
    mark = len(net.wire)
    big = b"x" * cfg.max_payload
    a.submit(big)
    net.run(0.01)
    orders = [decode_body(MessageType.ORDER, d.body) for d in sent(net, mark, MessageType.ORDER)]
    alone = [o for o in orders if isinstance(o, Order) and o.entries]
    assert [o.entries[0].payload for o in alone] == [big] and alone[0].annexes == ()
    for node in (2, 3):
        assert [ev.payload for ev in net.delivered[node]] == [big]
    assert a.gateway.stable == 1


def test_no_request_is_withheld_while_the_primary_hands_over() -> None:
    net = Net(config())
    a, b, _ = net.formed()
    assert a.member.carries_own_requests
    a.step_down(net.now)
    assert not a.member.carries_own_requests
    mark = len(net.wire)
    a.submit(b"during the hand-over")
    a.datagrams_to_send(net.now)  # the request goes out before anything else changes
    net.step()
    assert a.out.requests_withheld == 0
    net.run(1.0)
    assert b.role is Role.PRIMARY
    for node in NODES:  # the successor heard it and ordered it
        assert b"during the hand-over" in [ev.payload for ev in net.delivered[node]]
    assert len(sent(net, mark, MessageType.DATA, gateway_group(1))) >= 1


def test_without_annexes_requests_are_multicast_as_before() -> None:
    cfg = ProtocolConfig(cluster_id=7, nodes=NODES, key=KEY)
    engines = [NodeEngine(cfg, n, 1, 0.0) for n in NODES]
    events: list[Event] = []
    now = 0.0
    while now < 2.0:
        now += 0.001
        for e in engines:
            if e.get_timer() <= now:
                e.handle_timer(now)
            while (ev := e.next_event()) is not None:
                events.append(ev)
        for src in engines:
            for d in src.datagrams_to_send(now):
                for dst in engines:
                    if dst is not src:
                        dst.receive_datagram(d, now)
    a = engines[0]
    assert a.role is Role.PRIMARY and not a.member.carries_own_requests
    a.submit(b"plain")
    out = [decode(d, KEY, 7).header for d in a.datagrams_to_send(now)]
    assert any(h.msg_type is MessageType.DATA and h.src_group == gateway_group(1) for h in out)
