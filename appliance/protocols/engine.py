"""The whole protocol stack of one node, behind one sans-I/O interface.

In the style of aioquic's connection: the host feeds ``receive_datagram(data, now)``, arms one
timer at ``get_timer()`` and calls ``handle_timer(now)`` when it fires, sends whatever
``datagrams_to_send(now)`` returns to the cluster's multicast group, and drains
``next_event()``. Host actions (fencing, snapshots, application output) come back through
``fence_result``, ``provide_snapshot``, ``install_state`` and ``send``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from appliance.protocols.config import ProtocolConfig, gateway_group
from appliance.protocols.events import Event, Stalled
from appliance.protocols.failure_detector import FailureDetector, Suspicion, WireState
from appliance.protocols.gateway import Gateway
from appliance.protocols.group import GroupMember
from appliance.protocols.ldmp.view import Member
from appliance.protocols.messages import Role, decode_body
from appliance.protocols.outbox import Outbox
from appliance.protocols.wire.errors import WireError
from appliance.protocols.wire.header import MessageType
from appliance.protocols.wire.inbound import DatagramFilter

_SECOND_ACK = int(MessageType.SECOND_ACK)

STALL_HEARTBEATS = 3
"""Heartbeat intervals without a single call into the engine that count as a local stall."""


class NodeEngine:
    def __init__(self, cfg: ProtocolConfig, node: int, incarnation: int, now: float) -> None:
        if node not in cfg.nodes:
            raise ValueError(f"node {node} is not one of the configured nodes {cfg.nodes}")
        self.cfg = cfg
        self.node = node
        self.incarnation = incarnation
        self.events: deque[Event] = deque()
        self.out = Outbox(
            cfg, node, incarnation, frozenset({cfg.service_group, gateway_group(node)})
        )
        self.filter = DatagramFilter(cfg.key, cfg.cluster_id, cfg.max_datagram, own_node=node)
        self.fd = FailureDetector(cfg.silence_timeout, cfg.flat_wire_timeout)
        for n in cfg.nodes:
            if n != node:
                self.fd.watch(n, now)
        self.member = GroupMember(
            cfg, Member(node, incarnation), self.out, self.events, self.fd, now
        )
        self.gateway = Gateway(cfg, node, incarnation, self.out, self.events)
        self.next_heartbeat = now
        self.next_tick = now
        self.tick_interval = cfg.heartbeat_interval / 2
        self.body_rejects = 0
        self.last_step = now
        self.stall_threshold = STALL_HEARTBEATS * cfg.heartbeat_interval
        """A gap this long between two calls means this node stood still (see _check_stall)."""
        self.stalls = 0
        self.acks_skipped = 0
        """Other backups' confirmations dropped unread: nothing here needed them."""
        self.member_fed = True
        self.gateway_fed = True
        """Whether the replica, and the gateway, were handed anything (an input, a timer, a
        host action) since their last flush: a flush of either with nothing new and no later
        time is idempotent, so ``datagrams_to_send`` skips it (see there)."""

    # -- input ---------------------------------------------------------------------------

    def _check_stall(self, now: float) -> None:
        """Detect that this node itself stood still, and forgive its peers that silence.

        The host calls in at least every heartbeat interval (the heartbeat timer), so a much
        longer gap means the process was frozen, starved or suspended: whatever the peers did
        meanwhile went unheard, and acting on that silence (fencing the nodes that replaced a
        frozen primary) would be acting on our own fault.
        """
        gap = now - self.last_step
        if now > self.last_step:
            self.last_step = now
        if gap > self.stall_threshold:
            self.stalls += 1
            self.fd.forgive(now)
            self.member.forgive(now)
            self.events.append(Stalled(gap))

    def receive_datagram(self, data: bytes, now: float) -> bool:
        """Feed one datagram from the group; False if nothing can have become due by it.

        Then the host need not flush or re-arm: our own datagrams, which multicast loopback
        returns (see ``DatagramFilter.looped_back``), other backups' confirmations dropped
        unread, and a confirmation that moved nothing (see ``_moved_nothing``).
        """
        if self.filter.looped_back(data):
            return False
        if (
            self.gateway.idle
            and not self.member.is_primary
            and self.filter.claims_type(data, _SECOND_ACK)
        ):
            # Another backup's confirmation is for the primary, and for a gateway awaiting a
            # reply's commit; with none awaited here it would be authenticated only to be
            # dropped (on every backup, for every write of every other backup).
            self.acks_skipped += 1
            return False
        self._check_stall(now)
        d = self.filter.accept(data)
        if d is None:
            return True
        try:
            body = decode_body(d.header.msg_type, d.body)
        except WireError:
            self.body_rejects += 1
            return True
        self.fd.heard_from(d.header.src_node, now)
        self.member_fed = self.gateway_fed = True
        commit, events = self.member.commit, len(self.events)
        self.member.on_datagram(d, body, now)
        self.gateway.on_datagram(d, body, now)
        spent = d.header.msg_type is MessageType.SECOND_ACK and self._moved_nothing(commit, events)
        return not spent

    def _moved_nothing(self, commit: int, events: int) -> bool:
        """Did a confirmation just leave everything a flush acts on as it was?

        On the primary every backup's confirmation counts toward the commit point, but only
        the last one of a write moves it; the others (three of four with five replicas)
        would cost a whole flush, which would find nothing to do: no commit, no released
        reply (an event), nothing emitted, and no admission or hand-over, whose steps also
        wait on confirmations. (The deadline the host arms does not depend on them either.)
        """
        m = self.member
        return (
            m.commit == commit
            and len(self.events) == events
            and not self.out.local
            and not len(self.out)
            and m.admission is None
            and m.stepdown is None
        )

    @property
    def acks_filterable(self) -> bool:
        """The host may have its socket drop every SECOND_ACK before it reaches us.

        A backup whose gateway awaits nothing reads no confirmation (``receive_datagram``
        drops them unread); dropped in the kernel, they do not even wake it. Only in the
        BACKUP role, not as a candidate, which is about to lead and then needs them; the
        host checks this before every flush, so it lets them through again before our
        gateway sends a request or we lead (``EngineDriver``).
        """
        return self.member.role is Role.BACKUP and self.gateway.idle

    def handle_timer(self, now: float) -> None:
        self.member_fed = self.gateway_fed = True  # what is due by time is flushed now
        self._check_stall(now)
        if now >= self.next_heartbeat:
            self.member.heartbeat(now)
            self.next_heartbeat = now + self.cfg.heartbeat_interval
        if now >= self.next_tick:
            self.next_tick = now + self.tick_interval
        # Reading the suspicions marks them reported, so the detector's deadline moves on.
        self.fd.suspects(now)
        self.member.tick(now)

    def wire_observed(self, node: int, state: WireState, now: float) -> None:
        """Heartbeat-wire evidence from the hardware layer."""
        self.member_fed = self.gateway_fed = True
        self.fd.wire_observed(node, state, now)

    # -- host actions --------------------------------------------------------------------

    def submit(self, payload: bytes) -> int:
        """A client request through this node's gateway; returns its sequence number."""
        self.gateway_fed = True
        return self.gateway.submit(payload)

    def send(self, dst_group: int, conn_id: int, payload: bytes, after: int | None = None) -> int:
        """Application output of the replicated service (a backup logs it, does not send).

        ``after``: the index of the delivered input that produced it (output commit).
        """
        self.member_fed = True
        return self.member.send(dst_group, conn_id, payload, after)

    def leave(self, reason: str, now: float) -> None:
        """Drop this replica's state and rejoin by state transfer (after a divergence)."""
        self.member_fed = self.gateway_fed = True
        self.member.leave(reason, now)

    def annex(self, index: int, blob: bytes) -> None:
        """Primary: attach what backups need to reproduce input ``index`` (see Delivered)."""
        self.member_fed = True
        self.member.annex(index, blob)

    def step_down(self, now: float) -> int:
        """Primary: hand the role over gracefully to the next rank; returns that node's id.

        Raises ``StepDownRefused`` (a ValueError) when this node is not the primary, is alone
        in its group, or is already handing over. ``HandoverFinished`` reports the outcome.
        """
        self.member_fed = self.gateway_fed = True
        return self.member.step_down(now).node

    def fence_result(self, node: int, ok: bool, now: float) -> None:
        """The outcome of a ``FenceRequested``: acted on at once (the fenced backup removed, or
        the candidacy's proposal sent), not at the next tick half a heartbeat later, since
        output waits on it."""
        self.member_fed = self.gateway_fed = True
        self.member.fence_result(node, ok, now)
        self.member.tick(now)

    def snapshot_head(self, snapshot_id: int, app_size: int) -> bytes | None:
        """Primary: how snapshot ``snapshot_id``'s blob starts, before ``app_size`` bytes of
        application state (None once that admission is over). The offer's SHA-256 covers
        this head, then the state: a host that hashes its state as it builds it passes the
        digest to :meth:`provide_snapshot` and keeps that work off its event loop."""
        self.member_fed = self.gateway_fed = True
        return self.member.snapshot_head(snapshot_id, app_size)

    def provide_snapshot(
        self,
        snapshot_id: int,
        app_state: bytes | Sequence[bytes],
        now: float,
        digest: bytes | None = None,
    ) -> None:
        """Primary: the application state a ``SnapshotRequested`` asked for, whole or in parts
        (served in the same order, never joined here). ``digest``: SHA-256 of
        ``snapshot_head`` followed by the state, if the host computed it; else computed here."""
        self.member_fed = self.gateway_fed = True
        self.member.provide_snapshot(snapshot_id, app_state, now, digest)

    def install_state(
        self,
        snapshot_id: int,
        blob: bytes | Sequence[bytes],
        now: float,
        digest: bytes | None = None,
    ) -> bool:
        """Joiner: the blob of an offered snapshot, fetched point-to-point (``SnapshotOffered``),
        whole or in the parts it arrived in (joined here only from where the application's
        state starts).

        False (and the fetch is retried on the primary's next offer) if it is not the offered
        snapshot's size and digest, or the offer is no longer current. ``digest``: the SHA-256
        of the parts, if the host computed it as they arrived; else computed here.
        """
        self.member_fed = self.gateway_fed = True
        return self.member.install_state(snapshot_id, blob, now, digest)

    def restored(self, now: float) -> None:
        """Joiner (``cfg.host_confirms_restore``): the host has loaded the snapshot of the last
        ``SnapshotInstalled`` and applied every input delivered since; the primary may now
        count on this node and admit it."""
        self.member_fed = self.gateway_fed = True
        self.member.restored(now)

    def state_fetch_failed(self, snapshot_id: int, reason: str, now: float) -> None:
        """Joiner: fetching an offered snapshot failed; it is retried on the next offer."""
        self.member_fed = self.gateway_fed = True
        self.member.state_fetch_failed(snapshot_id, reason, now)

    # -- output --------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Flush the replica and the gateway, in rounds while they hand each other messages.

        Only a side that was handed something since its last flush is flushed: what falls due
        by time alone is flushed from ``handle_timer``, whose deadline (``get_timer``) covers
        it, so a flush after, say, a released reply was written to its client (an event that
        fed neither) is skipped instead of scanning every connection to find nothing.
        """
        sent: list[bytes] = []
        member, gateway = self.member_fed, self.gateway_fed
        self.member_fed = self.gateway_fed = False
        for _ in range(8):
            if member:
                self.member.flush(now)
                self.out.requests_in_order = self.member.carries_own_requests
            if gateway:
                self.gateway.flush(now)
            sent.extend(self.out.take())
            if not self.out.local:
                # Flushing is idempotent: only what our own node hands itself in-process can
                # make more due (a round after one without was checked in the simulator never
                # to produce anything), so another round would only cost a second scan.
                break
            # What went to our own node, sent or not (see Outbox.emit); by the same token, of
            # the next round only the side that got some of it has anything to flush.
            member, gateway = self._loop_back(now)
        else:  # rounds used up: what the last loop-back handed over is flushed next call
            self.member_fed |= member
            self.gateway_fed |= gateway
        return sent

    def _loop_back(self, now: float) -> tuple[bool, bool]:
        """Our own gateway talks to our own replica too: multicast loopback, done in-process.

        Returns whether the replica, and whether the gateway, got anything."""
        local, self.out.local = self.out.local, []
        member = gateway = False
        for d, body in local:
            h = d.header
            if h.dst_group == self.cfg.service_group and h.src_group != h.dst_group:
                self.member.on_datagram(d, body, now)
                member = True
            else:
                self.gateway.on_datagram(d, body, now)
                gateway = True
        return member, gateway

    def get_timer(self) -> float:
        t = min(self.next_heartbeat, self.next_tick)
        for d in (
            self.member.next_deadline(),
            self.gateway.next_deadline(),
            self.fd.next_deadline(),
        ):
            if d is not None and d < t:
                t = d
        return t

    def next_event(self) -> Event | None:
        return self.events.popleft() if self.events else None

    # -- introspection -------------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self.member.role

    @property
    def is_primary(self) -> bool:
        return self.member.is_primary

    def suspicions(self, now: float) -> list[Suspicion]:
        """Why this node suspects each peer it suspects (for status displays and logs)."""
        out = []
        for n in sorted(self.fd.watched()):
            s = self.fd.suspicion(n, now)
            if s is not None:
                out.append(s)
        return out

    def peers(self, now: float) -> list[dict[str, object]]:
        """Every other configured node as this node sees it: when it was last heard (seconds
        ago), its heartbeat wire, its health and, when suspected, why."""
        out: list[dict[str, object]] = []
        for n in sorted(self.fd.watched()):
            s = self.fd.suspicion(n, now)
            out.append(
                {
                    "node": n,
                    "last_heard_ago": max(0.0, now - self.fd.last_heard(n)),
                    "wire": self.fd.wire_state(n).value,
                    "health": self.fd.health(n, now).value,
                    "suspicion": s.reason if s is not None else None,
                }
            )
        return out

    def status(self) -> dict[str, object]:
        s = self.member.status()
        s.update(
            node=self.node,
            incarnation=self.incarnation,
            rejected=self.filter.rejected
            | ({"body": self.body_rejects} if self.body_rejects else {}),
            accepted=self.filter.accepted,
            looped_back=self.filter.own,
            acks_skipped=self.acks_skipped,
            requests_in_order=self.out.requests_withheld,
            requests_in_flight=self.gateway.in_flight,
            requests_backlog=self.gateway.backlog,
            stalls=self.stalls,
        )
        return s
