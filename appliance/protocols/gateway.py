"""A node's client gateway: a group of one with a virtual connection to the service group.

Clients reach the service through the gateway of whichever node they connected to. The gateway
sends requests on its connection (multicast, so every service member hears them) and receives
replies from the service primary. A request is *stable* once the service primary acknowledges
it, which it does only when every member of its view holds the request: only then may the
gateway release the reply to the client (output commit), because only then does the request
survive the primary's failure. The connection id is the gateway's incarnation, so a restarted
gateway starts a fresh connection and the service forgets the old one.
"""

from __future__ import annotations

from collections import deque

from appliance.protocols.config import ProtocolConfig, check_payload, gateway_group
from appliance.protocols.events import Event, ReplyReceived, RequestsStable
from appliance.protocols.llmp.commit_gate import CommitGate
from appliance.protocols.llmp.rto import RttEstimator
from appliance.protocols.llmp.sender import OutboundConnection
from appliance.protocols.messages import (
    Data,
    FirstAck,
    Heartbeat,
    Nack,
    NackKind,
    Order,
    Role,
    SecondAck,
)
from appliance.protocols.outbox import Outbox
from appliance.protocols.wire.datagram import Datagram


class Gateway:
    def __init__(
        self, cfg: ProtocolConfig, node: int, incarnation: int, out: Outbox, events: deque[Event]
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.group = gateway_group(node)
        self.conn_id = incarnation & 0xFFFFFFFF
        self.out = out
        self.events = events
        rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)
        self.requests = OutboundConnection(cfg.service_group, self.conn_id, cfg.window, rtt)
        self.gate = CommitGate(cfg.window)
        self.stable = 0
        self.ack_sent = 0
        self.ack_due: float | None = None
        """When to acknowledge released replies (to every member, or while our requests
        reach only our own replica, to it alone)."""
        self.backups_ack_due: float | None = None
        """When the backups get an acknowledgement our own replica already has."""

    def submit(self, payload: bytes) -> int:
        """Queue a request for the service group; returns its sequence number.

        Raises ValueError for a request larger than ``cfg.max_payload``.
        """
        check_payload(self.cfg, payload)
        return self.requests.send(payload)

    def on_datagram(self, d: Datagram, body: object, now: float) -> None:
        h = d.header
        if h.src_group != self.cfg.service_group:
            return
        # Commit evidence, heard on the multicast group whatever its destination.
        if isinstance(body, SecondAck):
            p = body.primary
            self.gate.backup_ack(h.src_node, (h.view, p.node, p.incarnation), body.delivered)
        elif isinstance(body, Heartbeat):
            if body.role is Role.BACKUP and body.members:
                p = body.members[0]
                self.gate.backup_ack(h.src_node, (h.view, p.node, p.incarnation), body.delivered)
            elif body.role is Role.PRIMARY:
                self.gate.commit_announced((h.view, h.src_node, h.incarnation), body.commit)
        elif isinstance(body, Order):
            self.gate.commit_announced((h.view, h.src_node, h.incarnation), body.commit)
        if h.dst_group == self.group and h.conn_id == self.conn_id:
            if isinstance(body, Data):
                self._acked(h.ack, now, None)
                reign = (h.view, h.src_node, h.incarnation)
                for e in body.entries:
                    if e.seq <= self.gate.released:
                        # A resend of a released reply: the primary missed our ack.
                        self.ack_sent = min(self.ack_sent, e.seq - 1)
                        if self.ack_due is None:
                            self.ack_due = now + self.cfg.ack_delay
                    self.gate.offer(e.seq, e.payload, e.after, body.requires, reign)
                gaps = self.gate.gaps()
                if gaps:  # ask the service primary (target 0: whoever it is) to fill them now
                    self.out.emit(
                        Nack(0, NackKind.MESSAGES, tuple(gaps)),
                        src_group=self.group,
                        dst_group=self.cfg.service_group,
                        conn_id=self.conn_id,
                        ack=self.gate.released,
                    )
            elif isinstance(body, FirstAck):
                self._acked(h.ack, now, body.credit)
            elif (
                isinstance(body, Nack)
                and body.kind is NackKind.MESSAGES
                and body.target == self.node
            ):
                self.requests.on_nack(body.ranges)
        released = self.gate.release()
        for seq, payload in released:
            self.events.append(ReplyReceived(seq, payload))
        if released and self.ack_due is None:
            self.ack_due = now + self.cfg.ack_delay

    def _acked(self, ack: int, now: float, credit: int | None) -> None:
        self.requests.on_ack(ack, now, credit)
        if self.requests.acked > self.stable:
            self.stable = self.requests.acked
            self.events.append(RequestsStable(self.stable))

    def flush(self, now: float) -> None:
        for data in self.requests.take_batches(now, self.cfg.batch_bytes):
            self._send(data, now)
        if self.ack_due is not None and now >= self.ack_due:
            self.ack_due = None
            if self.gate.released > self.ack_sent:
                if self.out.requests_in_order:
                    self._ack(local_only=True)
                    self._backups_ack_later(now)
                else:
                    self._ack(local_only=False)
        if self.backups_ack_due is not None and now >= self.backups_ack_due:
            self.backups_ack_due = None
            if self.gate.released > self.ack_sent:
                self._ack(local_only=False)

    def _ack(self, local_only: bool) -> None:
        """A FirstAck of the replies released so far: to every member, or our own replica."""
        self.out.emit(
            FirstAck(self.gate.window),
            src_group=self.group,
            dst_group=self.cfg.service_group,
            conn_id=self.conn_id,
            ack=self.gate.released,
            local_only=local_only,
        )
        if not local_only:
            self.ack_sent = self.gate.released
            self.backups_ack_due = None

    def _backups_ack_later(self, now: float) -> None:
        """Our own replica heard our ack; the backups, whom no request carries it to while
        our requests reach only our replica (``Outbox.requests_in_order``), need it only to
        trim the replies they log: one FirstAck per heartbeat interval at most, instead of
        one per request."""
        if self.backups_ack_due is None:
            self.backups_ack_due = now + max(self.cfg.ack_delay, self.cfg.heartbeat_interval)

    def _send(self, data: Data, now: float) -> None:
        multicast = self.out.emit(
            data,
            src_group=self.group,
            dst_group=self.cfg.service_group,
            conn_id=self.conn_id,
            seq=data.entries[0].seq,
            ack=self.gate.released,
        )
        self.ack_due = None  # the request carries our ack
        if multicast:
            self.ack_sent = self.gate.released
            self.backups_ack_due = None
        elif self.gate.released > self.ack_sent:
            self._backups_ack_later(now)

    def next_deadline(self) -> float | None:
        t = self.requests.next_deadline()
        for d in (self.ack_due, self.backups_ack_due):
            if d is not None and (t is None or d < t):
                t = d
        return t

    @property
    def idle(self) -> bool:
        """Nothing submitted and unanswered: no reply can be waiting for commit evidence."""
        return not self.requests.unacked and not self.requests.backlog and not self.gate.held

    @property
    def in_flight(self) -> int:
        return self.requests.unacked

    @property
    def backlog(self) -> int:
        return self.requests.backlog
